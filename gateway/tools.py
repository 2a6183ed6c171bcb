"""Tool calling: `tools` / `tool_choice` -> what the model is asked, and its answer -> tool calls.

- "none" (or no tools): a plain answer; tools are not shown to the model.
- "auto": the tools go to the chat template and the answer is parsed by the model's
  `tool_call_parser`: "hermes" (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  blocks, text before them is content) or "llama3_json" (the whole answer one JSON object
  `{"name": ..., "parameters": {...}}`, several separated by ";").
- "required": the output is constrained to a JSON array of `{"name", "arguments"}` whose
  arguments validate against the named function's `parameters` (one item when
  `parallel_tool_calls` is false).
- a named function: the output is constrained to that function's arguments.

`ToolCallStream` turns one choice's streamed text into content and OpenAI's tool-call
deltas (index, id, type and name once, then argument pieces).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import chatllm_wire as wire
from chatllm_wire import StructuredOutput
from gateway.errors import InvalidRequestError
from gateway.protocol import ChatCompletionRequest, DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCall

ToolMode = Literal["none", "auto", "required", "named"]
_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ToolPlan:
    """How one chat request uses its tools."""

    mode: ToolMode = "none"
    tools: tuple[dict[str, Any], ...] = ()
    """The definitions for the chat template (empty for "none")."""
    name: str | None = None
    """The function of tool_choice "named"."""
    parser: str = "hermes"
    constraint: StructuredOutput | None = None
    """The grammar of "required" and "named"."""
    names: frozenset[str] = field(default_factory=frozenset)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    params = tool["function"].get("parameters")
    return params if isinstance(params, dict) and params else _ANY_OBJECT


def plan_tools(body: ChatCompletionRequest, parser: str) -> ToolPlan:
    """Check `tools`, `tool_choice` and `parallel_tool_calls`; raises `InvalidRequestError`."""
    tools = tuple(t.model_dump(exclude_none=True) for t in body.tools or ())
    choice = body.tool_choice
    if not tools:
        if choice is not None and choice != "none":
            raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
        return ToolPlan()
    try:
        wire.check_tools(list(tools))
    except wire.WireError as exc:
        raise InvalidRequestError(exc.message, param="tools") from None
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tools must have distinct function names", param="tools")
    if choice == "none":
        return ToolPlan()
    by_name = {t["function"]["name"]: t for t in tools}
    if choice is None or choice == "auto":
        return ToolPlan("auto", tools, parser=parser, names=frozenset(names))
    if choice == "required":
        items = [{"type": "object", "properties": {"name": {"type": "string", "enum": [n]},
                                                   "arguments": _parameters(t)},
                  "required": ["name", "arguments"], "additionalProperties": False}
                 for n, t in by_name.items()]
        schema: dict[str, Any] = {"type": "array", "minItems": 1,
                                  "items": items[0] if len(items) == 1 else {"anyOf": items}}
        if body.parallel_tool_calls is False:
            schema["maxItems"] = 1
        return ToolPlan("required", tools, parser=parser, constraint=_schema(schema),
                        names=frozenset(names))
    assert not isinstance(choice, str)
    name = choice.function.name
    if name not in by_name:
        raise InvalidRequestError(f"tool_choice names `{name}`, which is not in tools", param="tool_choice")
    return ToolPlan("named", tools, name=name, parser=parser,
                    constraint=_schema(_parameters(by_name[name])), names=frozenset(names))


def _schema(schema: dict[str, Any]) -> StructuredOutput:
    try:
        return wire.structured_output("json", schema)
    except wire.WireError as exc:
        raise InvalidRequestError(exc.message, param="tools") from None


def _call(name: str, arguments: Any) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=new_call_id(), function=FunctionCall(name=name, arguments=text))


def _hermes(text: str, names: frozenset[str]) -> tuple[str | None, list[ToolCall]] | None:
    start = text.find(_HERMES_OPEN)
    if start < 0:
        return None
    calls = []
    for body in re.findall(r"<tool_call>(.*?)(?:</tool_call>|$)", text[start:], re.DOTALL):
        try:
            item = json.loads(body.strip())
        except json.JSONDecodeError:
            return None
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        calls.append(_call(item["name"], item.get("arguments", {})))
    content = text[:start].strip()
    return (content or None), calls


def _llama3(text: str, names: frozenset[str]) -> tuple[str | None, list[ToolCall]] | None:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):].strip()
    if not body.startswith("{"):
        return None
    decoder = json.JSONDecoder()
    calls, position = [], 0
    while position < len(body):
        try:
            item, end = decoder.raw_decode(body, position)
        except json.JSONDecodeError:
            return None
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        calls.append(_call(item["name"], item.get("parameters", item.get("arguments", {}))))
        position = end
        while position < len(body) and body[position] in " \n\t;":
            position += 1
    return None, calls


def _complete_items(text: str) -> list[dict[str, Any]]:
    """The complete `{"name", "arguments"}` objects of a JSON array, even one cut short (a
    small model may go on listing calls until max_tokens)."""
    decoder = json.JSONDecoder()
    body = text.strip()
    if not body.startswith("["):
        return []
    items, position = [], 1
    while position < len(body):
        while position < len(body) and body[position] in " \n\t,":
            position += 1
        if position >= len(body) or body[position] == "]":
            break
        try:
            item, position = decoder.raw_decode(body, position)
        except json.JSONDecodeError:
            break
        if not isinstance(item, dict) or "name" not in item or "arguments" not in item:
            return []
        items.append(item)
    return items


def parse_tool_output(plan: ToolPlan, text: str) -> tuple[str | None, list[ToolCall]]:
    """A whole answer -> (content, tool calls). Text that is not a valid call stays content."""
    if plan.mode == "named" and plan.name is not None:
        return None, [_call(plan.name, text)]
    if plan.mode == "required":
        calls = [_call(i["name"], i["arguments"]) for i in _complete_items(text)]
        return (None, calls) if calls else (text, [])
    if plan.mode == "auto":
        parse = _llama3 if plan.parser == "llama3_json" else _hermes
        found = parse(text, plan.names)
        if found is not None and found[1]:
            return found
    return text, []


def finish_reason(plan: ToolPlan, reason: str | None, called: bool) -> str | None:
    """OpenAI's: "tool_calls" when the model chose to call (auto, required; also a "required"
    list cut short after complete calls); a forced named call ends with "stop"."""
    if called and (reason == "stop" or (reason == "length" and plan.mode == "required")) \
            and plan.mode in ("auto", "required"):
        return "tool_calls"
    return reason


class ToolCallStream:
    """One choice's streamed text -> content deltas and tool-call deltas.

    "named" streams the arguments as they come; "required" and "auto" calls are sent whole
    once the answer ends (content before a Hermes `<tool_call>` streams at once).
    """

    def __init__(self, plan: ToolPlan) -> None:
        self._plan = plan
        self._held = ""  # text not sent yet (a possible or begun tool call)
        self._buffering = plan.mode == "required"
        self._started = False  # "named": the first delta (id, name) was sent
        self._content = False  # "llama3_json": the answer began as plain text
        self.called = False

    def feed(self, text: str) -> tuple[str, list[DeltaToolCall]]:
        """New text -> (content to send, tool-call deltas to send)."""
        plan = self._plan
        if plan.mode == "named":
            deltas = []
            if not self._started:
                self._started = self.called = True
                deltas.append(DeltaToolCall(index=0, id=new_call_id(), type="function",
                                            function=DeltaFunctionCall(name=plan.name, arguments="")))
            if text:
                deltas.append(DeltaToolCall(index=0, function=DeltaFunctionCall(arguments=text)))
            return "", deltas
        if plan.mode == "none":
            return text, []
        self._held += text
        if self._buffering:
            return "", []
        if plan.parser == "llama3_json":
            stripped = self._held.lstrip()
            if not self._content and not stripped:
                return "", []
            if not self._content and (stripped.startswith(("{", _PYTHON_TAG)) or _PYTHON_TAG.startswith(stripped)):
                self._buffering = stripped.startswith(("{", _PYTHON_TAG))
                return "", []
            self._content = True
            out, self._held = self._held, ""
            return out, []
        start = self._held.find(_HERMES_OPEN)
        if start >= 0:
            out, self._held = self._held[:start], self._held[start:]
            self._buffering = True
            return out, []
        keep = _partial_suffix(self._held, _HERMES_OPEN)
        out, self._held = self._held[:len(self._held) - keep], self._held[len(self._held) - keep:]
        return out, []

    def finish(self) -> tuple[str, list[DeltaToolCall]]:
        """At the end of the answer: what was held back, as content or whole tool calls."""
        held, self._held = self._held, ""
        if self._plan.mode in ("named", "none") or not held:
            return held, []
        content, calls = parse_tool_output(self._plan, held)
        if not calls:
            return held, []
        self.called = True
        deltas = [DeltaToolCall(index=i, id=c.id, type="function",
                                function=DeltaFunctionCall(name=c.function.name, arguments=c.function.arguments))
                  for i, c in enumerate(calls)]
        return content or "", deltas


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0
