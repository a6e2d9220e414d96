"""The one python-backend model every step runs: ``model_repository/<step>/1/model.py`` is two lines,
``TritonPythonModel = bind(pb_utils)``. ``initialize`` reads the model's own config (its tensor names and
dtypes are the contract), the release it serves (from the model name ``<step>_v<N>``) and builds the step;
``execute`` converts Triton request tensors -> seal checks -> the step -> its output seals -> response
tensors, with exactly one response per request and errors as per-request Triton errors (the model keeps
serving): invalid-argument for bad input or a seal that does not match (a step called directly, see
``seal.py``), internal for anything else. ``pb_utils`` is passed in because it only exists inside Triton.

Metrics of our own (``reels_*``, table in ``FAMILIES``) go out on Triton's metrics port next to its
``nv_*`` ones: a step reports to its ``metrics`` attribute (``Counts`` here, a no-op outside Triton, see
``steps.MetricsSink``), the adapter counts refused requests itself, and a background thread sends the
counts to Triton's ``pb_utils.MetricFamily`` series, labelled with the model's name and version, once per
``FLUSH_INTERVAL_S`` (and a last time when the model unloads). Each update of a Triton metric is a round
trip to the server process that allocates in shared memory: sent per ``execute`` call they took 8-21% of
a step's samples, so they leave the request path. A scrape therefore lags the requests by at most one
interval; a step process that is killed loses at most one interval of its counts (counters only)."""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from reels.deploy.triton.seal import Seal, Sealer
from reels.models.serving.request import BadRequest

log = logging.getLogger(__name__)


class SealRefused(BadRequest):
    """An input seal did not match: invalid-argument, counted apart from other bad input."""


@dataclass(frozen=True)
class Family:
    """One metric family of ours: Prometheus name, kind (counter, gauge or histogram), help text, and the
    bucket bounds of a histogram. Every series also carries the labels ``model`` and ``version``."""

    name: str
    kind: str
    description: str
    buckets: tuple[float, ...] = ()


REFUSED = "reels_requests_refused_total"
FAMILIES = {
    family.name: family
    for family in (
        Family(
            "reels_feeds_total", "counter",
            "Feeds served, by the fallback in force (none, cold_start, store_unavailable) and the user's "
            "experiment variant",
        ),
        Family(
            "reels_feed_slots_total", "counter",
            "Feed slots served, by how they were filled: ranked, exploration_greedy (an exploration slot "
            "that took the best fresh video) or exploration_random (its coin said explore)",
        ),
        Family(
            "reels_exposure_log_failures_total", "counter",
            "Served feeds whose exposure-log entry was lost (Redis failed or the log's breaker was open)",
        ),
        Family(
            "reels_candidates_retrieved", "histogram",
            "Candidates retrieval passed on per request, by the fallback in force",
            buckets=(0, 10, 25, 50, 100, 200, 300, 500, 1000),
        ),
        Family(
            REFUSED, "counter",
            "Requests answered with an error: bad_seal or bad_input (invalid-argument), internal",
        ),
    )
}  # fmt: skip
LabelKey = tuple[tuple[str, str], ...]


def _label_key(labels: Mapping[str, str] | None) -> LabelKey:
    return tuple(sorted((str(k), str(v)) for k, v in (labels or {}).items()))


FLUSH_INTERVAL_S = 1.0  # how often a step's counts go to Triton (a scrape lags by at most this)


class Counts:
    """The metrics sink a step reports to inside Triton (``steps.MetricsSink``): counter increments and
    histogram observations by (family, labels), kept until ``take`` hands them to ``TritonMetrics``.
    Thread-safe: the step reports from Triton's execute thread, the flusher takes from its own."""

    def __init__(self):
        self.increments: dict[tuple[str, LabelKey], float] = {}
        self.observations: list[tuple[str, LabelKey, float]] = []
        self._lock = threading.Lock()

    def count(self, name: str, labels: Mapping[str, str] | None = None, value: float = 1.0) -> None:
        """Add ``value`` to counter ``name``'s series ``labels`` (zero is ignored)."""
        if name not in FAMILIES:
            raise KeyError(f"unknown metric {name!r}")
        if value:
            key = (name, _label_key(labels))
            with self._lock:
                self.increments[key] = self.increments.get(key, 0.0) + float(value)

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Record one observation of histogram ``name``'s series ``labels``."""
        if name not in FAMILIES:
            raise KeyError(f"unknown metric {name!r}")
        observation = (name, _label_key(labels), float(value))
        with self._lock:
            self.observations.append(observation)

    def take(self) -> tuple[dict[tuple[str, LabelKey], float], list[tuple[str, LabelKey, float]]]:
        """What was reported since the last ``take``, and start again from nothing."""
        with self._lock:
            taken = self.increments, self.observations
            self.increments, self.observations = {}, []
        return taken


