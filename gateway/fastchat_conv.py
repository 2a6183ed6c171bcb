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

from enum import IntEnum
from typing import Any


class SeparatorStyle(IntEnum):
    """The values of FastChat's `SeparatorStyle` that our templates use (it sends ints)."""

    ADD_COLON_TWO = 2
    LLAMA2 = 7
    CHATML = 9


DEFAULT_TEMPLATE = "chatml"


def _conversation(
    name: str,
    *,
    system_template: str,
    system_message: str,
    roles: tuple[str, str],
    sep_style: SeparatorStyle,
    sep: str,
    sep2: str | None = None,
    stop_str: str | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "system_template": system_template,
        "system_message": system_message,
        "roles": list(roles),
        "messages": [],
        "offset": 0,
        "sep_style": int(sep_style),
        "sep": sep,
        "sep2": sep2,
        "stop_str": stop_str,
        "stop_token_ids": None,
    }


_TEMPLATES: dict[str, dict[str, Any]] = {
    "chatml": _conversation(
        "chatml",
        system_template="<|im_start|>system\n{system_message}",
        system_message="You are a helpful assistant.",
        roles=("<|im_start|>user", "<|im_start|>assistant"),
        sep_style=SeparatorStyle.CHATML,
        sep="<|im_end|>",
        stop_str="<|im_end|>",
    ),
    "vicuna_v1.1": _conversation(
        "vicuna_v1.1",
        system_template="{system_message}",
        system_message="A chat between a curious user and an artificial intelligence "
        "assistant. The assistant gives helpful, detailed, and polite answers to the user's "
        "questions.",
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.ADD_COLON_TWO,
        sep=" ",
        sep2="</s>",
    ),
    "llama-2": _conversation(
        "llama-2",
        system_template="[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n",
        system_message="",
        roles=("[INST]", "[/INST]"),
        sep_style=SeparatorStyle.LLAMA2,
        sep=" ",
        sep2=" </s><s>",
    ),
}


def known_templates() -> tuple[str, ...]:
    return tuple(_TEMPLATES)


def conversation_template(name: str) -> dict[str, Any]:
    """A fresh copy of the named template (ChatML when `name` is empty or unknown)."""
    template = _TEMPLATES.get(name or DEFAULT_TEMPLATE, _TEMPLATES[DEFAULT_TEMPLATE])
    return {**template, "roles": list(template["roles"]), "messages": []}
