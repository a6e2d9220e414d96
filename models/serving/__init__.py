"""Online serving (``reels.models.serving``): request types, the four pipeline steps, the catalog,
experiment assignment and the in-process pipeline the Triton steps mirror."""
