"""The model repository's config.pbtxt files are the contract: parse them all and check them against
each other, the python models and the feature spec (no server needed)."""

import ast
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from reels.deploy.triton.release import MODELS, STEPS
from reels.deploy.triton.repository import SOURCE, read_config, write_config
from reels.deploy.triton.steps import QUERY_CATEGORICAL, STEP_CLASSES
from reels.workflows.spec import USER_CONTINUOUS


def _config(name: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((SOURCE / name / "config.pbtxt").read_text(), config)
    return config


CONFIGS = {name: _config(name) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_folder_name_is_the_config_name(name):
    assert CONFIGS[name].name == name


@pytest.mark.parametrize("name", STEPS)
def test_each_step_reads_exactly_the_inputs_its_config_declares(name):
    assert set(STEP_CLASSES[name].inputs) == {i.name for i in CONFIGS[name].input}


@pytest.mark.parametrize("name", STEPS)
def test_model_py_only_binds_the_generic_adapter(name):
    tree = ast.parse((SOURCE / name / "1" / "model.py").read_text())
    imported = {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert imported == {"bind"}
    assert len([n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]) == 0


def test_config_round_trips_through_the_protobuf_writer(tmp_path):
    for name in MODELS:
        write_config(tmp_path / "config.pbtxt", CONFIGS[name])
        assert read_config(tmp_path / "config.pbtxt") == CONFIGS[name]


def test_packed_query_tensors_match_the_feature_spec():
    outputs = {o.name: list(o.dims) for o in CONFIGS["feature_transform"].output}
    assert outputs["query_categorical"] == [len(QUERY_CATEGORICAL)]
    assert outputs["query_continuous"] == [len(USER_CONTINUOUS)]


def test_ensemble_maps_point_at_real_tensors_in_order():
    ensemble = CONFIGS["reels"]
    available = {i.name: i.data_type for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = CONFIGS[step.model_name]
        inputs = {i.name: i.data_type for i in model.input}
        outputs = {o.name: o.data_type for o in model.output}
        assert set(step.input_map) == set(inputs), f"{step.model_name}: every input mapped"
        for model_input, tensor in step.input_map.items():
            assert tensor in available, f"{step.model_name}.{model_input} <- {tensor} is produced earlier"
            assert available[tensor] == inputs[model_input], f"{tensor} dtype"
        for model_output, tensor in step.output_map.items():
            assert model_output in outputs
            available[tensor] = outputs[model_output]
    for output in ensemble.output:
        assert output.name in available and available[output.name] == output.data_type


def test_source_repository_has_no_artifacts():
    files = {p.suffix for p in Path(SOURCE).rglob("*") if p.is_file()}
    assert files <= {".pbtxt", ".py", ""}


@pytest.mark.parametrize("name", STEPS)
def test_each_step_sheds_load_with_a_bounded_queue_and_a_timeout(name):
    policy = CONFIGS[name].dynamic_batching.default_queue_policy
    assert 0 < policy.max_queue_size <= 256
    assert 0 < policy.default_timeout_microseconds <= 10_000_000
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
