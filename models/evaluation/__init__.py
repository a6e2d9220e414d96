"""Model evaluation (``reels.models.evaluation``): offline retrieval and ranking evaluation, the
promotion gate, tuning, the evaluation report, A/B simulation and analysis, and creator exposure."""
