"""Connection settings: one validated, immutable object built from a URL and keywords.

:meth:`Settings.from_url` is what a driver's ``Multiplexer(url, **options)`` calls.
Every check happens here, at construction, so that a bad value fails at the call
site with a typed error (SPEC 2, 3.14) instead of at the first reconnect:

* a malformed URL or a value out of range raises :class:`ValueError`;
* an unknown keyword or a value of the wrong type raises :class:`TypeError`;
* an option given both in the URL and as a keyword raises :class:`ValueError`.

Secrets never leak (SPEC 3.15): the password is left out of ``repr``, and error
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
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict, Unpack
from urllib.parse import quote, unquote

from ._backoff import Backoff

if TYPE_CHECKING:
    from ssl import SSLContext

__all__ = (
    "CoreOptions",
    "DEFAULT_PORT",
    "OverflowPolicy",
    "Scheme",
    "Settings",
    "SettingsOptions",
)

#: Port used when a ``redis://`` or ``rediss://`` URL names none.
DEFAULT_PORT: Final = 6379
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


_SCHEMES: Final = ("redis", "rediss", "unix")
#: Fields that come from the URL itself, never from a keyword.
_URL_ONLY: Final = frozenset({"scheme", "host", "port", "path"})
#: Options a URL may carry; giving one in both places is an error.
_URL_OPTIONS: Final = ("username", "password", "db", "client_name", "protocol")
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


def _check_seconds(name: str, value: object, *, optional: bool, allow_zero: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name!r} must be {expected}, not {_type_name(value)}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{name!r} must be a finite number of seconds, got {seconds}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name!r} must be {bound}, got {seconds}")
    return seconds


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
    ``None`` for ``unix``. Empty strings for ``username``, ``password`` and
    ``client_name`` mean ``None``; ``health_check_interval=0`` becomes ``None``
    (disabled); ``overflow`` is stored as an :class:`OverflowPolicy`.
    """

    scheme: Scheme = "redis"
    host: str | None = None
    port: int | None = None
    path: str | None = None
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
            elif _check_int("port", self.port, 1) > _MAX_PORT:
                raise ValueError(f"'port' must be from 1 to {_MAX_PORT}, got {self.port}")
        if self.ssl is None:
            return
        if not callable(getattr(self.ssl, "wrap_bio", None)):
            hint = " (a rediss:// URL alone gives TLS with default settings)"
            raise TypeError(
                f"'ssl' must be an ssl.SSLContext or None, not {_type_name(self.ssl)}"
                + (hint if isinstance(self.ssl, bool) else "")
            )
        if self.scheme != "rediss":
            raise ValueError(
                f"'ssl' needs a rediss:// URL (TLS over TCP); this one is {self.scheme}://"
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
        timeout = _check_seconds(
            "connect_timeout", self.connect_timeout, optional=True, allow_zero=False
        )
        self._put("connect_timeout", timeout)
        interval = _check_seconds(
            "health_check_interval", self.health_check_interval, optional=True, allow_zero=True
        )
        self._put("health_check_interval", interval or None)
        for name in ("health_check_timeout", "backoff_base", "backoff_cap"):
            value = getattr(self, name)
            self._put(name, _check_seconds(name, value, optional=False, allow_zero=False))
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
        ``rediss://...`` (TLS), ``unix://[[username]:password@]/path/to/socket[?query]``.
        Query parameters: ``db``, ``client_name``, ``protocol``.
        """
        for name in options:
            if name in _URL_ONLY:
                raise TypeError(f"unexpected option {name!r}: the {name} comes from the URL")
            if name not in _OPTIONS:
                raise TypeError(f"unexpected option {name!r}{_suggestion(name, _OPTIONS)}")
        if not isinstance(url, str):
            raise TypeError(f"the URL must be a str, not {_type_name(url)}")
        fields, given = _parse_url(url)
        for name in _URL_OPTIONS:
            if name in given and name in options:
                raise ValueError(
                    f"{name!r} was given twice: in the URL and as a keyword; give it once"
                )
        values: dict[str, Any] = {**fields, **given, **options}
        return cls(**values)

    def redacted_url(self) -> str:
        """Return the URL of these settings with the password as ``***``, for logs."""
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            userinfo += f":{_MASK}@" if self.password is not None else "@"
        query: list[tuple[str, str]] = []
        if self.scheme == "unix":
            base = f"unix://{userinfo}{quote(self.path or '', safe='/')}"
            if self.db:
                query.append(("db", str(self.db)))
        else:
            host = self.host or ""
            host = f"[{quote(host, safe=':')}]" if ":" in host else host
            base = f"{self.scheme}://{userinfo}{host}:{self.port}/{self.db}"
        if self.client_name is not None:
            query.append(("client_name", quote(self.client_name, safe="")))
        if self.protocol != _PROTOCOLS[0]:
            query.append(("protocol", str(self.protocol)))
        if not query:
            return base
        return base + "?" + "&".join(f"{name}={value}" for name, value in query)

    def core_options(self) -> CoreOptions:
        """Keyword arguments for the core state machine's constructor (a plain dict)."""
        return {
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
        self.scheme = head.lower()
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
            raise self.error("it must start with redis://, rediss:// or unix://")
        if self.scheme not in _SCHEMES:
            shown = f" {self.head!r}" if _PLAIN_NAME.fullmatch(self.head) else ""
            raise self.error(f"unknown scheme{shown}; expected redis://, rediss:// or unix://")
        rest, hash_mark, _ = self.rest.partition("#")
        if hash_mark:
            raise self.error("it must not contain a fragment ('#...')")
        rest, _, query = rest.partition("?")
        authority, slash, path = rest.partition("/")
        userinfo, at, hostport = authority.rpartition("@")
        if at:
            self.parse_userinfo(userinfo)
        if self.scheme == "unix":
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
        raw_port: str | None
        if hostport.startswith("["):
            end = hostport.find("]")
            if end < 0:
                raise self.error("'[' opens an IPv6 address but no ']' closes it")
            host = self.decode(hostport[1:end], "host")
            after = hostport[end + 1 :]
            if after and not after.startswith(":"):
                raise self.error("only ':port' may follow an IPv6 address in brackets")
            raw_port = after[1:] if after else None
            if ":" not in host:
                raise self.error("the host in brackets is not an IPv6 address")
        else:
            host, colon, port_text = hostport.partition(":")
            raw_port = port_text if colon else None
            if ":" in port_text:
                raise self.error("an IPv6 host must be in brackets, e.g. redis://[::1]:6379")
        if not host:
            raise self.error(f"the host is missing; expected {self.scheme}://host[:port][/db]")
        problem = _host_problem(host)
        if problem is not None:
            raise self.error(problem)
        self.fields["host"] = host
        if raw_port is not None:
            digits = raw_port.lstrip("0")
            if (
                not _DIGITS.fullmatch(raw_port)
                or len(digits) > len(str(_MAX_PORT))
                or not 1 <= int(digits or "0") <= _MAX_PORT
            ):
                raise self.error(f"the port must be a number from 1 to {_MAX_PORT}")
            self.fields["port"] = int(digits)
        if path:
            self.given["db"] = self.parse_db(path, "the database number (the path /DB)")

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
