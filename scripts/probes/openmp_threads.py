"""Decode-step time of a batch of 16 depending on which threads have run torch work.

    python scripts/probes/openmp_threads.py main     # all torch work on the main thread
    python scripts/probes/openmp_threads.py thread   # all of it on one other thread
    python scripts/probes/openmp_threads.py both     # main, then another thread, then main

Prints ms per decode step, four measurements per phase.
"""

from __future__ import annotations

import sys
import threading
import time

from _common import chat_prompts, load_default_model

import _steps as B

model, tokenizer = load_default_model()
prompts = chat_prompts(tokenizer, 16)
out: list[float] = []


def step_ms(steps: int = 30) -> float:
    batch, logits = B.prefill(model, prompts)
    start = time.perf_counter()
    for _ in range(steps):
        batch, logits = B.decode(model, batch, logits.argmax(-1).tolist())
    return (time.perf_counter() - start) / steps * 1000


def work() -> None:
    out.extend(round(step_ms(), 1) for _ in range(4))


def on_thread() -> None:
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


mode = sys.argv[1]
phases = {"main": [work], "thread": [on_thread], "both": [work, on_thread, work]}[mode]
for phase in phases:
    phase()
print(mode, out)
