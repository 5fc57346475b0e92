"""Workflow: templates and durable pipeline executions.

Not built yet: health, readiness and its schema only.
"""
