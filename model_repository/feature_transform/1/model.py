"""feature_transform: user features, history and seen list from Redis + request context (see
reels.deploy.triton.steps for the tensor contract)."""

import triton_python_backend_utils as pb_utils

from reels.deploy.triton.adapter import execute
from reels.deploy.triton.steps import FeatureTransformStep, Runtime

INPUTS = ("user_id", "k", "device", "hour", "request_time")


class TritonPythonModel:
    def initialize(self, args):
        self.step = FeatureTransformStep(Runtime.for_model(args))

    def execute(self, requests):
        return execute(pb_utils, requests, INPUTS, lambda t: self.step(*(t[n] for n in INPUTS)))
