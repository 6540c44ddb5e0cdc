"""Pure pricing: the model catalog, the plans, and the Flow/USD arithmetic. No I/O but reading data files."""
