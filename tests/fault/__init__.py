"""Fault tests: kill -9, database outages and restarts, against the real broker and PostgreSQL."""
