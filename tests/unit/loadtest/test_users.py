"""What the Locust users report, the stepped shape, and the users' options (no load is run)."""

from __future__ import annotations

import argparse
from argparse import Namespace
from types import SimpleNamespace

import pytest
from locust.env import Environment

from loadtest.shapes import StepLoadShape, parse_steps, step_at
from loadtest.timing import StreamMeasurement
from loadtest.users import (CHAT_ROUTE, ITL, TOKENS_PER_S, TTFT, ChatUser, LoadOptions, add_arguments, report,
                            token_summary)


def finished(start: float = 100.0) -> StreamMeasurement:
    return StreamMeasurement(start=start, end=start + 2.0, token_times=[start + 0.5, start + 1.0, start + 1.5],
                             output_tokens=4, prompt_tokens=9, received_bytes=321)


def test_a_finished_request_fires_latency_ttft_itl_and_tokens_per_second() -> None:
    env = Environment(user_classes=[ChatUser])
    fired: list[dict[str, object]] = []
    env.events.request.add_listener(lambda **kw: fired.append(kw))

    report(env, "POST", CHAT_ROUTE, finished(), None)

    assert [(e["request_type"], e["name"]) for e in fired] == [
        ("POST", CHAT_ROUTE), (TTFT, CHAT_ROUTE), (ITL, CHAT_ROUTE), (TOKENS_PER_S, CHAT_ROUTE)]
    assert [round(float(e["response_time"]), 3) for e in fired] == [2000.0, 500.0, 333.333, 2.0]  # type: ignore[arg-type]
    assert [e["response_length"] for e in fired] == [321, 0, 0, 4]
    assert all(isinstance(e["context"]["stream"], StreamMeasurement) for e in fired)  # type: ignore[index]


def with_stats() -> Environment:
    env = Environment(user_classes=[ChatUser])
    env.create_local_runner()  # the runner is what feeds request events into env.stats
    return env


def test_a_failed_request_is_one_failure_and_nothing_else() -> None:
    env = with_stats()

    report(env, "POST", CHAT_ROUTE, StreamMeasurement(start=1.0, end=1.2), RuntimeError("HTTP 503"))

    assert env.stats.total.num_requests == 1 and env.stats.total.num_failures == 1
    assert (CHAT_ROUTE, TTFT) not in env.stats.entries


def test_the_summary_gives_tokens_per_second_of_all_users_and_ttft() -> None:
    env = with_stats()
    for start in (100.0, 101.0):
        report(env, "POST", CHAT_ROUTE, finished(start), None)
    env.stats.total.start_time = 100.0
    env.stats.total.last_request_timestamp = 104.0

    (line,) = token_summary(env.stats)

    assert line.startswith(f"{CHAT_ROUTE}: 2 requests, 8 output tokens in 4.0 s = 2.0 output tok/s")
    assert "TTFT p50 500 ms" in line


def test_options_come_from_locusts_parsed_options_or_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed = parser.parse_args(["--model", "smollm2", "--answer-tokens", "8,16", "--natural-stop"])

    options = LoadOptions.from_environment(Environment(parsed_options=parsed))

    assert options.model == "smollm2" and options.workload.answer_tokens == (8, 16) and options.workload.natural_stop
    assert options.workload.prompt_count == 64 and options.triton_grpc == ""
    assert LoadOptions.from_environment(Environment()) == LoadOptions()
    assert LoadOptions.from_environment(Environment(parsed_options=Namespace(prompt_seed=3))).workload.prompt_seed == 3
    assert LoadOptions.from_environment(Environment(parsed_options=options.as_parsed_options())) == options


def test_steps() -> None:
    assert parse_steps("1, 4,16") == (1, 4, 16)
    with pytest.raises(ValueError):
        parse_steps("1,0")
    assert [step_at(t, (1, 4), 10.0) for t in (0.0, 9.9, 10.0, 19.9, 20.0)] == [1, 1, 4, 4, None]


def test_the_shape_follows_the_options() -> None:
    shape = StepLoadShape()
    shape.runner = SimpleNamespace(  # type: ignore[assignment]
        environment=SimpleNamespace(parsed_options=Namespace(step_users="2,8", step_seconds=5.0)))

    shape.start_time -= 6.0  # 6 s into the run: the second step

    assert shape.tick() == (8, 8.0)
    shape.start_time -= 5.0
    assert shape.tick() is None
