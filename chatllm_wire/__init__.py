"""The wire contract between the gateway and a chatllm (or vllm_backend-compatible) model.

One plain-Python module, imported by both ends of the gRPC stream and by the test and
load-test clients: tensor names, the `sampling_parameters` JSON (keys, types, ranges),
stop-string normalisation, structured-output specs, tool-prompt inputs, the `[CODE] message`
error convention and the `logprobs` JSON. No torch, Triton, gRPC or pydantic here, so the
gateway image, the Triton Python stub and the echo test model can all import it.

Adding a sampling parameter means one `Param` entry in `SAMPLING_PARAMS` and its use on
each side; every check of its type and range is made from that entry.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# ---- tensor names (vllm_backend's, plus ours) --------------------------------------------

TEXT_INPUT = "text_input"
MESSAGES = "messages"
"""JSON list of chat messages; the model applies its own chat template."""
TOOLS = "tools"
"""JSON list of OpenAI tool definitions, handed to the chat template (`tools=`)."""
CHAT_TEMPLATE_KWARGS = "chat_template_kwargs"
"""JSON object of extra variables for the chat template (e.g. `enable_thinking`)."""
STREAM = "stream"
SAMPLING_PARAMETERS = "sampling_parameters"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
RETURN_FINISH_REASON = "return_finish_reason"
RETURN_NUM_INPUT_TOKENS = "return_num_input_tokens"
RETURN_NUM_OUTPUT_TOKENS = "return_num_output_tokens"
RETURN_LOGPROBS = "return_logprobs"
COUNT_TOKENS_ONLY = "count_tokens_only"
"""Answer `num_input_tokens` of `text_input` without generating (FastChat's token check)."""

TEXT_OUTPUT = "text_output"
FINISH_REASON = "finish_reason"
NUM_INPUT_TOKENS = "num_input_tokens"
NUM_OUTPUT_TOKENS = "num_output_tokens"
LOGPROBS = "logprobs"

FINISH_REASONS = ("stop", "length", "abort")
"""What `finish_reason` carries on the last response (empty before it)."""

# ---- errors ------------------------------------------------------------------------------

ERROR_CODES = ("INVALID_ARG", "UNAVAILABLE", "CANCELLED", "INTERNAL", "UNSUPPORTED", "NOT_FOUND")
"""Codes a model puts in front of its error messages: gRPC streams carry only the message."""
_CODE_PREFIX = re.compile(r"^\s*\[([A-Z_]+)\]\s*")


class WireError(ValueError):
    """A request that breaks the contract; `code` is one of `ERROR_CODES`, `param` the field."""

    def __init__(self, message: str, param: str | None = None, code: str = "INVALID_ARG") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def error_message(code: str, text: str) -> str:
    """The message of a model error: `[CODE] text`."""
    return f"[{code}] {text}"


def split_error(message: str) -> tuple[str | None, str]:
    """`"[INVALID_ARG] text"` -> `("INVALID_ARG", "text")`; `(None, message)` without a code."""
    match = _CODE_PREFIX.match(message)
    if match is None:
        return None, message.strip()
    return match.group(1), message[match.end():].strip()


# ---- sampling_parameters -----------------------------------------------------------------

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
MAX_LOGPROBS = 20
"""Most alternatives per token (`top_logprobs`, completions' `logprobs`), as OpenAI and vLLM."""
MAX_STOP_STRINGS = 16
MAX_CHOICES = 1024
"""Most entries of a `choice` structured output."""
MAX_SPEC_CHARS = 200_000
"""Longest JSON schema / regex / grammar text accepted (compiling is the backend's cost)."""


@dataclass(frozen=True)
class Param:
    """One key of `sampling_parameters`: its JSON type and allowed range."""

    name: str
    kind: type  # int, float or bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """True: `low` itself is not allowed."""
    help: str = ""

    def check(self, value: Any) -> int | float | bool:
        """The value, converted to `kind`; raises `WireError` naming the key."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise WireError(f"{self.name} must be true or false", self.name)
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WireError(f"{self.name} must be a number", self.name)
        number: int | float
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise WireError(f"{self.name} must be an integer", self.name)
            number = int(value)
        else:
            number = float(value)
            if math.isnan(number) or math.isinf(number):
                raise WireError(f"{self.name} must be a finite number", self.name)
        too_low = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        too_high = self.high is not None and number > self.high
        if too_low or too_high:
            raise WireError(f"{self.name} {self.rule()}, got {number}", self.name)
        return number

    def rule(self) -> str:
        def show(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else str(x)

        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            return f"must be in {left}{show(self.low)}, {show(self.high)}]"
        if self.low is not None:
            return f"must be {'>' if self.low_open else '>='} {show(self.low)}"
        if self.high is not None:
            return f"must be <= {show(self.high)}"
        return "is unbounded"


SAMPLING_PARAMS: dict[str, Param] = {p.name: p for p in (
    Param("max_tokens", int, 1, help="tokens to generate at most"),
    Param("temperature", float, 0.0, 2.0, help="0 = greedy"),
    Param("top_p", float, 0.0, 1.0, low_open=True),
    Param("top_k", int, -1, help="-1 or 0 = off"),
    Param("repetition_penalty", float, 0.0, low_open=True),
    Param("presence_penalty", float, -2.0, 2.0),
    Param("frequency_penalty", float, -2.0, 2.0),
    Param("seed", int, INT64_MIN, UINT64_MAX),
    Param("ignore_eos", bool),
    Param("min_tokens", int, 0),
    Param("logprobs", int, 0, MAX_LOGPROBS, help="the N most likely tokens per position"),
)}
"""The scalar keys; `stop`, `stop_token_ids` and `structured_outputs` have their own checks."""
SAMPLING_KEYS = frozenset(SAMPLING_PARAMS) | {"stop", "stop_token_ids", "structured_outputs"}


def normalize_stop(stop: str | Iterable[str] | None) -> tuple[str, ...]:
    """`stop` (a string, a list of strings or None) as a tuple, empty strings dropped."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) for s in items):
        raise WireError("stop must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP_STRINGS:
        raise WireError(f"stop may hold at most {MAX_STOP_STRINGS} strings", "stop")
    return tuple(s for s in items if s)


# ---- structured outputs ------------------------------------------------------------------

STRUCTURED_KINDS = ("json", "json_object", "regex", "choice", "grammar")
"""The keys of vLLM's `structured_outputs` object, one of which a request sets."""
_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains", "propertyNames",
                   "if", "then", "else", "additionalItems", "unevaluatedProperties")
_SCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions")
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_COUNT_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")


@dataclass(frozen=True)
class StructuredOutput:
    """What the output must match: exactly one kind of constraint.

    `kind` "json": `value` is a JSON schema (compact JSON text); "json_object": any JSON
    object (`value` empty); "regex": a regular expression; "choice": a JSON list of
    strings; "grammar": an EBNF grammar (GBNF / xgrammar's dialect, root rule `root`).
    """

    kind: str
    value: str = ""

    def to_wire(self) -> dict[str, Any]:
        if self.kind == "json":
            return {"json": json.loads(self.value)}
        if self.kind == "json_object":
            return {"json_object": True}
        if self.kind == "choice":
            return {"choice": json.loads(self.value)}
        return {self.kind: self.value}

    def choices(self) -> list[str]:
        return list(json.loads(self.value)) if self.kind == "choice" else []


def check_json_schema(schema: Any, path: str = "schema") -> None:
    """Structural checks of a JSON schema (types, keyword shapes, patterns).

    Not a full meta-schema validation: what passes may still fail to compile in the
    backend, which then answers `[INVALID_ARG]` before generating.
    """
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise WireError(f"{path} must be a JSON object or a boolean")
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or not all(isinstance(k, str) and k in _JSON_TYPES for k in kinds):
            raise WireError(f"{path}.type must be one of {sorted(_JSON_TYPES)}, got {kind!r}")
    for key in _SUBSCHEMA_KEYS:
        if key in schema:
            check_json_schema(schema[key], f"{path}.{key}")
    for key in _SCHEMA_LIST_KEYS:
        if key in schema:
            items = schema[key]
            if not isinstance(items, list) or not items:
                raise WireError(f"{path}.{key} must be a non-empty list of schemas")
            for i, item in enumerate(items):
                check_json_schema(item, f"{path}.{key}[{i}]")
    for key in _SCHEMA_MAP_KEYS:
        if key in schema:
            mapping = schema[key]
            if not isinstance(mapping, dict):
                raise WireError(f"{path}.{key} must be an object of schemas")
            for name, item in mapping.items():
                check_json_schema(item, f"{path}.{key}.{name}")
    if "required" in schema and not (
            isinstance(schema["required"], list) and all(isinstance(r, str) for r in schema["required"])):
        raise WireError(f"{path}.required must be a list of property names")
    if "enum" in schema and not (isinstance(schema["enum"], list) and schema["enum"]):
        raise WireError(f"{path}.enum must be a non-empty list")
    for key in _NUMBER_KEYS:
        value = schema.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise WireError(f"{path}.{key} must be a number")
    for key in _COUNT_KEYS:
        value = schema.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise WireError(f"{path}.{key} must be a non-negative integer")
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems"), ("minimum", "maximum"),
                      ("minProperties", "maxProperties")):
        if isinstance(schema.get(low), (int, float)) and isinstance(schema.get(high), (int, float)) \
                and schema[low] > schema[high]:
            raise WireError(f"{path}: {low} is greater than {high}")
    if "pattern" in schema:
        check_regex(schema["pattern"], f"{path}.pattern")
    if "$ref" in schema and not isinstance(schema["$ref"], str):
        raise WireError(f"{path}.$ref must be a string")


