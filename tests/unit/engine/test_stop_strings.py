"""Stop strings: the text ends right before the first one, and no part of it is ever streamed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatllm_engine.text import REPLACEMENT_CHAR, StopStringMatcher
from chatllm_engine.types import FinishReason

from .support import PROMPTS, Collector, add, drain, greedy, make_engine, make_eos_setup, run_alone

MAX_TOKENS = 40

# ---- StopStringMatcher on its own ------------------------------------------------------------


@dataclass(frozen=True)
class Feeding:
    stops: tuple[str, ...]
    deltas: list[str]
    released: list[str]  # what each feed() returns
    flushed: str  # what flush() returns at the end
    stopped: bool


@pytest.mark.parametrize("case", [
    pytest.param(Feeding((), ["Hello", " wor", "ld"], ["Hello", " wor", "ld"], "", False),
                 id="text without stop strings passes through unchanged"),
    pytest.param(Feeding(("STOP",), ["abc STOP def", "more"], ["abc ", ""], "", True),
                 id="text is cut right before the stop string"),
    pytest.param(Feeding(("world",), ["Hello wo", "r", "ld, bye"], ["Hello ", "", ""], "", True),
                 id="a possible start of a stop string is held back until it matches"),
    pytest.param(Feeding(("world",), ["Hello wo", "nder", "ful w"], ["Hello ", "wonder", "ful "], "w", False),
                 id="held back text is released once it cannot match"),
    pytest.param(Feeding(("</s>",), list("answer</s>tail"), [*"answer", *[""] * 8], "", True),
                 id="a stop string fed one character at a time never leaks"),
    pytest.param(Feeding(("xyz", "b"), ["ax", "yzb"], ["a", ""], "", True),
                 id="the earliest of several stop strings wins"),
    pytest.param(Feeding(("ab", "abcd"), ["xa", "bcd"], ["x", ""], "", True),
                 id="a longer stop string sharing a prefix is still found"),
    # "aaa" ends with "aa": the first "a" is safe, the last two could start "aab".
    pytest.param(Feeding(("aab",), ["aaa", "b"], ["a", ""], "", True),
                 id="overlapping prefix is held back for the next candidate"),
    pytest.param(Feeding(("",), ["text"], ["text"], "", False), id="empty stop strings are ignored"),
])
def test_stop_string_matcher(case: Feeding) -> None:
    matcher = StopStringMatcher(case.stops)

    assert [matcher.feed(delta) for delta in case.deltas] == case.released
    assert matcher.flush() == case.flushed
    assert matcher.stopped is case.stopped


# ---- stop strings in generation --------------------------------------------------------------


@dataclass(frozen=True)
class Free:
    """Greedy output without stop strings: per-token text deltas and the full text."""

    tokens: list[int]
    deltas: list[str]

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    def token_completing(self, end: int) -> int:
        """Index of the token whose delta brings the text to at least `end` characters."""
        length = 0
        for index, delta in enumerate(self.deltas):
            length += len(delta)
            if length >= end:
                return index
        raise AssertionError("the text is shorter than that")


@pytest.fixture(scope="module")
def free(tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> Free:
    out = run_alone(tiny_model, tiny_tokenizer, PROMPTS[0], greedy(MAX_TOKENS, ignore_eos=True))
    return Free(out.tokens("only"), [e.text for e in out.events["only"]])


def spanning_stop_string(free: Free) -> str:
    """A clean piece of the output that starts inside one token and ends inside another,
    two tokens later: the stop string is then split over three deltas."""
    d = free.deltas
    for i in range(len(d) - 2):
        clean = all(d[j] and REPLACEMENT_CHAR not in d[j] for j in (i, i + 1, i + 2))
        if clean and len(d[i + 2]) >= 2:
            return d[i][-1] + d[i + 1] + d[i + 2][0]
    raise AssertionError(f"no clean three-token stretch in {d}")


def generate_with_stops(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, stops: tuple[str, ...],
                        **config: object) -> Collector:
    return run_alone(model, tokenizer, PROMPTS[0], greedy(MAX_TOKENS, ignore_eos=True, stop=stops), **config)


def test_text_ends_right_before_a_stop_string_spanning_several_tokens(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase, free: Free) -> None:
    stop = spanning_stop_string(free)
    cut = free.text.find(stop)

    out = generate_with_stops(tiny_model, tiny_tokenizer, (stop,))

    assert out.finish("only") is FinishReason.STOP
    assert out.text("only") == free.text[:cut]
    # Generation stopped at the token that completed the stop string, not later.
    assert out.tokens("only") == free.tokens[:free.token_completing(cut + len(stop)) + 1]


@pytest.mark.parametrize("stream_interval", [1, 4])
def test_no_part_of_the_stop_string_is_streamed(tiny_model: PreTrainedModel,
                                                tiny_tokenizer: PreTrainedTokenizerBase, free: Free,
                                                stream_interval: int) -> None:
    stop = spanning_stop_string(free)
    cut = free.text.find(stop)

    out = generate_with_stops(tiny_model, tiny_tokenizer, (stop,), stream_interval=stream_interval)

    streamed = ""
    for event in out.events["only"]:
        streamed += event.text
        assert free.text[:cut].startswith(streamed), f"{streamed!r} went past the stop string"
    assert streamed == free.text[:cut]


def test_a_stop_string_inside_one_token_cuts_that_token(tiny_model: PreTrainedModel,
                                                        tiny_tokenizer: PreTrainedTokenizerBase,
                                                        free: Free) -> None:
    index, delta = next((i, d) for i, d in enumerate(free.deltas) if len(d) >= 3 and REPLACEMENT_CHAR not in d)
    stop = delta[1:-1]
    cut = free.text.find(stop)

    out = generate_with_stops(tiny_model, tiny_tokenizer, (stop,))

    assert out.text("only") == free.text[:cut]
    assert len(out.tokens("only")) <= index + 1


def test_the_earliest_stop_string_in_the_text_wins(tiny_model: PreTrainedModel,
                                                   tiny_tokenizer: PreTrainedTokenizerBase, free: Free) -> None:
    late = spanning_stop_string(free)
    early = next(d for d in free.deltas if d and REPLACEMENT_CHAR not in d)
    assert free.text.find(early) < free.text.find(late), "precondition"

    out = generate_with_stops(tiny_model, tiny_tokenizer, (late, early))

    assert out.text("only") == free.text[:free.text.find(early)]


def test_a_stop_string_that_never_completes_releases_everything(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase, free: Free) -> None:
    # Its first characters occur in the output (and are held back each time) but it never matches.
    near_miss = spanning_stop_string(free) + "\x00never"

    out = generate_with_stops(tiny_model, tiny_tokenizer, (near_miss,))

    assert out.finish("only") is FinishReason.LENGTH
    assert out.text("only") == free.text
    assert out.tokens("only") == free.tokens


def test_stop_strings_of_one_request_do_not_affect_another(tiny_model: PreTrainedModel,
                                                           tiny_tokenizer: PreTrainedTokenizerBase,
                                                           free: Free) -> None:
    stop = spanning_stop_string(free)
    engine = make_engine(tiny_model, tiny_tokenizer)
    out = Collector()
    add(engine, out, "stopped", PROMPTS[0], greedy(MAX_TOKENS, ignore_eos=True, stop=(stop,)))
    add(engine, out, "free", PROMPTS[0], greedy(MAX_TOKENS, ignore_eos=True))
    drain(engine)

    assert out.text("stopped") == free.text[:free.text.find(stop)]
    assert out.text("free") == free.text
    assert out.finish("free") is FinishReason.LENGTH


def test_a_stop_string_prefix_at_the_end_of_a_length_stop_is_released(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    prompt = "The capital of Italy is"
    free = run_alone(tiny_model, tiny_tokenizer, prompt, greedy(MAX_TOKENS, ignore_eos=True))
    tail = free.text("only")[-3:]
    assert REPLACEMENT_CHAR not in tail, "precondition: a clean end of text"

    out = run_alone(tiny_model, tiny_tokenizer, prompt, greedy(MAX_TOKENS, ignore_eos=True, stop=(tail + "\x00",)))

    assert out.finish("only") is FinishReason.LENGTH
    assert out.text("only") == free.text("only")
    assert out.events["only"][-1].text.endswith(tail), "the held-back tail rides with the final event"


def test_a_stop_string_prefix_held_back_when_eos_comes_is_released(
        tiny_model: PreTrainedModel, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    setup = make_eos_setup(tiny_model, tiny_tokenizer, PROMPTS[0], clean_text_before=True)
    before_eos = tiny_tokenizer.decode(setup.reference[:setup.eos_index])
    tail = before_eos[-1]

    out = run_alone(setup.model, tiny_tokenizer, setup.prompt, greedy(MAX_TOKENS, stop=(tail + "\x00",)))

    assert out.finish("only") is FinishReason.STOP
    assert out.tokens("only")[-1] == setup.eos
    assert out.text("only") == before_eos
