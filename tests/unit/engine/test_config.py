"""EngineConfig: config.pbtxt `parameters` -> typed, range-checked engine settings."""

from __future__ import annotations

import dataclasses

import pytest

from chatllm_engine.config import ConfigError, EngineConfig, VllmConfig


def model_config(**parameters: str) -> dict[str, object]:
    """Triton's model config JSON as `args["model_config"]` carries it."""
    return {"name": "chatllm", "backend": "python",
            "parameters": {key: {"string_value": value} for key, value in parameters.items()}}


def test_only_model_path_given_gives_documented_defaults() -> None:
    config = EngineConfig.from_model_config(model_config(model_path="/models/tiny"))

    assert config == EngineConfig(model_path="/models/tiny")
    assert (config.device, config.dtype, config.max_num_seqs, config.max_queue_size) == ("cpu", "auto", 64, 256)
    assert (config.kv_cache_tokens, config.max_model_len, config.stream_interval) == (32768, 0, 1)
    assert (config.num_gpus, config.cpu_threads, config.seed, config.trust_remote_code) == (1, 0, 0, False)
    assert config.served_model_names == ()
    assert config.chat_template == config.gguf_file == config.tokenizer_path == config.max_gpu_memory == ""


def test_every_parameter_is_parsed_to_its_type() -> None:
    config = EngineConfig.from_model_config(model_config(
        model_path=" package:tiny_weights/llama ", gguf_file="q4.gguf", tokenizer_path="/tok",
        dtype="bfloat16", num_gpus="2", max_gpu_memory="20GiB", max_num_seqs=" 8 ", max_queue_size="0",
        kv_cache_tokens="4096", max_model_len="1024", stream_interval="4", chat_template="{{ messages }}",
        cpu_threads="3", trust_remote_code="true", seed="-7", served_model_names="tiny, tiny-chat"))

    assert config == EngineConfig(
        model_path="package:tiny_weights/llama", gguf_file="q4.gguf", tokenizer_path="/tok", dtype="bfloat16",
        device="cpu", num_gpus=2, max_gpu_memory="20GiB", max_num_seqs=8, max_queue_size=0,
        kv_cache_tokens=4096, max_model_len=1024, stream_interval=4, chat_template="{{ messages }}",
        cpu_threads=3, trust_remote_code=True, seed=-7, served_model_names=("tiny", "tiny-chat"))


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("1", True), ("Yes", True), ("ON", True),
    ("false", False), ("0", False), ("no", False), ("off", False),
])
def test_boolean_parameters_accept_the_usual_spellings(text: str, expected: bool) -> None:
    config = EngineConfig.from_parameters({"model_path": "m", "trust_remote_code": text})

    assert config.trust_remote_code is expected


def test_empty_string_values_fall_back_to_defaults() -> None:
    # Triton fills unset string parameters with "", so "" must mean "default", not 0.
    config = EngineConfig.from_parameters({"model_path": "m", "max_num_seqs": "", "kv_cache_tokens": "  ",
                                           "dtype": "", "trust_remote_code": ""})

    assert (config.max_num_seqs, config.kv_cache_tokens, config.dtype, config.trust_remote_code) == (
        64, 32768, "auto", False)


@pytest.mark.parametrize("names, expected", [
    ("tiny", ("tiny",)),
    ("tiny,tiny-chat", ("tiny", "tiny-chat")),
    (" a , b ,, c ,", ("a", "b", "c")),
    ("", ()),
])
def test_served_model_names_are_split_on_commas_and_trimmed(names: str, expected: tuple[str, ...]) -> None:
    config = EngineConfig.from_parameters({"model_path": "m", "served_model_names": names})

    assert config.served_model_names == expected


@pytest.mark.parametrize("kind, device_id, device", [
    ("GPU", 0, "cuda:0"),
    ("GPU", 3, "cuda:3"),
    ("gpu", 1, "cuda:1"),
    ("CPU", 2, "cpu"),
    ("MODEL", 0, "cpu"),
])
def test_instance_kind_and_device_id_choose_the_device(kind: str, device_id: int, device: str) -> None:
    config = EngineConfig.from_model_config(model_config(model_path="m"), instance_kind=kind, device_id=device_id)

    assert config.device == device


