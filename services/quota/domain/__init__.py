"""The quota domain, pure: window chains, billing periods, admission. No I/O."""
