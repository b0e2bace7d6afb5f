"""Settings in sentinel mode: the redis+sentinel:// URL, the keywords, their checks, secrets."""

from __future__ import annotations

import inspect
import ssl
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import redismpx_anyio
import redismpx_trio
from redismpx_core._settings import DEFAULT_SENTINEL_PORT, DEFAULT_URL, Settings
from redismpx_frontend import Multiplexer as FrontEndMultiplexer

SECRET = "hunter2-s3cret"
SENTINEL_SECRET = "s3ntinel-Pa55-91ab"
PAIRS = [("10.0.0.1", 26379), ("10.0.0.2", 26380)]


def from_url(url: str, **options: Any) -> Settings:
    """Call from_url with untyped options, as a user without a type checker would."""
    return Settings.from_url(url, **options)


def raised(url: str, **options: Any) -> BaseException:
    """The exception from_url raises (the test fails if it raises none)."""
    with pytest.raises((ValueError, TypeError)) as info:
        from_url(url, **options)
    return info.value


# ------------------------------------------------------------------------------ URL forms


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://s1:26380,s2,[::1]:5000/mymaster",
            {
                "scheme": "redis",
                "sentinels": (("s1", 26380), ("s2", DEFAULT_SENTINEL_PORT), ("::1", 5000)),
                "master_name": "mymaster",
                "db": 0,
            },
        ),
        ("redis+sentinel://s1/mymaster/4", {"db": 4, "master_name": "mymaster"}),
        ("redis+sentinel://s1/mymaster/", {"db": 0}),
        ("redis+sentinel://s1/mymaster?db=2&protocol=3", {"db": 2, "protocol": 3}),
        ("redis+sentinel://s1/my%2Fmaster%E2%82%AC", {"master_name": "my/master\u20ac"}),
        ("rediss+sentinel://s1/mymaster", {"scheme": "rediss"}),
        ("REDIS+Sentinel://s1/mymaster", {"scheme": "redis"}),
        (
            f"redis+sentinel://app:{SECRET}@s1/mymaster?client_name=web",
            {"username": "app", "password": SECRET, "client_name": "web"},
        ),
        ("  redis+sentinel://s1/m  ", {"master_name": "m"}),
    ],
)
def test_valid_sentinel_urls(url: str, expected: dict[str, object]) -> None:
    s = from_url(url)
    assert (s.host, s.port, s.path) == (None, None, None)
    for name, value in expected.items():
        assert getattr(s, name) == value, name


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s1,,s2/m", "sentinel 2 of the list is empty"),
        ("redis+sentinel://s1,/m", "sentinel 2 of the list is empty"),
        ("redis+sentinel://,s1/m", "sentinel 1 of the list is empty"),
        ("redis+sentinel://s1,s2:0/m", "sentinel 2: the port must be a number from 1 to 65535"),
        ("redis+sentinel://s1:x/m", "sentinel 1: the port must be a number"),
        ("redis+sentinel://s1:/m", "sentinel 1: the port must be a number"),
        ("redis+sentinel://s1,::1/m", "sentinel 2: an IPv6 host must be in brackets"),
        ("redis+sentinel://[::1/m", "sentinel 1: '[' opens an IPv6 address"),
        ("redis+sentinel://s%20x/m", "sentinel 1: the host contains the character '%'"),
        ("redis+sentinel://:26379/m", "sentinel 1: the host is missing"),
        ("redis+sentinel://s1/m/x", "the database number (the path /master_name/DB)"),
        ("redis+sentinel://s1/m/1/2", "must be a non-negative integer"),
        ("redis+sentinel://s1/m/1?db=2", "'db' is given twice"),
        ("redis+sentinel://s1/m?master=x", "unknown query parameter 'master'"),
        ("redis+sentinel://s1/m#f", "must not contain a fragment"),
        ("redis+sentinel://s1/%FF", "master name is not valid percent-encoded UTF-8"),
        ("redis+sentinel://s1", "sentinel mode needs a 'master_name'"),
        ("redis+sentinel:///m", "sentinel mode needs at least one sentinel"),
        ("redis+sentinel://", "sentinel mode needs at least one sentinel"),
        ("redis+sentinel://s1,s1:26379/m", "sentinel 2 repeats sentinel 1"),
        ("redis+sentinel://s1/my%20master", "'master_name' must not contain ' '"),
        ("redis+sentinel://s1/m%0A", "'master_name' must not contain '\\n'"),
        ("sentinel://s1/m", "unknown scheme 'sentinel'"),
        ("redis-sentinel://s1/m", "(or redis+sentinel://, rediss+sentinel://;"),
    ],
)
def test_invalid_sentinel_urls(url: str, message: str) -> None:
    error = raised(url)
    assert type(error) is ValueError
    assert message in str(error)


