"""Offline evaluation, the promotion gate, tuning, reports, A/B simulation and analysis, creator exposure."""
