"""`make bench`: throughput and latency of the platform core, side by side with its building blocks."""
