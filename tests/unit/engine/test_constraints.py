"""Constrained decoding (constraints.py) in the engine, on the tiny random model.

A random model never produces JSON by itself, so every valid output below is the grammar's
doing; unconstrained rows sharing the batch must be exactly what they are alone. Its strings
follow a pattern rather than a bare maxLength: a random model emits byte tokens that are not
UTF-8, which xgrammar 0.2.8 lets into free-text strings (and never ends them); the real
model's free strings and lengths are checked by scripts/probes/structured_outputs.py and the
integration tests.
"""

from __future__ import annotations

import json
import re

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.errors import InvalidRequest
from chatllm_engine.types import FinishReason, GenerationRequest, SamplingParams
from chatllm_wire import structured_output

from .support import PROMPTS, Collector, add, drain, greedy, make_engine, run_alone

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z]{1,6}$"},
        "n": {"type": "integer", "minimum": 3, "maximum": 7},
        "kind": {"enum": ["cat", "dog"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
        "inner": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -50, "maximum": 999}},
                  "required": ["x"],
                  "additionalProperties": False},
    },
    "required": ["name", "n", "kind", "tags", "inner"],
    "additionalProperties": False,
}


def valid(value: dict[str, object]) -> bool:
    inner = value["inner"]
    return (set(value) == set(SCHEMA["properties"]) and isinstance(value["name"], str)  # type: ignore[arg-type]
            and re.fullmatch("[a-z]{1,6}", value["name"]) is not None
            and isinstance(value["n"], int) and 3 <= value["n"] <= 7
            and value["kind"] in ("cat", "dog") and isinstance(value["tags"], list) and len(value["tags"]) <= 2
            and all(isinstance(t, bool) for t in value["tags"])
            and isinstance(inner, dict) and set(inner) == {"x"} and isinstance(inner["x"], int)
            and -50 <= inner["x"] <= 999)


def sampled(seed: int, kind: str, value: object, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=120, temperature=1.0, seed=seed,
                          structured=structured_output(kind, value), **kwargs)  # type: ignore[arg-type]


