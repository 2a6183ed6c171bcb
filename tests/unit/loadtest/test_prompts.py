"""The workload is deterministic, varied, and every user walks it reproducibly."""

from __future__ import annotations

from collections import Counter

import pytest

from loadtest.prompts import DEFAULT_ANSWER_TOKENS, PromptSampler, build_prompt_set
from loadtest.workload import parse_positive_ints


def test_the_same_seed_gives_the_same_prompts_and_another_seed_others() -> None:
    assert build_prompt_set(seed=7, count=32) == build_prompt_set(seed=7, count=32)
    assert build_prompt_set(seed=7, count=32) != build_prompt_set(seed=8, count=32)


def test_prompts_vary_in_length_and_answer_budget() -> None:
    prompts = build_prompt_set(seed=0, count=200)

    classes = Counter(p.length_class for p in prompts)
    budgets = Counter(p.max_tokens for p in prompts)
    words = {p.length_class: [q.words for q in prompts if q.length_class == p.length_class] for p in prompts}

    assert set(classes) == {"short", "medium", "long"}
    assert classes["short"] > classes["medium"] > classes["long"] > 0
    assert set(budgets) == set(DEFAULT_ANSWER_TOKENS)
    assert max(words["short"]) < min(words["medium"]) and max(words["medium"]) < min(words["long"])
    assert all(p.messages[-1]["role"] == "user" and p.messages[-1]["content"] for p in prompts)


def test_custom_answer_budgets_are_drawn_uniformly_by_default() -> None:
    prompts = build_prompt_set(seed=1, count=300, answer_tokens=(5, 9))

    counts = Counter(p.max_tokens for p in prompts)

    assert set(counts) == {5, 9}
    assert abs(counts[5] - counts[9]) < 60


@pytest.mark.parametrize("kwargs", [{"count": 0}, {"answer_tokens": ()}, {"answer_tokens": (0, 4)},
                                    {"answer_tokens": (4, 8), "answer_weights": (1.0,)}])
def test_bad_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_prompt_set(**kwargs)  # type: ignore[arg-type]


def test_a_sampler_stream_is_reproducible_and_sends_each_prompt_once_per_pass() -> None:
    prompts = build_prompt_set(seed=0, count=10)

    first = [PromptSampler(prompts, seed=0, stream=3).next().prompt_id for _ in range(1)]
    a, b, c = PromptSampler(prompts, 0, 3), PromptSampler(prompts, 0, 3), PromptSampler(prompts, 0, 4)
    walk_a = [a.next().prompt_id for _ in range(20)]
    walk_b = [b.next().prompt_id for _ in range(20)]
    walk_c = [c.next().prompt_id for _ in range(20)]

    assert walk_a == walk_b and walk_a[:1] == first
    assert walk_a != walk_c
    assert sorted(walk_a[:10]) == list(range(10)) and sorted(walk_a[10:]) == list(range(10))


def test_parse_answer_tokens() -> None:
    assert parse_positive_ints("16, 32,64", "--answer-tokens") == (16, 32, 64)
    for bad in ("", "a,b", "0,4", "-1"):
        with pytest.raises(ValueError, match="--answer-tokens"):
            parse_positive_ints(bad, "--answer-tokens")
