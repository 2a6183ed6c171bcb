"""The `tritonchat` command: serve, chat, models, bench, experiment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_GATEWAY = "http://127.0.0.1:9000"


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeError, ServeOptions, serve
    from .runtime import TritonNotFoundError

    options = ServeOptions(
        model_repository=Path(args.model_repository).resolve(), host=args.host, http_port=args.http_port,
        grpc_port=args.grpc_port, metrics_port=args.metrics_port, gateway_port=args.port,
        api_keys=tuple(args.api_key or ()), triton_args=tuple(args.triton_arg or ()),
        ready_timeout_s=args.ready_timeout,
        python_env=Path(args.python_env).resolve() if args.python_env else None)
    try:
        return serve(options)
    except (ServeError, TritonNotFoundError) as exc:
        print(f"tritonchat serve: {exc}", file=sys.stderr)
        return 1


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{args.url.rstrip('/')}/v1", api_key=args.api_key or "none")


def _cmd_chat(args: argparse.Namespace) -> int:
    """Stream one answer, like FastChat's test_message."""
    import openai

    client = _client(args)
    try:
        model = args.model or client.models.list().data[0].id
        print(f"{model}: ", end="", flush=True)
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": args.message}], stream=True,
            temperature=args.temperature, max_tokens=args.max_tokens)
        for chunk in stream:
            for choice in chunk.choices:
                print(choice.delta.content or "", end="", flush=True)
        print()
        return 0
    except openai.APIError as exc:
        print(f"\ntritonchat chat: {exc}", file=sys.stderr)
        return 1


def _cmd_models(args: argparse.Namespace) -> int:
    import openai

    try:
        for model in _client(args).models.list().data:
            print(model.id)
        return 0
    except openai.APIError as exc:
        print(f"tritonchat models: {exc}", file=sys.stderr)
        return 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def _cmd_experiment(args: argparse.Namespace) -> int:
    # Imported here: Locust monkey-patches the whole process with gevent when it loads.
    from loadtest.run_experiment import main as experiment_main

    return experiment_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonchat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start tritonserver and the OpenAI gateway")
    serve.add_argument("--model-repository", default="model_repository")
    serve.add_argument("--host", default="127.0.0.1", help="address every server binds to")
    serve.add_argument("--port", type=int, default=9000, help="gateway port")
    serve.add_argument("--http-port", type=int, default=8000, help="Triton HTTP port")
    serve.add_argument("--grpc-port", type=int, default=8001, help="Triton gRPC port")
    serve.add_argument("--metrics-port", type=int, default=8002, help="Triton metrics port")
    serve.add_argument("--api-key", action="append", help="require this bearer key (repeatable)")
    serve.add_argument("--triton-arg", action="append", help="extra tritonserver flag, e.g. --triton-arg=--log-verbose=1")
    serve.add_argument("--ready-timeout", type=float, default=300.0)
    serve.add_argument("--python-env", default=None,
                       help="virtualenv whose Python runs the models, e.g. .venv-vllm for `engine: vllm` models")
    serve.set_defaults(func=_cmd_serve)

    for name, func, helptext in (("chat", _cmd_chat, "stream one answer from a model"),
                                 ("models", _cmd_models, "list the served models")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--url", default=DEFAULT_GATEWAY, help="gateway base URL")
        p.add_argument("--api-key", default=None)
        p.set_defaults(func=func)
        if name == "chat":
            p.add_argument("--model", default=None, help="served model name (default: the first)")
            p.add_argument("--message", default="Tell me a story with more than 1000 words.")
            p.add_argument("--temperature", type=float, default=0.0)
            p.add_argument("--max-tokens", type=int, default=256)

    bench = sub.add_parser("bench", help="measure the engine against the static-batch ceiling")
    from .bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=_cmd_bench)

    experiment = sub.add_parser(
        "experiment", help="measure instance layouts x concurrent users with Locust; write CSV, plots, report",
        description="For each layout (a Triton instance_group) start tritonserver and the gateway, run "
                    "Locust headless per user count, scrape Triton's and the gateway's metrics, then write "
                    "CSV, PNG plots and a markdown report. Example: tritonchat experiment --layout cpu:1x2 "
                    "--layout cpu:2x1 --users 1 4 16 --docs docs/scaling.md")
    from loadtest.config import add_arguments as add_experiment_arguments

    add_experiment_arguments(experiment)
    experiment.set_defaults(func=_cmd_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
