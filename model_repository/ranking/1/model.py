"""ranking: candidate video features from Redis, MMoE over all candidates in one batch.

The step itself is ``reels.deploy.triton.steps``; this file only binds it to the python backend."""

import triton_python_backend_utils as pb_utils

from reels.deploy.triton.adapter import bind

TritonPythonModel = bind(pb_utils)
