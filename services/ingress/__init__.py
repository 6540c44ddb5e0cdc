"""ingress: the HTTP entry for metering clients and for the account and admin API."""
