"""Check a media URI against the allowed schemes, hosts and file roots before anything opens it."""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from livemod.decoders.config import DecoderConfig
from livemod.decoders.errors import BadUriError, ForbiddenSourceError, SourceNotFoundError

SourceKind = Literal["file", "http", "hls", "rtmp", "rtsp", "image"]
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
METADATA_ADDRESSES = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


@dataclass(frozen=True)
class Source:
    """A checked source.

    Attributes:
        uri: what PyAV opens (an absolute path for local files).
        scheme: file, http, https, rtmp, rtmps, rtsp.
        kind: how to treat it: a finite file/segment, an HLS playlist, a live stream, an image.
        is_live: True for RTMP/RTSP (followed until they end; reconnect on drops).
        host: network host, or None for files.
    """

    uri: str
    scheme: str
    kind: SourceKind
    is_live: bool
    host: str | None


def _kind(path: str, scheme: str) -> SourceKind:
    low = path.lower()
    if scheme in ("rtmp", "rtmps"):
        return "rtmp"
    if scheme == "rtsp":
        return "rtsp"
    if low.endswith(".m3u8"):
        return "hls"
    if low.endswith(IMAGE_EXT):
        return "image"
    return "http" if scheme in ("http", "https") else "file"


def _check_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str, cfg: DecoderConfig) -> None:
    if addr in METADATA_ADDRESSES or addr.is_link_local:
        if not cfg.allow_link_local:
            raise ForbiddenSourceError(f"host {host!r} resolves to link-local/metadata address {addr}")
    elif addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        raise ForbiddenSourceError(f"host {host!r} resolves to non-routable address {addr}")
    elif (addr.is_private or addr.is_loopback) and not cfg.allow_private_networks:
        raise ForbiddenSourceError(f"host {host!r} resolves to private address {addr}")


def check_host(host: str, port: int | None, cfg: DecoderConfig) -> None:
    """Refuse denied hosts, hosts outside the allow-list and addresses in forbidden ranges.

    Raises:
        ForbiddenSourceError: the host or one of its addresses is not allowed.
        SourceNotFoundError: the name does not resolve.
    """
    name = host.lower().rstrip(".")
    if any(fnmatch.fnmatch(name, pat) for pat in cfg.denied_hosts):
        raise ForbiddenSourceError(f"host {host!r} is denied by settings")
    if cfg.allowed_hosts and not any(fnmatch.fnmatch(name, pat) for pat in cfg.allowed_hosts):
        raise ForbiddenSourceError(f"host {host!r} is not in the allowed hosts")
    try:
        addrs = {ipaddress.ip_address(name.strip("[]"))}
    except ValueError:
        try:
            infos = socket.getaddrinfo(name, port or 0, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise SourceNotFoundError(f"host {host!r} does not resolve: {exc}", reason="host_not_found") from exc
        addrs = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    for addr in addrs:
        _check_address(addr, host, cfg)


def check_file(path: Path, cfg: DecoderConfig) -> Path:
    """Resolve a local path (symlinks included) and require it under one of the file roots."""
    try:
        real = path.resolve(strict=False)
    except (OSError, RuntimeError) as exc:
        raise BadUriError(f"cannot resolve path {str(path)!r}: {exc}") from exc
    if not any(real == root or real.is_relative_to(root) for root in cfg.file_roots):
        roots = ", ".join(str(r) for r in cfg.file_roots)
        raise ForbiddenSourceError(f"file {str(path)!r} is outside the allowed roots ({roots})")
    return real


def check_uri(uri: str, cfg: DecoderConfig) -> Source:
    """Parse and check a media URI; nothing is opened.

    Local paths may be given without a scheme. Raises BadUriError for what cannot be parsed
    and ForbiddenSourceError for what settings do not allow.
    """
    if not uri or not uri.strip() or "\x00" in uri:
        raise BadUriError("empty URI or NUL byte in URI")
    uri = uri.strip()
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter is not a scheme
        scheme = ""
    if scheme in ("", "file"):
        if "file" not in cfg.allowed_schemes:
            raise ForbiddenSourceError("file sources are not allowed by settings")
        raw = unquote(parts.path) if scheme == "file" else uri
        if scheme == "file" and parts.netloc not in ("", "localhost"):
            raise BadUriError(f"file URI with a remote host: {uri!r}")
        if not raw:
            raise BadUriError(f"no path in {uri!r}")
        real = check_file(Path(raw), cfg)
        return Source(str(real), "file", _kind(real.name, "file"), False, None)
    if scheme not in cfg.allowed_schemes:
        raise ForbiddenSourceError(f"scheme {scheme!r} is not allowed (allowed: {', '.join(cfg.allowed_schemes)})")
    if not parts.hostname:
        raise BadUriError(f"no host in {uri!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise BadUriError(f"bad port in {uri!r}") from exc
    check_host(parts.hostname, port, cfg)
    kind = _kind(parts.path, scheme)
    return Source(uri, scheme, kind, kind in ("rtmp", "rtsp"), parts.hostname)
