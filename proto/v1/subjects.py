"""The request/reply and broadcast subjects: part of the wire contract, named once."""

QUOTA_CHECK = "quota.check"
QUOTA_CHECK_BATCH = "quota.check_batch"
"""QuotaCheckBatch -> QuotaDecisions, on the partition owner's subject only (OWNER_ONLY)."""
QUOTA_STATUS = "quota.status"
QUOTA_EVENTS = "quota.events"
QUOTA_RELEASE = "quota.release"
QUOTA_INFLIGHT = "quota.inflight"
QUOTA_HEARTBEAT = "quota.heartbeat"
PARTITIONED = (QUOTA_CHECK, QUOTA_RELEASE, QUOTA_STATUS, QUOTA_INFLIGHT, QUOTA_CHECK_BATCH)
"""Per-account requests that are also sent as `<subject>.p.<partition>`, where only the quota
instance that owns the account's partition listens (libs/eventlog/subjects.owner_subject); any
instance forwards the plain subject there (except OWNER_ONLY's)."""
OWNER_ONLY = (QUOTA_CHECK_BATCH,)
"""Sent as `<subject>.p.<partition>` only: no instance answers the plain subject."""
"""Broadcast (no reply): each gateway's GatewayHeartbeat, its calls in flight."""

KEY_LOOKUP = "key.lookup"
KEYS_CREATE = "keys.create"
KEYS_LIST = "keys.list"
KEYS_ROTATE = "keys.rotate"
KEYS_REVOKE = "keys.revoke"
KEYS_REVOKE_ANY = "keys.revoke_any"
"""The operator's revocation of any key (admin API)."""
KEYS_SUSPEND = "keys.suspend"
"""Suspend an account's keys, or lift the suspension (admin API)."""
KEYS_ACCESS = "keys.access"
"""GetAccountAccess -> AccountAccess: whether an account is suspended (ingress, for the console's owner)."""
KEYS_CHANGED = "keys.changed"
"""Broadcast (no reply) once a key was created, rotated or revoked, or its account (un)suspended."""

BILLING_HISTORY = "billing.history"
BILLING_COSTS = "billing.costs"
BILLING_RECORD_PAYMENT = "billing.record_payment"
BILLING_TOP_UP = "billing.top_up"
BILLING_ABUSE_SIGNALS = "billing.abuse_signals"
"""AbuseSignalsRequest -> AbuseSignals | BillingCommandFailed (admin API: the accounts' abuse signals)."""

REFUND_PREVIEW = "refund.preview"
REFUND_REQUEST = "refund.request"
REFUND_GET = "refund.get"
REFUND_LIST = "refund.list"
REFUND_CANCEL = "refund.cancel"
REFUND_PAYOUTS = "refund.payouts"
"""Broadcast request to every refund instance: configure the local payment provider."""

DLQ_RETRY = "dlq.retry"
"""Followed by `.<projection>`: only the projection that dead-lettered an event applies it again."""

REPLAY_DISCOVER = "ops.replay.discover"
"""Scatter-gather: every service that owns a projection answers with its ReplayProgress."""


def replay_start(projection: str) -> str:
    """StartReplay -> ReplayProgress, answered by the service that owns the projection."""
    return f"ops.replay.{projection}.start"


def replay_status(projection: str) -> str:
    """ReplayStatusRequest -> ReplayProgress of the running (or the last) replay."""
    return f"ops.replay.{projection}.status"


def replay_pause(projection: str) -> str:
    """PauseForReplay -> InstancePaused, scatter-gather to every instance of the projection's service."""
    return f"ops.replay.{projection}.pause"


def replay_resume(projection: str) -> str:
    """ResumeAfterReplay -> InstancePaused, scatter-gather to every instance of the projection's service."""
    return f"ops.replay.{projection}.resume"


CONSOLE_SIGN_IN_LINK = "console.sign_in_link"
"""IssueSignInLink -> SignInLinkIssued | ConsoleCommandFailed (admin API: a new owner, or a fresh link)."""
