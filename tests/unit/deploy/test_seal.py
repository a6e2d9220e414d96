"""Seals bind a step's inputs to what an earlier step of the same server produced."""

import numpy as np
import pytest

from reels.deploy.triton.adapter import SealedStep
from reels.deploy.triton.seal import KEY_ENV, Seal, Sealer
from reels.models.serving.request import BadRequest
from reels.workflows.errors import ConfigError

FIRST = Seal("first_seal", ("user_id", "ids", "device"))
SECOND = Seal("second_seal", ("scores",), chain="first_seal")


def _tensors() -> dict[str, np.ndarray]:
    return {
        "user_id": np.array([7], np.int64),
        "ids": np.array([3, 1, 2], np.int64),
        "device": np.array([b"ios"], object),
    }


def test_a_sealed_tensor_set_checks_and_any_change_is_refused():
    sealer = Sealer("k1")
    tensors = _tensors()
    tensors["first_seal"] = sealer.seal(tensors, FIRST)
    sealer.check(tensors, [FIRST])
    changes = {
        "user_id": np.array([8], np.int64),
        "ids": np.array([3, 1, 2, 0], np.int64),  # one more id
        "device": np.array([b"web"], object),
    }
    for name, value in changes.items():
        with pytest.raises(BadRequest, match="first_seal does not match"):
            sealer.check(tensors | {name: value}, [FIRST])
    with pytest.raises(BadRequest):
        sealer.check(tensors | {"ids": tensors["ids"].astype(np.int32)}, [FIRST])  # same values, other dtype
    with pytest.raises(BadRequest):
        Sealer("another server's key").check(tensors, [FIRST])


def test_a_chained_seal_binds_outputs_to_their_request():
    sealer = Sealer("k1")
    request = _tensors()
    request["first_seal"] = sealer.seal(request, FIRST)
    other = _tensors() | {"user_id": np.array([9], np.int64)}
    other["first_seal"] = sealer.seal(other, FIRST)
    outputs = {"scores": np.array([0.5, 0.25], np.float32)}
    outputs["second_seal"] = sealer.seal(request | outputs, SECOND)
    sealer.check(request | outputs, [FIRST, SECOND])
    with pytest.raises(BadRequest, match="second_seal"):  # request B's tensors with request A's outputs
        sealer.check(other | outputs, [FIRST, SECOND])


def test_sealed_step_checks_runs_and_seals():
    sealer = Sealer("k1")
    calls = []

    def step(tensors):
        calls.append(tensors)
        return {"scores": np.array([1.0], np.float32)}

    first = SealedStep(lambda t: {"ids": np.array([1], np.int64)}, sealer, [], [FIRST])
    produced = first({"user_id": np.array([1], np.int64), "device": np.array([b""], object)})
    assert set(produced) == {"ids", "first_seal"}
    second = SealedStep(step, sealer, [FIRST], [SECOND])
    inputs = {"user_id": np.array([1], np.int64), "device": np.array([b""], object), **produced}
    assert set(second(inputs)) == {"scores", "second_seal"}
    with pytest.raises(BadRequest):
        second(inputs | {"first_seal": np.array([b"made up"], object)})
    assert len(calls) == 1  # a refused request never reaches the step


def test_the_key_must_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=KEY_ENV):
        Sealer.from_environment()
    monkeypatch.setenv(KEY_ENV, "abc")
    assert isinstance(Sealer.from_environment(), Sealer)
