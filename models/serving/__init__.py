"""Online serving: request types, the four pipeline steps, catalog, experiment assignment and the in-process pipeline."""