def test_the_scheme_hint_names_the_sentinel_forms() -> None:
    assert "redis+sentinel://" in str(raised("localhost:26379"))


# ------------------------------------------------------------------------------- keywords


def test_keywords_with_the_default_url() -> None:
    s = from_url(DEFAULT_URL, sentinels=PAIRS, master_name="mymaster", db=2, password=SECRET)
    assert (s.scheme, s.host, s.port) == ("redis", None, None)
    assert s.sentinels == tuple(PAIRS)
    assert (s.master_name, s.db, s.password) == ("mymaster", 2, SECRET)
    # Lists are stored as tuples: the settings stay hashable and immutable.
    s = from_url(DEFAULT_URL, sentinels=[["h", 1]], master_name="m")
    assert s.sentinels == (("h", 1),)
    hash(s)


def test_keywords_fill_what_a_sentinel_url_leaves_out() -> None:
    s = from_url("redis+sentinel:///mymaster/3", sentinels=PAIRS)
    assert (s.sentinels, s.master_name, s.db) == (tuple(PAIRS), "mymaster", 3)
    s = from_url("rediss+sentinel://s1", master_name="mymaster")
    assert (s.scheme, s.sentinels, s.master_name) == ("rediss", (("s1", 26379),), "mymaster")
    s = from_url("rediss+sentinel://", sentinels=PAIRS, master_name="m")
    assert (s.scheme, s.sentinels) == ("rediss", tuple(PAIRS))


@pytest.mark.parametrize(
    ("url", "name", "value"),
    [
        ("redis+sentinel://s1/m", "sentinels", PAIRS),
        ("redis+sentinel://s1/m", "master_name", "other"),
        ("redis+sentinel://s1/m/2", "db", 3),
        ("redis+sentinel://:pw@s1/m", "password", "pw"),
    ],
)
def test_sentinel_option_given_twice(url: str, name: str, value: object) -> None:
    error = raised(url, **{name: value})
    assert type(error) is ValueError
    assert str(error) == f"{name!r} was given twice: in the URL and as a keyword; give it once"


@pytest.mark.parametrize("url", ["redis://h", "rediss://h:6380", "unix:///tmp/s", "redis://"])
@pytest.mark.parametrize(
    "options",
    [
        {"sentinels": PAIRS, "master_name": "m"},
        {"master_name": "m"},
        {"sentinel_password": SENTINEL_SECRET},
    ],
)
def test_sentinel_options_refuse_a_url_that_names_a_server(
    url: str, options: dict[str, Any]
) -> None:
    error = raised(url, **options)
    assert type(error) is ValueError
    if url != "redis://":  # (that one fails first: no host)
        assert "need a redis+sentinel:// (or rediss+sentinel://) URL, or no URL" in str(error)
    assert SENTINEL_SECRET not in str(error)


