"""`tritonchat import-fastchat -- <model_worker or vllm_worker command line>`.

Turns the command line of a FastChat 0.2.36 worker (`fastchat.serve.model_worker` or
`fastchat.serve.vllm_worker`, with any `CUDA_VISIBLE_DEVICES=...` in front) into a Triton
model folder for the chatllm backend: `config.pbtxt` with the `instance_group` from the GPUs
the worker would use and the worker's flags as `parameters`. Every flag that has no
counterpart is reported with the reason (and written as a comment into config.pbtxt).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

WORKERS = ("fastchat.serve.model_worker", "fastchat.serve.vllm_worker")

# Flags that take no value (everything else takes one).
_SWITCHES = {
    "--load-8bit", "--cpu-offloading", "--gptq-act-order", "--enable-exllama", "--exllama-cache-8bit",
    "--enable-xft", "--embed-in-truncate", "--no-register", "--ssl", "--trust_remote_code",
    "--trust-remote-code", "--worker-use-ray", "--engine-use-ray", "--disable-log-stats",
    "--disable-log-requests", "--enable-prefix-caching", "--enforce-eager",
}

_NOT_NEEDED = "not needed: the gateway is the controller and Triton's own flags set its addresses"
_NOT_NEEDED_FLAGS = {
    "--host": _NOT_NEEDED, "--port": _NOT_NEEDED, "--worker-address": _NOT_NEEDED,
    "--controller-address": _NOT_NEEDED, "--controller": _NOT_NEEDED, "--worker": _NOT_NEEDED,
    "--no-register": _NOT_NEEDED, "--ssl": "TLS is terminated in front of the gateway",
    "--debug": "use tritonserver --log-verbose=1", "--disable-log-requests": "Triton's log settings apply",
    "--disable-log-stats": "Triton's log settings apply", "--max-log-len": "Triton's log settings apply",
}
_QUANTISED = "quantised loading is not implemented by the chatllm backend (it loads fp32/fp16/bf16 or GGUF)"
_UNSUPPORTED = {
    "--revision": "download that revision to a folder and pass the folder as --model-path",
    "--load-8bit": _QUANTISED, "--cpu-offloading": "the chatllm backend keeps the whole model on its device",
    "--gptq-ckpt": _QUANTISED, "--gptq-wbits": _QUANTISED, "--gptq-groupsize": _QUANTISED,
    "--gptq-act-order": _QUANTISED, "--awq-ckpt": _QUANTISED, "--awq-wbits": _QUANTISED,
    "--awq-groupsize": _QUANTISED, "--enable-exllama": _QUANTISED, "--exllama-max-seq-len": _QUANTISED,
    "--exllama-gpu-split": _QUANTISED, "--exllama-cache-8bit": _QUANTISED, "--quantization": _QUANTISED,
    "--enable-xft": "xFasterTransformer is not used", "--xft-max-seq-len": "xFasterTransformer is not used",
    "--xft-dtype": "xFasterTransformer is not used",
    "--embed-in-truncate": "embedding models are served by their own Triton model (see all-minilm-l6-v2)",
    "--gpu-memory-utilization": "the KV cache is sized in tokens (parameter kv_cache_tokens), not as a "
                                "share of GPU memory",
    "--block-size": "the chatllm engine keeps a contiguous KV cache per sequence, not paged blocks",
    "--swap-space": "KV blocks are never swapped to CPU memory",
    "--max-paddings": "batches are padded per step; there is no padding budget",
    "--pipeline-parallel-size": "one instance spans its GPUs layer-wise (num_gpus); no pipeline stages",
    "--worker-use-ray": "Triton runs the instances; no Ray", "--engine-use-ray": "Triton runs the instances; no Ray",
    "--download-dir": "weights are read from --model-path (a folder or a package) only",
    "--load-format": "weights are loaded by transformers (safetensors, bin or GGUF)",
    "--enforce-eager": "the chatllm engine always runs eagerly",
}
_DTYPES = {"float32": "float32", "float": "float32", "float16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "auto": "auto"}


@dataclass
class ImportResult:
    """The model folder to write and what happened to each flag."""

    name: str
    worker: str
    parameters: dict[str, str]
    kind: str
    """"KIND_GPU" or "KIND_CPU"."""
    gpus: tuple[int, ...]
    mapped: list[str] = field(default_factory=list)
    """"--flag value -> parameter" lines."""
    not_mapped: list[tuple[str, str]] = field(default_factory=list)
    """(flag, reason) for every flag with no counterpart."""

    def config_pbtxt(self) -> str:
        return render_config(self)


class ImportFastChatError(ValueError):
    """The command line is not a FastChat worker's, or a flag value is malformed."""


