"""Real-software scenarios for session dependencies (test fixtures, not scriptgen code)."""
