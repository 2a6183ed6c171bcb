"""What every load test sends: the prompt set, the answer budgets and when answers end.

`WorkloadOptions` is the one place the five workload flags (`--prompt-seed`, `--prompt-count`,
`--answer-tokens`, `--natural-stop`, `--workload`) are declared and parsed, for the Locust
users (`loadtest.users`) and `tritonchat experiment` (`loadtest.config`) alike. Plain Python:
no Locust import.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from typing import Any

from loadtest.documents import build_document_prompts
from loadtest.prompts import DEFAULT_ANSWER_TOKENS, ChatPrompt, build_prompt_set

WORKLOADS = ("mixed", "documents")
"""mixed: `loadtest.prompts` (seeded chat turns); documents: `loadtest.documents` (long, uneven
document + question prompts, up to 128 tokens each; pair with --natural-stop)."""


def parse_positive_ints(text: str, what: str) -> tuple[int, ...]:
    """`"1,4,16"` -> (1, 4, 16); `what` names the value in the error (e.g. "--step-users")."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{what} must be positive integers, got {text!r}")
    return values


@dataclass(frozen=True)
class WorkloadOptions:
    """Which prompts a run sends and how long the answers are."""

    prompt_seed: int = 0
    prompt_count: int = 64
    answer_tokens: tuple[int, ...] = DEFAULT_ANSWER_TOKENS
    natural_stop: bool = False
    """False: every answer is exactly `max_tokens` long (EOS ignored)."""
    kind: str = "mixed"
    """One of `WORKLOADS` (the `--workload` flag)."""

    @staticmethod
    def add_arguments(parser: Any) -> None:
        """Declare the five flags on an argparse parser or argument group (Locust's included)."""
        parser.add_argument("--prompt-seed", type=int, default=0,
                            help="seed of the prompt set and of each user's order")
        parser.add_argument("--prompt-count", type=int, default=64, help="prompts in the set")
        parser.add_argument("--answer-tokens", default=",".join(map(str, DEFAULT_ANSWER_TOKENS)),
                            help="answer budgets (max_tokens) drawn per prompt, comma-separated")
        parser.add_argument("--natural-stop", action="store_true",
                            help="let answers end at EOS (default: exactly max_tokens, ignore_eos)")
        parser.add_argument("--workload", choices=WORKLOADS, default="mixed",
                            help="mixed: seeded chat turns; documents: long document + question prompts "
                                 "(use with --natural-stop and --prompt-count 48)")

    @classmethod
    def from_args(cls, args: argparse.Namespace | None) -> WorkloadOptions:
        """The options of parsed flags; a flag that is absent or empty keeps its default."""
        def get(name: str, default: Any) -> Any:
            value = getattr(args, name, None)
            return default if value in (None, "") else value

        answer = get("answer_tokens", DEFAULT_ANSWER_TOKENS)
        return cls(prompt_seed=int(get("prompt_seed", 0)), prompt_count=int(get("prompt_count", 64)),
                   answer_tokens=(parse_positive_ints(answer, "--answer-tokens") if isinstance(answer, str)
                                  else tuple(answer)),
                   natural_stop=bool(get("natural_stop", False)), kind=str(get("workload", "mixed")))

    def as_flags(self) -> dict[str, Any]:
        """The parsed-flag values that `from_args` reads back (for Locust's `parsed_options`)."""
        return {"prompt_seed": self.prompt_seed, "prompt_count": self.prompt_count,
                "answer_tokens": ",".join(map(str, self.answer_tokens)), "natural_stop": self.natural_stop,
                "workload": self.kind}

    def prompts(self) -> tuple[ChatPrompt, ...]:
        """The prompt set (the same for the same options, built once per process)."""
        return _prompt_set(self)

    def describe(self) -> dict[str, Any]:
        """The options and the prompt set's sizes, as an experiment's manifest records them."""
        prompts = self.prompts()
        words = [p.words for p in prompts]
        return {"prompt_seed": self.prompt_seed, "prompt_count": self.prompt_count,
                "answer_tokens": list(self.answer_tokens), "natural_stop": self.natural_stop,
                "workload": self.kind,
                "prompt_words_min": min(words), "prompt_words_max": max(words),
                "prompt_words_mean": sum(words) / len(words),
                "answer_tokens_mean": sum(p.max_tokens for p in prompts) / len(prompts)}


@functools.lru_cache(maxsize=8)
def _prompt_set(options: WorkloadOptions) -> tuple[ChatPrompt, ...]:
    if options.kind == "documents":
        return build_document_prompts(options.prompt_seed, options.prompt_count)
    return build_prompt_set(options.prompt_seed, options.prompt_count, options.answer_tokens)
