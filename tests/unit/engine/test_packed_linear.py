"""oneDNN-reordered linear weights: the same model outputs, or the model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine import packed_linear
from chatllm_engine.config import EngineConfig
from chatllm_engine.loader import pack_cpu_weights
from chatllm_engine.packed_linear import PackedLinear, pack_linear_layers

from .support import PROMPTS, Collector, add, drain, greedy, make_engine, reference_greedy

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def linear_count(model: nn.Module) -> int:
    return sum(type(m) is nn.Linear for m in model.modules())


def test_packed_layer_computes_what_linear_does_for_any_leading_shape() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(24, 40)
    packed = PackedLinear(linear)
    for shape in ((1, 24), (5, 24), (2, 7, 24), (3, 1, 24)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)


def test_every_linear_of_the_model_is_packed_and_logits_stay_the_same(tiny_model: PreTrainedModel) -> None:
    model = copy.deepcopy(tiny_model)
    expected = linear_count(model)
    assert expected == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and lm_head

    assert pack_linear_layers(model) == expected
    assert linear_count(model) == 0
    ids = torch.tensor([[5, 17, 42, 9, 77, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_model(ids).logits, rtol=1e-4, atol=1e-4)


def test_engine_on_packed_weights_generates_what_plain_generate_does(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    packed = copy.deepcopy(tiny_model)
    assert pack_linear_layers(packed) > 0
    engine = make_engine(packed, tiny_tokenizer)
    out = Collector()
    for i, prompt in enumerate(PROMPTS[:4]):
        add(engine, out, f"r{i}", prompt, greedy(12))
    drain(engine)
    for i, prompt in enumerate(PROMPTS[:4]):
        assert out.tokens(f"r{i}") == reference_greedy(tiny_model, tiny_tokenizer, prompt, 12)


def test_bf16_layers_are_packed_only_when_asked_and_logits_stay_the_same(tiny_model: PreTrainedModel) -> None:
    plain = copy.deepcopy(tiny_model).to(torch.bfloat16)
    model = copy.deepcopy(plain)
    assert pack_linear_layers(model) == 0  # the caller asks for bf16 only on CPUs that compute it
    assert linear_count(model) == linear_count(tiny_model)

    assert pack_linear_layers(model, bf16=True) == linear_count(tiny_model)
    ids = torch.tensor([[5, 17, 42, 9, 77, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits, rtol=2e-2, atol=2e-2)


def test_a_torch_without_the_ops_keeps_nn_linear(tiny_model: PreTrainedModel,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object) -> None:
        raise RuntimeError("no such op")

    monkeypatch.setattr(packed_linear, "PackedLinear", lambda linear: missing())
    model = copy.deepcopy(tiny_model)
    assert pack_linear_layers(model) == 0
    assert linear_count(model) == linear_count(tiny_model)


def test_the_config_parameter_turns_packing_off(tiny_model: PreTrainedModel) -> None:
    off = EngineConfig.from_parameters({"model_path": "m", "pack_cpu_weights": "false"})
    on = EngineConfig.from_parameters({"model_path": "m"})
    assert (off.pack_cpu_weights, on.pack_cpu_weights) == (False, True)

    model = copy.deepcopy(tiny_model)
    assert pack_cpu_weights(model, off) == 0
    assert pack_cpu_weights(model, on) == linear_count(tiny_model)
