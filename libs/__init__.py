"""Code shared by flowplan's services: the event log, settings, clock, pricing, web plumbing."""
