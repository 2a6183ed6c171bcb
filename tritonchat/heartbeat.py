"""Register a Triton server with a gateway and keep it registered with heart beats.

Used by `tritonchat register` (a sidecar next to any Triton server) and
`tritonchat serve --register-with URL`. Each beat is a `POST /register_triton`; the gateway
adds the server on the first one and drops it when beats stop. On a clean stop the server
is unregistered at once.
"""

from __future__ import annotations

import logging
import threading

import httpx

logger = logging.getLogger(__name__)

BEAT_TIMEOUT_S = 5.0


class Heartbeat:
    """Beats from a daemon thread until `stop()`; a failed beat is logged and retried on the
    next interval (the gateway may start after the server)."""

    def __init__(self, gateway_url: str, address: str, interval_s: float = 5.0,
                 api_key: str | None = None) -> None:
        self._url = gateway_url.rstrip("/")
        self._address = address
        self._interval_s = interval_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._stop = threading.Event()
        # Owner: the beat thread (started by start()).
        self._thread = threading.Thread(target=self._run, name="triton-heartbeat", daemon=True)
        self.registered = threading.Event()
        """Set once the gateway accepted a beat."""

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> bool:
        """One beat; True when the gateway accepted it."""
        body = {"address": self._address, "heartbeat_interval_s": self._interval_s}
        try:
            response = httpx.post(f"{self._url}/register_triton", json=body, headers=self._headers,
                                  timeout=BEAT_TIMEOUT_S)
        except httpx.HTTPError as exc:
            logger.warning("heart beat to %s failed: %s", self._url, exc)
            return False
        if response.status_code != 200:
            logger.warning("gateway %s refused the registration (%d): %s", self._url,
                           response.status_code, response.text[:500])
            return False
        if response.json().get("new"):
            logger.info("registered %s with %s", self._address, self._url)
        self.registered.set()
        return True

    def stop(self, unregister: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=BEAT_TIMEOUT_S + 1)
        if unregister:
            try:
                httpx.post(f"{self._url}/unregister_triton", json={"address": self._address},
                           headers=self._headers, timeout=BEAT_TIMEOUT_S)
            except httpx.HTTPError as exc:
                logger.warning("could not unregister from %s: %s", self._url, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self._interval_s)
