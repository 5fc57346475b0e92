"""Delegate agent: carries proxied requests from the plugin-proxy into a private network over outbound NATS."""
