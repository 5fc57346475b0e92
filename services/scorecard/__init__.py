"""Scorecard: checks, scores and levels, driven by the event stream (only the consumer exists so far)."""
