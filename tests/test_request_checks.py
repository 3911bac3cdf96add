"""Issue #12, items 2, 9 and 10 (parsing side): bad but parseable input is a 400 naming the field,
bounded in depth, list length and name length; media URLs to non-public places are refused."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
import pytest

from faregate.config import LimitsSettings
from faregate.errors import InvalidRequest
from faregate.server.exchange import new_request_id
from faregate.server.media_urls import check_media_urls, refusal
from faregate.server.parse import decode_json_object, parse_chat_request
from faregate.server.request_checks import check_depth

MSG = [{"role": "user", "content": "hi"}]


def parse(body: dict[str, Any], limits: LimitsSettings | None = None) -> Any:
    return parse_chat_request(body, {}, "req_1", limits or LimitsSettings())


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": [1]}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": "x"}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"seed": 1.5}, "seed"),
        ({"top_logprobs": 99}, "top_logprobs"),
        # The legacy field is checked even beside a valid max_completion_tokens (it is forwarded too).
        ({"max_tokens": "abc", "max_completion_tokens": 10}, "max_tokens"),
        ({"max_tokens": -7, "max_completion_tokens": 10}, "max_tokens"),
        ({"max_tokens": -7}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"n": "2"}, "n"),
        ({"n": 17}, "n"),
        ({"models": [f"m{i}" for i in range(11)]}, "models"),
        ({"models": ["m", "x" * 300]}, "models"),
        ({"model": "x" * 300}, "model"),
    ],
)
def test_parseable_bad_input_is_a_400_naming_the_field(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse({"model": "m", "messages": MSG, **extra}, LimitsSettings(max_n=16, max_models=10))
    assert info.value.status == 400
    assert info.value.param == param


def test_good_numbers_pass_and_n_is_read() -> None:
    request = parse(
        {"model": "m", "messages": MSG, "temperature": 0, "top_p": 1, "seed": -5, "n": 4, "max_tokens": 9}
    )
    assert request.choices == 4 and request.max_tokens == 9
    both = parse({"model": "m", "messages": MSG, "max_tokens": 50, "max_completion_tokens": 7})
    assert both.max_tokens == 7


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_is_bounded_below_the_serialiser_limit() -> None:
    # orjson serialises at most 255 levels: a body deeper than that used to be read, then fail to
    # be sent upstream (a 500). Now anything deeper than the limit is a 400 at once.
    raw = b'{"model": "m", "x": ' + b"[" * 300 + b"1" + b"]" * 300 + b"}"
    with pytest.raises(TypeError):
        orjson.dumps(orjson.loads(raw))
    with pytest.raises(InvalidRequest, match="nested more than 100"):
        decode_json_object(raw)
    assert decode_json_object(orjson.dumps({"x": nested(90)}))["x"] == nested(90)
    check_depth({"a": [{"b": nested(5)}]}, 10)
    with pytest.raises(InvalidRequest):
        check_depth({"a": [{"b": nested(8)}]}, 10)


@pytest.mark.parametrize("depth", [1, 2, 9, 10, 11, 12, 40])
def test_depth_is_the_same_with_the_bracket_count_shortcut_or_the_walk(depth: int) -> None:
    """Exactly `max_depth` levels pass and one more fails, whether the raw text lets the check
    skip the walk or not (brackets inside strings, wide and deep shapes)."""
    shapes = [
        {"x": nested(depth - 1)},
        {"x": nested(depth - 1), "s": "{[" * 30},  # many brackets, only in a string: walked
        {"wide": [[1]] * 20, "deep": nested(depth - 1)},  # more brackets than depth: walked
        {"d": {"e": nested(depth - 2)}} if depth >= 2 else {},
    ]
    for value in shapes:
        real = 1 + _depth(value)
        raw = orjson.dumps(value)
        for raw_or_none in (raw, None):
            if real <= 10:
                check_depth(value, 10, raw_or_none)
            else:
                with pytest.raises(InvalidRequest, match="nested more than 10"):
                    check_depth(value, 10, raw_or_none)


def _depth(value: Any) -> int:
    """Levels of containers below `value` (0 for a scalar), by plain recursion."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return max((1 + _depth(c) for c in children if isinstance(c, dict | list)), default=0)


def test_request_ids_are_unguessable() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", i) for i in ids)
    # After the time, no shared prefix: consecutive ids say nothing about each other (a counter did).
    assert len({i[16:22] for i in ids}) > 900


