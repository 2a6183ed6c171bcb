"""Typed engine errors; `model.py` maps each to one TritonError code."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidRequest(EngineError):
    """The request itself is wrong (bad sampling value, empty prompt, ...)."""


class ContextTooLong(InvalidRequest):
    """Prompt plus max_tokens do not fit the model's context or the KV-cache budget."""


class EngineOverloaded(EngineError):
    """The waiting queue is full; the client may retry later."""


class RequestCancelled(EngineError):
    """The client cancelled the request."""


class EngineDead(EngineError):
    """The engine loop stopped after an internal failure."""
