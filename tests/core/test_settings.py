"""Settings: URL parsing, keyword options, validation, and secrets kept out of messages."""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redismpx_core._settings import OverflowPolicy, Settings

SECRET = "hunter2-s3cret"

EXPECTED_DEFAULTS: dict[str, object] = {
    "username": None,
    "password": None,
    "db": 0,
    "client_name": None,
    "protocol": 2,
    "ssl": None,
    "connect_timeout": 10.0,
    "health_check_interval": 30.0,
    "health_check_timeout": 10.0,
    "backoff_base": 0.1,
    "backoff_cap": 10.0,
    "buffer_size": 10_000,
    "overflow": OverflowPolicy.DROP_OLDEST,
    "max_frame_size": 512 * 1024 * 1024 + 64 * 1024,
}


def from_url(url: str, **options: Any) -> Settings:
    """Call from_url with untyped options, as a user without a type checker would."""
    return Settings.from_url(url, **options)


def raised(url: str, **options: Any) -> BaseException:
    """The exception from_url raises (the test fails if it raises none)."""
    with pytest.raises((ValueError, TypeError)) as info:
        from_url(url, **options)
    return info.value


def outcome(url: str, **options: Any) -> Settings | Exception:
    """The settings, or the ValueError or TypeError that from_url raised."""
    try:
        return from_url(url, **options)
    except (ValueError, TypeError) as error:
        return error


# ---------------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    s = from_url("redis://localhost")
    assert (s.scheme, s.host, s.port, s.path) == ("redis", "localhost", 6379, None)
    for name, value in EXPECTED_DEFAULTS.items():
        assert getattr(s, name) == value, name
    assert s.overflow is OverflowPolicy.DROP_OLDEST


def test_settings_are_frozen_and_slotted() -> None:
    s = from_url("redis://localhost")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.db = 1  # type: ignore[misc]
    assert not hasattr(s, "__dict__")


def test_equal_settings_compare_equal() -> None:
    assert from_url("redis://h:6379/0") == from_url("redis://h")
    assert from_url("redis://h/1") != from_url("redis://h/2")