def test_none_sentinel_options_change_nothing() -> None:
    s = from_url("redis://h", sentinels=None, master_name=None, sentinel_password=None)
    assert (s.host, s.sentinels, s.master_name) == ("h", (), None)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"sentinels": "h:26379"}, TypeError, "must be a list of (host, port) pairs, not str"),
        ({"sentinels": {("h", 1)}}, TypeError, "not set"),
        ({"sentinels": []}, ValueError, "needs at least one sentinel"),
        ({"sentinels": ["h"]}, TypeError, "item 1 is a str"),
        ({"sentinels": [("h",)]}, ValueError, "item 1 has 1 elements"),
        ({"sentinels": [("h", 1, 2)]}, ValueError, "item 1 has 3 elements"),
        ({"sentinels": [(b"h", 1)]}, TypeError, "the host of sentinel 1 must be a str"),
        ({"sentinels": [("", 1)]}, ValueError, "bad host of sentinel 1: the host is empty"),
        ({"sentinels": [("a b", 1)]}, ValueError, "bad host of sentinel 1"),
        ({"sentinels": [("h", "26379")]}, TypeError, "'port of sentinel 1' must be an int"),
        ({"sentinels": [("h", True)]}, TypeError, "'port of sentinel 1' must be an int"),
        ({"sentinels": [("h", 0)]}, ValueError, "'port of sentinel 1' must be >= 1"),
        ({"sentinels": [("h", 1), ("h", 65536)]}, ValueError, "must be from 1 to 65535"),
        ({"sentinels": [("h", 1), ("h", 1)]}, ValueError, "sentinel 2 repeats sentinel 1"),
        ({"master_name": 5}, TypeError, "'master_name' must be a str, not int"),
        ({"master_name": ""}, ValueError, "'master_name' must not be empty"),
        ({"master_name": "a\tb"}, ValueError, "'master_name' must not contain '\\t'"),
        ({"master_name": None}, ValueError, "sentinel mode needs a 'master_name'"),
        ({"sentinel_username": "w"}, ValueError, "'sentinel_username' needs a"),
        ({"sentinel_password": 5}, TypeError, "'sentinel_password' must be a str or None"),
        ({"sentinel_username": b"w"}, TypeError, "'sentinel_username' must be a str or None"),
    ],
)
def test_bad_sentinel_keywords(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    options = {"sentinels": PAIRS, "master_name": "m", **options}
    found = raised(DEFAULT_URL, **options)
    assert type(found) is error
    assert message in str(found)


def test_an_empty_sentinel_credential_means_none() -> None:
    s = from_url(DEFAULT_URL, sentinels=PAIRS, master_name="m", sentinel_password="")
    assert s.sentinel_password is None


def test_direct_construction_is_checked_the_same_way() -> None:
    s = Settings(sentinels=[("h", 1)], master_name="m")  # type: ignore[arg-type]
    assert (s.sentinels, s.host, s.port) == ((("h", 1),), None, None)
    with pytest.raises(ValueError, match="give no 'host', 'port' or 'path'"):
        Settings(host="h", sentinels=(("h", 1),), master_name="m")
    with pytest.raises(ValueError, match="use redis or rediss, not unix"):
        Settings(scheme="unix", sentinels=(("h", 1),), master_name="m")
    with pytest.raises(ValueError, match="needs at least one sentinel"):
        Settings(master_name="m")


def test_ssl_needs_the_tls_sentinel_scheme() -> None:
    context = ssl.create_default_context()
    s = from_url("rediss+sentinel://s1/m", ssl=context)
    assert s.ssl is context
    error = raised("redis+sentinel://s1/m", ssl=context)
    assert "rediss+sentinel://" in str(error)
    assert "this one is redis+sentinel://" in str(error)


def test_the_drivers_default_url_is_the_one_settings_recognises() -> None:
    for cls in (redismpx_anyio.Multiplexer, redismpx_trio.Multiplexer, FrontEndMultiplexer):
        assert inspect.signature(cls).parameters["url"].default == DEFAULT_URL, cls


# -------------------------------------------------------------------------- core options


def test_core_options_ask_for_the_role_check() -> None:
    s = from_url("redis+sentinel://s1/m", sentinel_password=SENTINEL_SECRET)
    options = s.core_options()
    assert options["require_master"] is True
    # The core never sees the sentinels' credentials: only the drivers ask sentinels.
    assert SENTINEL_SECRET not in repr(options)


# -------------------------------------------------------------------------------- secrets


def test_sentinel_secrets_stay_out_of_repr_and_the_redacted_url() -> None:
    s = from_url(
        f"redis+sentinel://app:{SECRET}@s1,[::1]:5000/mymaster/2?client_name=web",
        sentinel_username="watcher",
        sentinel_password=SENTINEL_SECRET,
    )
    assert s.sentinel_username == "watcher"
    assert s.sentinel_password == SENTINEL_SECRET
    for text in (repr(s), str(s), s.redacted_url()):
        assert SECRET not in text
        assert SENTINEL_SECRET not in text
    assert s.redacted_url() == (
        "redis+sentinel://app:***@s1:26379,[::1]:5000/mymaster/2?client_name=web"
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26380,s2:26381/mymaster",
        "rediss+sentinel://app@s1/my%2Fmaster/3?protocol=3",
        "redis+sentinel://[fe80::1%25eth0]:26379/m",
    ],
)
def test_redacted_url_round_trips(url: str) -> None:
    s = from_url(url)
    assert from_url(s.redacted_url()) == s