def check_regex(pattern: Any, what: str = "regex") -> None:
    if not isinstance(pattern, str) or not pattern:
        raise WireError(f"{what} must be a non-empty string")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise WireError(f"{what} does not compile: {exc}") from None


def structured_output(kind: str, value: Any) -> StructuredOutput:
    """Check one constraint (`kind` one of `STRUCTURED_KINDS`) and return its normal form.

    `value` for "json" is a schema (object, or JSON text of one). Raises `WireError`.
    """
    param = "structured_outputs"
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise WireError(f"the JSON schema is not valid JSON: {exc}", param) from None
        try:
            check_json_schema(value)
        except WireError as exc:
            raise WireError(f"invalid JSON schema: {exc.message}", param) from None
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))  # key order kept: it is the output's
    elif kind == "json_object":
        if value not in (True, None, {}):
            raise WireError("json_object takes true", param)
        text = ""
    elif kind == "regex":
        try:
            check_regex(value)
        except WireError as exc:
            raise WireError(exc.message, param) from None
        text = value
    elif kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise WireError("choice must be a non-empty list of non-empty strings", param)
        if len(value) > MAX_CHOICES:
            raise WireError(f"choice may hold at most {MAX_CHOICES} entries", param)
        text = json.dumps(value, ensure_ascii=False)
    elif kind == "grammar":
        if not isinstance(value, str) or not value.strip():
            raise WireError("grammar must be a non-empty string", param)
        if "root" not in value:
            raise WireError("grammar must define a `root` rule", param)
        text = value
    else:
        raise WireError(f"unknown structured output kind {kind!r}: use one of {', '.join(STRUCTURED_KINDS)}",
                        param)
    if len(text) > MAX_SPEC_CHARS:
        raise WireError(f"the {kind} constraint is longer than {MAX_SPEC_CHARS} characters", param)
    return StructuredOutput(kind, text)


