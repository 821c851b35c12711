"""URI checks: schemes, file roots, hosts and address ranges."""

from __future__ import annotations

import os

import pytest

from livemod.decoders.config import DecoderConfig
from livemod.decoders.errors import BadUriError, ForbiddenSourceError, SourceNotFoundError
from livemod.decoders.pyav import parse_m3u8
from livemod.decoders.uri import check_uri


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
        ("http://[fe80::1]/x.ts", ForbiddenSourceError),
        ("http://metadata.google.internal/x", ForbiddenSourceError),
        ("http://0.0.0.0/x.ts", ForbiddenSourceError),
        ("http://224.0.0.1/x.ts", ForbiddenSourceError),
        ("http://no-such-host.invalid/x.ts", SourceNotFoundError),
        ("/etc/passwd", ForbiddenSourceError),
        ("file:///etc/passwd", ForbiddenSourceError),
        ("file://remotehost/x.ts", BadUriError),
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


def test_not_a_playlist():
    from livemod.decoders.errors import CorruptMediaError

    with pytest.raises(CorruptMediaError):
        parse_m3u8("<html>", "http://h/x.m3u8")
