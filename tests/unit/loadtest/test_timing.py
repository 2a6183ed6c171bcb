"""SSE parsing and the per-request and per-window numbers."""

from __future__ import annotations

import json

import pytest

from loadtest.timing import (RequestRecord, SseDecoder, StreamError, StreamMeasurement, percentile, record_chat_event,
                             sse_data, summarise)


def chunk(content: str | None = None, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    event: dict[str, object] = {"choices": [] if content is None and finish is None else
                                [{"index": 0, "delta": {} if content is None else {"content": content},
                                  "finish_reason": finish}]}
    if usage is not None:
        event["usage"] = usage
    return json.dumps(event)


def test_sse_data_joins_multi_line_events_and_skips_comments() -> None:
    lines = [b": keep-alive", b"data: one", b"", b"data: two", b"data: lines\r", b"", "event: x", "data:three"]

    assert list(sse_data(lines)) == ["one", "two\nlines", "three"]


def test_the_decoder_hands_out_each_event_when_its_blank_line_arrives() -> None:
    decoder = SseDecoder()  # what the benchmark feeds an async stream's lines to

    assert [decoder.feed(line) for line in ("data: {}", "", ": ping", "data: [DONE]")] == [None, "{}", None, None]
    assert decoder.flush() == "[DONE]" and decoder.flush() is None


def test_token_gaps_are_each_gap_between_text_responses() -> None:
    m = StreamMeasurement(start=0.0, token_times=[1.0, 1.5, 2.5])

    assert m.token_gaps_s == [0.5, 1.0] and StreamMeasurement(start=0.0).token_gaps_s == []


def test_a_chat_stream_gives_ttft_itl_and_tokens() -> None:
    m = StreamMeasurement(start=10.0)
    events = [(chunk(""), 10.1), (chunk("Hel"), 10.5), (chunk("lo"), 10.7), (chunk(" there"), 10.9),
              (chunk(None, "length"), 10.95), (chunk(usage={"prompt_tokens": 12, "completion_tokens": 4}), 10.96)]

    for payload, now in events:
        assert record_chat_event(m, payload, now) is False
    assert record_chat_event(m, "[DONE]", 11.0) is True
    m.end = 11.0

    assert m.token_times == [10.5, 10.7, 10.9]  # the role chunk carries no text
    assert m.ttft_s == pytest.approx(0.5)
    assert m.output_tokens == 4 and m.prompt_tokens == 12 and m.finish_reason == "length"
    assert m.itl_s == pytest.approx((10.9 - 10.5) / 3)  # gaps per token, 4 tokens over 3 chunks
    assert m.tokens_per_s == pytest.approx(4.0)
    assert m.tokens_between(10.6, 11.0) == pytest.approx(4 * 2 / 3)


def test_an_error_event_raises() -> None:
    with pytest.raises(StreamError, match="boom"):
        record_chat_event(StreamMeasurement(0.0), json.dumps({"error": {"message": "boom"}}), 1.0)


def test_a_request_without_tokens_has_no_rates() -> None:
    m = StreamMeasurement(start=1.0, end=2.0)

    assert m.ttft_s is None and m.itl_s is None and m.tokens_per_s is None and m.tokens_between(0, 5) == 0


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


def record(start: float, ok: bool = True, ttft: float | None = 0.1, tokens_in_window: float = 10.0) -> RequestRecord:
    return RequestRecord("gateway", start, ok, ttft, 0.02, 1.0, 10, 5, tokens_in_window, "" if ok else "HTTP 503")


def test_summarise_counts_requests_started_in_the_window_and_tokens_that_arrived_in_it() -> None:
    records = [record(-1.0, ttft=9.0, tokens_in_window=4.0),  # started in the warm-up
               record(0.5, ttft=0.1), record(1.0, ttft=0.3), record(1.5, ok=False, ttft=None, tokens_in_window=0.0),
               record(2.5, ttft=0.2, tokens_in_window=3.0)]  # started after the window: drained

    summary = summarise(records, window_s=2.0)

    assert summary["requests"] == 3 and summary["failures"] == 1
    assert summary["output_tokens_in_window"] == 27.0
    assert summary["output_tokens_per_s"] == 13.5
    assert summary["ttft_p50_ms"] == pytest.approx(200.0)


def test_request_records_survive_a_csv_row() -> None:
    original = record(0.25)
    row = {name: str(value) for name, value in zip(RequestRecord.COLUMNS, original.row())}

    assert RequestRecord.from_row(row) == original
    assert RequestRecord.from_row({**row, "ttft_s": "", "prompt_tokens": "None"}).ttft_s is None