def parse_structured_outputs(raw: Any) -> StructuredOutput | None:
    """The `structured_outputs` object of `sampling_parameters`: one kind set, or none."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise WireError("structured_outputs must be a JSON object", "structured_outputs")
    kinds = [k for k, v in raw.items() if v is not None and v is not False]
    unknown = [k for k in kinds if k not in STRUCTURED_KINDS]
    if unknown:
        raise WireError(f"unknown structured output kind(s): {', '.join(sorted(unknown))}",
                        "structured_outputs")
    if not kinds:
        return None
    if len(kinds) > 1:
        raise WireError(f"structured_outputs sets {len(kinds)} kinds ({', '.join(kinds)}); set one",
                        "structured_outputs")
    return structured_output(kinds[0], raw[kinds[0]])


# ---- the parsed sampling_parameters ------------------------------------------------------


@dataclass(frozen=True)
class WireSampling:
    """`sampling_parameters` after validation; None (or empty) means the model's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = None
    logprobs: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    structured_outputs: StructuredOutput | None = None

    def to_json(self) -> str:
        """The tensor's JSON: only the fields that are set."""
        fields: dict[str, Any] = {name: getattr(self, name) for name in SAMPLING_PARAMS
                                  if getattr(self, name) is not None}
        if fields.get("ignore_eos") is False:
            fields.pop("ignore_eos")
        if self.stop:
            fields["stop"] = list(self.stop)
        if self.stop_token_ids:
            fields["stop_token_ids"] = list(self.stop_token_ids)
        if self.structured_outputs is not None:
            fields["structured_outputs"] = self.structured_outputs.to_wire()
        return json.dumps(fields, ensure_ascii=False)

    def set_values(self) -> dict[str, Any]:
        """The scalar parameters that are set, by name (for building engine parameters)."""
        return {name: getattr(self, name) for name in SAMPLING_PARAMS if getattr(self, name) is not None}


def check_sampling(values: Mapping[str, Any]) -> WireSampling:
    """Validate already-decoded sampling values (unknown keys rejected). Raises `WireError`."""
    unknown = sorted(set(values) - SAMPLING_KEYS)
    if unknown:
        raise WireError(f"unknown sampling parameter(s): {', '.join(unknown)}", unknown[0])
    scalars: dict[str, Any] = {name: SAMPLING_PARAMS[name].check(v) for name, v in values.items()
               if name in SAMPLING_PARAMS and v is not None}
    stop_token_ids = values.get("stop_token_ids") or ()
    if not isinstance(stop_token_ids, (list, tuple)) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in stop_token_ids):
        raise WireError("stop_token_ids must be a list of non-negative integers", "stop_token_ids")
    return WireSampling(
        stop=normalize_stop(values.get("stop")),
        stop_token_ids=tuple(stop_token_ids),
        structured_outputs=parse_structured_outputs(values.get("structured_outputs")),
        **scalars,
    )