# ------------------------------------------------------------------------------- URL forms


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", {"scheme": "redis", "host": "localhost", "port": 6379, "db": 0}),
        ("redis://h:7000", {"host": "h", "port": 7000}),
        ("redis://h:7000/5", {"port": 7000, "db": 5}),
        ("redis://h/", {"db": 0}),
        ("redis://h/007", {"db": 7}),
        ("redis://h/?db=3", {"db": 3}),
        ("redis://h?db=3", {"db": 3}),
        ("redis://:pw@h", {"username": None, "password": "pw"}),
        ("redis://alice:pw@h", {"username": "alice", "password": "pw"}),
        ("redis://alice@h", {"username": "alice", "password": None}),
        ("redis://alice:@h", {"username": "alice", "password": None}),
        ("redis://:@h", {"username": None, "password": None}),
        ("redis://u:p:w@h", {"username": "u", "password": "p:w"}),
        ("redis://u:p@w@h", {"username": "u", "password": "p@w", "host": "h"}),
        ("redis://%C3%A9l%40i:p%2F%3F%23%25w@h", {"username": "él@i", "password": "p/?#%w"}),
        ("redis://h?client_name=worker-1&protocol=3", {"client_name": "worker-1", "protocol": 3}),
        ("redis://h?protocol=2", {"protocol": 2}),
        ("redis://h?client_name=a%2Bb", {"client_name": "a+b"}),
        ("redis://h?&db=1&", {"db": 1}),
        ("redis://redis_1.internal-net", {"host": "redis_1.internal-net"}),
        ("redis://127.0.0.1:1", {"host": "127.0.0.1", "port": 1}),
        ("redis://h:65535", {"port": 65535}),
        ("redis://h:06379", {"port": 6379}),
        ("REDIS://h", {"scheme": "redis"}),
        ("  redis://h/2\n", {"host": "h", "db": 2}),
        ("rediss://h", {"scheme": "rediss", "host": "h", "port": 6379, "ssl": None}),
        ("rediss://u:p@h:6380/1", {"scheme": "rediss", "username": "u", "port": 6380, "db": 1}),
        ("redis://[::1]", {"host": "::1", "port": 6379}),
        ("redis://[::1]:7000/2", {"host": "::1", "port": 7000, "db": 2}),
        ("redis://u:p@[2001:db8::7]:1", {"host": "2001:db8::7", "password": "p"}),
        ("redis://[fe80::1%25eth0]", {"host": "fe80::1%eth0"}),
        (
            "unix:///var/run/redis.sock",
            {"scheme": "unix", "path": "/var/run/redis.sock", "host": None, "port": None},
        ),
        ("unix:///tmp/r.sock?db=4", {"path": "/tmp/r.sock", "db": 4}),
        ("unix:///tmp/my%20dir/r%40.sock", {"path": "/tmp/my dir/r@.sock"}),
        ("unix://:pw@/tmp/r.sock?db=1", {"password": "pw", "path": "/tmp/r.sock", "db": 1}),
        ("unix://bob:pw@/tmp/r.sock", {"username": "bob", "password": "pw"}),
        ("unix://bob@/tmp/r.sock?client_name=x&protocol=3", {"client_name": "x", "protocol": 3}),
    ],
)
def test_valid_urls(url: str, expected: dict[str, object]) -> None:
    s = from_url(url)
    for name, value in expected.items():
        assert getattr(s, name) == value, name


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "must start with redis://, rediss:// or unix://"),
        ("localhost:6379", "must start with redis://"),
        ("http://h", "unknown scheme 'http'"),
        ("redi$://h", "unknown scheme;"),
        ("redis://", "host is missing"),
        ("redis://:6379", "host is missing"),
        ("redis://u:p@", "host is missing"),
        ("redis://h:", "port must be a number from 1 to 65535"),
        ("redis://h:0", "port must be a number from 1 to 65535"),
        ("redis://h:65536", "port must be a number from 1 to 65535"),
        ("redis://h:99999999999999999999", "port must be a number"),
        ("redis://h:-1", "port must be a number"),
        ("redis://h:63x", "port must be a number"),
        ("redis://h:+80", "port must be a number"),
        ("redis://h/x", "database number (the path /DB) must be a non-negative integer"),
        ("redis://h/1.5", "must be a non-negative integer"),
        ("redis://h/0/1", "must be a non-negative integer"),
        ("redis://h/-1", "must not be negative"),
        ("redis://h/99999999999999999999999", "must be <= 2147483647"),
        ("redis://h?db=-2", "'db' must not be negative"),
        ("redis://h?db=two", "'db' must be a non-negative integer"),
        ("redis://h?db=", "'db' needs a value"),
        ("redis://h?db", "'db' needs a value"),
        ("redis://h/1?db=2", "'db' is given twice: in the path (/DB) and as ?db="),
        ("redis://h?db=1&db=1", "'db' is given twice"),
        ("redis://h?protocol=4", "'protocol' must be 2 or 3"),
        ("redis://h?protocol=resp3", "'protocol' must be 2 or 3"),
        ("redis://h?timeout=5", "unknown query parameter 'timeout'"),
        ("redis://h?DB=5", "did you mean 'db'?"),
        ("redis://h?client_nam=x", "did you mean 'client_name'?"),
        ("redis://h#frag", "must not contain a fragment"),
        ("redis://::1", "IPv6 host must be in brackets"),
        ("redis://[::1", "no ']' closes it"),
        ("redis://[::1]x", "only ':port' may follow"),
        ("redis://[example.com]", "not an IPv6 address"),
        ("redis://[::g]", "not an IPv6 address"),
        ("redis://[]", "not an IPv6 address"),
        ("redis://h%41", "the host contains the character '%'"),
        ("redis://exa mple", "the host contains the character ' '"),
        ("redis://%FF:p@h", "username is not valid percent-encoded UTF-8"),
        ("redis://u:%FF@h", "password is not valid percent-encoded UTF-8"),
        ("unix://", "needs a socket path"),
        ("unix:///", "needs a socket path"),
        ("unix://localhost/tmp/r.sock", "takes no host or port"),
        ("unix://u:p@h/tmp/r.sock", "takes no host or port"),
        ("unix:///tmp/r.sock?db=x", "'db' must be a non-negative integer"),
        ("unix:///tmp/%00", "NUL character"),
        ("unix:///tmp/%FF", "socket path is not valid percent-encoded UTF-8"),
    ],
)
def test_invalid_urls(url: str, message: str) -> None:
    error = raised(url)
    assert type(error) is ValueError
    assert message in str(error)


