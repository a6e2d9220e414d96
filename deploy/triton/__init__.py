"""The Triton side of serving (``reels.deploy.triton``): the python-backend adapter, the release spec,
the four steps over tensors and the model-repository export."""
