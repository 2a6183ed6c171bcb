"""EngineConfig: the typed form of a model's config.pbtxt `parameters`.

Each FastChat model-worker flag has a parameter here:
  --model-path            -> model_path (a folder, a hub id, or `package:NAME` for weights a
                             Python package ships) and gguf_file
  --dtype                 -> dtype
  --num-gpus/--max-gpu-memory -> num_gpus / max_gpu_memory (split one instance over GPUs)
  --limit-worker-concurrency -> max_num_seqs (plus max_queue_size behind it)
  --stream-interval       -> stream_interval
  --conv-template         -> conv_template (the FastChat template name the gateway hands
                             FastChat's clients; read by the gateway) and chat_template
                             (a Jinja template; the model's own when empty)
  --model-names           -> served_model_names (read by the gateway)
Read by both sides: tool_call_parser (how `tools` with tool_choice "auto" are parsed from the
output, and which default tool prompt templates without tool support get) and
reasoning_parser (how `<think>` sections become `reasoning_content`).

`engine` picks what generates: `ours` (the continuous-batching engine of this package; a
model it cannot batch, such as a seq2seq model, goes to the per-request fallback on its own),
`fallback` (per-request `generate`) or `vllm` (vLLM's engine, whose own flags are VllmConfig).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

T = TypeVar("T")

DTYPES = ("auto", "float32", "float16", "bfloat16")
TOOL_CALL_PARSERS = ("hermes", "llama3_json")
REASONING_PARSERS = ("", "think")
ENGINES = ("ours", "fallback", "vllm")
VLLM_KEYS = ("block_size", "swap_space", "gpu_memory_utilization", "enforce_eager", "cpu_kvcache_space",
             "cpu_omp_threads_bind")


class ConfigError(ValueError):
    """A parameter of config.pbtxt is missing or out of range; the message names the key."""


@dataclass(frozen=True)
class VllmConfig:
    """vLLM's own engine flags (FastChat's vllm_worker flags), used when `engine` is `vllm`.

    The flags both engines share (dtype, max_num_seqs, max_model_len, trust_remote_code, seed,
    enable_prefix_caching, num_gpus -> tensor_parallel_size) stay on EngineConfig.
    """

    block_size: int = 0  # 0: vLLM's default for the platform
    swap_space: float = 0.0  # GiB of CPU swap per GPU; 0: vLLM's default
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 0  # the shared parameter when set; 0: vLLM's default
    enforce_eager: bool = False
    cpu_kvcache_space: int = 0  # GiB of KV cache on CPU (VLLM_CPU_KVCACHE_SPACE); 0: vLLM's default
    cpu_omp_threads_bind: str = ""  # VLLM_CPU_OMP_THREADS_BIND, e.g. "0-1"; empty: vLLM's default


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    gguf_file: str = ""
    tokenizer_path: str = ""
    dtype: str = "auto"
    device: str = "cpu"  # "cpu" or "cuda:N", from instance_group
    num_gpus: int = 1
    max_gpu_memory: str = ""
    max_num_seqs: int = 64
    max_queue_size: int = 256
    kv_cache_tokens: int = 32768
    max_num_batched_tokens: int = 512  # tokens one forward step computes: decoding rows + prompt chunks
    enable_prefix_caching: bool = True
    prefix_cache_tokens: int = 4096
    max_model_len: int = 0  # 0: the model's max_position_embeddings
    stream_interval: int = 1
    chat_template: str = ""
    cpu_threads: int = 0  # 0: leave torch's default
    pack_cpu_weights: bool = True  # CPU linears read oneDNN-reordered weights (packed_linear.py)
    trust_remote_code: bool = False
    seed: int = 0
    served_model_names: tuple[str, ...] = ()
    tool_call_parser: str = "hermes"  # how the gateway parses tool calls; the default tool prompt's format
    reasoning_parser: str = ""  # "think": <think>...</think> becomes reasoning_content (gateway)
    conv_template: str = ""  # FastChat conversation template name (read by the gateway)
    engine: str = "ours"  # one of ENGINES
    fallback_concurrency: int = 2  # generations at once on the per-request fallback path
    vllm: VllmConfig = VllmConfig()

    @classmethod
    def from_model_config(
        cls, model_config: dict[str, Any], instance_kind: str = "CPU", device_id: int = 0
    ) -> EngineConfig:
        """Build from Triton's model config JSON and the instance placement."""
        raw = {
            key: value.get("string_value", "") if isinstance(value, dict) else str(value)
            for key, value in model_config.get("parameters", {}).items()
        }
        device = f"cuda:{device_id}" if instance_kind.upper() == "GPU" else "cpu"
        return cls.from_parameters(raw, device=device)

    @classmethod
    def from_parameters(cls, raw: dict[str, str], device: str = "cpu") -> EngineConfig:
        """Parse string parameters, checking types and ranges."""
        known = ({f.name for f in dataclasses.fields(cls)} | set(VLLM_KEYS)) - {"vllm"}
        unknown = sorted(set(raw) - known - {"device"})
        if unknown:
            raise ConfigError(f"unknown parameter(s): {', '.join(unknown)}")

        def get(key: str, parse: Callable[[str], T], default: T, check: Callable[[T], bool] | None = None,
                rule: str = "") -> T:
            text = raw.get(key, "").strip()
            if text == "":
                return default
            try:
                value = parse(text)
            except ValueError as exc:
                raise ConfigError(f"parameter {key!r}: cannot parse {text!r} ({exc})") from exc
            if check is not None and not check(value):
                raise ConfigError(f"parameter {key!r}: {text!r} is out of range ({rule})")
            return value

        model_path = raw.get("model_path", "").strip()
        if not model_path:
            raise ConfigError("parameter 'model_path' is required")
        dtype = get("dtype", str, "auto", lambda v: v in DTYPES, f"one of {DTYPES}")
        engine = get("engine", str, "ours", lambda v: v in ENGINES, f"one of {ENGINES}")
        vllm_only = sorted(k for k in VLLM_KEYS if raw.get(k, "").strip())
        if vllm_only and engine != "vllm":
            raise ConfigError(f"parameter(s) {', '.join(vllm_only)} only apply to engine 'vllm'")
        vllm = VllmConfig(
            block_size=get("block_size", int, 0, lambda v: v >= 0 and v % 16 == 0, "0 or a multiple of 16"),
            swap_space=get("swap_space", float, 0.0, lambda v: v >= 0, ">= 0"),
            gpu_memory_utilization=get("gpu_memory_utilization", float, 0.9, lambda v: 0 < v <= 1, "in (0, 1]"),
            # Shared with our engine, but only passed to vLLM when the config sets it.
            max_num_batched_tokens=get("max_num_batched_tokens", int, 0, lambda v: v >= 1, ">= 1"),
            enforce_eager=get("enforce_eager", _parse_bool, False),
            cpu_kvcache_space=get("cpu_kvcache_space", int, 0, lambda v: v >= 0, ">= 0 (GiB)"),
            cpu_omp_threads_bind=raw.get("cpu_omp_threads_bind", "").strip(),
        )
        return cls(
            model_path=model_path,
            gguf_file=raw.get("gguf_file", "").strip(),
            tokenizer_path=raw.get("tokenizer_path", "").strip(),
            dtype=dtype,
            device=device,
            num_gpus=get("num_gpus", int, 1, lambda v: v >= 1, ">= 1"),
            max_gpu_memory=raw.get("max_gpu_memory", "").strip(),
            max_num_seqs=get("max_num_seqs", int, 64, lambda v: v >= 1, ">= 1"),
            max_queue_size=get("max_queue_size", int, 256, lambda v: v >= 0, ">= 0"),
            kv_cache_tokens=get("kv_cache_tokens", int, 32768, lambda v: v >= 16, ">= 16"),
            max_num_batched_tokens=get("max_num_batched_tokens", int, 512, lambda v: v >= 1, ">= 1"),
            enable_prefix_caching=get("enable_prefix_caching", _parse_bool, True),
            prefix_cache_tokens=get("prefix_cache_tokens", int, 4096, lambda v: v >= 0, ">= 0"),
            max_model_len=get("max_model_len", int, 0, lambda v: v >= 0, ">= 0"),
            stream_interval=get("stream_interval", int, 1, lambda v: v >= 1, ">= 1"),
            chat_template=raw.get("chat_template", ""),
            cpu_threads=get("cpu_threads", int, 0, lambda v: v >= 0, ">= 0"),
            pack_cpu_weights=get("pack_cpu_weights", _parse_bool, True),
            trust_remote_code=get("trust_remote_code", _parse_bool, False),
            seed=get("seed", int, 0),
            served_model_names=tuple(
                n.strip() for n in raw.get("served_model_names", "").split(",") if n.strip()
            ),
            tool_call_parser=get("tool_call_parser", str, "hermes", lambda v: v in TOOL_CALL_PARSERS,
                                 f"one of {TOOL_CALL_PARSERS}"),
            reasoning_parser=get("reasoning_parser", str, "", lambda v: v in REASONING_PARSERS,
                                 f"one of {REASONING_PARSERS}"),
            conv_template=raw.get("conv_template", "").strip(),
            engine=engine,
            fallback_concurrency=get("fallback_concurrency", int, 2, lambda v: v >= 1, ">= 1"),
            vllm=vllm,
        )


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")
