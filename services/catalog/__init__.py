"""Catalog: the Backstage-compatible software catalog (entities, relations, Backstage's REST API)."""
