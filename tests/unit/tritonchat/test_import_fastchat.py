"""`tritonchat import-fastchat`: FastChat worker command lines -> chatllm model folders.

The folders are checked statically: config.pbtxt parses as Triton's ModelConfig protobuf and
its parameters are accepted by the backend's EngineConfig with the instance_group's device.
(tests/integration/test_import_fastchat.py loads a CPU one in tritonserver.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from chatllm_engine.config import EngineConfig
from tritonchat.cli import main
from tritonchat.import_fastchat import ImportFastChatError, import_command

# The command lines of a FastChat deployment guide (the examples).
VICUNA = (
    "CUDA_VISIBLE_DEVICES=0 python -m fastchat.serve.model_worker --model-path lmsys/vicuna-7b-v1.5 "
    "--controller http://localhost:21001 --worker http://localhost:31000 --host 0.0.0.0 --port 31000")
CHATGLM3 = (
    "python -m fastchat.serve.model_worker --host 0.0.0.0 --port 31001 --worker-address "
    "http://172.16.176.79:31001 --controller-address http://172.16.176.79:20001 --model-path "
    "/data/LLM/THUDM/chatglm3-6b-32k --device cuda --gpus 0,1,2,3 --num-gpus 4 --max-gpu-memory 24GiB "
    "--limit-worker-concurrency 5 --stream-interval 2")
CHATGLM2_VLLM = (
    "CUDA_VISIBLE_DEVICES=1 python -m fastchat.serve.vllm_worker --model-path "
    "/mnt/data/LLM/THUDM/chatglm2-6b-32k --port 31002 --worker-address http://172.16.176.60:31002 "
    "--controller-address http://172.16.176.60:20001 --host 172.16.176.60 --num-gpus 1 --block-size 16 "
    "--swap-space 4 --gpu-memory-utilization 0.95 --limit-worker-concurrency 300 --max-num-seqs 512 "
    "--max-paddings 256 --disable-log-requests --trust-remote-code")


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def engine_config(config: model_config_pb2.ModelConfig) -> EngineConfig:
    as_json: dict[str, Any] = json_format.MessageToDict(config, preserving_proto_field_name=True)
    group = config.instance_group[0]
    kind = "GPU" if group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU else "CPU"
    return EngineConfig.from_model_config(as_json, kind, group.gpus[0] if group.gpus else 0)


def test_vicuna_model_worker() -> None:
    result = import_command([VICUNA])
    config = parse(result.config_pbtxt())

    assert config.name == "vicuna-7b-v1.5" and config.backend == "chatllm"
    assert config.model_transaction_policy.decoupled
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and list(group.gpus) == [0]
    engine = engine_config(config)
    assert (engine.model_path, engine.device) == ("lmsys/vicuna-7b-v1.5", "cuda:0")
    not_mapped = dict(result.not_mapped)
    assert set(not_mapped) == {"--controller", "--worker", "--host", "--port"}


def test_chatglm3_over_four_gpus() -> None:
    result = import_command(CHATGLM3.split())  # as the shell hands it over, word by word
    config = parse(result.config_pbtxt())

    assert list(config.instance_group[0].gpus) == [0]  # one instance spanning GPUs 0-3
    engine = engine_config(config)
    assert (engine.num_gpus, engine.max_gpu_memory, engine.max_num_seqs, engine.stream_interval) == (
        4, "24GiB", 5, 2)
    assert engine.device == "cuda:0"


def test_chatglm2_vllm_worker_lists_what_it_cannot_map() -> None:
    result = import_command([CHATGLM2_VLLM])
    config = parse(result.config_pbtxt())

    assert list(config.instance_group[0].gpus) == [1]
    engine = engine_config(config)
    assert engine.device == "cuda:1" and engine.trust_remote_code
    assert engine.max_num_seqs == 300  # the worker admits 300 at a time, whatever vLLM's batch
    reasons = dict(result.not_mapped)
    for flag in ("--block-size", "--swap-space", "--gpu-memory-utilization", "--max-paddings",
                 "--disable-log-requests"):
        assert reasons[flag], flag
    assert "# Not mapped:" in result.config_pbtxt()


def test_vllm_worker_token_budget_becomes_the_engines() -> None:
    result = import_command([CHATGLM2_VLLM + " --max-num-batched-tokens 512 --max-model-len 4096"])
    engine = engine_config(parse(result.config_pbtxt()))
    assert (engine.max_num_batched_tokens, engine.max_model_len) == (512, 4096)


def test_cpu_worker_with_names_template_and_dtype() -> None:
    result = import_command([
        "python3", "-m", "fastchat.serve.model_worker", "--model-path", "/m/tiny/", "--device", "cpu",
        "--model-names", "tiny,tiny-chat", "--conv-template", "chatml", "--dtype", "bfloat16",
        "--seed", "7", "--load-8bit", "--revision", "main"])
    config = parse(result.config_pbtxt())

    assert config.name == "tiny"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    engine = engine_config(config)
    assert (engine.served_model_names, engine.conv_template, engine.dtype, engine.seed) == (
        ("tiny-chat",), "chatml", "bfloat16", 7)
    assert set(dict(result.not_mapped)) == {"--load-8bit", "--revision"}


@pytest.mark.parametrize("command, message", [
    ("python -m fastchat.serve.controller", "not a FastChat worker"),
    ("python -m fastchat.serve.model_worker --device cuda", "--model-path is required"),
    ("python -m fastchat.serve.model_worker --model-path m --gpus 0,1 --num-gpus 4", "needs 4 GPUs"),
])
def test_bad_command_lines(command: str, message: str) -> None:
    with pytest.raises(ImportFastChatError, match=message):
        import_command([command])


def test_cli_writes_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["import-fastchat", "--model-repository", str(tmp_path), "--", *VICUNA.split()]
    assert main(argv) == 0
    assert (tmp_path / "vicuna-7b-v1.5" / "1").is_dir()
    parse((tmp_path / "vicuna-7b-v1.5" / "config.pbtxt").read_text())
    assert "not mapped: --port" in capsys.readouterr().out
    assert main(argv) == 1  # no silent overwrite
