"""One JSON POST to the BAGEL server, abortable from another thread.

Written on the standard library's http.client rather than urllib or requests: Cancel must abort requests
that are in flight, and the only way to wake a thread blocked reading a response is to shut down its socket,
which http.client exposes (``connection.sock``) and urllib/requests hide. vLLM's chat endpoint cancels the
handling of a request whose client disconnected, so the server can drop the work too.
"""
from __future__ import annotations

import errno
import http.client
import json
import logging
import socket
import ssl
import threading

from .errors import (CHECK_HINT, RemoteConnectionError, RemoteRequestRejected, RemoteServerError,
                     RemoteTimeoutError, ServerAddress)
from .schema import parse_json

log = logging.getLogger(__name__)

# A connection attempt cannot be aborted from another thread, so it gets its own, shorter limit: Cancel and
# interpreter exit never wait longer than this for a host that does not answer.
CONNECT_TIMEOUT_SECONDS = 30.0


class RequestAborted(Exception):
    """Raised inside a worker whose request was aborted (Cancel, or another request of the batch failed)."""


class Aborter:
    """The open connections of one batch, so they can all be cut at once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._connections: set[http.client.HTTPConnection] = set()
        self.aborted = False

    def register(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if self.aborted:
                connection.close()
                raise RequestAborted()
            self._connections.add(connection)

    def unregister(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            connections = list(self._connections)
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the reader; the server sees the disconnect
                except OSError:
                    pass


def _server_message(raw: bytes) -> str:
    """The human part of an error body: vLLM's {"error": {"message"}}, {"message"}, FastAPI's {"detail"}."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw[:300].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])[:500]
    return str(body)[:300]


def _status_error(status: int, raw: bytes, server: str):
    said = _server_message(raw)
    if status in (401, 403):
        return RemoteRequestRejected(
            f"The server at {server} refused the API key (HTTP {status}: {said}). Set api_key on the BAGEL-MoT "
            "Remote Model node (or BAGEL_MOT_API_KEY in ComfyUI's environment) to the key the server was "
            "started with ('vllm serve ... --api-key').", status)
    if status == 404:
        return RemoteRequestRejected(
            f"The server at {server} has no /v1/chat/completions (HTTP 404: {said}). Give the server's root URL "
            f"(e.g. http://host:8091) and check it is a vLLM-Omni server. {CHECK_HINT}", status)
    if status == 429:
        return RemoteRequestRejected(
            f"The server at {server} is busy (HTTP 429: {said}). Lower max_concurrent_requests or retry later.",
            status)
    if status < 500:
        return RemoteRequestRejected(
            f"The server at {server} rejected the request (HTTP {status}): {said}. Change the setting it names "
            f"(vLLM-Omni's limits can differ from the local backend's). {CHECK_HINT}", status)
    return RemoteServerError(
        f"The server at {server} failed while generating (HTTP {status}): {said}. This is a server-side error: "
        "see the server's log (out of GPU memory, crashed stage, ...), fix or restart it, then queue again.",
        status)


class JsonPoster:
    """POSTs JSON to one server; safe to use from several threads (one connection per request)."""

    def __init__(self, address: ServerAddress, api_key: str | None, timeout: float):
        self.address = address
        self.timeout = float(timeout)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    @property
    def connect_timeout(self) -> float:
        return min(self.timeout, CONNECT_TIMEOUT_SECONDS)

    def _connection(self) -> http.client.HTTPConnection:
        if self.address.scheme == "https":
            return http.client.HTTPSConnection(self.address.host, self.address.port, timeout=self.connect_timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.address.host, self.address.port, timeout=self.connect_timeout)

    def post(self, path: str, payload: dict, aborter: Aborter):
        """The decoded JSON answer; raises a RemoteError (or RequestAborted) otherwise."""
        body = json.dumps(payload).encode("utf-8")
        connection = self._connection()
        server = self.address.display
        try:
            self._connect(connection, aborter, server)
            try:
                connection.request("POST", self.address.base_path + path, body=body, headers=self._headers)
                response = connection.getresponse()
                raw = response.read()
            except (socket.timeout, TimeoutError) as exc:
                self._raise_if_aborted(aborter, exc)
                raise RemoteTimeoutError(
                    f"The server at {server} did not answer within {self.timeout:g} s. Raise 'timeout' on the "
                    "BAGEL-MoT Remote Model node (large images, many steps or a queue on the server take longer), "
                    "or check that the server is not stuck.") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._raise_if_aborted(aborter, exc)
                raise RemoteConnectionError(
                    f"The server at {server} closed the connection without a complete answer ({exc}). It may have "
                    "crashed or restarted, or a proxy cut the request: see the server's log and queue again.") from exc
        finally:
            aborter.unregister(connection)
            connection.close()
        if response.status >= 400:
            raise _status_error(response.status, raw, server)
        return parse_json(raw, server)

    def _connect(self, connection, aborter: Aborter, server: str) -> None:
        if aborter.aborted:
            raise RequestAborted()
        try:
            connection.connect()
        except ConnectionRefusedError as exc:
            raise RemoteConnectionError(
                f"The server at {server} refused the connection: nothing listens on port {self.address.port} "
                "there. Start it ('vllm serve ByteDance-Seed/BAGEL-7B-MoT --omni --port N') or fix the port in "
                "server_url.") from exc
        except ssl.SSLError as exc:
            raise RemoteConnectionError(
                f"TLS with {server} failed ({exc}). Use http:// if the server does not serve HTTPS, or fix its "
                "certificate.") from exc
        except (socket.timeout, TimeoutError, OSError) as exc:
            raise RemoteConnectionError(self._unreachable(exc, server)) from exc
        connection.sock.settimeout(self.timeout)  # from now on: waiting for the answer
        aborter.register(connection)

    def _unreachable(self, exc: Exception, server: str) -> str:
        if isinstance(exc, socket.gaierror):
            why = f"the host name '{self.address.host}' does not resolve"
        elif isinstance(exc, (socket.timeout, TimeoutError)) or getattr(exc, "errno", None) == errno.ETIMEDOUT:
            why = f"no answer to the connection within {self.connect_timeout:g} s"
        else:
            why = str(exc)
        return (f"Cannot reach the server at {server}: {why}. Check server_url, that the server is running, and "
                "that this machine can reach it (firewall, VPN, the server's --host).")

    @staticmethod
    def _raise_if_aborted(aborter: Aborter, exc: Exception) -> None:
        if aborter.aborted:
            raise RequestAborted() from exc
