-- The caps quota enforces, per plan, as configured (plans file): written by quota at each
-- start so that SQL over the windows (dashboards) can say how close an account is to its cap.
CREATE TABLE quota.plan_limits (
    plan text PRIMARY KEY,
    window_5h_micros bigint NOT NULL,
    weekly_micros bigint NOT NULL,
    monthly_micros bigint NOT NULL
);
