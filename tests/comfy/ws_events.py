"""Collects ComfyUI websocket messages for one client id in a background thread (aiohttp).

Text messages are parsed JSON dicts; binary ones (preview images) are kept as
{"type": "binary", "event": <int>, "data": <bytes after the event type>}, in arrival order with the rest.
"""
import asyncio
import json
import threading
import time

import aiohttp


class WsEvents:
    def __init__(self, base_url: str, client_id: str):
        self.url = base_url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        self.messages: list[dict] = []
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)
        self._thread.start()
        if not self._connected.wait(15):
            raise TimeoutError(f"no websocket connection to {self.url}")

    async def _listen(self):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.url) as socket:
                self._connected.set()
                while not self._stop.is_set():
                    try:
                        message = await socket.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if message.type == aiohttp.WSMsgType.TEXT:
                        self.messages.append(json.loads(message.data))
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        event = int.from_bytes(message.data[:4], "big")
                        self.messages.append({"type": "binary", "event": event, "data": message.data[4:]})
                    elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return

    def wait_for(self, predicate, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            time.sleep(0.05)
        raise TimeoutError(f"no matching websocket message within {timeout:.0f} s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
