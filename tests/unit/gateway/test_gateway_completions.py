"""Text completions through the app with a fake client."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.unit.gateway.fakes import FakeLLMClient, chunk, sse_events, words_script

COMPLETIONS = "/v1/completions"


def test_single_prompt(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(words_script("x y", prompt_tokens=2))

    response = client.post(COMPLETIONS, json={"model": "echo", "prompt": "p q", "max_tokens": 4})

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["choices"] == [
        {"index": 0, "text": "x y", "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    (inp,) = fake.inputs
    assert (inp.prompt, inp.messages, inp.sampling.max_tokens) == ("p q", None, 4)


def test_prompt_list_with_n_numbers_choices_per_prompt(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue(
        words_script("a", prompt_tokens=3),
        words_script("b", prompt_tokens=3),
        words_script("c", prompt_tokens=5),
        words_script("d", prompt_tokens=5),
    )

    body = client.post(
        COMPLETIONS, json={"model": "echo", "prompt": ["first", "second"], "n": 2, "echo": True}
    ).json()

    assert [(c["index"], c["text"]) for c in body["choices"]] == [
        (0, "firsta"),
        (1, "firstb"),
        (2, "secondc"),
        (3, "secondd"),
    ]
    # Prompt tokens count once per prompt, not once per choice.
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}
    assert [i.prompt for i in fake.inputs] == ["first", "first", "second", "second"]


def test_streaming_with_echo_and_usage(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue([chunk("x ", prompt_tokens=1), chunk("y", "length")])

    response = client.post(
        COMPLETIONS,
        json={
            "model": "echo",
            "prompt": "say",
            "echo": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )

    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert {e["object"] for e in events[:-1]} == {"text_completion"}
    assert len({e["id"] for e in events[:-1]}) == 1
    assert [(e["choices"][0]["text"], e["choices"][0]["finish_reason"]) for e in events[:-2]] == [
        ("say", None),
        ("x ", None),
        ("y", None),
        ("", "length"),
    ]
    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_stop_strings_are_cut_in_completions(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue([chunk("one\n\ntwo", prompt_tokens=1), chunk("three", "stop")])

    body = client.post(COMPLETIONS, json={"model": "echo", "prompt": "p", "stop": "\n\n"}).json()

    assert body["choices"][0]["text"] == "one"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert fake.closed_early == 1


def test_token_id_prompts_are_rejected(client: TestClient, fake: FakeLLMClient) -> None:
    response = client.post(COMPLETIONS, json={"model": "echo", "prompt": [1, 2, 3]})

    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("prompt")
    assert fake.inputs == []


def test_empty_prompt_list_is_rejected(client: TestClient) -> None:
    response = client.post(COMPLETIONS, json={"model": "echo", "prompt": []})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"logprobs": 2, "echo": True}, "echo"),
    ],
)
def test_bad_logprobs_are_400(
    client: TestClient, fake: FakeLLMClient, extra: dict[str, object], param: str
) -> None:
    response = client.post(COMPLETIONS, json={"model": "echo", "prompt": "p", **extra})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert fake.inputs == []
