"""refund: 24-hour refunds of paid subscriptions, settled once pending usage is counted, paid out once."""