def parse_command(argv: Sequence[str]) -> tuple[dict[str, str], str, list[tuple[str, str | None]]]:
    """(environment assignments, worker module, flags as (name, value)) of a command line.

    A single argument is split like a shell would (for a pasted command line)."""
    tokens = shlex.split(argv[0].replace("\\\n", " ")) if len(argv) == 1 else list(argv)
    env: dict[str, str] = {}
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    if tokens and tokens[0] == "env":
        return parse_command(tokens[1:])
    module = ""
    while tokens:
        token = tokens.pop(0)
        if token == "-m" and tokens:
            module = tokens.pop(0)
            break
        if token.replace("/", ".").removesuffix(".py").endswith(WORKERS):
            module = next(w for w in WORKERS if token.replace("/", ".").removesuffix(".py").endswith(w))
            break
    if module not in WORKERS:
        raise ImportFastChatError(f"not a FastChat worker command line (expected -m one of {', '.join(WORKERS)})")
    flags: list[tuple[str, str | None]] = []
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--"):
            raise ImportFastChatError(f"unexpected argument {token!r}")
        name, eq, value = token.partition("=")
        if eq:
            flags.append((name, value))
        elif name in _SWITCHES or not tokens or tokens[0].startswith("--"):
            flags.append((name, None))
        else:
            flags.append((name, tokens.pop(0)))
    return env, module, flags


