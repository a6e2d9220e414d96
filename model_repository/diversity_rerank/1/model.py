"""diversity_rerank: experiment variant, MMR, creator/category caps, exploration slots with
propensities, explanations; logs each feed to the exposure stream.

The step itself is ``reels.deploy.triton.steps``; this file only binds it to the python backend."""

import triton_python_backend_utils as pb_utils

from reels.deploy.triton.adapter import bind

TritonPythonModel = bind(pb_utils)
