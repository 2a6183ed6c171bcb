"""Conversation templates in FastChat's `Conversation` shape, for `/worker_get_conv_template`.

FastChat's `openai_api_server` does not send chat messages to a worker: it asks the worker
for a conversation template, renders the prompt itself and sends the raw prompt. So the
template we hand out must render the prompt the model was trained on. Our own `/v1` routes
never use these: the backend applies the model's chat template itself.

A model names its template with the `conv_template` parameter of its config.pbtxt (FastChat's
`--conv-template`); the default is ChatML, the format of SmolLM2, Qwen and most recent
instruct models.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class SeparatorStyle(IntEnum):
    """The values of FastChat's `SeparatorStyle` that our templates use (it sends ints)."""

    ADD_COLON_TWO = 2
    LLAMA2 = 7
    CHATML = 9


DEFAULT_TEMPLATE = "chatml"


@dataclass(frozen=True)
class ConvTemplate:
    """The fields of FastChat's `Conversation` that differ between our templates."""

    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep_style: SeparatorStyle
    sep: str
    sep2: str | None = None
    stop_str: str | None = None


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions."
)

_TEMPLATES: dict[str, ConvTemplate] = {
    "chatml": ConvTemplate(
        "<|im_start|>system\n{system_message}",
        "You are a helpful assistant.",
        ("<|im_start|>user", "<|im_start|>assistant"),
        SeparatorStyle.CHATML,
        "<|im_end|>",
        stop_str="<|im_end|>",
    ),
    "vicuna_v1.1": ConvTemplate(
        "{system_message}", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), SeparatorStyle.ADD_COLON_TWO, " ", "</s>"
    ),
    "llama-2": ConvTemplate(
        "[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n", "", ("[INST]", "[/INST]"), SeparatorStyle.LLAMA2, " ",
        " </s><s>",
    ),
}


def conversation_template(name: str) -> dict[str, Any]:
    """The named template as FastChat's `Conversation` JSON (ChatML when `name` is empty or
    unknown), with no messages yet."""
    key = name if name in _TEMPLATES else DEFAULT_TEMPLATE
    template = _TEMPLATES[key]
    return {
        "name": key,
        "system_template": template.system_template,
        "system_message": template.system_message,
        "roles": list(template.roles),
        "messages": [],
        "offset": 0,
        "sep_style": int(template.sep_style),
        "sep": template.sep,
        "sep2": template.sep2,
        "stop_str": template.stop_str,
        "stop_token_ids": None,
    }
