"""IncrementalDetokenizer: token-by-token text that never shows half a character."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerBase

from chatllm_engine.text import REPLACEMENT_CHAR, IncrementalDetokenizer

CHINESE = "你好，世界。我是一个语言模型。"


def stream(tokenizer: PreTrainedTokenizerBase, ids: list[int], prompt_ids: list[int] | None = None) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids or [])
    deltas = [detokenizer.add_token(token) for token in ids]
    return deltas + [detokenizer.flush()]


def test_chinese_split_over_byte_tokens_streams_without_replacement_characters(
        tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tiny_tokenizer(CHINESE).input_ids
    assert len(ids) > len(CHINESE), "precondition: characters span several byte-level tokens"
    assert any(REPLACEMENT_CHAR in tiny_tokenizer.decode([t]) for t in ids), "precondition: partial tokens"

    deltas = stream(tiny_tokenizer, ids)

    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    assert "".join(deltas) == tiny_tokenizer.decode(ids) == CHINESE
    assert deltas[-1] == "", "complete text leaves nothing to flush"


@pytest.mark.parametrize("text", [
    "Hello world, how are you today?",
    "def add(a, b): return a + b",
    "混合 mixed 文本, with spaces 和标点！",
    "  leading and  double  spaces ",
])
def test_deltas_join_to_the_full_decode(tiny_tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = tiny_tokenizer(text).input_ids

    deltas = stream(tiny_tokenizer, ids)

    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    assert "".join(deltas) == tiny_tokenizer.decode(ids) == text


def test_continuation_after_a_prompt_keeps_its_leading_space(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    prompt = tiny_tokenizer("The capital of France is").input_ids
    continuation = tiny_tokenizer(" Paris. 你好").input_ids

    deltas = stream(tiny_tokenizer, continuation, prompt_ids=prompt)

    assert "".join(deltas) == " Paris. 你好"


def test_context_window_starting_mid_character_does_not_garble_the_continuation(
        tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tiny_tokenizer(CHINESE).input_ids

    def fits(i: int) -> bool:
        """The prompt ids[:i] ends on a character boundary, but its last six tokens (the
        detokenizer's context) start inside a character."""
        return (not tiny_tokenizer.decode(ids[:i]).endswith(REPLACEMENT_CHAR)
                and tiny_tokenizer.decode(ids[i - 6:i]).startswith(REPLACEMENT_CHAR))

    split = next(i for i in range(7, len(ids) - 4) if fits(i))
    prompt_text = tiny_tokenizer.decode(ids[:split])

    deltas = stream(tiny_tokenizer, ids[split:], prompt_ids=ids[:split])

    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    assert "".join(deltas) == CHINESE[len(prompt_text):]


def test_an_incomplete_character_is_held_until_its_last_byte(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tiny_tokenizer("好").input_ids
    assert len(ids) >= 2, "precondition: one character, several tokens"
    detokenizer = IncrementalDetokenizer(tiny_tokenizer, [])

    held = [detokenizer.add_token(t) for t in ids[:-1]]

    assert held == [""] * (len(ids) - 1)
    assert detokenizer.add_token(ids[-1]) == "好"


def test_flush_drops_an_unfinished_character(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tiny_tokenizer("a好").input_ids
    detokenizer = IncrementalDetokenizer(tiny_tokenizer, [])

    deltas = [detokenizer.add_token(t) for t in ids[:-1]]

    assert "".join(deltas) == "a"
    assert tiny_tokenizer.decode(ids[:-1]).endswith(REPLACEMENT_CHAR), "precondition: cut inside 好"
    assert detokenizer.flush() == ""
    assert detokenizer.flush() == ""


def test_special_tokens_produce_no_text(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    eos = tiny_tokenizer.eos_token_id
    ids = tiny_tokenizer("Hello").input_ids

    deltas = stream(tiny_tokenizer, [*ids, eos, *ids])

    assert "".join(deltas) == "HelloHello"


def test_a_generation_cut_inside_a_character_drops_its_incomplete_bytes(
        tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tiny_tokenizer(CHINESE).input_ids
    cuts = [i for i in range(1, len(ids)) if tiny_tokenizer.decode(ids[:i]).endswith(REPLACEMENT_CHAR)]
    assert cuts, "precondition: some prefix ends inside a character"

    for cut in cuts:
        deltas = stream(tiny_tokenizer, ids[:cut])
        text = "".join(deltas)
        assert REPLACEMENT_CHAR not in text
        assert CHINESE.startswith(text) and text == tiny_tokenizer.decode(ids[:cut]).rstrip(REPLACEMENT_CHAR)
