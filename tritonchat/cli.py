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
        ready_timeout_s=args.ready_timeout, grace_period_s=args.grace_period,
        register_with=args.register_with or "", advertise_address=args.advertise_address or "",
        heartbeat_interval_s=args.heartbeat_interval,
        python_env=Path(args.python_env).resolve() if args.python_env else None)
    try:
        return serve(options)
    except (ServeError, TritonNotFoundError) as exc:
        print(f"tritonchat serve: {exc}", file=sys.stderr)
        return 1


def _cmd_register(args: argparse.Namespace) -> int:
    """Beat until Ctrl-C or SIGTERM, then unregister."""
    import logging
    import signal
    import threading

    from .heartbeat import Heartbeat
    from .launch import set_on_signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, set_on_signal(stop))
    heartbeat = Heartbeat(args.gateway, args.address, args.interval, args.api_key)
    heartbeat.start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    heartbeat.stop()
    return 0


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{args.url.rstrip('/')}/v1", api_key=args.api_key or "none")


def _cmd_chat(args: argparse.Namespace) -> int:
    """One message (FastChat's test_message) or an interactive chat (fastchat.serve.cli)."""
    import openai

    from .chat import ChatOptions, OpenAIBackend, run_chat

    options = ChatOptions(model=args.model, message=args.message, temperature=args.temperature,
                          max_tokens=args.max_tokens)
    try:
        return run_chat(OpenAIBackend(args.url, args.api_key), options, sys.stdin, sys.stdout)
    except (openai.APIError, RuntimeError) as exc:
        print(f"\ntritonchat chat: {exc}", file=sys.stderr)
        return 1


def _cmd_import_fastchat(args: argparse.Namespace) -> int:
    from .import_fastchat import ImportFastChatError, import_command, write_model

    command = list(args.worker_command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("tritonchat import-fastchat: give the worker command line after --", file=sys.stderr)
        return 2
    try:
        result = import_command(command, args.name)
        if args.print:
            print(result.config_pbtxt(), end="")
        else:
            folder = write_model(result, Path(args.model_repository), overwrite=args.force)
            print(f"wrote {folder / 'config.pbtxt'}")
    except ImportFastChatError as exc:
        print(f"tritonchat import-fastchat: {exc}", file=sys.stderr)
        return 1
    report = sys.stderr if args.print else sys.stdout
    for line in result.mapped:
        print(f"  mapped: {line}", file=report)
    for flag, reason in result.not_mapped:
        print(f"  not mapped: {flag}: {reason}", file=report)
    return 0


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
    from loadtest.bench import main as bench_main

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
    serve.add_argument("--triton-arg", action="append",
                       help="extra tritonserver flag, e.g. --triton-arg=--log-verbose=1")
    serve.add_argument("--ready-timeout", type=float, default=300.0)
    serve.add_argument("--grace-period", type=float, default=30.0,
                       help="seconds running requests get to finish when stopping (SIGTERM/Ctrl-C)")
    serve.add_argument("--register-with", metavar="GATEWAY_URL",
                       help="start Triton only and register it with this gateway (heart beats)")
    serve.add_argument("--advertise-address", metavar="HOST:PORT",
                       help="Triton's gRPC address as the gateway reaches it (default HOST:GRPC_PORT)")
    serve.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds between beats")
    serve.add_argument("--python-env", default=None,
                       help="virtualenv whose Python runs the models, e.g. .venv-vllm for `engine: vllm` models")
    serve.set_defaults(func=_cmd_serve)

    register = sub.add_parser("register", help="sidecar: keep a running Triton registered with a gateway")
    register.add_argument("--gateway", required=True, metavar="URL", help="gateway base URL")
    register.add_argument("--address", required=True, metavar="HOST:PORT",
                          help="the Triton server's gRPC address as the gateway reaches it")
    register.add_argument("--interval", type=float, default=5.0, help="seconds between heart beats")
    register.add_argument("--api-key", default=None, help="the gateway's bearer key, when it has one")
    register.set_defaults(func=_cmd_register)

    for name, func, helptext in (("chat", _cmd_chat, "one message (test_message), or an interactive chat"),
                                 ("models", _cmd_models, "list the served models")):
        p = sub.add_parser(name, help=helptext)
        # FastChat's test_message flags are accepted as written: the gateway is the controller.
        p.add_argument("--url", "--controller-address", "--worker-address", dest="url",
                       default=DEFAULT_GATEWAY, help="gateway base URL")
        p.add_argument("--api-key", default=None)
        p.set_defaults(func=func)
        if name == "chat":
            p.add_argument("--model", "--model-name", dest="model", default=None,
                           help="served model name (default: the first)")
            p.add_argument("--message", default=None,
                           help="send this one message; without it, an interactive chat with history")
            p.add_argument("--temperature", type=float, default=0.0)
            p.add_argument("--max-tokens", "--max-new-tokens", dest="max_tokens", type=int, default=256)

    imp = sub.add_parser(
        "import-fastchat", help="write a Triton model folder from a FastChat worker command line",
        description="Example: tritonchat import-fastchat -- CUDA_VISIBLE_DEVICES=0 python -m "
                    "fastchat.serve.model_worker --model-path lmsys/vicuna-7b-v1.5")
    imp.add_argument("--model-repository", default="model_repository", help="where the folder is written")
    imp.add_argument("--name", default=None,
                     help="model name (default: first --model-names, else the path's last part)")
    imp.add_argument("--force", action="store_true", help="replace an existing config.pbtxt")
    imp.add_argument("--print", action="store_true", help="print config.pbtxt instead of writing it")
    imp.add_argument("worker_command", nargs=argparse.REMAINDER,
                     help="-- then the model_worker / vllm_worker command line")
    imp.set_defaults(func=_cmd_import_fastchat)

    bench = sub.add_parser("bench", help="measure the engine against the static-batch ceiling")
    from loadtest.bench import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
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
