"""Audit: persists every event of the suite in a tamper-evident, queryable trail."""
