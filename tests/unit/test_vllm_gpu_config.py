"""The GPU example of vLLM's engine (docker/vllm-gpu/): Triton's own schema accepts it, and
our config parsing turns it into vLLM arguments with tensor parallelism over `num_gpus`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from chatllm_engine.config import EngineConfig
from chatllm_engine.vllm_engine import engine_kwargs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "docker" / "vllm-gpu" / "smollm2-135m-instruct-vllm" / "config.pbtxt"
CPU_CONFIG = ROOT / "model_repository_vllm" / "smollm2-135m-instruct-vllm" / "config.pbtxt"
VLLM_PYTHON = Path(os.environ.get("TRITONCHAT_VLLM_VENV", ROOT / ".venv-vllm")) / "bin" / "python3"
DROPPED_BY_VLLM = {"swap_space"}  # vLLM 0.32's engine has no CPU swap: logged and ignored (docs/vllm.md)


def test_the_gpu_example_is_a_valid_tensor_parallel_vllm_model() -> None:
    proto = text_format.Parse(CONFIG.read_text(), model_config_pb2.ModelConfig())  # Triton's own schema
    assert proto.backend == "chatllm" and proto.model_transaction_policy.decoupled
    assert [(g.kind, list(g.gpus)) for g in proto.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, [0])]
    model_config = json_format.MessageToDict(proto, preserving_proto_field_name=True)

    config = EngineConfig.from_model_config(model_config, "GPU", 0)

    assert (config.engine, config.device, config.num_gpus) == ("vllm", "cuda:0", 2)
    kwargs = engine_kwargs(config, "/weights", "/weights")
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["dtype"] == "auto"
    assert (kwargs["block_size"], kwargs["swap_space"], kwargs["gpu_memory_utilization"]) == (16, 4.0, 0.95)
    assert kwargs["max_num_seqs"] == 512 and kwargs["trust_remote_code"] is True


def test_the_cpu_vllm_example_parses_too() -> None:
    proto = text_format.Parse(CPU_CONFIG.read_text(), model_config_pb2.ModelConfig())
    config = EngineConfig.from_model_config(json_format.MessageToDict(proto, preserving_proto_field_name=True))
    assert (config.engine, config.vllm.cpu_omp_threads_bind, config.vllm.cpu_kvcache_space) == ("vllm", "0-1", 2)
    assert engine_kwargs(config, "/w", "/w")["tensor_parallel_size"] == 1


def _vllm_kwargs(path: Path, kind: str) -> dict[str, object]:
    proto = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config = EngineConfig.from_model_config(json_format.MessageToDict(proto, preserving_proto_field_name=True), kind)
    return engine_kwargs(config, "/weights", "/weights")


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no vLLM virtualenv (make vllm-install)")
def test_every_argument_of_both_examples_is_one_vllm_takes() -> None:
    """The installed vLLM's own AsyncEngineArgs accepts what the examples become (an unknown
    argument would only be logged and dropped at start-up)."""
    probe = ("import dataclasses, json, sys; from vllm.engine.arg_utils import AsyncEngineArgs; "
             "print(json.dumps(sorted(f.name for f in dataclasses.fields(AsyncEngineArgs))))")
    out = subprocess.run([str(VLLM_PYTHON), "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    fields = set(json.loads(out.stdout.strip().splitlines()[-1]))
    for path, kind in ((CONFIG, "GPU"), (CPU_CONFIG, "CPU")):
        kwargs = _vllm_kwargs(path, kind)
        assert set(kwargs) - fields <= DROPPED_BY_VLLM, path
        assert {"tensor_parallel_size", "max_num_seqs", "gpu_memory_utilization", "dtype"} <= set(kwargs) & fields
