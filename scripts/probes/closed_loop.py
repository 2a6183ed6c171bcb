"""The engine alone under the scaling experiment's workload (loadtest prompt set: long and
short prompts, answers of 16-128 tokens): USERS simulated users in a closed loop for
SECONDS, then output tok/s and where the engine thread's time went.

    python scripts/probes/closed_loop.py [USERS] [SECONDS]
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any, Callable

from _common import ROOT, load_default_model  # noqa: F401 - sets sys.path

from chatllm_engine import engine as E
from chatllm_engine.config import EngineConfig
from chatllm_engine.types import GenerationRequest, SamplingParams
from loadtest.prompts import build_prompt_set
from loadtest.layouts import model_parameters

USERS = int(sys.argv[1]) if len(sys.argv) > 1 else 16
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
spent: dict[str, float] = collections.defaultdict(float)
calls: collections.Counter[str] = collections.Counter()


def timed(owner: Any, name: str) -> None:
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
            calls[name] += 1
    setattr(owner, name, wrapper)


model, tokenizer = load_default_model()
for owner, name in ((E, "forward_step"), (E.LLMEngine, "_plan"), (E.LLMEngine, "_sample_and_emit"),
                    (E.LLMEngine, "step")):
    timed(owner, name)
config = EngineConfig.from_parameters(model_parameters(ROOT / "model_repository" / "smollm2-135m-instruct"
                                                       / "config.pbtxt"))
engine = E.LLMEngine(model, tokenizer, config)
prompts = build_prompt_set(seed=0, count=64)
lock = threading.Lock()
state = {"sent": 0, "tokens": 0}
deadline = time.monotonic() + SECONDS


def submit() -> None:
    with lock:
        index = state["sent"]
        state["sent"] += 1
    prompt = prompts[index % len(prompts)]

    def sink(event: Any) -> None:
        with lock:
            state["tokens"] += getattr(event, "num_output_tokens", 0)
        if getattr(event, "finished", True) and time.monotonic() < deadline:
            threading.Thread(target=submit).start()
    engine.add_request(GenerationRequest(f"u{index}", messages=tuple(prompt.messages), sampling=SamplingParams(
        temperature=0.0, max_tokens=prompt.max_tokens, ignore_eos=True)), sink)


stepping = threading.Thread(target=engine.run)
stepping.start()
for _ in range(USERS):
    submit()
time.sleep(SECONDS)  # the measured window, not synchronisation
engine.stop()
stepping.join()
print(f"{state['tokens'] / SECONDS:.1f} output tok/s, {state['sent']} requests, {USERS} users, {SECONDS:.0f} s")
total = spent["step"]
for name in sorted(spent, key=lambda n: -spent[n]):
    print(f"{name:12s} {calls[name]:5d} calls {spent[name]:6.2f} s ({spent[name] / total:4.0%} of steps) "
          f"{spent[name] / calls[name] * 1000:6.1f} ms each")
