"""Catalog: the Backstage-compatible software catalog.

Not built yet: health, readiness and its schema only.
"""
