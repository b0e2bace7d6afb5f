"""Connection settings: one validated, immutable object built from a URL and keywords.

:meth:`Settings.from_url` is what a driver's ``Multiplexer(url, **options)`` calls.
Every check happens here, at construction, so that a bad value fails at the call
site with a typed error (SPEC 2, 3.14) instead of at the first reconnect:

* a malformed URL or a value out of range raises :class:`ValueError`;
* an unknown keyword or a value of the wrong type raises :class:`TypeError`;
* an option given both in the URL and as a keyword raises :class:`ValueError`.

Sentinel mode (SPEC 4): a ``redis+sentinel://`` URL, or ``sentinels=`` and
``master_name=``, names the sentinels to ask for the master's address instead of
a server; the settings then hold no ``host`` or ``port`` of their own.

Secrets never leak (SPEC 3.15): the passwords are left out of ``repr``, and error
messages are built from parsed parts, never from the raw URL. When a URL is too
malformed to tell its parts apart, messages quote nothing from it but the scheme
and query parameter names, and only when those look like plain names.

The module is pure: it opens nothing and reads no clock. An ``ssl.SSLContext``
is accepted as an opaque value (anything with a ``wrap_bio`` method, which is
what the drivers' TLS layers call).
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, NotRequired, TypedDict, Unpack
from urllib.parse import quote, unquote

from ._backoff import Backoff
from ._seconds import check_seconds

if TYPE_CHECKING:
    from ssl import SSLContext

__all__ = (
    "CoreOptions",
    "DEFAULT_PORT",
    "DEFAULT_SENTINEL_PORT",
    "DEFAULT_URL",
    "OverflowPolicy",
    "Scheme",
    "Settings",
    "SettingsOptions",
)

#: Port used when a ``redis://`` or ``rediss://`` URL names none.
DEFAULT_PORT: Final = 6379
#: Port used for a sentinel that a ``redis+sentinel://`` URL lists without one.
DEFAULT_SENTINEL_PORT: Final = 26379
#: The URL a driver's ``Multiplexer()`` uses when given none. Sentinel options may
#: be combined with it (it then names no server), not with any other redis:// URL.
DEFAULT_URL: Final = "redis://localhost:6379/0"
#: Redis' own limit on a bulk string (512 MiB) plus room for the frame around it.
DEFAULT_MAX_FRAME_SIZE: Final = 512 * 1024 * 1024 + 64 * 1024

Scheme = Literal["redis", "rediss", "unix"]


class OverflowPolicy(enum.StrEnum):
    """What a subscription does when its buffer is full and one more message arrives."""

    #: Discard the oldest buffered message to make room (the default).
    DROP_OLDEST = "drop-oldest"
    #: Discard the message that just arrived.
    DROP_NEWEST = "drop-newest"
    #: Close the subscription with an error.
    CLOSE = "close"


class SettingsOptions(TypedDict, total=False):
    """The keyword options of :meth:`Settings.from_url` (and of the drivers' ``Multiplexer``)."""

    username: str | None
    password: str | None
    db: int
    client_name: str | None
    protocol: int
    sentinels: Sequence[tuple[str, int]] | None
    master_name: str | None
    sentinel_username: str | None
    sentinel_password: str | None
    ssl: SSLContext | None
    connect_timeout: float | None
    health_check_interval: float | None
    health_check_timeout: float
    backoff_base: float
    backoff_cap: float
    buffer_size: int
    overflow: OverflowPolicy | str
    max_frame_size: int


class CoreOptions(TypedDict):
    """The keyword arguments of the core state machine: ``MultiplexerCore(**core_options)``."""

    protocol: int
    username: str | None
    password: str | None
    db: int
    client_name: str | None
    health_check_interval: float | None
    health_check_timeout: float
    connect_timeout: float | None
    max_frame_size: int
    backoff_base: float
    backoff_cap: float
    #: Present (and true) only in sentinel mode: the handshake checks the node's ROLE.
    require_master: NotRequired[bool]


_SCHEMES: Final = ("redis", "rediss", "unix")
#: URL schemes of sentinel mode, and the scheme (transport) of the data nodes they give.
_SENTINEL_SCHEMES: Final = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
_URL_SCHEMES: Final = (*_SCHEMES, *_SENTINEL_SCHEMES)
#: The schemes Valkey's own clients write, read as the Redis schemes they stand for:
#: the protocol is the same, and so is every option.
_SCHEME_ALIASES: Final = {
    "valkey": "redis",
    "valkeys": "rediss",
    "valkey+sentinel": "redis+sentinel",
    "valkeys+sentinel": "rediss+sentinel",
}
_EXPECTED_SCHEMES: Final = (
    "redis://, rediss:// or unix:// (or redis+sentinel://, rediss+sentinel://; "
    "valkey://, valkeys://, valkey+sentinel:// and valkeys+sentinel:// are aliases)"
)
#: Fields that come from the URL itself, never from a keyword.
_URL_ONLY: Final = frozenset({"scheme", "host", "port", "path"})
#: Options a URL may carry; giving one in both places is an error.
_URL_OPTIONS: Final = (
    "username", "password", "db", "client_name", "protocol", "sentinels", "master_name"
)
#: Options that ask for sentinel mode: a redis://, rediss:// or unix:// URL names a
#: server of its own and cannot be combined with them (the default URL can).
_SENTINEL_OPTIONS: Final = ("sentinels", "master_name", "sentinel_username", "sentinel_password")
_QUERY_PARAMETERS: Final = ("db", "client_name", "protocol")
_OPTIONS: Final = tuple(SettingsOptions.__annotations__)
_MAX_DB: Final = 2**31 - 1  # Redis keeps the database index in a C int
_MIN_FRAME_SIZE: Final = 1024
_MAX_PORT: Final = 65535
_PROTOCOLS: Final = (2, 3)
_MASK: Final = "***"

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]{0,31}", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_NEGATIVE = re.compile(r"-[0-9]+", re.ASCII)
_HOST_PUNCTUATION: Final = frozenset("-._~")
_NO_SENTINELS: Final = (
    "sentinel mode needs at least one sentinel: list them in the URL, "
    "redis+sentinel://host1:26379,host2:26379/mymaster, or give sentinels=[(host, port), ...]"
)
_SPECIALS_HINT: Final = (
    " (if the username or password contains '@', ':', '/', '?', '#' or '%', percent-encode it)"
)


