"""Rollout persistence (imports only `protocol`)."""
