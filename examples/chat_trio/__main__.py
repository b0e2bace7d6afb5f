"""``python -m examples.chat_trio [--redis-url URL] [--host HOST] [--port PORT] [--start-redis]``

Runs the trio chat in the foreground until Ctrl-C (or SIGTERM, SIGHUP). With
``--start-redis`` it first does what ``scripts/demo`` does for the anyio demo: if no Redis
answers at ``--redis-url`` (a ``redis://`` loopback URL), it starts a throwaway
``redis-server`` there, and stops it (removing its directory) once the app is down.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from redismpx_core import Settings as RedisSettings

from ..demo_redis import DemoRedis, die, redis_for_demo, say
from .app import add_arguments, check_port_free, run, settings_from


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.chat_trio",
        description="The redismpx chat demo on trio and trio-websocket.",
    )
    add_arguments(parser)
    parser.add_argument(
        "--start-redis",
        action="store_true",
        help="start a throwaway redis-server at --redis-url when none answers there",
    )
    args = parser.parse_args(argv)
    settings = settings_from(parser, args)
    try:
        redis = RedisSettings.from_url(settings.redis_url)
    except (TypeError, ValueError) as exc:
        die(f"--redis-url: {exc}")
    problem = check_port_free(settings.host, settings.port)
    if problem is not None:
        die(f"cannot serve on {settings.host}:{settings.port}: {problem} (try --port)")

    # Outside trio.run (while a Redis starts, or stops), SIGTERM and SIGHUP stop the demo
    # as Ctrl-C does; inside it, the app's own signal receiver takes them.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    started: DemoRedis | None = None
    try:
        if args.start_redis:
            started = redis_for_demo(redis)
        run(settings)
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


sys.exit(main())