def test_url_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="URL must be a str, not bytes"):
        from_url(b"redis://h")  # type: ignore[arg-type]


def test_unescaped_special_character_in_password_gets_a_hint() -> None:
    # The '/' ends the authority early: the parser sees host "u" and port "pa".
    error = raised("redis://u:pa/ss@h")
    assert "percent-encode it" in str(error)
    assert "pa/ss" not in str(error)
    # No '@' after the authority: no hint.
    assert "percent-encode" not in str(raised("redis://h:99999"))


# -------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("name", "value", "stored"),
    [
        ("username", "alice", "alice"),
        ("password", SECRET, SECRET),
        ("db", 15, 15),
        ("client_name", "api-7", "api-7"),
        ("protocol", 3, 3),
        ("connect_timeout", 2.5, 2.5),
        ("connect_timeout", None, None),
        ("connect_timeout", 3, 3.0),
        ("health_check_interval", 5, 5.0),
        ("health_check_interval", None, None),
        ("health_check_interval", 0, None),
        ("health_check_interval", 0.0, None),
        ("health_check_timeout", 0.5, 0.5),
        ("backoff_base", 1, 1.0),
        ("backoff_cap", 60.0, 60.0),
        ("buffer_size", 1, 1),
        ("overflow", "drop-newest", OverflowPolicy.DROP_NEWEST),
        ("overflow", OverflowPolicy.CLOSE, OverflowPolicy.CLOSE),
        ("max_frame_size", 1024, 1024),
        ("username", "", None),
        ("password", "", None),
        ("client_name", "", None),
    ],
)
def test_options_are_applied(name: str, value: object, stored: object) -> None:
    s = from_url("redis://h", **{name: value})
    assert getattr(s, name) == stored
    assert type(getattr(s, name)) is type(stored)


def test_overflow_is_an_enum_and_a_string() -> None:
    assert [p.value for p in OverflowPolicy] == ["drop-oldest", "drop-newest", "close"]
    s = from_url("redis://h", overflow="close")
    assert s.overflow == "close"
    assert isinstance(s.overflow, str)
    assert s.overflow is OverflowPolicy.CLOSE


def test_ssl_context_with_rediss() -> None:
    context = ssl.create_default_context()
    s = from_url("rediss://h", ssl=context)
    assert s.ssl is context


@pytest.mark.parametrize("url", ["redis://h", "unix:///tmp/r.sock"])
def test_ssl_context_needs_rediss(url: str) -> None:
    error = raised(url, ssl=ssl.create_default_context())
    assert type(error) is ValueError
    assert "'ssl' needs a rediss:// URL" in str(error)


@pytest.mark.parametrize("value", [True, False, "yes", object()])
def test_ssl_must_be_a_context(value: object) -> None:
    error = raised("rediss://h", ssl=value)
    assert type(error) is TypeError
    assert "'ssl' must be an ssl.SSLContext or None" in str(error)


def test_unknown_option_suggests_a_close_match() -> None:
    error = raised("redis://h", helth_check_interval=3)
    assert type(error) is TypeError
    assert str(error) == (
        "unexpected option 'helth_check_interval'; did you mean 'health_check_interval'?"
    )
    error = raised("redis://h", zzz=1)
    assert type(error) is TypeError
    assert str(error) == "unexpected option 'zzz'"


@pytest.mark.parametrize("name", ["scheme", "host", "port", "path"])
def test_url_parts_are_not_options(name: str) -> None:
    error = raised("redis://h", **{name: "x"})
    assert type(error) is TypeError
    assert f"unexpected option {name!r}: the {name} comes from the URL" == str(error)


@pytest.mark.parametrize(
    ("url", "name", "value"),
    [
        ("redis://alice@h", "username", "bob"),
        ("redis://:pw@h", "password", "other"),
        ("redis://h/2", "db", 2),
        ("redis://h?db=2", "db", 3),
        ("unix:///tmp/s?db=2", "db", 3),
        ("redis://h?client_name=a", "client_name", "b"),
        ("redis://h?protocol=3", "protocol", 3),
        ("redis://:pw@h", "password", None),
    ],
)
def test_option_given_twice(url: str, name: str, value: object) -> None:
    error = raised(url, **{name: value})
    assert type(error) is ValueError
    assert str(error) == f"{name!r} was given twice: in the URL and as a keyword; give it once"


