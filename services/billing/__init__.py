"""billing: billing history (payments, plan changes, top-ups, refunds) and cost analysis."""
