"""Locust users that stream chat generations and report TTFT, ITL and tokens/s.

Two user classes send the same deterministic workload (`loadtest.prompts`, greedy, answer
lengths fixed by `max_tokens` unless `--natural-stop`):
- `ChatUser`: `POST /v1/chat/completions` with `stream: true` through the gateway.
- `TritonGrpcUser`: Triton's `ModelStreamInfer` gRPC stream directly, with the very request
  the gateway would send (`gateway.triton_client.build_request`); comparing its rows with
  ChatUser's under the same load tells the gateway's own overhead apart.

Each user is a closed loop: it sends its next request as soon as the last one ended.

What each finished request reports (Locust `events.request`, so the rows show up in the web
UI, the console table, `--csv` and the HTML report; the name is the route, `/v1/chat/completions`
or `ModelStreamInfer`):

| Type    | "response time" column                     | "size" column          |
| ------- | ------------------------------------------ | ---------------------- |
| `POST` / `gRPC` | whole request until the last token, ms | bytes received |
| `TTFT`  | time to first token, ms                    | 0                      |
| `ITL`   | mean inter-token gap of the request, ms    | 0                      |
| `TOK/S` | output tokens per second of the request (a rate, not ms) | output tokens |

A failed request is one `POST`/`gRPC` failure (HTTP status, in-band stream error, gRPC
error) and no TTFT/ITL/TOK/S rows. Locust's "Aggregated" row adds all types together: read
the typed rows. The aggregate output rate of all users (total output tokens over the run
time) is logged when the run ends (`log_token_summary`); the `TOK/S` row's total size is the
total output tokens.

Each event's `context` carries the `StreamMeasurement` under "stream" (the experiment runner
records the token arrival times from it).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import uuid
from argparse import Namespace
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
import requests
from gevent import monkey
from locust import User, constant, task
from locust.env import Environment
from locust.stats import RequestStats

from loadtest.prompts import PromptSampler
from loadtest.timing import StreamError, StreamMeasurement, record_chat_event, sse_data
from loadtest.workload import WorkloadOptions

if monkey.is_module_patched("socket"):  # under Locust; not in tests that skip its monkey-patching
    grpc_gevent.init_gevent()  # gRPC must cooperate with the gevent loop before any channel exists

# Imported after init_gevent: they load grpc's aio modules.
from chatllm_wire import WireSampling  # noqa: E402
from gateway.llm_client import GenerationInput  # noqa: E402
from gateway.triton_client import build_request, decode_response  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

if monkey.is_module_patched("socket"):
    # gevent's loop caches the time, and the imports above can take seconds on a busy machine:
    # a timer set from that stale clock (Locust's --run-time) would fire at once.
    gevent.get_hub().loop.update_now()

logger = logging.getLogger(__name__)

CHAT_ROUTE = "/v1/chat/completions"
GRPC_NAME = "ModelStreamInfer"
TTFT, ITL, TOKENS_PER_S = "TTFT", "ITL", "TOK/S"
DEFAULT_GRPC_PORT = 8001


class HttpStatusError(Exception):
    """The gateway answered with an error status before streaming."""


@dataclass(frozen=True)
class LoadOptions:
    """The users' settings: Locust's parsed options (see `add_arguments`) or defaults."""

    model: str = ""
    triton_grpc: str = ""
    triton_model: str = ""
    request_timeout_s: float = 300.0
    workload: WorkloadOptions = WorkloadOptions()

    @classmethod
    def from_environment(cls, environment: Environment) -> LoadOptions:
        options = environment.parsed_options
        if options is None:
            return cls()

        def get(name: str, default: Any) -> Any:
            value = getattr(options, name, None)
            return default if value in (None, "") else value

        return cls(model=get("model", ""), triton_grpc=get("triton_grpc", ""),
                   triton_model=get("triton_model", ""), request_timeout_s=float(get("request_timeout", 300.0)),
                   workload=WorkloadOptions.from_args(options))

    def as_parsed_options(self) -> Namespace:
        """What `from_environment` reads back: Locust's `parsed_options` for a runner driven as a library."""
        return Namespace(model=self.model, triton_grpc=self.triton_grpc, triton_model=self.triton_model,
                         request_timeout=self.request_timeout_s, **self.workload.as_flags())


def add_arguments(parser: Any) -> None:
    """Register the users' options on Locust's parser (`events.init_command_line_parser`)."""
    group = parser.add_argument_group("tritonchat workload")
    group.add_argument("--model", default="",
                       help="served model name (default: the gateway's first model that answers chat)")
    group.add_argument("--triton-grpc", default="",
                       help="Triton gRPC host:port for TritonGrpcUser "
                            f"(default: --host's host, port {DEFAULT_GRPC_PORT})")
    group.add_argument("--triton-model", default="",
                       help="Triton model for TritonGrpcUser (default: the one behind --model)")
    WorkloadOptions.add_arguments(group)
    group.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request")


