"""keys: the API key lifecycle (create, list, rotate, revoke, last used) and key.lookup."""
