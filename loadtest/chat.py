"""Locustfile: streaming chat users against the gateway, and the same load straight to Triton.

    locust -f loadtest/chat.py --headless -u 16 -r 16 -t 60s --host http://127.0.0.1:9000

runs `ChatUser` (through the gateway) and `TritonGrpcUser` (Triton's gRPC stream on
--host's address, port 8001, or --triton-grpc) side by side, half of the users each, so the
TTFT rows of `/v1/chat/completions` and `ModelStreamInfer` compare the two under the same
load. Name a class to run only that one:

    locust -f loadtest/chat.py ChatUser --headless -u 16 -r 16 -t 60s --host http://127.0.0.1:9000

Besides request latency (`POST` / `gRPC` rows), every finished request reports `TTFT`, `ITL`
(ms) and `TOK/S` (a rate in the "response time" columns; its size column is the output
tokens) as their own rows: web UI, console, `--csv`, `--html`. The aggregate output tokens/s
of all users is logged at the end. Workload options (`--model`, `--prompt-seed`,
`--answer-tokens`, `--natural-stop`, ...) are listed by `locust -f loadtest/chat.py --help`;
see `loadtest.users` for the definitions. To step the load through several user counts, add
the shape: `locust -f loadtest/chat.py,loadtest/shapes.py ...`.
"""

from locust import events

from loadtest.users import ChatUser, TritonGrpcUser, add_arguments, log_token_summary

events.init_command_line_parser.add_listener(add_arguments)
events.quitting.add_listener(log_token_summary)

__all__ = ["ChatUser", "TritonGrpcUser"]
