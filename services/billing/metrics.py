"""billing's metrics: names and labels are an API (no per-account labels). Counted once per
event, after the projection's commit, so a redelivered or duplicate event adds nothing."""

from libs.observability import Counter

SCOPE = "billing"

payments = Counter(SCOPE, "flowplan_payments", description="subscription payments recorded, by plan")
payment_amount_usd = Counter(SCOPE, "flowplan_payment_amount_usd", description="USD paid for subscriptions, by plan")
payg_spend_usd = Counter(
    SCOPE, "flowplan_payg_spend_usd", description="USD of pay-as-you-go usage debited from balances, by model"
)
