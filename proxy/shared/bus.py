"""The channels every appliance listens on: one pub/sub connection per process.

``Bus.run`` subscribes to every channel a part registered (``subscribe``), hands each
message to its handler, and after a connection is lost waits out the link's backoff and
subscribes again; ``on_connect`` callbacks run after each (re)subscription, so a part
catches up on what it missed while it was not listening (the lists reconcile, the answer
cache drops what it may hold stale). Handlers run in the loop and must be quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from proxy.shared.link import Link, LinkDown

logger = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20  # bytes; a larger message is not one of ours


class Bus:
    def __init__(self, link: Link) -> None:
        self.link = link
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self.connected = asyncio.Event()

    def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        self._handlers[channel] = handler

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_connect.append(callback)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with the link's backoff."""
        while True:
            await self.link.wait_usable()
            pubsub: Any = self.link.aio.pubsub()
            try:
                await self.link.run("subscribe", partial(_subscribe, pubsub, list(self._handlers)))
                self.connected.set()
                for callback in self._on_connect:
                    await callback()
                await self._listen(pubsub)
            except LinkDown:
                pass
            except Exception as e:  # the connection broke while listening
                self.link.failed("subscribe", e)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):  # a dead connection: nothing to close cleanly
                    await asyncio.wait_for(pubsub.aclose(), self.link.timeout)
                await asyncio.sleep(0)  # a cancellation lands here, not in a busy loop

    async def _listen(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            channel, data = message.get("channel"), message.get("data")
            if isinstance(channel, bytes):
                channel = channel.decode("utf-8", "replace")
            handler = self._handlers.get(channel)
            if handler is None or not isinstance(data, bytes) or len(data) > MAX_MESSAGE:
                continue
            try:
                handler(data)
            except Exception:
                logger.exception("handling a message on %s failed", channel)


async def _subscribe(pubsub: Any, channels: list[str], _client: Any) -> None:
    await pubsub.subscribe(*channels)
