"""retrieval: query tower + FAISS top-N, minus seen videos; trending videos for fallbacks."""

import triton_python_backend_utils as pb_utils

from reels.deploy.triton.adapter import execute
from reels.deploy.triton.steps import RetrievalStep, Runtime

INPUTS = (
    "query_categorical",
    "query_continuous",
    "history_video_ids",
    "seen_video_ids",
    "fallback",
    "request_time_s",
)


class TritonPythonModel:
    def initialize(self, args):
        self.step = RetrievalStep(Runtime.for_model(args))

    def execute(self, requests):
        return execute(pb_utils, requests, INPUTS, self.step)
