"""Structured-output fields of a request -> one constraint on the wire (chatllm_wire).

OpenAI's `response_format`, vLLM's `structured_outputs` object and its older `guided_json`,
`guided_regex`, `guided_choice` and `guided_grammar` all say the same thing; a request may
use one of them. The shape of each is checked here (400 naming the field); whether a schema,
regex or grammar compiles is the backend's check, which also answers before generating.
"""

from __future__ import annotations

import chatllm_wire as wire
from chatllm_wire import StructuredOutput
from gateway.errors import InvalidRequestError
from gateway.protocol import SamplingRequest


def _checked(param: str, kind: str, value: object) -> StructuredOutput:
    try:
        return wire.structured_output(kind, value)
    except wire.WireError as exc:
        raise InvalidRequestError(exc.message, param=param) from None


def requested_structure(body: SamplingRequest) -> StructuredOutput | None:
    """The one constraint the request asks for, or None. Raises `InvalidRequestError`."""
    found: list[tuple[str, StructuredOutput]] = []
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(("response_format", _checked("response_format", "json_object", True)))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise InvalidRequestError(
                "response_format of type json_schema needs json_schema.schema", param="response_format")
        found.append(("response_format", _checked("response_format", "json", fmt.json_schema.schema_)))
    if body.structured_outputs is not None:
        try:
            parsed = wire.parse_structured_outputs(body.structured_outputs)
        except wire.WireError as exc:
            raise InvalidRequestError(exc.message, param="structured_outputs") from None
        if parsed is not None:
            found.append(("structured_outputs", parsed))
    for field, kind in (("guided_json", "json"), ("guided_regex", "regex"),
                        ("guided_choice", "choice"), ("guided_grammar", "grammar")):
        value = getattr(body, field)
        if value is not None:
            found.append((field, _checked(field, kind, value)))
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise InvalidRequestError(f"set only one structured-output field, got {names}", param=found[1][0])
    return found[0][1] if found else None
