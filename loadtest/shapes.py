"""Stepped load for scaling sweeps in Locust's own UI or console.

    locust -f loadtest/chat.py,loadtest/shapes.py ChatUser --headless \
        --step-users 1,4,16,64 --step-seconds 30 --host http://127.0.0.1:9000

holds each user count for `--step-seconds`, starting all of a step's users at once, then
stops. (`tritonchat experiment` measures the same steps as separate points, with fresh
statistics and metric scrapes per step.)
"""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape, events

from loadtest.workload import parse_positive_ints

DEFAULT_STEPS = (1, 4, 16, 64)
DEFAULT_STEP_SECONDS = 30.0


def parse_steps(text: str) -> tuple[int, ...]:
    """`"1,4,16"` -> (1, 4, 16); every step must be a positive user count."""
    return parse_positive_ints(text, "--step-users")


def step_at(run_time: float, steps: tuple[int, ...], step_seconds: float) -> int | None:
    """The user count at `run_time`, or None once every step has had its time."""
    index = int(run_time // step_seconds)
    return steps[index] if index < len(steps) else None


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("stepped load (loadtest/shapes.py)")
    group.add_argument("--step-users", default=",".join(map(str, DEFAULT_STEPS)),
                       help="user counts, one per step, comma-separated")
    group.add_argument("--step-seconds", type=float, default=DEFAULT_STEP_SECONDS, help="seconds per step")


class StepLoadShape(LoadTestShape):
    """Each of `--step-users` for `--step-seconds`, then stop."""

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner is not None else None
        steps = parse_steps(str(getattr(options, "step_users", None) or ",".join(map(str, DEFAULT_STEPS))))
        seconds = float(getattr(options, "step_seconds", None) or DEFAULT_STEP_SECONDS)
        users = step_at(self.get_run_time(), steps, seconds)
        return None if users is None else (users, float(users))
