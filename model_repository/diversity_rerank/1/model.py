"""diversity_rerank: experiment variant, MMR, creator/category caps, epsilon-greedy exploration slots with
propensities, explanations; logs each feed to the exposure stream."""

import triton_python_backend_utils as pb_utils

from reels.deploy.triton.adapter import execute
from reels.deploy.triton.steps import DiversityRerankStep, Runtime

INPUTS = (
    "ranked_ids", "ranking_scores", "candidate_task_predictions", "history_video_ids", "k",
    "request_time_s", "ranking_fallback", "user_id", "hidden_creator_ids",
)  # fmt: skip


class TritonPythonModel:
    def initialize(self, args):
        self.step = DiversityRerankStep(Runtime.for_model(args))

    def execute(self, requests):
        return execute(pb_utils, requests, INPUTS, self.step)
