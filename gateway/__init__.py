"""OpenAI-compatible HTTP gateway in front of Triton's streaming gRPC API."""
