"""A deterministic chat workload: prompts of varied length with varied answer budgets.

`build_prompt_set(seed, count)` always returns the same prompts for the same arguments, on
every machine (it uses only `random.Random(seed)`). Prompt lengths come in three classes
(short questions, a paragraph of notes, a long document to summarise) and each prompt has an
answer budget (`max_tokens`) drawn from `answer_tokens`. `PromptSampler` walks a prompt set
in an order fixed by its own seed, so user number N of a run always sends the same sequence.

The words are plain English from fixed lists, so every tokenizer sees ordinary text (about
1.3 tokens per word for SmolLM2), and the echo test model answers with as many words as the
user message has (up to `max_tokens`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_ANSWER_TOKENS = (16, 32, 64, 128)
DEFAULT_ANSWER_WEIGHTS = (0.2, 0.3, 0.3, 0.2)

# (name, words of context, probability): a mix of chat turns typical for a small assistant.
LENGTH_CLASSES: tuple[tuple[str, tuple[int, int], float], ...] = (
    ("short", (0, 0), 0.5), ("medium", (40, 90), 0.35), ("long", (200, 360), 0.15))

TOPICS = (
    "the sea", "a small bakery", "learning a new language", "the history of bicycles", "green tea",
    "octopuses", "a weekend hiking trip", "recursion in programming", "the moon landing",
    "a city garden", "electric cars", "the water cycle", "chess openings", "a rainy afternoon",
    "volcanoes", "saving money", "the northern lights", "a friendly robot", "bread baking",
    "honey bees", "train travel", "the first computers", "a lighthouse keeper", "public libraries",
)
TASKS = (
    "Write a short poem about {topic}.",
    "Explain {topic} to a ten year old.",
    "Give me three tips about {topic}.",
    "Tell me a fun fact about {topic}.",
    "Describe {topic} in a few sentences.",
    "Write a friendly email to a colleague about {topic}.",
    "List the main ideas someone should know about {topic}.",
    "Invent a short story that involves {topic}.",
)
CONTEXT_TASKS = (
    "Using the notes above, answer: what matters most about {topic}?",
    "Summarise the notes above about {topic} in plain words.",
    "Turn the notes above into advice about {topic}.",
)
SENTENCES = (
    "The morning was quiet and the streets were still wet from the rain.",
    "Many people agree that small daily habits shape a long life.",
    "A good plan starts with a clear goal and a simple first step.",
    "The old map showed rivers, hills and a road that no longer exists.",
    "Engineers measured the bridge twice before they changed the design.",
    "Children in the village learned to swim in the lake every summer.",
    "The report listed costs, risks and three options for the next year.",
    "Fresh bread needs flour, water, salt, yeast and a lot of patience.",
    "The museum opened a new room about ships and the people who built them.",
    "Farmers watched the sky closely because the season had been dry.",
    "Her notes said the experiment worked only when the room was cold.",
    "The team met every Friday to share what they had learned that week.",
    "Bees visit thousands of flowers to make a single spoon of honey.",
    "The train left on time, crossed two valleys and arrived before noon.",
    "A library card opens the door to books, music and quiet places to work.",
    "Volcanic soil is rich, which is why farms often grow near old volcanoes.",
)


@dataclass(frozen=True)
class ChatPrompt:
    """One request of the workload: OpenAI chat messages and an answer budget."""

    prompt_id: int
    length_class: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int

    @property
    def words(self) -> int:
        return sum(len(m["content"].split()) for m in self.messages)


def _context(rng: random.Random, words: int) -> str:
    out: list[str] = []
    count = 0
    while count < words:
        sentence = rng.choice(SENTENCES)
        out.append(sentence)
        count += len(sentence.split())
    return " ".join(out)


def build_prompt_set(seed: int = 0, count: int = 64, answer_tokens: Sequence[int] = DEFAULT_ANSWER_TOKENS,
                     answer_weights: Sequence[float] | None = None) -> tuple[ChatPrompt, ...]:
    """`count` prompts, the same for the same arguments.

    Args:
        seed: seeds the only random generator used.
        count: how many prompts.
        answer_tokens: the answer budgets (`max_tokens`) to draw from.
        answer_weights: their probabilities; `DEFAULT_ANSWER_WEIGHTS` for the default budgets,
            uniform otherwise.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if not answer_tokens or any(t < 1 for t in answer_tokens):
        raise ValueError("answer_tokens must be positive integers")
    if answer_weights is None:
        default = tuple(answer_tokens) == DEFAULT_ANSWER_TOKENS
        answer_weights = DEFAULT_ANSWER_WEIGHTS if default else [1.0] * len(answer_tokens)
    if len(answer_weights) != len(answer_tokens):
        raise ValueError("answer_weights needs one weight per answer budget")
    rng = random.Random(seed)
    prompts = []
    for prompt_id in range(count):
        name, (low, high), _ = rng.choices(LENGTH_CLASSES, weights=[c[2] for c in LENGTH_CLASSES])[0]
        topic = rng.choice(TOPICS)
        if high == 0:
            content = rng.choice(TASKS).format(topic=topic)
        else:
            notes = _context(rng, rng.randint(low, high))
            content = f"Notes: {notes}\n\n" + rng.choice(CONTEXT_TASKS).format(topic=topic)
        max_tokens = rng.choices(list(answer_tokens), weights=list(answer_weights))[0]
        prompts.append(ChatPrompt(prompt_id, name, ({"role": "user", "content": content},), max_tokens))
    return tuple(prompts)


class PromptSampler:
    """An endless, reproducible walk over a prompt set (one per simulated user).

    Each pass over the set is a fresh shuffle from `random.Random((seed, stream))`, so
    stream N sends the same prompts in the same order in every run, and every prompt is
    sent once per pass.
    """

    def __init__(self, prompts: Sequence[ChatPrompt], seed: int = 0, stream: int = 0) -> None:
        if not prompts:
            raise ValueError("the prompt set is empty")
        self._prompts = list(prompts)
        self._rng = random.Random(f"{seed}/{stream}")
        self._order: list[int] = []

    def next(self) -> ChatPrompt:
        if not self._order:
            self._order = list(range(len(self._prompts)))
            self._rng.shuffle(self._order)
        return self._prompts[self._order.pop()]

