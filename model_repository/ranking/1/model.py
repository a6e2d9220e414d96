"""ranking: candidate video features from Redis, MMoE over all candidates in one batch."""

import triton_python_backend_utils as pb_utils

from reels.deploy.triton.adapter import execute
from reels.deploy.triton.steps import RankingStep, Runtime

INPUTS = (
    "query_categorical", "query_continuous", "history_video_ids", "fallback", "request_time_s",
    "candidate_ids", "retrieval_scores",
)  # fmt: skip


class TritonPythonModel:
    def initialize(self, args):
        self.step = RankingStep(Runtime.for_model(args))

    def execute(self, requests):
        return execute(pb_utils, requests, INPUTS, self.step)
