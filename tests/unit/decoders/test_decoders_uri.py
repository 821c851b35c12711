"""URI checks: schemes, file roots, hosts and address ranges."""

from __future__ import annotations

import os

import pytest

from livemod.decoders.config import DecoderConfig
from livemod.core.errors import (
    BadUriError,
    CorruptMediaError,
    ForbiddenSourceError,
    SourceNotFoundError,
    UnsupportedMediaError,
)
from livemod.decoders.pyav import fitted_size, parse_m3u8
from livemod.core.types import Resize
from livemod.decoders.uri import check_uri, redact


@pytest.fixture()
def cfg(tmp_path) -> DecoderConfig:
    return DecoderConfig(file_roots=(tmp_path,))


@pytest.mark.parametrize(
    "uri, kind, live",
    [
        ("http://127.0.0.1:8080/live/cam1/seg001.ts", "http", False),
        ("https://localhost/a.mp4", "http", False),
        ("http://127.0.0.1/hls/index.m3u8", "hls", False),
        ("http://127.0.0.1/snap/1.JPG", "image", False),
        ("rtmp://127.0.0.1/live/key", "rtmp", True),
        ("rtsp://127.0.0.1:8554/cam", "rtsp", True),
        ("rtmps://127.0.0.1/live/key", "rtmp", True),
        ("HTTP://127.0.0.1/Seg.TS", "http", False),
        ("https://127.0.0.1/a/b.webp?sig=1", "image", False),
    ],
)
def test_allowed_network_uris(cfg, uri, kind, live):
    src = check_uri(uri, cfg)
    assert (src.kind, src.is_live) == (kind, live)


@pytest.mark.parametrize(
    "uri, error",
    [
        ("", BadUriError),
        ("   ", BadUriError),
        ("a\x00b", BadUriError),
        ("ftp://127.0.0.1/x.ts", ForbiddenSourceError),
        ("gopher://127.0.0.1/x", ForbiddenSourceError),
        ("http:///nohost.ts", BadUriError),
        ("http://127.0.0.1:99999/x.ts", BadUriError),
        ("http://169.254.169.254/latest/meta-data", ForbiddenSourceError),
        ("http://[::ffff:169.254.169.254]/x", ForbiddenSourceError),  # IPv4-mapped IPv6
        ("http://2852039166/x", ForbiddenSourceError),  # 169.254.169.254 as one decimal number
        ("http://169.254.1.1:8080/x.ts", ForbiddenSourceError),
        ("http://100.100.100.200/x", ForbiddenSourceError),  # Alibaba metadata
        ("http://METADATA.google.internal./x", ForbiddenSourceError),
        ("hls://127.0.0.1/x.m3u8", ForbiddenSourceError),  # "hls" is a setting, not a URI scheme
        ("javascript:alert(1)", ForbiddenSourceError),
        ("http://[fe80::1]/x.ts", ForbiddenSourceError),
        ("http://metadata.google.internal/x", ForbiddenSourceError),
        ("http://0.0.0.0/x.ts", ForbiddenSourceError),
        ("http://224.0.0.1/x.ts", ForbiddenSourceError),
        ("http://no-such-host.invalid/x.ts", SourceNotFoundError),
        ("/etc/passwd", ForbiddenSourceError),
        ("file:///etc/passwd", ForbiddenSourceError),
        ("file://remotehost/x.ts", BadUriError),
        ("http://[::1/x.ts", BadUriError),
    ],
)
def test_refused_uris(cfg, uri, error):
    with pytest.raises(error) as info:
        check_uri(uri, cfg)
    assert str(info.value)


def test_private_networks_can_be_refused(tmp_path):
    cfg = DecoderConfig(file_roots=(tmp_path,), allow_private_networks=False)
    with pytest.raises(ForbiddenSourceError):
        check_uri("http://127.0.0.1/x.ts", cfg)
    with pytest.raises(ForbiddenSourceError):
        check_uri("http://10.1.2.3/x.ts", cfg)


def test_link_local_allowed_when_configured(tmp_path):
    cfg = DecoderConfig(file_roots=(tmp_path,), allow_link_local=True)
    assert check_uri("http://169.254.169.254/x.ts", cfg).host == "169.254.169.254"


def test_allowed_hosts_list(tmp_path):
    cfg = DecoderConfig(file_roots=(tmp_path,), allowed_hosts=("localhost", "127.*"))
    check_uri("http://127.0.0.1/x.ts", cfg)
    with pytest.raises(ForbiddenSourceError):
        check_uri("http://[::1]/x.ts", cfg)


def test_files_inside_roots_only(cfg, tmp_path):
    inside = tmp_path / "a.ts"
    inside.write_bytes(b"x")
    assert check_uri(str(inside), cfg).uri == str(inside.resolve())
    assert check_uri(inside.as_uri(), cfg).kind == "file"
    with pytest.raises(ForbiddenSourceError):
        check_uri(str(tmp_path / ".." / "escape.ts"), cfg)
    link = tmp_path / "link.ts"
    os.symlink("/etc/hostname", link)
    with pytest.raises(ForbiddenSourceError):
        check_uri(str(link), cfg)