def parse_sampling(text: str | None) -> WireSampling:
    """The `sampling_parameters` tensor (JSON text; empty means defaults). Raises `WireError`."""
    if not text:
        return WireSampling()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WireError(f"sampling_parameters is not valid JSON: {exc}", SAMPLING_PARAMETERS) from None
    if not isinstance(raw, dict):
        raise WireError("sampling_parameters must be a JSON object", SAMPLING_PARAMETERS)
    return check_sampling(raw)


# ---- messages, tools -----------------------------------------------------------------------

MESSAGE_ROLES = ("system", "user", "assistant", "tool")


def check_messages(raw: Any) -> tuple[dict[str, Any], ...]:
    """The `messages` tensor, decoded: a non-empty list of `{role, content}` objects.

    Assistant messages may carry `tool_calls` (OpenAI's shape, `arguments` a JSON string)
    instead of content; tool messages carry `tool_call_id`. Raises `WireError`.
    """
    if not isinstance(raw, list) or not raw:
        raise WireError("messages must be a non-empty JSON list", MESSAGES)
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise WireError(f"messages[{i}] must be an object with a role", MESSAGES)
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise WireError(f"messages[{i}].content must be a string", MESSAGES)
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list) or not all(
                    isinstance(c, dict) and isinstance(c.get("function"), dict)
                    and isinstance(c["function"].get("name"), str) for c in calls):
                raise WireError(f"messages[{i}].tool_calls must be a list of function calls", MESSAGES)
        if content is None and calls is None:
            raise WireError(f"messages[{i}] has neither content nor tool_calls", MESSAGES)
    return tuple(raw)


def check_tools(raw: Any) -> tuple[dict[str, Any], ...]:
    """The `tools` tensor, decoded: OpenAI function tools. Raises `WireError`."""
    if not isinstance(raw, list):
        raise WireError("tools must be a JSON list", TOOLS)
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(function, dict):
            raise WireError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}", TOOLS)
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise WireError(f"tools[{i}].function.name must be 1-64 letters, digits, _ . or -", TOOLS)
        parameters = function.get("parameters")
        if parameters is not None:
            try:
                check_json_schema(parameters, f"tools[{i}].function.parameters")
            except WireError as exc:
                raise WireError(exc.message, TOOLS) from None
    return tuple(raw)


def parse_json_tensor(text: str | None, name: str) -> Any:
    """A JSON-valued tensor (None when absent or empty). Raises `WireError`."""
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WireError(f"{name} is not valid JSON: {exc}", name) from None


# ---- logprobs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireLogprob:
    """One token at one position: id, log-probability, rank (1 = most likely) and text."""

    token_id: int
    logprob: float
    rank: int
    decoded_token: str


MIN_LOGPROB = -9999.0
"""What -inf (and NaN) becomes on the wire, as vLLM does: JSON has no infinity."""


def _finite(value: Any) -> float:
    number = float(value)
    return MIN_LOGPROB if math.isnan(number) or number < MIN_LOGPROB else number


def logprobs_json(positions: Sequence[Sequence[WireLogprob]]) -> str:
    """vllm_backend's `logprobs` output: per position `{token_id: {logprob, rank,
    decoded_token}}`, the sampled token first, then the most likely (each id once)."""
    out = []
    for entries in positions:
        position: dict[str, dict[str, Any]] = {}
        for item in entries:
            position.setdefault(str(item.token_id), {
                "logprob": _finite(item.logprob), "rank": item.rank, "decoded_token": item.decoded_token})
        out.append(position)
    return json.dumps(out, ensure_ascii=False)


def parse_logprobs(payload: str) -> list[list[WireLogprob]]:
    """The inverse of `logprobs_json`: per position, the sampled token first, then the others
    by rank. Raises `WireError` (code INTERNAL) when malformed."""
    if not payload:
        return []
    try:
        positions = json.loads(payload)
        result = []
        for position in positions or ():
            if not position:
                continue
            items = [WireLogprob(int(tid), _finite(e["logprob"]), int(e.get("rank") or 0),
                                 str(e.get("decoded_token") or "")) for tid, e in position.items()]
            result.append([items[0], *sorted(items[1:], key=lambda e: e.rank)])
        return result
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise WireError(f"malformed logprobs from the model: {exc}", LOGPROBS, "INTERNAL") from None