def import_command(argv: Sequence[str], name: str | None = None) -> ImportResult:
    """Map a FastChat worker command line onto a chatllm model (nothing is written)."""
    env, module, flags = parse_command(argv)
    vllm = module.endswith("vllm_worker")
    values: dict[str, str | None] = {}
    result = ImportResult(name="", worker=module, parameters={}, kind="KIND_GPU", gpus=())
    params = result.parameters
    if vllm:  # FastChat's vllm_worker trusts remote code unless told otherwise (inverted flag)
        params["trust_remote_code"] = "true"

    def put(flag: str, value: str | None, key: str, text: str | None = None) -> None:
        params[key] = text if text is not None else (value or "")
        result.mapped.append(f"{flag} {value or ''}".strip() + f" -> {key}={params[key]}")

    def number(flag: str, value: str | None, parse: Callable[[str], object] = int) -> str:
        try:
            return str(parse(value or ""))
        except ValueError as exc:
            raise ImportFastChatError(f"{flag}: not a number: {value!r}") from exc

    for flag, value in flags:
        canonical = flag.replace("_", "-") if flag != "--trust_remote_code" else flag
        values[canonical] = value
        if canonical == "--model-path":
            put(flag, value, "model_path")
        elif canonical == "--tokenizer":
            put(flag, value, "tokenizer_path")
        elif canonical == "--model-names":
            names = [n.strip() for n in (value or "").split(",") if n.strip()]
            result.mapped.append(f"{flag} {value} -> model name {names[0] if names else ''}"
                                 + (f", served_model_names={','.join(names[1:])}" if names[1:] else ""))
            if names[1:]:
                params["served_model_names"] = ",".join(names[1:])
        elif canonical == "--dtype":
            if (value or "") not in _DTYPES:
                result.not_mapped.append((flag, f"dtype {value!r} is not one of {', '.join(_DTYPES)}"))
            else:
                put(flag, value, "dtype", _DTYPES[value or ""])
        elif canonical in ("--num-gpus", "--tensor-parallel-size"):
            put(flag, value, "num_gpus", number(flag, value))
        elif canonical == "--max-gpu-memory":
            put(flag, value, "max_gpu_memory")
        elif canonical == "--limit-worker-concurrency":
            limit = number(flag, value)
            if vllm:  # the worker's own admission limit; vLLM's batch is --max-num-seqs
                current = int(params.get("max_num_seqs", limit))
                put(flag, value, "max_num_seqs", str(min(int(limit), current)))
            else:
                put(flag, value, "max_num_seqs", limit)
        elif canonical == "--max-num-seqs":
            seqs = int(number(flag, value))
            if "--limit-worker-concurrency" in values:
                seqs = min(seqs, int(values["--limit-worker-concurrency"] or seqs))
            put(flag, value, "max_num_seqs", str(seqs))
        elif canonical == "--stream-interval":
            put(flag, value, "stream_interval", number(flag, value))
        elif canonical == "--conv-template":
            put(flag, value, "conv_template")
        elif canonical == "--seed":
            put(flag, value, "seed", number(flag, value))
        elif canonical == "--max-model-len":
            put(flag, value, "max_model_len", number(flag, value))
        elif canonical == "--max-num-batched-tokens":
            put(flag, value, "max_num_batched_tokens", number(flag, value))
        elif canonical == "--enable-prefix-caching":
            put(flag, value, "enable_prefix_caching", "true")
        elif flag == "--trust-remote-code":
            put(flag, value, "trust_remote_code", "true")
        elif flag == "--trust_remote_code":  # FastChat's vllm_worker: store_false
            put(flag, value, "trust_remote_code", "false")
        elif canonical in ("--device", "--gpus"):
            pass  # placement, below
        elif canonical in _NOT_NEEDED_FLAGS:
            result.not_mapped.append((flag, _NOT_NEEDED_FLAGS[canonical]))
        elif canonical in _UNSUPPORTED:
            result.not_mapped.append((flag, _UNSUPPORTED[canonical]))
        else:
            result.not_mapped.append((flag, f"not a flag of {module} 0.2.36 that tritonchat knows"))

    if "model_path" not in params:
        raise ImportFastChatError("--model-path is required")
    _place(result, env, values, vllm)
    model_names = [n.strip() for n in (values.get("--model-names") or "").split(",") if n.strip()]
    result.name = name or (model_names[0] if model_names else params["model_path"].rstrip("/").split("/")[-1])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", result.name):
        raise ImportFastChatError(f"model name {result.name!r} is not a valid folder name; pass --name")
    return result


