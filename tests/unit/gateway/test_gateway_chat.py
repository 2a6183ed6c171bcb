"""Chat completions through the app with a fake client: shapes, streaming, n>1, stops."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.unit.gateway.fakes import FakeLLMClient, Signal, Wait, chunk, sse_events, words_script

CHAT = "/v1/chat/completions"


def chat_body(**extra: object) -> dict[str, object]:
    return {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_non_streaming_answer_has_message_finish_reason_and_usage(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue(words_script("hello big world", prompt_tokens=7))

    response = client.post(CHAT, json=chat_body())

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "echo"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello big world"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_alias_is_mapped_to_the_triton_model_and_echoed_back(
    client: TestClient, fake: FakeLLMClient
) -> None:
    response = client.post(CHAT, json=chat_body(model="echo-alias"))

    assert response.status_code == 200
    assert response.json()["model"] == "echo-alias"
    assert fake.inputs[0].model == "echo"


def test_messages_and_sampling_reach_the_client(client: TestClient, fake: FakeLLMClient) -> None:
    response = client.post(
        CHAT,
        json={
            "model": "echo",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None},
                {"role": "tool", "content": "42", "tool_call_id": "t1"},
            ],
            "max_tokens": 5,
            "max_completion_tokens": 9,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": -1,
            "seed": 11,
            "stop": ["", "END"],
            "presence_penalty": 0.1,
            "frequency_penalty": -0.2,
            "repetition_penalty": 1.1,
            "user": "someone",
        },
    )

    assert response.status_code == 200, response.text
    (inp,) = fake.inputs
    assert inp.prompt is None
    assert inp.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": "42", "tool_call_id": "t1"},
    )
    s = inp.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed) == (9, 0.5, 0.9, None, 11)
    assert s.stop == ("END",)
    assert (s.presence_penalty, s.frequency_penalty, s.repetition_penalty) == (0.1, -0.2, 1.1)


def test_streaming_sends_role_content_finish_then_done(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue(words_script("hello world"))

    response = client.post(CHAT, json=chat_body(stream=True))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"echo"}
    assert len({c["created"] for c in chunks}) == 1
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "hello "},
        {"content": "world"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert all("usage" not in c for c in chunks)


def test_streaming_usage_chunk_when_include_usage(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(words_script("a b c", prompt_tokens=4))

    response = client.post(
        CHAT, json=chat_body(stream=True, stream_options={"include_usage": True})
    )

    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert events[-3]["choices"][0]["finish_reason"] == "stop"


def test_length_finish_reason_is_passed_through(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue([chunk("a ", prompt_tokens=1), chunk("b", "length")])

    body = client.post(CHAT, json=chat_body(max_tokens=2)).json()

    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "a b"


def test_n_choices_run_concurrently_and_interleave_with_indexes(
    client: TestClient, fake: FakeLLMClient
) -> None:
    # Each choice waits for the other's previous chunk, so only concurrent runs finish.
    fake.queue(
        [chunk("a1", prompt_tokens=2), Signal("a1"), Wait("b1"), chunk("a2"), Signal("a2"),
         chunk("", "stop", tokens=0)],
        [Wait("a1"), chunk("b1", prompt_tokens=2), Signal("b1"), Wait("a2"), chunk("b2", "length")],
    )

    response = client.post(
        CHAT, json=chat_body(n=2, seed=5, stream=True, stream_options={"include_usage": True})
    )

    events = sse_events(response.text)
    choices = [
        (c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
        for c in events[:-2]
    ]
    assert choices == [
        (0, {"role": "assistant", "content": ""}, None),
        (1, {"role": "assistant", "content": ""}, None),
        (0, {"content": "a1"}, None),
        (1, {"content": "b1"}, None),
        (0, {"content": "a2"}, None),
        (0, {}, "stop"),
        (1, {"content": "b2"}, None),
        (1, {}, "length"),
    ]
    # The prompt counts once, the completions of both choices add up.
    assert events[-2]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert [inp.sampling.seed for inp in fake.inputs] == [5, 6]


def test_n_choices_non_streaming(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(words_script("one two"), words_script("three"))

    body = client.post(CHAT, json=chat_body(n=2)).json()

    assert [(c["index"], c["message"]["content"]) for c in body["choices"]] == [
        (0, "one two"),
        (1, "three"),
    ]
    assert body["usage"]["completion_tokens"] == 3
    assert [inp.sampling.seed for inp in fake.inputs] == [None, None]


def test_stop_string_across_chunks_is_cut_and_generation_closed(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue(
        [chunk("Hello wo", prompt_tokens=1), chunk("rld ST"), chunk("OP and more"), chunk("never")]
    )

    response = client.post(CHAT, json=chat_body(stop="STOP", stream=True))

    events = sse_events(response.text)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-1])
    assert text == "Hello world "
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert fake.closed_early == 1  # the rest of the generation was cancelled


def test_partial_stop_string_is_released_at_the_end(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue([chunk("abc ST", prompt_tokens=1), chunk("x", "length")])

    body = client.post(CHAT, json=chat_body(stop=["STOP"])).json()

    assert body["choices"][0]["message"]["content"] == "abc STx"
    assert body["choices"][0]["finish_reason"] == "length"


def test_fastchat_route_accepts_a_plain_string_as_messages(
    client: TestClient, fake: FakeLLMClient
) -> None:
    response = client.post(
        "/api/v1/chat/completions",
        json={"model": "echo", "messages": "hello there", "top_k": 40, "repetition_penalty": 1.2},
    )

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "fake answer"
    (inp,) = fake.inputs
    assert inp.messages == ({"role": "user", "content": "hello there"},)
    assert (inp.sampling.top_k, inp.sampling.repetition_penalty) == (40, 1.2)


def test_fastchat_route_streams_too(client: TestClient, fake: FakeLLMClient) -> None:
    response = client.post(
        "/api/v1/chat/completions", json={"model": "echo", "messages": "hi", "stream": True}
    )

    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_string_messages_are_not_accepted_on_the_openai_route(client: TestClient) -> None:
    response = client.post(CHAT, json={"model": "echo", "messages": "hi"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
