"""`logprobs` / `top_logprobs` (chat) and `logprobs` (completions) in OpenAI's shapes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.llm_client import ModelCard, TokenLogprob, TopLogprob
from gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeLLMClient, chunk, sse_events, token_logprob

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def two_tokens() -> list[object]:
    return [
        chunk("Hé", prompt_tokens=2, logprobs=(token_logprob("Hé", -0.5),)),
        chunk(" you", "stop", logprobs=(token_logprob(" you", -1.25),)),
    ]


def chat_body(**extra: object) -> dict[str, object]:
    return {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_chat_logprobs_with_top_alternatives(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(two_tokens())  # type: ignore[arg-type]

    response = client.post(CHAT, json=chat_body(logprobs=True, top_logprobs=2))

    assert response.status_code == 200
    assert fake.inputs[0].sampling.logprobs == 2
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert content == [
        {
            "token": "Hé",
            "logprob": -0.5,
            "bytes": [72, 195, 169],
            "top_logprobs": [
                {"token": "Hé", "logprob": -0.5, "bytes": [72, 195, 169]},
                {"token": "alt1", "logprob": -1.5, "bytes": list(b"alt1")},
            ],
        },
        {
            "token": " you",
            "logprob": -1.25,
            "bytes": list(b" you"),
            "top_logprobs": [
                {"token": " you", "logprob": -1.25, "bytes": list(b" you")},
                {"token": "alt1", "logprob": -2.25, "bytes": list(b"alt1")},
            ],
        },
    ]


def test_chat_logprobs_without_top_logprobs_list_no_alternatives(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue(two_tokens())  # type: ignore[arg-type]

    response = client.post(CHAT, json=chat_body(logprobs=True))

    assert fake.inputs[0].sampling.logprobs == 0
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert [(c["token"], c["top_logprobs"]) for c in content] == [("Hé", []), (" you", [])]


@pytest.mark.parametrize("extra", [{}, {"logprobs": False}])
def test_no_logprobs_unless_asked(
    client: TestClient, fake: FakeLLMClient, extra: dict[str, object]
) -> None:
    response = client.post(CHAT, json=chat_body(**extra))

    assert fake.inputs[0].sampling.logprobs is None
    assert response.json()["choices"][0]["logprobs"] is None


def test_a_sampled_token_outside_the_top_n_is_not_listed_among_them(
    client: TestClient, fake: FakeLLMClient
) -> None:
    unlikely = TokenLogprob(
        "z", -7.0, (TopLogprob("a", -0.1), TopLogprob("b", -2.0), TopLogprob("z", -7.0))
    )
    fake.queue([chunk("z", "stop", prompt_tokens=1, logprobs=(unlikely,))])

    response = client.post(CHAT, json=chat_body(logprobs=True, top_logprobs=2))

    (entry,) = response.json()["choices"][0]["logprobs"]["content"]
    assert (entry["token"], entry["logprob"]) == ("z", -7.0)
    assert [t["token"] for t in entry["top_logprobs"]] == ["a", "b"]


def test_streamed_chat_chunks_carry_their_tokens_logprobs(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue(two_tokens())  # type: ignore[arg-type]

    response = client.post(CHAT, json=chat_body(logprobs=True, top_logprobs=1, stream=True))

    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    choices = [e["choices"][0] for e in events[:-1]]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    assert choices[0]["logprobs"] is None
    with_tokens = [c for c in choices if c["logprobs"] is not None]
    assert [c["delta"]["content"] for c in with_tokens] == ["Hé", " you"]
    assert [
        [(t["token"], [a["token"] for a in t["top_logprobs"]]) for t in c["logprobs"]["content"]]
        for c in with_tokens
    ] == [[("Hé", ["Hé"])], [(" you", [" you"])]]
    assert choices[-1]["finish_reason"] == "stop"


def test_completion_logprobs_in_the_legacy_shape(client: TestClient, fake: FakeLLMClient) -> None:
    fake.queue(two_tokens())  # type: ignore[arg-type]

    response = client.post(COMPLETIONS, json={"model": "echo", "prompt": "p", "logprobs": 2})

    assert response.status_code == 200
    assert fake.inputs[0].sampling.logprobs == 2
    assert response.json()["choices"][0]["logprobs"] == {
        "tokens": ["Hé", " you"],
        "token_logprobs": [-0.5, -1.25],
        "top_logprobs": [{"Hé": -0.5, "alt1": -1.5}, {" you": -1.25, "alt1": -2.25}],
        "text_offset": [0, 2],
    }


def test_streamed_completion_logprobs_keep_counting_text_offsets(
    client: TestClient, fake: FakeLLMClient
) -> None:
    fake.queue(two_tokens())  # type: ignore[arg-type]

    response = client.post(
        COMPLETIONS, json={"model": "echo", "prompt": "p", "logprobs": 0, "stream": True}
    )

    events = sse_events(response.text)
    logprobs = [e["choices"][0]["logprobs"] for e in events[:-1] if e["choices"][0]["logprobs"]]
    assert [(lp["tokens"], lp["text_offset"], lp["top_logprobs"]) for lp in logprobs] == [
        (["Hé"], [0], [{}]),
        ([" you"], [2], [{}]),
    ]
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Hé you"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat_body(logprobs=True)),
        (COMPLETIONS, {"model": "old", "prompt": "hi", "logprobs": 0}),
    ],
)
def test_logprobs_from_a_model_without_them_are_a_400_before_any_generation(
    path: str, body: dict[str, object]
) -> None:
    fake = FakeLLMClient([ModelCard("old", "old-llm", 256, inputs=frozenset())])
    settings = GatewaySettings(triton_urls=["127.0.0.1:1"])
    with TestClient(create_app(settings, fake)) as client:
        response = client.post(path, json={**body, "model": "old"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "logprobs"
    assert "old-llm" in response.json()["error"]["message"]
    assert fake.inputs == []
