"""The GPU example of vLLM's engine (docker/vllm-gpu/): Triton's own schema accepts it, and
our config parsing turns it into vLLM arguments with tensor parallelism over `num_gpus`."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from chatllm_engine.config import EngineConfig
from chatllm_engine.vllm_engine import engine_kwargs

CONFIG = Path(__file__).resolve().parents[2] / "docker" / "vllm-gpu" / "smollm2-135m-instruct-vllm" / "config.pbtxt"


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
    path = Path(__file__).resolve().parents[2] / "model_repository_vllm" / "smollm2-135m-instruct-vllm" / "config.pbtxt"
    proto = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config = EngineConfig.from_model_config(json_format.MessageToDict(proto, preserving_proto_field_name=True))
    assert (config.engine, config.vllm.cpu_omp_threads_bind, config.vllm.cpu_kvcache_space) == ("vllm", "0-1", 2)
    assert engine_kwargs(config, "/w", "/w")["tensor_parallel_size"] == 1
