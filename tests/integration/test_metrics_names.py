"""The metric names deploy/k8s's alert rules, HPA adapter rule and Grafana dashboard read from Triton are
the ones a real tritonserver 2.51 (the nvidia-pytriton wheel) exports: one tiny python-backend model is
loaded and asked once, then :metrics is scraped."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest

from reels.deploy.redis_server import free_port
from reels.deploy.triton_server import TritonServer
from tests.unit.deploy.test_k8s import (
    TRITON_CPU_METRICS,
    TRITON_GPU_METRICS,
    needs_kubectl,
    used_metric_names,
)

pytestmark = pytest.mark.integration

CONFIG = """name: "echo"
backend: "python"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""
MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
            for r in requests
        ]
"""


@needs_kubectl
def test_every_triton_metric_the_k8s_monitoring_reads_is_exported_by_tritonserver(tmp_path):
    import tritonclient.http as http

    (tmp_path / "repo" / "echo" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "echo" / "config.pbtxt").write_text(CONFIG)
    (tmp_path / "repo" / "echo" / "1" / "model.py").write_text(MODEL)
    server = TritonServer(
        tmp_path / "repo", tmp_path / "build", free_port(), free_port(), free_port()
    ).start()
    try:
        client = http.InferenceServerClient(server.http_url)
        request = http.InferInput("X", [1], "FP32")
        request.set_data_from_numpy(np.ones(1, np.float32))
        client.infer("echo", [request])
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        server.stop()
    exported = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    assert exported == TRITON_CPU_METRICS
    assert re.search(
        r'^nv_inference_request_failure\{model="echo",reason="REJECTED",version="1"\} 0', text, re.M
    )
    used = {name for name in used_metric_names() if name.startswith("nv_")}
    assert used - TRITON_GPU_METRICS <= exported