def _suggestion(name: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if name.lower() in choices and name.lower() != name:
        return f"; did you mean {name.lower()!r}?"
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------- field checks


def _type_name(value: object) -> str:
    return type(value).__name__


def _check_int(name: str, value: object, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name!r} must be an int, not {_type_name(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name!r} must be >= {minimum}, got {value}")
    return int(value)


def _check_optional_str(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name!r} must be a str or None, not {_type_name(value)}")
    return value or None  # an empty string means "none", as in a URL


def _host_problem(host: str) -> str | None:
    """Why *host* (no brackets, no percent-encoding) is not a host name or address."""
    if not host:
        return "the host is empty"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "the host contains ':' but is not an IPv6 address"
        return None
    for char in host:
        if not (char.isalnum() or char in _HOST_PUNCTUATION):
            return f"the host contains the character {char!r}, which no host name has"
    return None


def _check_port(label: str, value: object) -> int:
    port = _check_int(label, value, 1)
    if port > _MAX_PORT:
        raise ValueError(f"{label!r} must be from 1 to {_MAX_PORT}, got {port}")
    return port


def _check_sentinel(position: int, item: object) -> tuple[str, int]:
    """One ``(host, port)`` pair of ``sentinels``; messages name its position, not its host."""
    if isinstance(item, str | bytes) or not isinstance(item, tuple | list):
        raise TypeError(
            f"each item of 'sentinels' must be a (host, port) pair; item {position} "
            f"is a {_type_name(item)}"
        )
    if len(item) != 2:
        raise ValueError(
            f"each item of 'sentinels' must be a (host, port) pair; item {position} "
            f"has {len(item)} elements"
        )
    host, port = item
    if not isinstance(host, str):
        raise TypeError(f"the host of sentinel {position} must be a str, not {_type_name(host)}")
    problem = _host_problem(host)
    if problem is not None:
        raise ValueError(f"bad host of sentinel {position}: {problem}")
    return host, _check_port(f"port of sentinel {position}", port)


def _check_master_name(name: object) -> str:
    if name is None:
        raise ValueError(
            "sentinel mode needs a 'master_name' (the name the sentinels monitor): in the "
            "URL, redis+sentinel://host:26379/mymaster, or as master_name='mymaster'"
        )
    if not isinstance(name, str):
        raise TypeError(f"'master_name' must be a str, not {_type_name(name)}")
    if not name:
        raise ValueError("'master_name' must not be empty")
    for char in name:
        # Sentinel keeps the name in its config file, one directive per line.
        if char.isspace() or not char.isprintable():
            raise ValueError(f"'master_name' must not contain {char!r}")
    return name


def _url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets, its zone's '%' encoded."""
    return f"[{quote(host, safe=':')}]" if ":" in host else host


def _check_client_name(name: str) -> None:
    # Redis accepts only printable ASCII without spaces (validateClientAttr: '!'..'~').
    for char in name:
        if not "!" <= char <= "~":
            raise ValueError(
                f"'client_name' must not contain {char!r}: Redis accepts only printable "
                "ASCII without spaces or newlines"
            )


# --------------------------------------------------------------------------------- Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything needed to connect to Redis and run a multiplexer, validated.

    Build it with :meth:`from_url`. Direct construction (keyword-only) is validated
    the same way; ``port`` defaults to 6379 for ``redis``/``rediss`` and must stay
    ``None`` for ``unix``. In sentinel mode (``sentinels`` and ``master_name``, over
    ``redis`` or ``rediss``) ``host``, ``port`` and ``path`` stay ``None``: the
    sentinels give the master's address; ``sentinels`` is stored as a tuple of
    ``(host, port)`` tuples. Empty strings for ``username``, ``password``,
    ``sentinel_username``, ``sentinel_password`` and ``client_name`` mean ``None``;
    ``health_check_interval=0`` becomes ``None`` (disabled); ``overflow`` is stored as
    an :class:`OverflowPolicy`.
    """

    scheme: Scheme = "redis"
    host: str | None = None
    port: int | None = None
    path: str | None = None
    #: Sentinel mode when not empty: where to ask for the master's address.
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    #: Credentials for the sentinels themselves (``username``/``password`` are the data nodes').
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    client_name: str | None = None
    protocol: int = 2
    ssl: SSLContext | None = None
    connect_timeout: float | None = 10.0
    health_check_interval: float | None = 30.0
    health_check_timeout: float = 10.0
    backoff_base: float = 0.1
    backoff_cap: float = 10.0
    buffer_size: int = 10_000
    overflow: str = OverflowPolicy.DROP_OLDEST
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE

    def __post_init__(self) -> None:
        self._check_address()
        self._check_handshake()
        self._check_timing()
        self._check_buffers()

    def _put(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # normalizing a frozen instance in __post_init__

    def _check_address(self) -> None:
        if not isinstance(self.scheme, str) or self.scheme not in _SCHEMES:
            raise ValueError(f"'scheme' must be one of {', '.join(map(repr, _SCHEMES))}")
        for name in ("sentinel_username", "sentinel_password"):
            self._put(name, _check_optional_str(name, getattr(self, name)))
        if self.sentinels is None:
            self._put("sentinels", ())  # None means none, as for the other options
        if (
            self.sentinels == ()
            and self.master_name is None
            and self.sentinel_username is None
            and self.sentinel_password is None
        ):
            self._check_server_address()
        else:
            self._check_sentinels()
        self._check_ssl()

    def _check_sentinels(self) -> None:
        if self.scheme == "unix":
            raise ValueError("sentinel mode connects over TCP: use redis or rediss, not unix")
        if self.host is not None or self.port is not None or self.path is not None:
            raise ValueError(
                "in sentinel mode the sentinels give the master's address: "
                "give no 'host', 'port' or 'path'"
            )
        sentinels = self.sentinels
        if not isinstance(sentinels, tuple | list):
            raise TypeError(
                "'sentinels' must be a list of (host, port) pairs, "
                f"not {_type_name(sentinels)}"
            )
        if not sentinels:
            raise ValueError(_NO_SENTINELS)
        checked = tuple(_check_sentinel(i, item) for i, item in enumerate(sentinels, 1))
        for position, address in enumerate(checked, 1):
            first = checked.index(address) + 1
            if first != position:
                raise ValueError(f"sentinel {position} repeats sentinel {first}")
        self._put("sentinels", checked)
        self._put("master_name", _check_master_name(self.master_name))
        if self.sentinel_username is not None and self.sentinel_password is None:
            raise ValueError(
                "'sentinel_username' needs a 'sentinel_password' (AUTH takes both)"
            )

    def _check_server_address(self) -> None:
        if self.scheme == "unix":
            if self.host is not None or self.port is not None:
                raise ValueError("a unix socket takes a 'path', not a 'host' or 'port'")
            if self.path is None:
                raise ValueError("a unix:// connection needs a 'path' (the socket)")
            if not isinstance(self.path, str):
                raise TypeError(f"'path' must be a str, not {_type_name(self.path)}")
            if not self.path.startswith("/") or "\0" in self.path:
                raise ValueError("'path' must be an absolute path without NUL characters")
        else:
            if self.path is not None:
                raise ValueError(f"a {self.scheme}:// connection takes a 'host', not a 'path'")
            if self.host is None:
                raise ValueError(f"a {self.scheme}:// connection needs a 'host'")
            if not isinstance(self.host, str):
                raise TypeError(f"'host' must be a str, not {_type_name(self.host)}")
            problem = _host_problem(self.host)
            if problem is not None:
                raise ValueError(f"bad 'host': {problem}")
            if self.port is None:
                self._put("port", DEFAULT_PORT)
            else:
                _check_port("port", self.port)

    def _check_ssl(self) -> None:
        if self.ssl is None:
            return
        if not callable(getattr(self.ssl, "wrap_bio", None)):
            hint = " (a rediss:// URL alone gives TLS with default settings)"
            raise TypeError(
                f"'ssl' must be an ssl.SSLContext or None, not {_type_name(self.ssl)}"
                + (hint if isinstance(self.ssl, bool) else "")
            )
        if self.scheme != "rediss":
            scheme = f"{self.scheme}+sentinel" if self.sentinels else self.scheme
            raise ValueError(
                f"'ssl' needs a rediss:// URL (TLS over TCP; rediss+sentinel:// with "
                f"sentinels); this one is {scheme}://"
            )

    def _check_handshake(self) -> None:
        self._put("username", _check_optional_str("username", self.username))
        self._put("password", _check_optional_str("password", self.password))
        if _check_int("db", self.db, 0) > _MAX_DB:
            raise ValueError(f"'db' must be <= {_MAX_DB}, got {self.db}")
        client_name = _check_optional_str("client_name", self.client_name)
        if client_name is not None:
            _check_client_name(client_name)
        self._put("client_name", client_name)
        if _check_int("protocol", self.protocol, None) not in _PROTOCOLS:
            raise ValueError(f"'protocol' must be 2 or 3, got {self.protocol}")

    def _check_timing(self) -> None:
        timeout = check_seconds(
            "connect_timeout", self.connect_timeout, optional=True, allow_zero=False
        )
        self._put("connect_timeout", timeout)
        interval = check_seconds(
            "health_check_interval", self.health_check_interval, optional=True, allow_zero=True
        )
        self._put("health_check_interval", interval or None)
        for name in ("health_check_timeout", "backoff_base", "backoff_cap"):
            value = getattr(self, name)
            self._put(name, check_seconds(name, value, optional=False, allow_zero=False))
        if self.backoff_cap < self.backoff_base:
            raise ValueError(
                f"'backoff_cap' ({self.backoff_cap}) must be >= "
                f"'backoff_base' ({self.backoff_base})"
            )
        Backoff(base=self.backoff_base, cap=self.backoff_cap)  # the core must accept them too

    def _check_buffers(self) -> None:
        _check_int("buffer_size", self.buffer_size, 1)
        _check_int("max_frame_size", self.max_frame_size, _MIN_FRAME_SIZE)
        if not isinstance(self.overflow, str):
            raise TypeError(
                f"'overflow' must be an OverflowPolicy or str, not {_type_name(self.overflow)}"
            )
        try:
            self._put("overflow", OverflowPolicy(self.overflow))
        except ValueError:
            allowed = ", ".join(repr(policy.value) for policy in OverflowPolicy)
            raise ValueError(f"'overflow' must be one of {allowed}") from None

    @classmethod
    def from_url(cls, url: str, **options: Unpack[SettingsOptions]) -> Settings:
        """Parse *url* and apply the keyword *options* (named as the fields).

        URL forms: ``redis://[[username]:password@]host[:port][/db][?query]``,
        ``rediss://...`` (TLS), ``unix://[[username]:password@]/path/to/socket[?query]``,
        and for sentinel mode
        ``redis+sentinel://[[username]:password@]host1[:port1],host2[:port2]/master_name[/db][?query]``
        (``rediss+sentinel://`` for TLS to the data nodes; a sentinel's port defaults to
        26379). Query parameters: ``db``, ``client_name``, ``protocol``.

        The sentinel options (``sentinels``, ``master_name``, ``sentinel_username``,
        ``sentinel_password``) go with a ``redis+sentinel://`` URL (which may then leave
        out the sentinels or the master name) or with :data:`DEFAULT_URL`, which then
        names no server: ``Settings.from_url(DEFAULT_URL, sentinels=[...],
        master_name="mymaster")`` is what ``Multiplexer(sentinels=..., master_name=...)``
        does.
        """
        for name in options:
            if name in _URL_ONLY:
                raise TypeError(f"unexpected option {name!r}: the {name} comes from the URL")
            if name not in _OPTIONS:
                raise TypeError(f"unexpected option {name!r}{_suggestion(name, _OPTIONS)}")
        if not isinstance(url, str):
            raise TypeError(f"the URL must be a str, not {_type_name(url)}")
        fields, given = _parse_url(url)
        if any(options.get(name) is not None for name in _SENTINEL_OPTIONS) and (
            "host" in fields or "path" in fields
        ):
            if url.strip() != DEFAULT_URL:
                raise ValueError(
                    "sentinel options need a redis+sentinel:// (or rediss+sentinel://) URL, "
                    f"or no URL: this {fields['scheme']}:// URL names a server of its own"
                )
            # The URL the caller did not give: the sentinels will say where the master is.
            fields, given = {"scheme": "redis"}, {}
        for name in _URL_OPTIONS:
            if name in given and name in options:
                raise ValueError(
                    f"{name!r} was given twice: in the URL and as a keyword; give it once"
                )
        values: dict[str, Any] = {**fields, **given, **options}
        if "host" not in fields and "path" not in fields and not values.get("sentinels"):
            # A sentinel URL listing no sentinel, and no sentinels= to fill it in.
            raise ValueError(_NO_SENTINELS)
        return cls(**values)

    def redacted_url(self) -> str:
        """Return the URL of these settings with the password as ``***``, for logs."""
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            userinfo += f":{_MASK}@" if self.password is not None else "@"
        query: list[tuple[str, str]] = []
        if self.sentinels:
            hosts = ",".join(f"{_url_host(host)}:{port}" for host, port in self.sentinels)
            master = quote(self.master_name or "", safe="")
            base = f"{self.scheme}+sentinel://{userinfo}{hosts}/{master}/{self.db}"
        elif self.scheme == "unix":
            base = f"unix://{userinfo}{quote(self.path or '', safe='/')}"
            if self.db:
                query.append(("db", str(self.db)))
        else:
            base = f"{self.scheme}://{userinfo}{_url_host(self.host or '')}:{self.port}/{self.db}"
        if self.client_name is not None:
            query.append(("client_name", quote(self.client_name, safe="")))
        if self.protocol != _PROTOCOLS[0]:
            query.append(("protocol", str(self.protocol)))
        if not query:
            return base
        return base + "?" + "&".join(f"{name}={value}" for name, value in query)

    def core_options(self) -> CoreOptions:
        """Keyword arguments for the core state machine's constructor (a plain dict)."""
        options: CoreOptions = {
            "protocol": self.protocol,
            "username": self.username,
            "password": self.password,
            "db": self.db,
            "client_name": self.client_name,
            "health_check_interval": self.health_check_interval,
            "health_check_timeout": self.health_check_timeout,
            "connect_timeout": self.connect_timeout,
            "max_frame_size": self.max_frame_size,
            "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap,
        }
        if self.sentinels:
            # A sentinel's answer may be out of date (a failover under way): the core
            # asks the node itself, and drops a connection to anything but a master.
            options["require_master"] = True
        return options


# ------------------------------------------------------------------------------ URL parsing


def _parse_url(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(where to connect, options the URL gives)``; ValueError on a malformed URL."""
    return _URLParser(url).parse()


class _URLParser:
    """One URL, split by hand so that no error message can quote it.

    A password with an unescaped '/', '?' or '#' ends up in the "host", "port",
    "path" or "query", so messages never echo those parts back: only the scheme and
    query parameter names, and only when they look like plain names.
    """

    def __init__(self, url: str) -> None:
        self.text = url.strip()
        head, self.separator, self.rest = self.text.partition("://")
        self.head = head
        #: As written (for messages), and as read (an alias gives its Redis scheme).
        self.written = head.lower()
        self.scheme = _SCHEME_ALIASES.get(self.written, self.written)
        # If something fails and an '@' appears after the authority has ended, the
        # likely cause is an unescaped special character in the password.
        found = [i for i in map(self.rest.find, "/?#") if i >= 0]
        authority_end = min(found, default=len(self.rest))
        self.hint = _SPECIALS_HINT if "@" in self.rest[authority_end:] else ""
        self.fields: dict[str, Any] = {"scheme": self.scheme}
        self.given: dict[str, Any] = {}

    def error(self, problem: str) -> ValueError:
        return ValueError(f"invalid Redis URL: {problem}{self.hint}")

    def decode(self, raw: str, what: str) -> str:
        try:
            return unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise self.error(f"the {what} is not valid percent-encoded UTF-8") from None

    def parse(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if not self.separator:
            raise self.error(f"it must start with {_EXPECTED_SCHEMES}")
        if self.scheme not in _URL_SCHEMES:
            shown = f" {self.head!r}" if _PLAIN_NAME.fullmatch(self.head) else ""
            raise self.error(f"unknown scheme{shown}; expected {_EXPECTED_SCHEMES}")
        rest, hash_mark, _ = self.rest.partition("#")
        if hash_mark:
            raise self.error("it must not contain a fragment ('#...')")
        rest, _, query = rest.partition("?")
        authority, slash, path = rest.partition("/")
        userinfo, at, hostport = authority.rpartition("@")
        if at:
            self.parse_userinfo(userinfo)
        if self.scheme in _SENTINEL_SCHEMES:
            self.parse_sentinels(hostport, path)
        elif self.scheme == "unix":
            self.parse_unix(hostport, slash, path)
        else:
            self.parse_tcp(hostport, path)
        self.parse_query(query)
        return self.fields, self.given

    def parse_userinfo(self, userinfo: str) -> None:
        raw_username, colon, raw_password = userinfo.partition(":")
        if raw_username:
            self.given["username"] = self.decode(raw_username, "username")
        if colon and raw_password:
            self.given["password"] = self.decode(raw_password, "password")

    def parse_unix(self, hostport: str, slash: str, path: str) -> None:
        if hostport:
            raise self.error("a unix:// URL takes no host or port; write unix:///path/to/socket")
        if not slash or not path:
            raise self.error("a unix:// URL needs a socket path: unix:///path/to/socket")
        socket_path = self.decode("/" + path, "socket path")
        if "\0" in socket_path:
            raise self.error("the socket path contains a NUL character")
        self.fields["path"] = socket_path

    def parse_tcp(self, hostport: str, path: str) -> None:
        host, port = self.parse_address(hostport, "")
        self.fields["host"] = host
        if port is not None:
            self.fields["port"] = port
        if path:
            self.given["db"] = self.parse_db(path, "the database number (the path /DB)")

    def parse_sentinels(self, hostports: str, path: str) -> None:
        """``host1[:port1],host2[:port2]/master_name[/db]``: either part may be left to
        the keywords (``sentinels=``, ``master_name=``), so both may be empty here."""
        self.fields["scheme"] = _SENTINEL_SCHEMES[self.scheme]
        if hostports:
            sentinels: list[tuple[str, int]] = []
            for position, hostport in enumerate(hostports.split(","), 1):
                if not hostport:
                    raise self.error(
                        f"sentinel {position} of the list is empty; expected "
                        f"{self.written}://host1[:port1],host2[:port2]/master_name"
                    )
                host, port = self.parse_address(hostport, f"sentinel {position}: ")
                sentinels.append((host, DEFAULT_SENTINEL_PORT if port is None else port))
            self.given["sentinels"] = tuple(sentinels)
        raw_name, _, db = path.partition("/")
        if raw_name:
            self.given["master_name"] = self.decode(raw_name, "master name")
        if db:
            self.given["db"] = self.parse_db(
                db, "the database number (the path /master_name/DB)"
            )

    def parse_address(self, hostport: str, label: str) -> tuple[str, int | None]:
        """``host[:port]`` or ``[ipv6][:port]``, checked; messages start with ``label``."""
        raw_port: str | None
        if hostport.startswith("["):
            end = hostport.find("]")
            if end < 0:
                raise self.error(f"{label}'[' opens an IPv6 address but no ']' closes it")
            host = self.decode(hostport[1:end], "host")
            after = hostport[end + 1 :]
            if after and not after.startswith(":"):
                raise self.error(f"{label}only ':port' may follow an IPv6 address in brackets")
            raw_port = after[1:] if after else None
            if ":" not in host:
                raise self.error(f"{label}the host in brackets is not an IPv6 address")
        else:
            host, colon, port_text = hostport.partition(":")
            raw_port = port_text if colon else None
            if ":" in port_text:
                raise self.error(
                    f"{label}an IPv6 host must be in brackets, e.g. redis://[::1]:6379"
                )
        if not host:
            raise self.error(
                f"{label}the host is missing; expected {self.written}://host[:port][/db]"
            )
        problem = _host_problem(host)
        if problem is not None:
            raise self.error(f"{label}{problem}")
        if raw_port is None:
            return host, None
        digits = raw_port.lstrip("0")
        if (
            not _DIGITS.fullmatch(raw_port)
            or len(digits) > len(str(_MAX_PORT))
            or not 1 <= int(digits or "0") <= _MAX_PORT
        ):
            raise self.error(f"{label}the port must be a number from 1 to {_MAX_PORT}")
        return host, int(digits)

    def parse_query(self, query: str) -> None:
        seen: set[str] = set()
        for piece in query.split("&"):
            if not piece:
                continue
            raw_name, equals, raw_value = piece.partition("=")
            name = self.decode(raw_name, "query parameter name")
            if name not in _QUERY_PARAMETERS:
                shown = f" {name!r}" if _PLAIN_NAME.fullmatch(name) else ""
                raise self.error(
                    f"unknown query parameter{shown}{_suggestion(name, _QUERY_PARAMETERS)}"
                    f" (allowed: {', '.join(_QUERY_PARAMETERS)})"
                )
            if name in seen:
                raise self.error(f"query parameter {name!r} is given twice")
            seen.add(name)
            if not equals or not raw_value:
                raise self.error(f"query parameter {name!r} needs a value, e.g. ?{name}=...")
            value = self.decode(raw_value, f"value of {name!r}")
            if name == "db":
                if "db" in self.given:
                    raise self.error("'db' is given twice: in the path (/DB) and as ?db=")
                self.given["db"] = self.parse_db(value, "'db'")
            elif name == "protocol":
                if value not in ("2", "3"):
                    raise self.error("'protocol' must be 2 or 3")
                self.given["protocol"] = int(value)
            else:
                self.given["client_name"] = value

    def parse_db(self, text: str, label: str) -> int:
        if _NEGATIVE.fullmatch(text):
            raise self.error(f"{label} must not be negative")
        if not _DIGITS.fullmatch(text):
            raise self.error(f"{label} must be a non-negative integer")
        digits = text.lstrip("0") or "0"
        if len(digits) > len(str(_MAX_DB)) or int(digits) > _MAX_DB:
            raise self.error(f"{label} must be <= {_MAX_DB}")
        return int(digits)
