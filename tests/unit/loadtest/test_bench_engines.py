"""`tritonchat bench --engine ours vllm --vllm-alone`: the table and vLLM's own server command."""

from __future__ import annotations

import argparse
from pathlib import Path

from loadtest import bench
from loadtest.bench import Result
from loadtest.bench_engines import engines_table, vllm_server_argv


def test_engine_flags_parse() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--engine", "ours", "vllm", "--vllm-alone", "--repeat", "3"])
    assert (args.engine, args.vllm_alone, args.repeat) == (["ours", "vllm"], True, 3)
    assert parser.parse_args([]).engine is None  # the default bench is unchanged
    long = parser.parse_args(["--engine", "ours", "--workload", "long", "--dtype", "bfloat16"])
    assert (long.workload, long.dtype) == ("long", "bfloat16")  # every engine gets the same load


def test_table_compares_vllm_behind_triton_with_vllm_alone() -> None:
    results = [Result("ceiling", 4, 400, 2.0), Result("ours", 4, 256, 2.0, ttft_s=[0.1, 0.3]),
               Result("vllm", 4, 256, 1.0, ttft_s=[0.2]), Result("vllm-alone", 4, 256, 0.8, ttft_s=[0.1])]
    table = engines_table(results, ["ceiling", "ours", "vllm", "vllm-alone"]).splitlines()
    assert table[0].startswith("| C | ceiling tok/s | ours tok/s | ours TTFT p50 ms | vllm tok/s")
    assert table[0].endswith("| vllm / vllm-alone tok/s | TTFT vllm / alone |")
    assert table[2] == "| 4 | 200.0 | 128.0 | 200 | 256.0 | 200 | 320.0 | 100 | 0.80 | 2.00 |"
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_vllm_alone_gets_the_triton_models_flags() -> None:
    params = {"dtype": "float32", "max_num_seqs": "64", "max_model_len": "8192", "enable_prefix_caching": "true"}
    argv = vllm_server_argv(Path("/venv"), params, "/weights", "m", 8123)
    assert argv[:3] == ["/venv/bin/python3", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    for flag in ("--model /weights", "--served-model-name m", "--port 8123", "--dtype float32",
                 "--max-num-seqs 64", "--max-model-len 8192", "--enable-prefix-caching", "--generation-config vllm"):
        assert flag in joined
