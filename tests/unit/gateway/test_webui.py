"""The web chat page is served at `/`, also when the API needs a key (the page asks for it)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient


def test_page_is_open_and_the_api_is_not(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_keys=["secret"])

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in page.text and 'id="stop"' in page.text
    assert client.get("/v1/models").status_code == 401
