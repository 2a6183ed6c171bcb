"""The vLLM engine's mapping of our config, sampling and outputs (no vLLM needed: it is
imported only when the engine starts; tests/integration/test_vllm_engine.py runs the real one)."""

from __future__ import annotations

from types import SimpleNamespace

from chatllm_engine.config import EngineConfig
from chatllm_engine.types import FinishReason, SamplingParams
from chatllm_engine.vllm_engine import VllmEngine, engine_kwargs, sampling_params, structured_outputs
from chatllm_wire import structured_output


def test_fastchat_vllm_worker_flags_become_engine_arguments() -> None:
    config = EngineConfig.from_parameters({
        "model_path": "m", "engine": "vllm", "block_size": "16", "swap_space": "4", "gpu_memory_utilization": "0.95",
        "max_num_seqs": "512", "trust_remote_code": "true", "num_gpus": "2", "dtype": "bfloat16",
        "max_model_len": "4096", "enforce_eager": "true"}, device="cuda:0")
    kwargs = engine_kwargs(config, "/weights", "/tokenizer")
    assert {k: kwargs[k] for k in ("model", "tokenizer", "block_size", "swap_space", "gpu_memory_utilization",
                                   "max_num_seqs", "trust_remote_code", "tensor_parallel_size", "dtype",
                                   "max_model_len", "enforce_eager")} == {
        "model": "/weights", "tokenizer": "/tokenizer", "block_size": 16, "swap_space": 4.0,
        "gpu_memory_utilization": 0.95, "max_num_seqs": 512, "trust_remote_code": True, "tensor_parallel_size": 2,
        "dtype": "bfloat16", "max_model_len": 4096, "enforce_eager": True}
    on_cpu = engine_kwargs(EngineConfig.from_parameters({"model_path": "m", "engine": "vllm", "num_gpus": "2"}),
                           "/w", "/w")
    assert on_cpu["tensor_parallel_size"] == 1 and "block_size" not in on_cpu and "max_model_len" not in on_cpu


def test_every_sampling_field_is_passed_on() -> None:
    params = SamplingParams(max_tokens=9, temperature=0.5, top_p=0.9, top_k=0, repetition_penalty=1.1,
                            presence_penalty=0.2, frequency_penalty=0.3, seed=7, stop=("\n\n",),
                            stop_token_ids=(5,), ignore_eos=True, min_tokens=2, logprobs=3)
    assert sampling_params(params, 9) == {
        "n": 1, "max_tokens": 9, "temperature": 0.5, "top_p": 0.9, "top_k": -1, "repetition_penalty": 1.1,
        "presence_penalty": 0.2, "frequency_penalty": 0.3, "seed": 7, "stop": ["\n\n"], "stop_token_ids": [5],
        "ignore_eos": True, "min_tokens": 2, "logprobs": 3, "skip_special_tokens": True}


def _lp(logprob: float, rank: int, text: str) -> SimpleNamespace:
    return SimpleNamespace(logprob=logprob, rank=rank, decoded_token=text)


def _output(token_ids: list[int], text: str, finish: str | None, stop_reason: object = None,
            logprobs: list[dict[int, SimpleNamespace]] | None = None) -> SimpleNamespace:
    completion = SimpleNamespace(token_ids=token_ids, text=text, finish_reason=finish, stop_reason=stop_reason,
                                 logprobs=logprobs)
    return SimpleNamespace(outputs=[completion], finished=finish is not None)


def test_outputs_become_token_events_with_our_logprob_shape() -> None:
    positions = [{11: _lp(-0.5, 2, " Paris"), 12: _lp(-0.1, 1, " Rome")}, {2: _lp(-0.01, 1, "")}]
    event = VllmEngine._event("r", _output([11, 2], " Paris", "stop", None, positions), 7, 1)
    assert (event.text, event.num_output_tokens, event.num_input_tokens) == (" Paris", 2, 7)
    assert event.finish_reason is FinishReason.STOP and event.token_ids == (11, 2)
    assert event.logprobs is not None and len(event.logprobs) == 1, "the EOS token carries no logprobs"
    assert event.logprobs[0].sampled.token_id == 11 and event.logprobs[0].sampled.rank == 2
    assert [t.token_id for t in event.logprobs[0].top] == [12]


def test_a_stop_string_keeps_the_last_tokens_logprobs_and_a_running_output_has_no_reason() -> None:
    positions = [{11: _lp(-0.5, 1, " Paris")}]
    stopped = VllmEngine._event("r", _output([11], "", "stop", "\n", positions), 3, 0)
    assert stopped.logprobs is not None and len(stopped.logprobs) == 1
    running = VllmEngine._event("r", _output([11], " Paris", None), 3, None)
    assert running.finish_reason is None and running.logprobs is None
    assert VllmEngine._event("r", _output([], "", "length"), 3, None).finish_reason is FinishReason.LENGTH


def test_stats_follow_vllms_steps_and_drop_to_idle_when_nothing_is_in_flight() -> None:
    engine = VllmEngine(EngineConfig.from_parameters({"model_path": "m", "engine": "vllm"}))
    logger = engine._stats_logger  # noqa: SLF001 - fed here as vLLM feeds it after each step
    logger.kv_cache_tokens = 1000
    scheduler = SimpleNamespace(num_running_reqs=3, num_waiting_reqs=1, kv_cache_usage=0.25)
    logger.record(scheduler, SimpleNamespace(num_generation_tokens=3, num_preempted_reqs=0))
    engine._in_flight = 4  # noqa: SLF001 - requests handed to vLLM and not finished
    stats = engine.stats
    assert (stats.running, stats.waiting, stats.kv_slots, stats.output_tokens, stats.steps) == (3, 1, 250, 3, 1)
    engine._in_flight = 0  # noqa: SLF001 - vLLM reports nothing once it stops stepping
    idle = engine.stats
    assert (idle.running, idle.waiting, idle.kv_slots, idle.output_tokens, idle.max_batch_size) == (0, 0, 0, 3, 3)


def test_structured_outputs_map_onto_vllms_own_kinds() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}
    assert structured_outputs(structured_output("json", schema)) == {"json": schema}
    assert list(structured_outputs(structured_output("json", schema))["json"]["properties"]) == ["b", "a"]
    assert structured_outputs(structured_output("json_object", True)) == {"json_object": True}
    assert structured_outputs(structured_output("choice", ["yes", "no"])) == {"choice": ["yes", "no"]}
    assert structured_outputs(structured_output("regex", "[0-9]+")) == {"regex": "[0-9]+"}
    grammar = 'root ::= "a" | "b"'
    assert structured_outputs(structured_output("grammar", grammar)) == {"grammar": grammar}
