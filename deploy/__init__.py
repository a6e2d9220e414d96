"""Deployment (``reels.deploy``): the typed ``Config``, launchers for redis-server, tritonserver and child
processes, the Dask cluster, the serving stack, retraining and promotion, and the Triton python-backend
adapter (``reels.deploy.triton``); imports every layer but ``reels.client``."""
