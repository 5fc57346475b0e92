"""Plugin-proxy: HTTP proxy to internal systems, directly or through delegates.

Not built yet: health, readiness and its schema only.
"""