def _place(result: ImportResult, env: dict[str, str], values: dict[str, str | None], vllm: bool) -> None:
    """instance_group: the device FastChat would use (--device, default cuda; vLLM: GPUs) and
    the first visible GPU (--gpus, else CUDA_VISIBLE_DEVICES, else 0); one instance spans
    num_gpus GPUs from there."""
    device = (values.get("--device") or "cuda").lower()
    if vllm or device == "cuda":
        result.kind = "KIND_GPU"
    elif device == "cpu":
        result.kind = "KIND_CPU"
    else:
        result.kind = "KIND_CPU"
        result.not_mapped.append(("--device", f"Triton places instances on CPUs or NVIDIA GPUs; "
                                              f"{device!r} became KIND_CPU"))
    if "--device" in values:
        result.mapped.append(f"--device {device} -> instance_group kind {result.kind}")
    if result.kind != "KIND_GPU":
        if "--gpus" in values:
            result.not_mapped.append(("--gpus", "the model runs on the CPU"))
        return
    visible = values.get("--gpus") or env.get("CUDA_VISIBLE_DEVICES") or "0"
    source = ("--gpus" if values.get("--gpus") else
              "CUDA_VISIBLE_DEVICES" if "CUDA_VISIBLE_DEVICES" in env else "default")
    try:
        devices = [int(d) for d in visible.split(",") if d.strip()]
    except ValueError as exc:
        raise ImportFastChatError(f"{source}: GPU ids must be integers, got {visible!r}") from exc
    num_gpus = int(result.parameters.get("num_gpus", "1"))
    if num_gpus > len(devices):
        raise ImportFastChatError(f"--num-gpus {num_gpus} needs {num_gpus} GPUs, {source} gives {len(devices)}")
    # num_gpus > 1: one instance from the first GPU on; the others must follow it.
    if num_gpus > 1 and devices[:num_gpus] != list(range(devices[0], devices[0] + num_gpus)):
        raise ImportFastChatError(f"{source} {visible}: one instance spans consecutive GPUs from its first")
    result.gpus = (devices[0],)
    result.mapped.append(f"{source} {visible} -> instance_group KIND_GPU gpus [{devices[0]}]"
                         + (f" spanning {num_gpus} GPUs" if num_gpus > 1 else ""))


def render_config(result: ImportResult) -> str:
    lines = [f"# Imported by `tritonchat import-fastchat` from a {result.worker} command line."]
    for line in result.mapped:
        lines.append(f"#   {line}")
    if result.not_mapped:
        lines.append("# Not mapped:")
        lines += [f"#   {flag}: {reason}" for flag, reason in result.not_mapped]
    gpus = f", gpus: [ {', '.join(str(g) for g in result.gpus)} ]" if result.kind == "KIND_GPU" else ""
    max_batch = max(int(result.parameters.get("max_num_seqs", "64")), 1)
    lines += [
        f'name: "{result.name}"',
        'backend: "chatllm"',
        f"max_batch_size: {max_batch}",
        "model_transaction_policy { decoupled: true }",
        "dynamic_batching {",
        "  max_queue_delay_microseconds: 1000",
        "  default_queue_policy { max_queue_size: 1024 }",
        "}",
        f"instance_group [ {{ count: 1, kind: {result.kind}{gpus} }} ]",
        "",
        "input [",
    ]
    inputs = [("text_input", "STRING"), ("messages", "STRING"), ("stream", "BOOL"),
              ("sampling_parameters", "STRING"), ("exclude_input_in_output", "BOOL"),
              ("return_finish_reason", "BOOL"), ("return_num_input_tokens", "BOOL"),
              ("return_num_output_tokens", "BOOL"), ("return_logprobs", "BOOL"), ("count_tokens_only", "BOOL")]
    lines += [",\n".join(f'  {{ name: "{n}", data_type: TYPE_{t}, dims: [ 1 ], optional: true }}'
                         for n, t in inputs), "]", "output ["]
    outputs = [("text_output", "STRING"), ("finish_reason", "STRING"), ("num_input_tokens", "UINT32"),
               ("num_output_tokens", "UINT32"), ("logprobs", "STRING")]
    lines += [",\n".join(f'  {{ name: "{n}", data_type: TYPE_{t}, dims: [ -1 ] }}' for n, t in outputs), "]",
              "", "parameters ["]
    lines.append(",\n".join(f'  {{ key: "{k}", value: {{ string_value: "{_escape(v)}" }} }}'
                            for k, v in result.parameters.items()))
    lines.append("]")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def write_model(result: ImportResult, repository: Path, overwrite: bool = False) -> Path:
    """Write `<repository>/<name>/config.pbtxt` and its version folder `1/`."""
    folder = repository / result.name
    config = folder / "config.pbtxt"
    if config.exists() and not overwrite:
        raise ImportFastChatError(f"{config} exists (pass --force to replace it)")
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / ".keep").touch()
    config.write_text(result.config_pbtxt())
    return folder
