"""The long, uneven workload: "document + question" chat prompts, as RAG front ends send them.

Each prompt is an excerpt of documentation (docstrings of Python standard-library modules,
read with `inspect` from the running interpreter, so nothing is downloaded) followed by a
question about it. Excerpt lengths follow a log-normal draw, so most prompts are a few hundred
tokens and a few run to thousands; with SmolLM2's tokenizer and chat template the default
set (48 prompts, seed 0, Python 3.11) spans 64 to 1,993 tokens, median 254, mean 373. Answers get up to
`max_tokens` (128) and end at EOS. The same seed gives the same prompts for the same Python
minor version (docstrings change between releases).
"""

from __future__ import annotations

import importlib
import inspect
import random
from functools import cache

from loadtest.prompts import ChatPrompt

# Modules whose docstrings make the documents: plain prose, importable everywhere, no side effects.
MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "collections", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fractions",
    "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "numbers", "operator",
    "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets",
    "shlex", "shutil", "smtplib", "socket", "statistics", "string", "struct", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "typing", "unittest",
    "urllib.parse", "uuid", "warnings", "weakref", "zipfile",
)
QUESTIONS = (
    "Using the documentation above, explain in plain words what `{name}` is for.",
    "Summarise the documentation above in three sentences.",
    "According to the text above, what are the main things `{name}` lets a programmer do?",
    "Based on the documentation above, give one short example of when to use `{name}`.",
    "What would a beginner find hardest in the documentation above? Answer briefly.",
)
MEDIAN_WORDS = 85  # ~2.4 SmolLM2 tokens per word of docstrings, plus the chat template's ~35
SPREAD = 1.35  # sigma of the log-normal draw of words per document
MIN_WORDS, MAX_WORDS = 10, 1400
DEFAULT_COUNT = 48
DEFAULT_MAX_TOKENS = 128


@cache
def _module_text(name: str) -> str:
    """The module's docstring and those of its public classes and functions, in source order."""
    module = importlib.import_module(name)
    parts = [inspect.getdoc(module) or ""]
    for attr, value in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            doc = inspect.getdoc(value)
            if doc:
                parts.append(f"{attr}: {doc}")
    return "\n\n".join(p for p in parts if p.strip())


def build_document_prompts(seed: int = 0, count: int = DEFAULT_COUNT,
                           max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[ChatPrompt, ...]:
    """`count` document + question prompts, the same for the same arguments and Python."""
    if count < 1:
        raise ValueError("count must be at least 1")
    rng = random.Random(seed)
    prompts = []
    for prompt_id in range(count):
        first = rng.randrange(len(MODULES))
        name = MODULES[first]
        words: list[str] = []
        for other in MODULES[first:] + MODULES[:first]:  # a long excerpt runs on into the next modules
            words += _module_text(other).split(" ")
            if len(words) > 2 * MAX_WORDS:
                break
        want = int(min(MAX_WORDS, max(MIN_WORDS, rng.lognormvariate(0.0, SPREAD) * MEDIAN_WORDS)))
        start = rng.randrange(max(1, len(words) - want)) if len(words) > want else 0
        excerpt = " ".join(words[start:start + want])
        question = rng.choice(QUESTIONS).format(name=name)
        content = f"Documentation of the Python module `{name}`:\n\n{excerpt}\n\n{question}"
        prompts.append(ChatPrompt(prompt_id, "document", ({"role": "user", "content": content},), max_tokens))
    return tuple(prompts)