def test_dotdot_that_stays_inside_a_root_is_fine(cfg, tmp_path):
    (tmp_path / "sub").mkdir()
    src = check_uri(str(tmp_path / "sub" / ".." / "a.ts"), cfg)
    assert src.uri == str((tmp_path / "a.ts").resolve()) and src.path == src.uri and src.host is None


def test_roots_copied_without_validation_are_resolved(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg = DecoderConfig().model_copy(update={"file_roots": (tmp_path / "sub" / "..",)})  # model_copy skips validators
    assert check_uri(str(tmp_path / "a.ts"), cfg).kind == "file"


@pytest.mark.parametrize(
    "schemes, uri, error",
    [
        (("file", "http"), "http://127.0.0.1/live/index.m3u8", ForbiddenSourceError),  # "hls" not allowed
        (("file", "http"), "index.m3u8", ForbiddenSourceError),
        (("file", "http", "hls"), "http://127.0.0.1/live/index.m3u8", None),
        (("file", "hls"), "http://127.0.0.1/live/index.m3u8", ForbiddenSourceError),  # hls over http needs http too
        (("file", "http", "hls"), "rtmp://127.0.0.1/live/x", ForbiddenSourceError),
    ],
)
def test_scheme_allow_list(tmp_path, schemes, uri, error):
    cfg = DecoderConfig(file_roots=(tmp_path,), allowed_schemes=schemes)
    target = uri if "://" in uri else str(tmp_path / uri)
    if error is None:
        assert check_uri(target, cfg).kind == "hls"
    else:
        with pytest.raises(error):
            check_uri(target, cfg)


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("https://user:pw@cdn.example/a.ts?token=abc", "https://user:***@cdn.example/a.ts?<redacted>"),
        ("https://cdn.example/a.ts?token=abc#frag", "https://cdn.example/a.ts?<redacted>"),
        ("rtmp://127.0.0.1/live/key", "rtmp://127.0.0.1/live/key"),
        ("rtmp://u@127.0.0.1/live", "rtmp://u@127.0.0.1/live"),
        ("/tmp/a.mp4", "/tmp/a.mp4"),
    ],
)
def test_redact(uri, shown):
    assert redact(uri) == shown


def test_errors_do_not_show_passwords(cfg):
    with pytest.raises(ForbiddenSourceError) as info:
        check_uri("ftp://user:secret@127.0.0.1/x.ts?sig=hidden", cfg)
    assert "secret" not in str(info.value) and "hidden" not in str(info.value) and "ftp" in str(info.value)


@pytest.mark.parametrize(
    "width, height, size, expected",
    [
        (1920, 1080, Resize(224, 224), (224, 224)),
        (1920, 1080, Resize(224, 224, keep_aspect=True), (224, 126)),
        (1080, 1920, Resize(224, 224, keep_aspect=True), (126, 224)),
        (100, 100, Resize(64, 32, keep_aspect=True), (32, 32)),
        (4000, 10, Resize(64, 64, keep_aspect=True), (64, 1)),  # never zero
    ],
)
def test_fitted_size(width, height, size, expected):
    assert fitted_size(width, height, size) == expected


def test_files_can_be_disabled(tmp_path):
    cfg = DecoderConfig(file_roots=(tmp_path,), allowed_schemes=("http",))
    with pytest.raises(ForbiddenSourceError):
        check_uri(str(tmp_path / "a.ts"), cfg)


@pytest.mark.parametrize(
    "text, n, ended, variants",
    [
        ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\na.ts\n#EXTINF:1.5,\nb.ts\n#EXT-X-ENDLIST\n", 2, True, 0),
        ("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2,\nc.ts\n", 1, False, 0),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nlow.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=3000000\nhi.m3u8\n", 0, False, 2),
    ],
)
def test_parse_m3u8(text, n, ended, variants):
    p = parse_m3u8(text, "http://h/live/index.m3u8")
    assert (len(p.segments), p.ended, len(p.variants)) == (n, ended, variants)
    for _seq, uri, _d in p.segments:
        assert uri.startswith("http://h/live/")


def test_parse_m3u8_sequence_numbers():
    p = parse_m3u8("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2,\nc.ts\n#EXTINF:2,\nd.ts\n", "file:///x/")
    assert [s[0] for s in p.segments] == [7, 8]


@pytest.mark.parametrize(
    "text, error",
    [
        ("<html>", CorruptMediaError),
        ("#EXTM3U\n#EXTINF:abc,\na.ts\n", CorruptMediaError),
        ("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:x\n", CorruptMediaError),
        ("#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\"\n#EXTINF:2,\na.ts\n", UnsupportedMediaError),
        ("#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2,\na.m4s\n", UnsupportedMediaError),
        ("#EXTM3U\n#EXTINF:2,\n#EXT-X-BYTERANGE:100@0\na.ts\n", UnsupportedMediaError),
    ],
)
def test_bad_playlists(text, error):
    with pytest.raises(error):
        parse_m3u8(text, "http://h/x.m3u8")


def test_playlist_without_encryption_or_with_bom():
    p = parse_m3u8("\ufeff#EXTM3U\n#EXT-X-KEY:METHOD=NONE\n#EXTINF:2,\na.ts\n#EXT-X-ENDLIST\n", "http://h/x.m3u8")
    assert p.segments == ((0, "http://h/a.ts", 2.0),) and p.ended