class Flusher:
    """Calls ``flush`` every ``interval_s`` from a daemon thread, and once more on ``stop``. The python
    backend's stub serialises messages to the server process behind one mutex, so metric updates from
    this thread are safe beside the execute thread's responses."""

    def __init__(
        self, flush: Callable[[], None], interval_s: float = FLUSH_INTERVAL_S, name: str = "metrics"
    ):
        self.flush, self.interval_s = flush, interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reels-{name}-flush", daemon=True)

    def start(self) -> Flusher:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.flush()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, then flush what is left (the counts since its last flush)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.flush()


class TritonMetrics:
    """``FAMILIES`` registered with Triton through ``pb_utils.MetricFamily`` (shared by every model of
    the server: same name, kind and help), one series per label set, labelled with ``model`` and
    ``version`` (Triton's, as on its ``nv_*`` metrics). Series are created on first use, or at zero by
    ``declare``."""

    def __init__(self, pb_utils, model: str, version: str):
        kinds = pb_utils.MetricFamily
        self.base = {"model": model, "version": version}
        self.families = {
            f.name: pb_utils.MetricFamily(
                name=f.name, description=f.description, kind=getattr(kinds, f.kind.upper())
            )
            for f in FAMILIES.values()
        }
        self.series: dict[tuple[str, LabelKey], object] = {}

    def metric(self, name: str, key: LabelKey):
        """The Triton metric of family ``name`` and labels ``key`` (created at zero the first time)."""
        metric = self.series.get((name, key))
        if metric is None:
            family = FAMILIES[name]
            extra = {"buckets": [float(b) for b in family.buckets]} if family.kind == "histogram" else {}
            metric = self.families[name].Metric(labels={**self.base, **dict(key)}, **extra)
            self.series[(name, key)] = metric
        return metric

    def declare(self, series: Sequence[tuple[str, Mapping[str, str]]]) -> None:
        """Create these series at zero, so they are scraped (and rates start) before their first event."""
        for name, labels in series:
            self.metric(name, _label_key(labels))

    def flush(self, counts: Counts) -> None:
        """Send what ``counts`` holds to Triton: one update per changed counter series, one per
        observation."""
        increments, observations = counts.take()
        for (name, key), value in increments.items():
            self.metric(name, key).increment(value)
        for name, key, value in observations:
            self.metric(name, key).observe(value)

    def close(self) -> None:
        """Drop the series, then the families (Triton wants a family to outlive its metrics)."""
        self.series.clear()
        self.families.clear()


def _error(pb_utils, message: str, invalid: bool):
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if invalid else "INTERNAL", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def execute(
    pb_utils,
    requests,
    inputs: Sequence[str],
    step: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    metrics: Counts | None = None,
):
    """Run ``step`` on each request's ``inputs``; bad input -> INVALID_ARG, anything else -> INTERNAL;
    each refusal is counted in ``metrics`` (``reels_requests_refused_total`` by reason)."""
    refused = metrics.count if metrics is not None else (lambda *_: None)
    responses = []
    for request in requests:
        try:
            tensors = {}
            for name in inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    raise BadRequest(f"missing input tensor {name!r}")
                tensors[name] = tensor.as_numpy()
            outputs = step(tensors)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in outputs.items()]
                )
            )
        except BadRequest as exc:
            refused(REFUSED, {"reason": "bad_seal" if isinstance(exc, SealRefused) else "bad_input"})
            responses.append(_error(pb_utils, str(exc), invalid=True))
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the model down
            refused(REFUSED, {"reason": "internal"})
            responses.append(
                _error(
                    pb_utils, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}", invalid=False
                )
            )
    return responses