def test_every_constraint_kind_holds_greedy_and_sampled(tiny_model: PreTrainedModel,
                                                        tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    cases = {"json": SCHEMA, "regex": r"[0-9]{3}-[a-z]{2,4}", "choice": ["yes", "no", "你好"],
             "grammar": 'root ::= "a" ("b" | "c")* "d"'}
    for kind, value in cases.items():
        for seed in range(6):
            add(engine, out, f"{kind}-{seed}", PROMPTS[seed % len(PROMPTS)], sampled(seed, kind, value))
        add(engine, out, f"{kind}-greedy", PROMPTS[0], greedy(120, structured=structured_output(kind, value)))
    add(engine, out, "object", PROMPTS[1], sampled(1, "json_object", True))
    drain(engine)

    assert not out.errors
    for rid in out.events:
        kind, text = rid.split("-")[0], out.text(rid)
        assert out.finish(rid) is FinishReason.STOP, (rid, text)
        if kind == "json":
            assert valid(json.loads(text)), text
        elif kind == "regex":
            assert re.fullmatch(cases["regex"], text), text  # type: ignore[arg-type]
        elif kind == "choice":
            assert text in cases["choice"], text  # type: ignore[operator]
        elif kind == "grammar":
            assert re.fullmatch("a[bc]*d", text), text
        else:
            assert isinstance(json.loads(text), dict), text


def test_unconstrained_rows_are_untouched_by_constrained_neighbours(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    alone = run_alone(tiny_model, tiny_tokenizer, PROMPTS[2], greedy(12, ignore_eos=True))
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    add(engine, out, "json", PROMPTS[0], greedy(60, structured=structured_output("json", SCHEMA)))
    add(engine, out, "plain", PROMPTS[2], greedy(12, ignore_eos=True))
    add(engine, out, "choice", PROMPTS[1], greedy(20, structured=structured_output("choice", ["x", "y"])))
    drain(engine)

    assert out.tokens("plain") == alone.tokens("only")
    assert out.text("choice") in ("x", "y")


def test_seeded_constrained_sampling_is_reproducible_and_streams_in_pieces(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    first = run_alone(tiny_model, tiny_tokenizer, PROMPTS[3], sampled(42, "json", SCHEMA))
    second = run_alone(tiny_model, tiny_tokenizer, PROMPTS[3], sampled(42, "json", SCHEMA))

    assert first.tokens("only") == second.tokens("only")
    assert len(first.events["only"]) > 3, "one event per token: the JSON streams"
    assert valid(json.loads(first.text("only")))


def test_logprobs_of_constrained_rows_come_from_the_masked_distribution(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    out = run_alone(tiny_model, tiny_tokenizer, PROMPTS[0],
                    greedy(10, logprobs=3, structured=structured_output("choice", ["yes", "no"])))

    entries = [lp for e in out.events["only"] for lp in e.logprobs or ()]
    assert out.text("only") in ("yes", "no")
    assert entries and all(e.sampled.rank == 1 for e in entries), "greedy picks the best allowed token"
    assert all(e.top[0].token_id == e.sampled.token_id and e.sampled.logprob > float("-inf") for e in entries)


def test_a_stop_string_still_cuts_a_constrained_output(tiny_model: PreTrainedModel,
                                                       tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    out = run_alone(tiny_model, tiny_tokenizer, PROMPTS[0],
                    greedy(60, stop=('"n"',), structured=structured_output("json", SCHEMA)))

    assert out.finish("only") is FinishReason.STOP
    assert out.text("only").startswith('{"name"') and '"n"' not in out.text("only")


def test_max_tokens_ends_a_constrained_output_with_length(tiny_model: PreTrainedModel,
                                                          tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    out = run_alone(tiny_model, tiny_tokenizer, PROMPTS[0], greedy(3, structured=structured_output("json", SCHEMA)))

    assert out.finish("only") is FinishReason.LENGTH
    assert len(out.tokens("only")) == 3


@pytest.mark.parametrize(("kind", "value"), [
    ("grammar", 'root ::= undefined_rule'),
    ("grammar", 'root ::= "a" |'),
    ("regex", "(?<=a)b"),
    ("json", {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
])
def test_a_spec_that_does_not_compile_is_refused_before_queueing(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase, kind: str, value: object) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)

    with pytest.raises(InvalidRequest, match="does not compile"):
        engine.add_request(GenerationRequest("bad", prompt="Hello", sampling=greedy(5, structured=structured_output(
            kind, value))), Collector().sink("bad"))
    assert not engine.has_work()


def test_compiled_grammars_are_cached(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    cache = engine._grammars.get()  # noqa: SLF001 - the cache is what is tested
    spec = structured_output("json", SCHEMA)

    assert cache.compile(spec) is cache.compile(structured_output("json", json.dumps(SCHEMA)))


def test_aborting_a_constrained_request_frees_its_row(tiny_model: PreTrainedModel,
                                                      tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    add(engine, out, "a", PROMPTS[0], sampled(1, "regex", "[a-z]{50}"))
    add(engine, out, "b", PROMPTS[1], sampled(2, "regex", "[a-z]{5}"))
    engine.step()
    engine.abort("a")
    drain(engine)

    assert out.finish("a") is FinishReason.ABORT
    assert re.fullmatch("[a-z]{5}", out.text("b"))


def test_argmax_rows_whose_best_token_is_allowed_skip_the_mask_with_the_same_choice(
        tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    import torch

    from chatllm_engine.constraints import GrammarCache, mask_logits

    cache = GrammarCache(tiny_tokenizer, len(tiny_tokenizer), {2})
    spec = structured_output("regex", "[a-z]+")
    torch.manual_seed(0)
    logits = torch.randn(6, len(tiny_tokenizer))
    allowed_best = tiny_tokenizer.convert_tokens_to_ids("a")
    logits[0, allowed_best] = 50.0  # row 0's best token is allowed: its logits stay as they are
    constraints = [cache.constraint(spec) for _ in range(5)] + [None]
    masked, skipped = logits.clone(), logits.clone()

    mask_logits(masked, constraints)
    mask_logits(skipped, constraints, [True] * 6)

    assert masked.argmax(-1).tolist() == skipped.argmax(-1).tolist()
    assert torch.equal(skipped[0], logits[0]) and not torch.equal(masked[0], logits[0])
    assert torch.equal(skipped[5], logits[5]) and torch.equal(masked[5], logits[5])