@pytest.mark.parametrize("key, value, problem", [
    ("max_num_seqs", "0", "out of range"),
    ("max_queue_size", "-1", "out of range"),
    ("kv_cache_tokens", "15", "out of range"),
    ("max_model_len", "-1", "out of range"),
    ("stream_interval", "0", "out of range"),
    ("num_gpus", "0", "out of range"),
    ("cpu_threads", "-2", "out of range"),
    ("dtype", "float64", "out of range"),
    ("max_num_seqs", "eight", "cannot parse"),
    ("kv_cache_tokens", "4096.5", "cannot parse"),
    ("seed", "0x10", "cannot parse"),
    ("trust_remote_code", "maybe", "cannot parse"),
])
def test_bad_values_raise_naming_the_key_the_value_and_the_problem(key: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        EngineConfig.from_model_config(model_config(model_path="m", **{key: value}))

    message = str(excinfo.value)
    assert repr(key) in message
    assert repr(value) in message
    assert problem in message


@pytest.mark.parametrize("key, value", [
    ("kv_cache_tokens", "16"),
    ("max_queue_size", "0"),
    ("max_model_len", "0"),
    ("max_num_seqs", "1"),
    ("stream_interval", "1"),
])
def test_lowest_allowed_values_are_accepted(key: str, value: str) -> None:
    config = EngineConfig.from_parameters({"model_path": "m", key: value})

    assert getattr(config, key) == int(value)


def test_config_errors_are_value_errors_so_generic_callers_catch_them() -> None:
    assert issubclass(ConfigError, ValueError)


def test_unknown_parameters_are_rejected_by_name() -> None:
    with pytest.raises(ConfigError) as excinfo:
        EngineConfig.from_model_config(model_config(model_path="m", max_num_seq="8", stream_intervall="2"))

    assert "max_num_seq" in str(excinfo.value)
    assert "stream_intervall" in str(excinfo.value)


@pytest.mark.parametrize("value", ["", "   "])
def test_model_path_is_required(value: str) -> None:
    with pytest.raises(ConfigError, match="model_path"):
        EngineConfig.from_parameters({"model_path": value})
    with pytest.raises(ConfigError, match="model_path"):
        EngineConfig.from_model_config(model_config())


def test_parameters_given_as_plain_values_are_read_too() -> None:
    # Some callers (tests, pytriton) hand over {"key": value} instead of {"key": {"string_value": ...}}.
    config = EngineConfig.from_model_config({"parameters": {"model_path": "m", "max_num_seqs": 4}})

    assert config.max_num_seqs == 4


def test_config_is_frozen() -> None:
    config = EngineConfig.from_parameters({"model_path": "m"})

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_num_seqs = 1  # type: ignore[misc]


def test_auto_dtype_is_bf16_only_on_cpus_that_compute_it_natively() -> None:
    from chatllm_engine.loader import cpu_has_native_bf16

    assert cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_native_bf16("flags\t: fpu amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16("flags\t: fpu sse avx2 avx512f\n")
    assert not cpu_has_native_bf16("")


def test_engine_defaults_to_ours_and_vllm_flags_parse_when_it_is_vllm() -> None:
    assert EngineConfig.from_parameters({"model_path": "m"}).engine == "ours"
    config = EngineConfig.from_parameters({
        "model_path": "m", "engine": "vllm", "block_size": "32", "swap_space": "4", "gpu_memory_utilization": "0.95",
        "max_num_seqs": "512", "trust_remote_code": "true", "enforce_eager": "true", "cpu_kvcache_space": "4",
        "cpu_omp_threads_bind": "0-1", "max_num_batched_tokens": "2048", "num_gpus": "2"})
    assert config.engine == "vllm"
    assert (config.max_num_seqs, config.num_gpus, config.trust_remote_code) == (512, 2, True)
    assert config.vllm == VllmConfig(block_size=32, swap_space=4.0, gpu_memory_utilization=0.95,
                                     max_num_batched_tokens=2048, enforce_eager=True, cpu_kvcache_space=4,
                                     cpu_omp_threads_bind="0-1")


@pytest.mark.parametrize(("parameters", "message"), [
    ({"engine": "tgi"}, "'engine'"),
    ({"block_size": "16"}, "only apply to engine 'vllm'"),
    ({"engine": "vllm", "block_size": "17"}, "'block_size'"),
    ({"engine": "vllm", "gpu_memory_utilization": "1.5"}, "'gpu_memory_utilization'"),
    ({"fallback_concurrency": "0"}, "'fallback_concurrency'"),
])
def test_bad_engine_parameters_name_the_key(parameters: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EngineConfig.from_parameters({"model_path": "m", **parameters})
