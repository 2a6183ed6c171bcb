"""Sentence embeddings as sentence-transformers computes them, as a plain Triton Python model.

Triton's dynamic batcher hands `execute()` several requests at once (each `text` tensor is
[b, 1]); their texts are embedded together: the BERT encoder, mean pooling over the real
tokens and L2 normalisation, as the model folder's `modules.json` and `1_Pooling/config.json`
describe (the same result as `SentenceTransformer(folder).encode(texts)`).

Texts are padded to a multiple of `PAD_MULTIPLE` tokens and embedded in groups of equal
padded length, so a text's vector does not depend on which other texts share its batch:
the same text gives bit-identical vectors in every call.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from a local folder, never the hub

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

PACKAGE_SCHEME = "package:"
PAD_MULTIPLE = 32
CLIP_SLACK = 4
"""Texts are cut at max_model_len x longest token x this many characters before tokenizing:
the tokenizer's normaliser may drop characters (accents, control characters), so a token can
stand for more characters of the input than of its vocabulary entry."""

logger = logging.getLogger("embeddings")


class ConfigError(ValueError):
    """A bad `parameters` value in config.pbtxt; the message names the key."""


def resolve_model_path(model_path: str) -> Path:
    """`package:NAME[/sub/dir]` -> a folder of an installed package (found, not imported)."""
    if not model_path.startswith(PACKAGE_SCHEME):
        return Path(model_path)
    name, _, sub = model_path[len(PACKAGE_SCHEME):].partition("/")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model_path {model_path!r}: Python package {name!r} is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / sub if sub else folder


@dataclass(frozen=True)
class EmbeddingConfig:
    model_path: Path
    max_model_len: int
    cpu_threads: int
    dimensions: int
    device: str

    @classmethod
    def from_model_config(cls, model_config: dict[str, Any], kind: str, device_id: int) -> EmbeddingConfig:
        params = {k: str(v.get("string_value", "")).strip()
                  for k, v in model_config.get("parameters", {}).items()}

        def integer(key: str, default: int, minimum: int) -> int:
            raw = params.get(key) or str(default)
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"parameter {key}: {raw!r} is not an integer") from None
            if value < minimum:
                raise ConfigError(f"parameter {key}: must be at least {minimum}, got {value}")
            return value

        if not params.get("model_path"):
            raise ConfigError("parameter model_path is required")
        outputs = {o["name"]: o for o in model_config.get("output", [])}
        if "embedding" not in outputs:
            raise ConfigError("the model needs an output named `embedding`")
        dims = [int(d) for d in outputs["embedding"].get("dims", [])]
        if len(dims) != 1 or dims[0] < 1:
            raise ConfigError(f"output embedding: dims must be [N], got {dims}")
        device = f"cuda:{device_id}" if kind == "GPU" and torch.cuda.is_available() else "cpu"
        return cls(model_path=resolve_model_path(params["model_path"]),
                   max_model_len=integer("max_model_len", 256, 1), cpu_threads=integer("cpu_threads", 0, 0),
                   dimensions=dims[0], device=device)


class SentenceEncoder:
    """A sentence-transformers folder (Transformer -> Pooling [-> Normalize]) in plain transformers."""

    def __init__(self, folder: Path, max_len: int, device: str) -> None:
        modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").exists() else []
        kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
        pooling_dir = next((folder / m["path"] for m in modules if m.get("type", "").endswith(".Pooling")), None)
        pooling = json.loads((pooling_dir / "config.json").read_text()) if pooling_dir is not None else {}
        if pooling.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        elif pooling.get("pooling_mode_mean_tokens", True):
            self.pooling = "mean"
        else:
            raise ConfigError(f"{folder}: only mean or CLS pooling is supported, got {pooling}")
        self.normalize = "Normalize" in kinds
        self.max_len = max_len
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.dimensions = int(self.model.config.hidden_size)
        longest = max((len(t) for t in self.tokenizer.get_vocab()), default=0)
        # Truncation keeps max_len tokens; text beyond what they can span is never tokenized,
        # so a huge text costs about what a long one does and delays its batch only that much.
        self.max_chars = max_len * max(longest, 1) * CLIP_SLACK

    def encode(self, texts: list[str]) -> tuple[npt.NDArray[np.float32], list[int]]:
        """Vectors [len(texts), dimensions] (float32) and each text's token count."""
        # Stripped as sentence-transformers' Transformer module does; clipped where truncation
        # would cut anyway.
        texts = [t.strip()[: self.max_chars] for t in texts]
        lengths = [len(ids) for ids in self.tokenizer(
            texts, truncation=True, max_length=self.max_len)["input_ids"]]
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        groups: dict[int, list[int]] = {}
        for i, length in enumerate(lengths):
            groups.setdefault(-(-length // PAD_MULTIPLE), []).append(i)
        for rows in groups.values():
            vectors[rows] = self._embed([texts[i] for i in rows])
        return vectors, lengths

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len,
                               pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        vectors: npt.NDArray[np.float32] = pooled.float().cpu().numpy()
        return vectors


class _TritonLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = f"[embeddings] {self.format(record)}"
        if record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


class TritonPythonModel:
    """One encoder per model instance; every execute() is one (or a few) forward passes."""

    def initialize(self, args: dict[str, str]) -> None:
        logger.addHandler(_TritonLogHandler())
        logger.setLevel(logging.INFO)
        model_config = json.loads(args["model_config"])
        try:
            config = EmbeddingConfig.from_model_config(
                model_config, args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", "0")))
            if config.cpu_threads:
                torch.set_num_threads(config.cpu_threads)
            self.encoder = SentenceEncoder(config.model_path, config.max_model_len, config.device)
        except (ConfigError, OSError) as exc:
            raise pb_utils.TritonModelException(f"{args['model_name']}: {exc}") from exc
        if self.encoder.dimensions != config.dimensions:
            raise pb_utils.TritonModelException(
                f"{args['model_name']}: output embedding has dims [{config.dimensions}] but the model "
                f"produces {self.encoder.dimensions} values")
        logger.info("%s ready on %s: %d dimensions, %s pooling%s, max %d tokens", args["model_name"],
                    config.device, config.dimensions, self.encoder.pooling,
                    " + L2 normalisation" if self.encoder.normalize else "", config.max_model_len)

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        spans: list[tuple[int, int] | str] = []  # per request: its rows, or why it was refused
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
                items = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw]
            except UnicodeDecodeError as exc:
                spans.append(f"[INVALID_ARG] text is not valid UTF-8: {exc}")
                continue
            spans.append((len(texts), len(texts) + len(items)))
            texts.extend(items)
        vectors, lengths = self.encoder.encode(texts) if texts else (np.zeros((0, 0), np.float32), [])
        responses = []
        for span in spans:
            if isinstance(span, str):
                error = pb_utils.TritonError(span, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            start, end = span
            counts = np.array(lengths[start:end], dtype=np.uint32).reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("embedding", vectors[start:end]),
                pb_utils.Tensor("num_input_tokens", counts)]))
        return responses

    def finalize(self) -> None:
        logger.info("finalized")
