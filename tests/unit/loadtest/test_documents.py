"""The long workload's document + question prompts: reproducible, uneven, no download."""

from __future__ import annotations

from loadtest.documents import DEFAULT_COUNT, build_document_prompts
from loadtest.bench import workload_jobs


def test_the_same_seed_gives_the_same_uneven_prompts() -> None:
    prompts = build_document_prompts()
    assert prompts == build_document_prompts(seed=0)
    assert prompts != build_document_prompts(seed=1)
    assert len(prompts) == DEFAULT_COUNT
    words = sorted(p.words for p in prompts)
    assert words[-1] > 10 * words[0], "lengths vary by more than an order of magnitude"
    assert all(p.max_tokens == 128 and "Documentation of the Python module" in p.messages[0]["content"]
               for p in prompts)


def test_the_long_bench_workload_sends_every_prompt_once_over_closed_loop_users() -> None:
    users = workload_jobs("long", 16, 64)
    assert len(users) == 16 and all(len(u) == 3 for u in users)
    assert all(not job.ignore_eos and job.max_tokens == 128 for u in users for job in u)
    assert sum(len(u) for u in workload_jobs("long", 64, 64)) == 64, "at least one request per user"
    assert [len(u) for u in workload_jobs("short", 4, 7)] == [1, 1, 1, 1]
