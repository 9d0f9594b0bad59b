"""Errors of the remote (vLLM-Omni) backend and the server address they name.

Every message names the server (without credentials) and says what to do. The classes subclass
`BagelError`, so the CLI and callers that already catch core errors catch these too.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import BagelError, BagelInputError

CHECK_HINT = "Run 'python tools/check_remote.py URL' to test the server end to end."


class BagelRemoteError(BagelError):
    """The BAGEL server could not do what was asked (network, HTTP status, answer)."""


class RemoteConnectionError(BagelRemoteError, ConnectionError):
    """The server could not be reached, refused the connection, or dropped it."""


class RemoteTimeoutError(BagelRemoteError, TimeoutError):
    """The server did not answer within the configured timeout."""


class RemoteRequestRejected(BagelRemoteError):
    """HTTP 4xx: the server refused this request (bad field, size, key...)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class RemoteServerError(BagelRemoteError):
    """HTTP 5xx: the server failed while handling the request."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class RemoteResponseError(BagelRemoteError):
    """The server answered, but not with what vLLM-Omni's API documents (shape, image format)."""


@dataclass(frozen=True)
class ServerAddress:
    """A parsed server URL. `display` never contains a user name, password or query string."""

    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"

    @classmethod
    def parse(cls, url: str) -> "ServerAddress":
        text = (url or "").strip()
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BagelInputError(
                f"server_url {redact_url(text)!r} is not an http(s) URL; give the server's root address, "
                "e.g. http://127.0.0.1:8091 (the port 'vllm serve ... --port' listens on).")
        if parts.username or parts.password:
            raise BagelInputError(
                f"server_url {redact_url(text)!r} contains a user name or password; remove it and put the "
                "key in api_key (or the BAGEL_MOT_API_KEY environment variable) instead.")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise BagelInputError(f"server_url {redact_url(text)!r} has an invalid port: {exc}.") from exc
        base_path = parts.path.rstrip("/")
        if base_path.endswith("/v1/chat/completions"):
            base_path = base_path[: -len("/v1/chat/completions")]
        elif base_path.endswith("/v1"):
            base_path = base_path[: -len("/v1")]
        return cls(parts.scheme, parts.hostname, port, base_path)


def redact_url(url: str) -> str:
    """The URL without user info and query (where keys are often put), for messages and logs."""
    parts = urlsplit(url)
    if not parts.netloc:
        return url.split("?", 1)[0]
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}"
