"""Compliance: DNC lists, calling hours, abandonment budget, and the single gate before every dial."""
