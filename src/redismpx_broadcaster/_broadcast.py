"""``Broadcast``: broadcaster's ``Broadcast`` with a bounded buffer per subscriber.

The stock class gives each subscriber an unbounded ``asyncio.Queue``: a WebSocket
client that reads slowly makes its queue, and the process, grow for as long as
messages come. Here each subscriber has a :class:`Mailbox` of ``buffer_size``
events under the multiplexer's overflow policy; the listener puts without ever
waiting, so one slow subscriber holds back nobody else.

Also fixed on the way: a channel's subscriber set is registered before the back
end is asked to subscribe, so two first subscribers of one channel arriving
together both receive (the stock class kept only the second), and every
subscriber of a channel waits until the back end has confirmed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, final

import broadcaster
from broadcaster import BroadcastBackend, Event
from broadcaster._base import Subscriber as _StockSubscriber
from broadcaster._base import Unsubscribed

from redismpx_anyio import OverflowPolicy, SubscriptionOverflow

from ._backend import RedisMPXBackend
from ._mailbox import Mailbox, overflow_options
from ._outage import logger
from ._values import check_channel

__all__ = ("Broadcast", "Subscriber", "SubscriberOverflow")


@final
class SubscriberOverflow(Unsubscribed, SubscriptionOverflow):
    """A subscriber's buffer overflowed under ``overflow="close"``: it was closed.

    An ``Unsubscribed``, so ``async for event in subscriber`` simply ends (and the
    log says why); ``subscriber.get()`` raises it. Also a redismpx
    ``SubscriptionOverflow``, like the multiplexer's own.
    """


class Subscriber(_StockSubscriber):
    """What ``async with broadcast.subscribe(channel) as subscriber`` gives."""

    def __init__(self, mailbox: Mailbox[Event]) -> None:
        # The stock __init__ only keeps a queue; this one has a mailbox instead.
        self._mailbox = mailbox

    async def get(self) -> Event:
        """The next event; raises ``Unsubscribed`` once the subscription has ended."""
        return await self._mailbox.get()

    @property
    def dropped(self) -> int:
        """Events this subscriber lost to its full buffer."""
        return self._mailbox.dropped

    @property
    def buffered(self) -> int:
        """Events waiting for this subscriber now (at most the broadcast's ``buffer_size``)."""
        return len(self._mailbox)


def _unsubscribed() -> BaseException:
    return Unsubscribed()


def _overflowed(bound: int) -> BaseException:
    return SubscriberOverflow(f"the subscriber's buffer of {bound} events overflowed")


def _first_drop(mailbox: Mailbox[Event]) -> None:
    if mailbox.policy is OverflowPolicy.CLOSE:
        logger.warning(
            "redismpx.broadcaster: a subscriber's buffer of %d events overflowed: it is "
            "closed (overflow='close'), %d event(s) dropped",
            mailbox.bound,
            mailbox.dropped,
        )
    else:
        logger.warning(
            "redismpx.broadcaster: a subscriber's buffer of %d events is full (the consumer "
            "is slow): dropping events (overflow=%r)",
            mailbox.bound,
            mailbox.policy.value,
        )


@final
class Broadcast(broadcaster.Broadcast):
    """``Broadcast(url)`` on a :class:`RedisMPXBackend`, or ``Broadcast(backend=...)``
    on any broadcaster back end, with each subscriber's buffer bounded.

    ``buffer_size`` events per subscriber (default 1,000), and ``overflow``:
    ``"drop-oldest"`` (default), ``"drop-newest"``, or ``"close"`` (the subscriber
    ends with :class:`SubscriberOverflow`). Other keyword options go to
    :class:`RedisMPXBackend` (only with a URL).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        backend: BroadcastBackend | None = None,
        buffer_size: int = 1000,
        overflow: OverflowPolicy | str = OverflowPolicy.DROP_OLDEST,
        **options: Any,
    ) -> None:
        size, policy = overflow_options(buffer_size, overflow, "buffer_size")
        if (url is None) == (backend is None):
            raise TypeError("give either a url or a backend=, not both and not neither")
        if url is not None:
            backend = RedisMPXBackend(url, **options)
        elif options:
            raise TypeError(
                f"unexpected option(s) {', '.join(sorted(options))} with backend=: "
                "give them to the back end"
            )
        elif not isinstance(backend, BroadcastBackend):  # (url is None here)
            raise TypeError(f"backend must be a BroadcastBackend, not {type(backend).__name__}")
        super().__init__(backend=backend)
        self._bound = size
        self._policy = policy
        self._channels: dict[str, set[Mailbox[Event]]] = {}
        self._confirmed: set[str] = set()
        self._listening: asyncio.Task[None] | None = None

    @property
    def backend(self) -> BroadcastBackend:
        return self._backend

    async def connect(self) -> None:
        if self._listening is not None:
            raise RuntimeError("the broadcast is connected already; disconnect() first")
        await self._backend.connect()
        self._listening = asyncio.create_task(self._listen(), name="redismpx.broadcaster.listener")

    async def disconnect(self) -> None:
        """Stop listening, end every subscriber's iteration, disconnect the back end."""
        task = self._listening
        if task is None:
            return
        self._listening = None
        failure: BaseException | None = None
        if task.done():
            failure = None if task.cancelled() else task.exception()
        else:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        for mailboxes in self._channels.values():
            for mailbox in mailboxes:
                mailbox.close()
        self._channels.clear()
        self._confirmed.clear()
        await self._backend.disconnect()
        if failure is not None:
            raise failure  # the listener died of the back end's error: say so, as stock does

    async def _listen(self) -> None:
        next_published = self._backend.next_published
        channels = self._channels
        while True:
            event = await next_published()
            mailboxes = channels.get(event.channel)
            if mailboxes:
                for mailbox in mailboxes:
                    mailbox.put(event)

    async def publish(self, channel: str, message: Any) -> None:
        check_channel(channel)
        await self._backend.publish(channel, message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscriber]:
        """``async with broadcast.subscribe(channel) as subscriber``: entered once the
        back end has confirmed the channel; leaving it unsubscribes."""
        check_channel(channel)
        if self._listening is None:
            raise RuntimeError("the broadcast is not connected: call connect() first")
        mailbox: Mailbox[Event] = Mailbox(
            self._bound,
            self._policy,
            closing=_unsubscribed,
            overflowed=_overflowed,
            on_first_drop=_first_drop,
        )
        mailboxes = self._channels.setdefault(channel, set())
        mailboxes.add(mailbox)
        try:
            # Ours answers at once for a channel that is active, and waits for one that
            # is not yet (or not again, during an outage); other back ends are asked once.
            if isinstance(self._backend, RedisMPXBackend) or channel not in self._confirmed:
                await self._backend.subscribe(channel)
                self._confirmed.add(channel)
            yield Subscriber(mailbox)
        finally:
            mailbox.close()
            mailboxes.discard(mailbox)
            if not mailboxes and self._channels.get(channel) is mailboxes:
                del self._channels[channel]
                self._confirmed.discard(channel)
                if self._listening is not None:
                    await self._backend.unsubscribe(channel)
            if mailbox.dropped and mailbox.policy is not OverflowPolicy.CLOSE:
                logger.info(
                    "redismpx.broadcaster: a subscriber left having dropped %d event(s)",
                    mailbox.dropped,
                )
