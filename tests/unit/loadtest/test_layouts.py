"""Layout specs, and model repository variants written with Triton's own config schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from loadtest.layouts import Layout, LayoutError, default_layouts, model_parameters, read_config, write_model_variant

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODEL = ROOT / "model_repository" / "smollm2-135m-instruct"
ECHO_MODEL = ROOT / "tests" / "model_repository" / "echo"
CPU, GPU = model_config_pb2.ModelInstanceGroup.KIND_CPU, model_config_pb2.ModelInstanceGroup.KIND_GPU


@pytest.mark.parametrize("spec, layout, instances", [
    ("cpu:1x2", Layout("cpu", 1, cpu_threads=2), 1),
    ("cpu:2x1", Layout("cpu", 2, cpu_threads=1), 2),
    ("CPU:3", Layout("cpu", 3), 3),
    ("gpu:1@0", Layout("gpu", 1, (0,)), 1),
    ("gpu:2@0", Layout("gpu", 2, (0,)), 2),
    ("gpu:1@0,1", Layout("gpu", 1, (0, 1)), 2),
    ("gpu:2@2,3", Layout("gpu", 2, (2, 3)), 4),
    ("gpu:1@0+1", Layout("gpu", 1, (0,), num_gpus=2), 1),
])
def test_specs_parse_and_print_back(spec: str, layout: Layout, instances: int) -> None:
    parsed = Layout.parse(spec)

    assert parsed == layout
    assert parsed.instances == instances
    assert Layout.parse(parsed.name) == parsed
    assert "/" not in parsed.slug and ":" not in parsed.slug


@pytest.mark.parametrize("spec", ["cpu", "cpu:0", "cpu:2x", "gpu:1", "gpu:1@0,0", "gpu:1@0+2", "gpu:1@0+1,2",
                                  "tpu:1"])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(LayoutError):
        Layout.parse(spec)


def test_descriptions_are_plain_words() -> None:
    assert Layout.parse("cpu:2x1").describe() == "2 CPU instances x 1 thread"
    assert Layout.parse("cpu:1x2").describe() == "1 CPU instance x 2 threads"
    assert Layout.parse("gpu:2@0").describe() == "2 instances on GPU 0"
    assert Layout.parse("gpu:1@0,1").describe() == "1 instance on each of GPUs [0, 1]"
    assert Layout.parse("gpu:1@0+1").describe() == "1 instance each over GPUs 0+1"


def test_cpu_layout_sets_the_instance_group_and_threads_and_keeps_the_rest() -> None:
    original = read_config(DEFAULT_MODEL / "config.pbtxt")

    config = Layout.parse("cpu:2x1").apply(original)

    assert [(g.count, g.kind, list(g.gpus)) for g in config.instance_group] == [(2, CPU, [])]
    assert config.parameters["cpu_threads"].string_value == "1"
    assert config.parameters["model_path"] == original.parameters["model_path"]
    assert config.input == original.input and config.output == original.output
    assert config.model_transaction_policy.decoupled
    assert original.instance_group[0].count == 1  # the input is not changed


@pytest.mark.parametrize("spec, groups, num_gpus", [
    ("gpu:2@0", [(2, GPU, [0])], None),
    ("gpu:1@0,1", [(1, GPU, [0, 1])], None),
    ("gpu:1@0+1", [(1, GPU, [0])], "2"),
])
def test_gpu_layouts(spec: str, groups: list[tuple[int, int, list[int]]], num_gpus: str | None) -> None:
    config = Layout.parse(spec).apply(read_config(DEFAULT_MODEL / "config.pbtxt"))

    assert [(g.count, g.kind, list(g.gpus)) for g in config.instance_group] == groups
    if num_gpus is None:
        assert "num_gpus" not in config.parameters
    else:
        assert config.parameters["num_gpus"].string_value == num_gpus


def test_a_variant_is_a_loadable_copy(tmp_path: Path) -> None:
    target = write_model_variant(ECHO_MODEL, tmp_path, Layout.parse("cpu:2x1"))

    config = read_config(target / "config.pbtxt")

    assert target == tmp_path / "echo"
    assert (target / "1" / "model.py").read_text() == (ECHO_MODEL / "1" / "model.py").read_text()
    assert not list(target.rglob("__pycache__"))
    assert config.instance_group[0].count == 2
    assert config.backend == "python" and config.max_batch_size == 8
    assert (target / "config.pbtxt").read_text().startswith("# echo with layout cpu:2x1")


def test_a_variant_can_set_parameters_of_the_model(tmp_path: Path) -> None:
    target = write_model_variant(DEFAULT_MODEL, tmp_path, parameters={"cpu_threads": "3", "dtype": "bfloat16"})

    params = model_parameters(target / "config.pbtxt")

    assert params["cpu_threads"] == "3" and params["dtype"] == "bfloat16"
    untouched = model_parameters(DEFAULT_MODEL / "config.pbtxt")
    assert {k: v for k, v in params.items() if k not in ("cpu_threads", "dtype")} == {
        k: v for k, v in untouched.items() if k not in ("cpu_threads", "dtype")}
    assert read_config(target / "config.pbtxt").instance_group == read_config(
        DEFAULT_MODEL / "config.pbtxt").instance_group


def test_default_layouts_fit_the_machine() -> None:
    assert [lay.name for lay in default_layouts(2, 0)] == ["cpu:1x2", "cpu:2x1"]
    assert [lay.name for lay in default_layouts(8, 0)] == ["cpu:1x8", "cpu:2x4", "cpu:4x2"]
    assert [lay.name for lay in default_layouts(1, 0)] == ["cpu:1x1"]
    assert [lay.name for lay in default_layouts(2, 1)] == ["gpu:1@0", "gpu:2@0"]
    assert [lay.name for lay in default_layouts(2, 2)] == ["gpu:1@0", "gpu:2@0", "gpu:1@0,1", "gpu:1@0+1"]
