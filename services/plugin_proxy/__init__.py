"""Plugin-proxy: named endpoints that reach internal systems, directly or through delegate agents."""
