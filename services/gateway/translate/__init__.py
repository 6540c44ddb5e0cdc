"""Protocol translation between the wire protocols the gateway speaks to clients and the ones its
upstreams speak: pure functions and tables, no I/O (the routes in services.gateway.api call them)."""