def test_url_and_keywords_combine_when_not_overlapping() -> None:
    s = from_url("redis://alice@h/1", password=SECRET, client_name="x", protocol=3)
    assert (s.username, s.password, s.db, s.client_name, s.protocol) == ("alice", SECRET, 1, "x", 3)
    s = from_url("redis://:pw@h", username="bob", db=4)
    assert (s.username, s.password, s.db) == ("bob", "pw", 4)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("username", 1, "'username' must be a str or None, not int"),
        ("password", b"pw", "'password' must be a str or None, not bytes"),
        ("client_name", 7, "'client_name' must be a str or None, not int"),
        ("db", "1", "'db' must be an int, not str"),
        ("db", 1.0, "'db' must be an int, not float"),
        ("db", True, "'db' must be an int, not bool"),
        ("protocol", "3", "'protocol' must be an int, not str"),
        ("protocol", True, "'protocol' must be an int, not bool"),
        ("buffer_size", 10.0, "'buffer_size' must be an int, not float"),
        ("buffer_size", None, "'buffer_size' must be an int, not NoneType"),
        ("max_frame_size", False, "'max_frame_size' must be an int, not bool"),
        ("connect_timeout", "10", "'connect_timeout' must be a number of seconds or None, not str"),
        ("connect_timeout", True, "must be a number of seconds or None, not bool"),
        ("health_check_interval", False, "must be a number of seconds or None, not bool"),
        ("health_check_timeout", None, "'health_check_timeout' must be a number of seconds, not"),
        ("backoff_base", "0.1", "'backoff_base' must be a number of seconds, not str"),
        ("backoff_cap", True, "'backoff_cap' must be a number of seconds, not bool"),
        ("overflow", 1, "'overflow' must be an OverflowPolicy or str, not int"),
    ],
)
def test_wrong_types(name: str, value: object, expected: str) -> None:
    error = raised("redis://h", **{name: value})
    assert type(error) is TypeError
    assert expected in str(error)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"protocol": 1}, "'protocol' must be 2 or 3, got 1"),
        ({"protocol": 4}, "'protocol' must be 2 or 3"),
        ({"db": -1}, "'db' must be >= 0, got -1"),
        ({"db": 2**31}, "'db' must be <= 2147483647"),
        ({"connect_timeout": -1}, "'connect_timeout' must be > 0"),
        ({"connect_timeout": 0}, "'connect_timeout' must be > 0"),
        ({"connect_timeout": float("inf")}, "'connect_timeout' must be a finite number"),
        ({"connect_timeout": float("nan")}, "'connect_timeout' must be a finite number"),
        ({"health_check_interval": -0.5}, "'health_check_interval' must be >= 0"),
        ({"health_check_timeout": 0}, "'health_check_timeout' must be > 0"),
        ({"health_check_timeout": -1.0}, "'health_check_timeout' must be > 0"),
        ({"backoff_base": 0}, "'backoff_base' must be > 0"),
        ({"backoff_base": -0.1}, "'backoff_base' must be > 0"),
        ({"backoff_cap": 0.05}, "'backoff_cap' (0.05) must be >= 'backoff_base' (0.1)"),
        ({"backoff_base": 5, "backoff_cap": 1}, "must be >= 'backoff_base'"),
        ({"backoff_cap": float("inf")}, "'backoff_cap' must be a finite number"),
        ({"buffer_size": 0}, "'buffer_size' must be >= 1, got 0"),
        ({"max_frame_size": 1023}, "'max_frame_size' must be >= 1024, got 1023"),
        ({"overflow": "drop"}, "'overflow' must be one of 'drop-oldest', 'drop-newest', 'close'"),
        ({"client_name": "my app"}, "'client_name' must not contain ' '"),
        ({"client_name": "app\n"}, "'client_name' must not contain '\\n'"),
        ({"client_name": "app\r"}, "'client_name' must not contain '\\r'"),
        ({"client_name": "café"}, "'client_name' must not contain 'é'"),
    ],
)
def test_out_of_range(options: dict[str, object], expected: str) -> None:
    error = raised("redis://h", **options)
    assert type(error) is ValueError
    assert expected in str(error)


def test_client_name_from_url_is_checked_too() -> None:
    error = raised("redis://h?client_name=my%20app")
    assert type(error) is ValueError
    assert "'client_name' must not contain ' '" in str(error)


