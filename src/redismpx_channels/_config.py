"""The layer's options, checked once when the layer is made (Django builds it from
``CHANNEL_LAYERS[...]["CONFIG"]``), so that a mistake fails at start-up and not at
the first message of some event loop."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redismpx_anyio import ClusterMultiplexer, Multiplexer, OverflowPolicy

__all__ = ("LayerConfig", "MultiplexerLike", "check_config")


#: The two multiplexers have the same API; which one a layer uses is its option.
MultiplexerLike = Multiplexer | ClusterMultiplexer


@dataclass(frozen=True, slots=True)
class LayerConfig:
    prefix: str
    expiry: float
    group_expiry: float
    capacity: int
    #: (compiled pattern, capacity) pairs, first match wins (Channels' own rule).
    channel_capacity: tuple[tuple[re.Pattern[str], int], ...]
    overflow: OverflowPolicy
    on_disconnect: str | None
    on_reconnect: str | None
    redis_timeout: float
    sharded: bool
    new_multiplexer: Callable[[], MultiplexerLike]

    def capacity_of(self, channel: str) -> int:
        for pattern, capacity in self.channel_capacity:
            if pattern.match(channel):
                return capacity
        return self.capacity


def _host_url(entry: object) -> str:
    # The stock layer's three spellings of a host; what redis-py alone understands
    # (connection-pool keyword arguments, Sentinel dicts) is refused rather than ignored.
    if isinstance(entry, str):
        return entry
    if isinstance(entry, tuple | list) and len(entry) == 2:
        host, port = entry
        if isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool):
            return f"redis://[{host}]:{port}" if ":" in host else f"redis://{host}:{port}"
    if (
        isinstance(entry, Mapping)
        and set(entry) == {"address"}
        and isinstance(entry["address"], str)
    ):
        return entry["address"]
    raise ValueError(
        f"a host must be a URL, a (host, port) pair or {{'address': URL}}, not {entry!r}; "
        "give connection options (password, ssl, ...) as keyword options of the layer"
    )


def _hosts(hosts: object) -> list[str]:
    if hosts is None:
        return ["redis://localhost:6379"]
    if isinstance(hosts, str | bytes):
        raise ValueError("hosts must be a list of hosts, even if there is only one")
    if not isinstance(hosts, Sequence) or not hosts:
        raise ValueError(f"hosts must be a non-empty list, not {hosts!r}")
    return [_host_url(entry) for entry in hosts]


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return seconds


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def _message_type(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a message type (a non-empty str) or None")
    return value


def _capacities(spec: object) -> tuple[tuple[re.Pattern[str], int], ...]:
    if spec is None:
        return ()
    if not isinstance(spec, Mapping):
        raise TypeError("channel_capacity must be a dict of glob or regex to capacity")
    compiled: list[tuple[re.Pattern[str], int]] = []
    for pattern, capacity in spec.items():
        if isinstance(pattern, re.Pattern):
            regex: re.Pattern[str] = pattern
        elif isinstance(pattern, str):
            regex = re.compile(fnmatch.translate(pattern))
        else:
            raise TypeError(f"channel_capacity keys are globs or compiled regexes: {pattern!r}")
        compiled.append((regex, _count(f"channel_capacity[{pattern!r}]", capacity)))
    return tuple(compiled)


def check_config(
    *,
    hosts: object,
    prefix: object,
    expiry: object,
    group_expiry: object,
    capacity: object,
    channel_capacity: object,
    overflow: object,
    on_disconnect: object,
    on_reconnect: object,
    redis_timeout: object,
    cluster: object,
    sharded: object,
    options: dict[str, Any],
) -> LayerConfig:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if not isinstance(cluster, bool):
        raise TypeError("cluster must be True or False")
    if sharded is not None and not isinstance(sharded, bool):
        raise TypeError("sharded must be True, False or None (sharded in a cluster)")
    if isinstance(overflow, OverflowPolicy):
        policy = overflow
    elif isinstance(overflow, str):
        try:
            policy = OverflowPolicy(overflow)
        except ValueError:
            choices = ", ".join(p.value for p in OverflowPolicy)
            raise ValueError(f"overflow must be one of {choices}, got {overflow!r}") from None
    else:
        raise TypeError(f"overflow must be a str or OverflowPolicy, not {type(overflow).__name__}")
    urls = _hosts(hosts)
    new_multiplexer: Callable[[], MultiplexerLike]
    if cluster:
        ClusterMultiplexer(urls, **options)  # the options fail here, not in a loop

        def new_multiplexer() -> MultiplexerLike:
            return ClusterMultiplexer(urls, **options)

    else:
        if len(urls) != 1:
            raise ValueError(
                "give one host, or cluster=True with startup nodes of a Redis Cluster: "
                "this layer does not shard channels over independent servers"
            )
        (url,) = urls
        Multiplexer(url, **options)

        def new_multiplexer() -> MultiplexerLike:
            return Multiplexer(url, **options)

    return LayerConfig(
        prefix=prefix,
        expiry=_seconds("expiry", expiry),
        group_expiry=_seconds("group_expiry", group_expiry),
        capacity=_count("capacity", capacity),
        channel_capacity=_capacities(channel_capacity),
        overflow=policy,
        on_disconnect=_message_type("on_disconnect", on_disconnect),
        on_reconnect=_message_type("on_reconnect", on_reconnect),
        redis_timeout=_seconds("redis_timeout", redis_timeout),
        sharded=cluster if sharded is None else sharded,
        new_multiplexer=new_multiplexer,
    )
