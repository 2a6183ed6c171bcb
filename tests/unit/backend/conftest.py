"""Load the Triton adapter (backends/chatllm/model.py) outside Triton, with a stand-in for
`triton_python_backend_utils` that records what the adapter sends."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MODEL_PY = Path(__file__).resolve().parents[3] / "backends" / "chatllm" / "model.py"


def _fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1  # type: ignore[attr-defined]

    class TritonError:
        INVALID_ARG, UNAVAILABLE, CANCELLED, INTERNAL = 3, 14, 1, 13

        def __init__(self, message: str, code: int = 13) -> None:
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors: Any = None, error: Any = None) -> None:
            self.output_tensors, self.error = output_tensors, error

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self._name, self._array = name, array

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
            return self._array

    class TritonModelException(Exception):
        pass

    def get_input_tensor_by_name(request: FakeRequest, name: str) -> Tensor | None:
        array = request.inputs.get(name)
        return None if array is None else Tensor(name, array)

    pb.TritonError = TritonError  # type: ignore[attr-defined]
    pb.InferenceResponse = InferenceResponse  # type: ignore[attr-defined]
    pb.Tensor = Tensor  # type: ignore[attr-defined]
    pb.TritonModelException = TritonModelException  # type: ignore[attr-defined]
    pb.get_input_tensor_by_name = get_input_tensor_by_name  # type: ignore[attr-defined]
    return pb


class FakeRequest:
    """A Triton request as the adapter reads it: named input tensors (shape [1, 1] as Triton
    sends a batched model's; strings as bytes)."""

    def __init__(self, **values: Any) -> None:
        self.inputs: dict[str, np.ndarray] = {}
        for name, value in values.items():
            if isinstance(value, str):
                value = value.encode("utf-8")
            dtype = np.object_ if isinstance(value, bytes) else type(value)
            self.inputs[name] = np.array([[value]], dtype=dtype)


@pytest.fixture(scope="session")
def backend_model() -> types.ModuleType:
    """backends/chatllm/model.py imported with the stand-in pb_utils."""
    previous = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = _fake_pb_utils()
    try:
        spec = importlib.util.spec_from_file_location("chatllm_backend_model", MODEL_PY)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        return module
    finally:
        if previous is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = previous