def test_backoff_equal_base_and_cap_is_fine() -> None:
    s = from_url("redis://h", backoff_base=2, backoff_cap=2)
    assert (s.backoff_base, s.backoff_cap) == (2.0, 2.0)


# -------------------------------------------------------------------- direct construction


def test_direct_construction_fills_the_port() -> None:
    assert Settings(host="h").port == 6379
    assert Settings(scheme="rediss", host="::1", port=1).port == 1
    assert Settings(scheme="unix", path="/tmp/s").port is None


@pytest.mark.parametrize(
    ("fields", "error_type", "expected"),
    [
        ({}, ValueError, "a redis:// connection needs a 'host'"),
        ({"host": 5}, TypeError, "'host' must be a str, not int"),
        ({"host": ""}, ValueError, "the host is empty"),
        ({"host": "a b"}, ValueError, "the host contains the character ' '"),
        ({"host": "1:2"}, ValueError, "not an IPv6 address"),
        ({"host": "h", "port": 0}, ValueError, "'port' must be >= 1"),
        ({"host": "h", "port": 70000}, ValueError, "'port' must be from 1 to 65535"),
        ({"host": "h", "port": "80"}, TypeError, "'port' must be an int, not str"),
        ({"host": "h", "path": "/s"}, ValueError, "takes a 'host', not a 'path'"),
        ({"scheme": "http", "host": "h"}, ValueError, "'scheme' must be one of"),
        ({"scheme": "unix"}, ValueError, "needs a 'path'"),
        ({"scheme": "unix", "path": 1}, TypeError, "'path' must be a str, not int"),
        ({"scheme": "unix", "path": "rel.sock"}, ValueError, "absolute path"),
        ({"scheme": "unix", "path": "/a\0b"}, ValueError, "without NUL"),
        ({"scheme": "unix", "path": "/s", "host": "h"}, ValueError, "not a 'host' or 'port'"),
        ({"scheme": "unix", "path": "/s", "port": 1}, ValueError, "not a 'host' or 'port'"),
    ],
)
def test_direct_construction_is_validated(
    fields: dict[str, Any], error_type: type[Exception], expected: str
) -> None:
    with pytest.raises(error_type) as info:
        Settings(**fields)
    assert type(info.value) is error_type
    assert expected in str(info.value)


def test_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Settings("redis", "h")  # type: ignore[call-arg]


# ------------------------------------------------------------------- redaction and export


def test_repr_and_str_hide_the_password() -> None:
    s = from_url(f"redis://alice:{quote(SECRET)}@h/2", client_name="c")
    assert s.password == SECRET
    for text in (repr(s), str(s), s.redacted_url()):
        assert SECRET not in text
        assert "password" not in text
    assert "username='alice'" in repr(s)


def test_repr_hides_a_password_given_as_keyword() -> None:
    s = from_url("unix:///tmp/s", password=SECRET)
    assert SECRET not in repr(s)
    assert SECRET not in str(s)


@pytest.mark.parametrize(
    ("url", "options", "redacted"),
    [
        ("redis://h", {}, "redis://h:6379/0"),
        ("redis://alice:pw@h:7/3", {}, "redis://alice:***@h:7/3"),
        ("redis://h", {"password": "pw"}, "redis://:***@h:6379/0"),
        ("redis://alice@h", {}, "redis://alice@h:6379/0"),
        ("redis://a%3Ab:pw@h", {}, "redis://a%3Ab:***@h:6379/0"),
        ("rediss://[::1]:7000", {}, "rediss://[::1]:7000/0"),
        ("redis://[fe80::1%25eth0]", {}, "redis://[fe80::1%25eth0]:6379/0"),
        (
            "redis://h?client_name=a%26b&protocol=3",
            {},
            "redis://h:6379/0?client_name=a%26b&protocol=3",
        ),
        ("unix:///tmp/r.sock", {}, "unix:///tmp/r.sock"),
        ("unix://:pw@/tmp/a%20b.sock?db=2", {}, "unix://:***@/tmp/a%20b.sock?db=2"),
    ],
)
def test_redacted_url(url: str, options: dict[str, Any], redacted: str) -> None:
    assert from_url(url, **options).redacted_url() == redacted