@pytest.mark.parametrize(
    "template",
    [
        "redis+sentinel://u:{pw}@",
        "redis+sentinel://u:{pw}@s1,,s2/m",
        "redis+sentinel://u:{pw}@s1:99999/m",
        "redis+sentinel://u:{pw}@s1/m/x",
        "redis+sentinel://u:{pw}@s1/m?x=1",
        "redis+sentinel://u:{pw}@s1,s1/m",
        "redis+sentinel://u:{pw}@s1",
        "redis+sentinel://u:{pw}@s1/a%20b",
    ],
)
@pytest.mark.parametrize("password", [SECRET, "p/ss?w#rd@1", "s1,s2/m?db=zz", "my pass"])
def test_no_password_in_sentinel_url_errors(template: str, password: str) -> None:
    for form in (password, quote(password, safe="")):
        error = raised(template.format(pw=form))
        assert type(error) is ValueError
        assert password not in str(error)
        assert form not in str(error)


@given(
    password=st.builds(lambda a, b: a + "\u00a7" + b, st.text(max_size=8), st.text(max_size=8)),
    options=st.dictionaries(
        st.sampled_from(["sentinels", "master_name", "sentinel_username", "db"]),
        st.one_of(
            st.none(),
            st.text(alphabet="ab \n", max_size=3),
            st.integers(-1, 2),
            st.lists(st.tuples(st.sampled_from(["h", "", "a b"]), st.integers(0, 3)), max_size=2),
        ),
        max_size=3,
    ),
)
@settings(max_examples=300)
def test_sentinel_password_never_leaks(password: str, options: dict[str, Any]) -> None:
    try:
        s = from_url(DEFAULT_URL, sentinel_password=password, **options)
    except (ValueError, TypeError) as error:
        assert password not in str(error)  # noqa: PT017 - every outcome is checked
        return
    assert s.sentinel_password == (password or None)
    for text in (repr(s), s.redacted_url()):
        assert password not in text


SENTINEL_URL = st.builds(
    lambda scheme, body: scheme + "".join(body),
    st.sampled_from(["redis+sentinel://", "rediss+sentinel://", "REDIS+SENTINEL://"]),
    st.lists(st.sampled_from([*"as1:,/@?#[]%=&.-_ 9", "%2", "%FF", "db=1", "::1"]), max_size=20),
)


@given(SENTINEL_URL)
@settings(max_examples=500)
def test_any_sentinel_url_parses_or_raises_value_error(url: str) -> None:
    try:
        s = from_url(url)
    except ValueError:
        return
    assert s.scheme in ("redis", "rediss")
    assert (s.host, s.port, s.path) == (None, None, None)
    assert s.sentinels
    assert s.master_name
    if s.password is None:
        assert from_url(s.redacted_url()) == s