def test_request_ids_begin_with_the_time_so_they_sort_in_time_order() -> None:
    """What keeps the records' unique index on request_id growing at its end (bench/README.md,
    "Request ids in time order"): an id made a millisecond later sorts after, whatever its
    random part."""
    before_ms = time.time_ns() // 1_000_000
    first = new_request_id()
    time.sleep(0.002)
    second = new_request_id()
    assert first < second
    assert before_ms <= int(first[4:16], 16) < int(second[4:16], 16) <= time.time_ns() // 1_000_000


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost:8080/x.png",
        "http://api.localhost/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://10.1.2.3/x.png",
        "http://172.16.0.1/x.png",
        "http://192.168.1.10/x.png",
        "http://100.64.0.1/x.png",
        "http://0.0.0.0/x.png",
        "http://[::1]/x.png",
        "http://[fe80::1]/x.png",
        "http://[fd00::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://[::ffff:7f00:1]/x.png",
        # IPv4 inside IPv6 in its other forms: IPv4-compatible, IPv4-translated (SIIT), NAT64's
        # well-known prefix (a NAT64 gateway reaches its network's private IPv4) and local-use one.
        "http://[::127.0.0.1]/x.png",
        "http://[::10.0.0.1]/x.png",
        "http://[::169.254.169.254]/latest/meta-data/",
        "http://[::ffff:0:7f00:1]/x.png",
        "http://[64:ff9b::10.1.2.3]/x.png",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[64:ff9b:1::a01:203]/x.png",
        "http://[2002:a00:1::]/x.png",
        "http://2130706433/x.png",
        "http://0x7f.1/x.png",
        "http://017700000001/x.png",
        "http://0x7f000001/x.png",
        "http://0177.0.0.1/x.png",
        "http://127.1/x.png",
        "http://intranet/x.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "ftp://example.com/x.png",
        "/etc/passwd",
        "http:///x.png",
    ],
)
def test_non_public_media_urls_are_refused(url: str) -> None:
    assert refusal(url) is not None
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    with pytest.raises(InvalidRequest) as info:
        parse({"model": "m", "messages": [message]})
    assert info.value.code == "media_url_not_allowed"
    assert info.value.param == "messages[0].content[0]"


@pytest.mark.parametrize(
    "url",
    [
        # urllib3 (so requests, which self-hosted upstreams fetch images with) ends the host at a
        # backslash, as browsers do: it connects to 127.0.0.1, where urlsplit reads the userinfo
        # `127.0.0.1\` and the host example.com.
        "http://127.0.0.1\\@example.com/x.png",
        "https://169.254.169.254\\@example.com/latest/meta-data/",
    ],
)
def test_a_host_ended_by_a_backslash_is_refused(url: str) -> None:
    assert refusal(url) is not None
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    with pytest.raises(InvalidRequest) as info:
        parse({"model": "m", "messages": [message]})
    assert info.value.code == "media_url_not_allowed"


@pytest.mark.parametrize(
    "host",
    ["①②⑦.0.0.1", "127。0.0.1", "127.0.0.①", "０x7f.1", "１６９.２５４.１６９.２５４", "ｌｏｃａｌｈｏｓｔ"],
)
def test_a_host_spelled_in_other_unicode_digits_or_dots_is_read_as_fetchers_read_it(host: str) -> None:
    # IDNA's mapping (NFKC, the ideographic full stops as dots), as aiohttp's yarl and httpx apply
    # it: aiohttp fetched each of the first four from a server on 127.0.0.1.
    assert refusal(f"http://{host}:8000/x.png") is not None


def test_an_international_public_name_still_passes() -> None:
    assert refusal("https://bücher.example/cat.png") is None


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "http://8.8.8.8/x.png",
        "https://[2606:4700:4700::1111]/x.png",
        "http://[64:ff9b::8.8.8.8]/x.png",
        "http://[::ffff:8.8.8.8]/x.png",
        "data:image/png;base64,AAAA",
        "HTTPS://Example.COM./cat.png",
    ],
)
def test_public_and_inline_media_pass(url: str) -> None:
    assert refusal(url) is None
    parse(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]}
    )


def test_every_url_carrying_part_is_checked_and_the_filter_can_be_turned_off() -> None:
    parts = [
        {"type": "audio_url", "audio_url": {"url": "http://127.0.0.1/a.wav"}},
        {"type": "video_url", "video_url": "http://10.0.0.1/v.mp4"},
        {"type": "file", "file": {"file_url": "file:///etc/shadow"}},
        {"type": "input_image", "image_url": "http://192.168.0.1/i.png"},
    ]
    for part in parts:
        with pytest.raises(InvalidRequest):
            check_media_urls([{"role": "user", "content": [{"type": "text", "text": "see"}, part]}])
    opted_out = LimitsSettings(allow_private_media_urls=True)
    message = {"role": "user", "content": parts}
    assert parse({"model": "m", "messages": [message]}, opted_out).required_modalities


@pytest.mark.parametrize("text", ["INF", "-inf", "nan", "1e300", "-5", "99999-01-01"])
def test_dashboard_times_out_of_range_are_a_400(text: str) -> None:
    # Found by the fuzz (bench/fuzz_api.py): until=INF was a 500.
    from faregate.server.dashboard_api import _timestamp

    with pytest.raises(InvalidRequest) as info:
        _timestamp(text, "until")
    assert info.value.param == "until"


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_a_dashboard_time_without_an_offset_is_utc_whatever_the_server_zone(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same URL answers the same on every server: times are UTC, as the day buckets are.
    import time

    from faregate.server.dashboard_api import _timestamp

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert _timestamp("2026-01-01T00:00", "since") == 1_767_225_600.0
        assert _timestamp("2026-01-01", "since") == 1_767_225_600.0
        assert _timestamp("2026-01-01T00:00+01:00", "since") == 1_767_222_000.0
    finally:
        monkeypatch.undo()
        time.tzset()