@pytest.mark.parametrize(
    "url",
    [
        "redis://h",
        "redis://u@h:1/9?client_name=x&protocol=3",
        "rediss://[2001:db8::1]:6380/1",
        "unix:///var/run/redis%3F.sock?db=3",
        "unix://bob@/s?client_name=q",
    ],
)
def test_redacted_url_round_trips_without_password(url: str) -> None:
    s = from_url(url)
    assert from_url(s.redacted_url()) == s


def test_redacted_url_round_trip_keeps_only_a_mask() -> None:
    again = from_url(from_url(f"redis://:{SECRET}@h").redacted_url())
    assert again.password == "***"


def test_core_options() -> None:
    s = from_url(
        f"redis://alice:{SECRET}@h/4?client_name=c&protocol=3",
        health_check_interval=5,
        health_check_timeout=2,
        connect_timeout=3,
        max_frame_size=4096,
        backoff_base=0.5,
        backoff_cap=8,
        buffer_size=7,
        overflow="close",
    )
    assert s.core_options() == {
        "protocol": 3,
        "username": "alice",
        "password": SECRET,
        "db": 4,
        "client_name": "c",
        "health_check_interval": 5.0,
        "health_check_timeout": 2.0,
        "connect_timeout": 3.0,
        "max_frame_size": 4096,
        "backoff_base": 0.5,
        "backoff_cap": 8.0,
    }


def test_core_options_are_accepted_by_the_core() -> None:
    from redismpx_core._core import MultiplexerCore

    core = MultiplexerCore(random=lambda: 0.5, **from_url("redis://h/2").core_options())
    assert core.db == 2


# -------------------------------------------------------------------------- secrets, broadly

BAD_URL_TEMPLATES = [
    "redis://u:{pw}@",
    "redis://u:{pw}@h:99999",
    "redis://u:{pw}@h:port",
    "redis://u:{pw}@h/x",
    "redis://u:{pw}@h/-3",
    "redis://u:{pw}@h?x=1",
    "redis://u:{pw}@h?db=1&db=2",
    "redis://u:{pw}@h#frag",
    "redis://u:{pw}@[::1",
    "redis://u:{pw}@::1",
    "redis://u:{pw}@h%20x",
    "redis://u:{pw}@h?client_name=a%20b",
    "http://u:{pw}@h",
    "unix://u:{pw}@host/tmp/s",
    "unix://u:{pw}@",
    "{pw}",
    "redis:/u:{pw}@h",
]


@pytest.mark.parametrize("template", BAD_URL_TEMPLATES)
@pytest.mark.parametrize("password", [SECRET, "p/ss?w#rd@1", "6379?db=zz", "my pass"])
def test_no_password_in_url_errors(template: str, password: str) -> None:
    for form in (password, quote(password, safe="")):
        error = raised(template.format(pw=form))
        assert type(error) is ValueError
        assert password not in str(error)
        assert form not in str(error)


@pytest.mark.parametrize(
    "options",
    [
        {"db": -1},
        {"db": "x"},
        {"zzz": 1},
        {"username": "bob"},
        {"password": "again"},
        {"protocol": 9},
        {"client_name": "a b"},
        {"ssl": True},
        {"overflow": "?"},
    ],
)
def test_no_password_in_option_errors(options: dict[str, Any]) -> None:
    failures = 0
    for url in (f"redis://alice:{SECRET}@h", "redis://h?client_name=x", "redis://h"):
        kwargs = dict(options)
        if "password" not in kwargs and "alice" not in url:
            kwargs["password"] = SECRET
        error = outcome(url, **kwargs)
        if isinstance(error, Exception):
            failures += 1
            assert SECRET not in str(error)
            assert SECRET not in repr(error)
    assert failures >= 1


def test_password_of_wrong_type_is_not_shown() -> None:
    error = raised("redis://h", password=SECRET.encode())
    assert SECRET not in str(error)


# -------------------------------------------------------------------------------- properties

URL_ALPHABET = st.sampled_from([*"abcxyz019:/@?#[]%=&.-_ \n~+AF", "%2", "%25", "%FF", "§"])
url_like = st.builds(
    lambda scheme, body: scheme + "".join(body),
    st.sampled_from(["redis://", "rediss://", "unix://", "unix:///", "REDIS://", "", "x://"]),
    st.lists(URL_ALPHABET, max_size=30),
)


