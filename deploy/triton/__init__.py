"""Triton: the python-backend adapter, the release spec, and the model-repository export."""