class SealedStep:
    """A step behind its seals: check the seals over the inputs, run, seal the outputs."""

    def __init__(
        self,
        step: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        sealer: Sealer,
        checks: Sequence[Seal],
        seals: Sequence[Seal],
    ):
        self.step, self.sealer, self.checks, self.seals = step, sealer, tuple(checks), tuple(seals)

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The step's outputs plus its seals; ``SealRefused`` when an input seal does not match."""
        try:
            self.sealer.check(tensors, self.checks)
        except BadRequest as exc:
            raise SealRefused(str(exc)) from exc
        outputs = self.step(tensors)
        for seal in self.seals:
            outputs[seal.name] = self.sealer.seal({**tensors, **outputs}, seal)
        return outputs


class StepModel:
    """Triton's ``TritonPythonModel`` for any step; ``bind`` supplies the backend's ``pb_utils``."""

    pb_utils = None

    def initialize(self, args: dict) -> None:
        """Build the step named by the model (``<step>_v<N>``) for release N; check its inputs."""
        from reels.deploy.triton.release import Release, step_of
        from reels.deploy.triton.steps import STEP_CLASSES

        config = json.loads(args["model_config"])
        step_class = STEP_CLASSES[step_of(args["model_name"])]
        self.inputs = tuple(tensor["name"] for tensor in config["input"])
        if set(self.inputs) != set(step_class.inputs):
            raise ValueError(
                f"{args['model_name']}: config inputs {self.inputs} != step inputs {step_class.inputs}"
            )
        sealer = Sealer.from_environment()  # before the (slow) step: a missing key fails the load at once
        self.step = step_class(Release.for_model(args))
        self.sealed = SealedStep(self.step, sealer, step_class.checks, step_class.seals)
        self.counts = Counts()
        self.step.metrics = self.counts
        self.metrics = None
        self.flusher = None
        self._metric_errors = 0
        try:
            self.metrics = TritonMetrics(
                self.pb_utils, args["model_name"], str(args.get("model_version", ""))
            )
            declared = [(REFUSED, {"reason": r}) for r in ("bad_seal", "bad_input", "internal")]
            declared += getattr(self.step, "metric_series", list)()
            self.metrics.declare(declared)
        except Exception as exc:  # noqa: BLE001 - e.g. metrics off (--allow-metrics=false): serve anyway
            log.warning("%s: no reels_* metrics (%s: %s)", args["model_name"], type(exc).__name__, exc)
            self.metrics = None
        self.flusher = Flusher(self._flush, name=args["model_name"]).start()

    def execute(self, requests):
        """One response per request, in order; what the requests counted goes to Triton's metrics from
        the flusher's thread."""
        return execute(self.pb_utils, requests, self.inputs, self.sealed, self.counts)

    def _flush(self) -> None:
        """Send the counts to Triton (dropped when metrics are off); a failed update is logged, never
        raised."""
        if self.metrics is None:
            self.counts.take()
            return
        try:
            self.metrics.flush(self.counts)
        except Exception as exc:  # noqa: BLE001 - a metric must never fail a request
            self._metric_errors += 1
            if self._metric_errors in (1, 10, 100) or self._metric_errors % 1000 == 0:
                log.warning(
                    "reels_* metrics: %d updates failed (%s: %s)",
                    self._metric_errors,
                    type(exc).__name__,
                    exc,
                )

    def finalize(self) -> None:
        """Close the Redis connections ``initialize`` opened. The metric families stay: a release's step
        models reloaded in place register the same families, and deleting them from the old instance
        aborted tritonserver 2.51 (``std::system_error``) in a rollback under load; the process ends
        with the model, taking its series with it. The flusher stops first, after a last flush (Triton
        still receives the stub's messages while it finalizes)."""
        if self.flusher is not None:
            self.flusher.stop()
        store = getattr(self.step, "store", None)
        if store is not None:
            store.client.close()


def bind(pb_utils) -> type:
    """The ``TritonPythonModel`` class for a ``model.py``, bound to the backend's ``pb_utils`` module."""
    return type("TritonPythonModel", (StepModel,), {"pb_utils": pb_utils})