@given(st.one_of(st.text(), url_like))
@settings(max_examples=500)
def test_any_text_parses_or_raises_value_error(url: str) -> None:
    s = outcome(url)
    if isinstance(s, Exception):
        assert type(s) is ValueError
        return
    assert s.scheme in ("redis", "rediss", "unix")
    assert (s.host is None) == (s.scheme == "unix") == (s.port is None)
    assert (s.path is None) == (s.scheme != "unix")
    # What parsed renders back to a URL that parses to the same settings.
    if s.password is None:
        assert from_url(s.redacted_url()) == s


# Parts other than the password never contain '§', so finding the password (which
# always does) in a message means it leaked, not that it coincided with other text.
PART = st.lists(st.sampled_from([*"ab09:/@?#[]%=&.-_", "%2", "%FF"]), max_size=8).map("".join)
# A '/', '?' or '#' in the username would end the authority before the password
# starts: the "password" would then be a path or a query, not a credential.
USER = st.lists(st.sampled_from([*"ab09:@[]%=&.-_", "%2", "%FF"]), max_size=8).map("".join)
PASSWORD = st.builds(lambda a, b: a + "§" + b, st.text(max_size=8), st.text(max_size=8))


@given(
    scheme=st.sampled_from(["redis", "rediss", "unix", "http"]),
    user=USER,
    password=PASSWORD,
    encode=st.booleans(),
    host=PART,
    rest=PART,
)
@settings(max_examples=500)
def test_generated_password_never_leaks(
    scheme: str, user: str, password: str, encode: bool, host: str, rest: str
) -> None:
    form = quote(password, safe="") if encode else password
    url = f"{scheme}://{user}:{form}@{host}{rest}"
    s = outcome(url)
    if isinstance(s, Exception):
        assert type(s) is ValueError
        assert password not in str(s)
        assert form not in str(s)
        return
    for text in (repr(s), str(s), s.redacted_url()):
        assert password not in text
        assert form not in text


@given(
    password=PASSWORD,
    options=st.dictionaries(
        st.sampled_from(["db", "protocol", "buffer_size", "connect_timeout", "client_name", "zzz"]),
        st.one_of(
            st.integers(-3, 3), st.floats(), st.text(alphabet="ab \n-", max_size=3), st.none()
        ),
        max_size=3,
    ),
)
@settings(max_examples=300)
def test_password_keyword_never_leaks(password: str, options: dict[str, Any]) -> None:
    s = outcome("redis://h", password=password, **options)
    if isinstance(s, Exception):
        assert password not in str(s)
        return
    assert s.password == password
    assert password not in repr(s)
    assert password not in s.redacted_url()


def test_module_is_pure() -> None:
    import ast
    from pathlib import Path

    import redismpx_core._settings as module

    tree = ast.parse(Path(module.__file__).read_text())
    runtime: set[str] = set()  # modules imported outside `if TYPE_CHECKING:`
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            runtime |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            runtime.add((node.module or "").split(".")[0])
    assert "urllib" in runtime  # the walk does see the imports
    assert not runtime & {"socket", "ssl", "time", "random", "asyncio", "selectors", "hiredis"}


# ------------------------------------------------------------------------------- Valkey


@pytest.mark.parametrize(
    ("alias", "same_as"),
    [
        ("valkey://u:p@h:7000/3?protocol=3", "redis://u:p@h:7000/3?protocol=3"),
        ("VALKEY://h", "redis://h"),
        ("valkeys://h:6380", "rediss://h:6380"),
        ("valkey+sentinel://s1,s2:26380/mymaster/2", "redis+sentinel://s1,s2:26380/mymaster/2"),
        ("valkeys+sentinel://s1/mymaster", "rediss+sentinel://s1/mymaster"),
    ],
)
def test_valkey_schemes_are_aliases(alias: str, same_as: str) -> None:
    assert from_url(alias) == from_url(same_as)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("valkey://", "the host is missing; expected valkey://host[:port][/db]"),
        ("valkey+sentinel://s1,,s2/m", "expected valkey+sentinel://host1[:port1]"),
        ("valkey+unix:///tmp/s", "unknown scheme 'valkey+unix'; expected redis://"),
        ("localhost", "valkey://, valkeys://, valkey+sentinel:// and valkeys+sentinel://"),
    ],
)
def test_valkey_url_errors_name_the_scheme_as_written(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid Redis URL") as refused:
        from_url(url)
    assert message in str(refused.value)
