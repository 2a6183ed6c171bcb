"""The integration tests' server launchers (shared with `tritonchat serve` and the benchmark)."""

from tritonchat.launch import TritonProcess, free_port, launch_gateway, launch_triton

__all__ = ["TritonProcess", "free_port", "launch_gateway", "launch_triton"]