_discovery_lock = threading.Lock()  # one discovery at a time: the users start together


def default_chat_model(host: str) -> tuple[str, str]:
    """(served name, Triton model) of the gateway's first model that answers a chat request.

    `/v1/models` also lists embedding models, which refuse chat; each distinct model (aliases
    skipped) is asked for one token until one answers. Once per host and process.
    """
    with _discovery_lock:
        return _discover_chat_model(host)


@functools.lru_cache(maxsize=8)
def _discover_chat_model(host: str) -> tuple[str, str]:
    base = host.rstrip("/")
    response = requests.get(f"{base}/v1/models", timeout=10)
    response.raise_for_status()
    cards = [c for c in response.json().get("data", []) if not c.get("parent")]
    for card in cards:
        probe = requests.post(f"{base}{CHAT_ROUTE}", timeout=120, json={
            "model": card["id"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
        if probe.status_code == 200:
            return str(card["id"]), str(card.get("root") or card["id"])
    raise RuntimeError(f"none of the models of {base} ({', '.join(c['id'] for c in cards)}) answers chat requests")


def report(environment: Environment, request_type: str, name: str, measurement: StreamMeasurement,
           exception: Exception | None) -> None:
    """Fire the request's events: the request itself, then TTFT, ITL and TOK/S when it succeeded."""
    fire = environment.events.request.fire
    context = {"stream": measurement}
    fire(request_type=request_type, name=name, response_time=measurement.latency_s * 1000.0,
         response_length=measurement.received_bytes, exception=exception, context=context)
    if exception is not None:
        return
    if measurement.ttft_s is not None:
        fire(request_type=TTFT, name=name, response_time=measurement.ttft_s * 1000.0, response_length=0,
             exception=None, context=context)
    if measurement.itl_s is not None:
        fire(request_type=ITL, name=name, response_time=measurement.itl_s * 1000.0, response_length=0,
             exception=None, context=context)
    if measurement.tokens_per_s is not None:
        fire(request_type=TOKENS_PER_S, name=name, response_time=measurement.tokens_per_s,
             response_length=measurement.output_tokens, exception=None, context=context)


def token_summary(stats: RequestStats) -> list[str]:
    """One line per route: output tokens, the aggregate tok/s over the run, TTFT percentiles."""
    lines = []
    elapsed = max(1e-9, (stats.last_request_timestamp or stats.start_time) - stats.start_time)
    for (name, request_type), entry in sorted(stats.entries.items()):
        if request_type != TOKENS_PER_S or not entry.num_requests:
            continue
        tokens = entry.total_content_length
        line = (f"{name}: {entry.num_requests} requests, {tokens} output tokens in {elapsed:.1f} s = "
                f"{tokens / elapsed:.1f} output tok/s (all users)")
        ttft = stats.entries.get((name, TTFT))
        if ttft is not None and ttft.num_requests:
            line += (f"; TTFT p50 {ttft.get_response_time_percentile(0.5):.0f} ms, "
                     f"p99 {ttft.get_response_time_percentile(0.99):.0f} ms")
        lines.append(line)
    return lines


def log_token_summary(environment: Environment, **_: Any) -> None:
    """`events.quitting` listener: log `token_summary` of the run."""
    for line in token_summary(environment.stats):
        logger.info("%s", line)


def reset_prompt_streams() -> None:
    """Start numbering users' prompt streams at 0 again (the runner does it per point)."""
    _StreamingUser._numbers = itertools.count()


class _StreamingUser(User):
    """Shared set-up: options, and a prompt stream of its own per user."""

    abstract = True
    wait_time = constant(0)
    _numbers = itertools.count()  # user N gets prompt stream N (greenlets: no lock needed)

    def on_start(self) -> None:
        self.options = LoadOptions.from_environment(self.environment)
        self.sampler = PromptSampler(self.options.workload.prompts(), self.options.workload.prompt_seed,
                                     next(_StreamingUser._numbers))


class ChatUser(_StreamingUser):
    """Streams chat completions through the gateway (`--host` is the gateway's base URL)."""

    def on_start(self) -> None:
        super().on_start()
        self.session = requests.Session()
        self.url = f"{(self.host or '').rstrip('/')}{CHAT_ROUTE}"
        self.model = self.options.model or default_chat_model(self.host or "")[0]

    def on_stop(self) -> None:
        self.session.close()

    @task
    def chat(self) -> None:
        prompt = self.sampler.next()
        body: dict[str, Any] = {"model": self.model, "messages": list(prompt.messages), "max_tokens": prompt.max_tokens,
                "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
                "ignore_eos": not self.options.workload.natural_stop}
        measurement = StreamMeasurement(start=time.perf_counter())
        error: Exception | None = None
        try:
            with self.session.post(self.url, json=body, stream=True,
                                   timeout=(10.0, self.options.request_timeout_s)) as response:
                if response.status_code != 200:
                    measurement.received_bytes = len(response.content)
                    raise HttpStatusError(f"HTTP {response.status_code}: {response.text[:300]}")
                done = False
                for payload in sse_data(self._counted_lines(response, measurement)):
                    if record_chat_event(measurement, payload, time.perf_counter()):
                        done = True
                        break
                if not done:
                    raise StreamError("the stream ended without [DONE]")
            if not measurement.output_tokens:  # no usage chunk: one token per text chunk
                measurement.output_tokens = len(measurement.token_times)
        except (requests.RequestException, HttpStatusError, StreamError, ValueError) as exc:
            error = exc
        measurement.end = time.perf_counter()
        measurement.error = None if error is None else str(error)
        report(self.environment, "POST", CHAT_ROUTE, measurement, error)

    @staticmethod
    def _counted_lines(response: requests.Response, measurement: StreamMeasurement) -> Any:
        for line in response.iter_lines(chunk_size=None):  # type: ignore[call-overload]  # as data arrives
            measurement.received_bytes += len(line) + 1
            yield line


class TritonGrpcUser(_StreamingUser):
    """Streams the same generations from Triton's gRPC endpoint, bypassing the gateway."""

    def on_start(self) -> None:
        super().on_start()
        target = self.options.triton_grpc or f"{urlparse(self.host or 'http://127.0.0.1').hostname}:{DEFAULT_GRPC_PORT}"
        self.channel = grpc.insecure_channel(target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.triton_model = self.options.triton_model or self._discover_model()
        config = self.stub.ModelConfig(service_pb2.ModelConfigRequest(name=self.triton_model), timeout=10).config
        self.batched = config.max_batch_size > 0

    def _discover_model(self) -> str:
        """The Triton model behind `--model` (or the first chat model) on the gateway at --host."""
        if not self.options.model:
            return default_chat_model(self.host or "")[1]
        try:
            response = requests.get(f"{(self.host or '').rstrip('/')}/v1/models/{self.options.model}", timeout=10)
            if response.status_code == 200:
                return str(response.json().get("root") or self.options.model)
        except requests.RequestException:
            pass
        return self.options.model  # no gateway knows it: take it as the Triton name

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def infer(self) -> None:
        prompt = self.sampler.next()
        request = build_request(GenerationInput(
            model=self.triton_model, messages=prompt.messages, request_id=f"locust-{uuid.uuid4().hex[:12]}",
            sampling=WireSampling(max_tokens=prompt.max_tokens, temperature=0.0,
                                  ignore_eos=not self.options.workload.natural_stop)), batched=self.batched)
        measurement = StreamMeasurement(start=time.perf_counter())
        error: Exception | None = None
        call = self.stub.ModelStreamInfer(iter([request]), timeout=self.options.request_timeout_s)
        final_at: float | None = None
        ended = False  # the RPC ran to its end (or failed): nothing to cancel
        try:
            # Read to the end of the RPC, past the final response: the request iterator's end
            # half-closes the stream, so Triton closes it once all responses are out. (Leaving a
            # finished stream to be cancelled later kept Triton 2.51 from unloading the model.)
            for message in call:
                now = time.perf_counter()
                measurement.received_bytes += message.ByteSize()
                if message.error_message:
                    raise StreamError(message.error_message)
                response = decode_response(message.infer_response)
                if response.text:
                    measurement.token_times.append(now)
                measurement.output_tokens += response.num_output_tokens or (1 if response.text else 0)
                if response.num_input_tokens is not None:
                    measurement.prompt_tokens = response.num_input_tokens
                measurement.finish_reason = response.finish_reason or measurement.finish_reason
                if response.final:
                    final_at = now
            ended = True
            if final_at is None:
                raise StreamError("the gRPC stream ended before the final response")
        except (grpc.RpcError, StreamError) as exc:
            ended = True
            error = exc
        finally:
            if not ended:  # the user is being stopped mid-stream: free the server's work
                call.cancel()
        measurement.end = final_at if final_at is not None and error is None else time.perf_counter()
        measurement.error = None if error is None else str(error)
        report(self.environment, "gRPC", GRPC_NAME, measurement, error)
