"""Check a media URI against the allowed schemes, hosts and file roots before anything opens it."""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from livemod.decoders.config import DecoderConfig
from livemod.core.errors import (
    BadUriError,
    ForbiddenSourceError,
    SourceNotFoundError,
)

SourceKind = Literal["file", "http", "hls", "rtmp", "rtsp", "image"]
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
NETWORK_SCHEMES = ("http", "https", "rtmp", "rtmps", "rtsp")
LIVE_SCHEMES = ("rtmp", "rtmps", "rtsp")
"""Schemes of live sources: followed until the broadcast ends, reconnected on drops."""
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Source:
    """A checked source.

    Attributes:
        uri: what PyAV opens (an absolute, resolved path for local files).
        scheme: file, http, https, rtmp, rtmps, rtsp.
        kind: how to treat it: a finite file or HTTP segment, an HLS playlist, a live
            RTMP/RTSP stream, or a still image.
        is_live: True for RTMP/RTSP (followed until they end; reconnect on drops). A live
            HLS playlist is recognised only when it is read (no #EXT-X-ENDLIST).
        host: network host, or None for files.
        path: the local path for files, else the URL path.
    """

    uri: str
    scheme: str
    kind: SourceKind
    is_live: bool
    host: str | None
    path: str = ""

    @property
    def display(self) -> str:
        """The URI with any password and query string hidden, for messages and logs."""
        return redact(self.uri)


def redact(uri: str) -> str:
    """Hide a URI's password and query string (signed tokens) so it can be logged.

    >>> redact("https://user:pw@cdn.example/a.ts?token=abc")
    'https://user:***@cdn.example/a.ts?<redacted>'
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparsable uri>"
    if not parts.scheme or len(parts.scheme) == 1:
        return uri
    netloc = parts.netloc
    if parts.password is not None:
        user, _, hostport = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{hostport}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


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


def _check_address(addr: IPAddress, host: str, cfg: DecoderConfig) -> None:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    if addr in METADATA_ADDRESSES or addr.is_link_local:
        if not cfg.allow_link_local:
            raise ForbiddenSourceError(f"host {host!r} resolves to link-local/metadata address {addr}")
    elif addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        raise ForbiddenSourceError(f"host {host!r} resolves to non-routable address {addr}")
    elif (addr.is_private or addr.is_loopback) and not cfg.allow_private_networks:
        raise ForbiddenSourceError(f"host {host!r} resolves to private address {addr}")


def check_host(host: str, port: int | None, cfg: DecoderConfig) -> None:
    """Refuse denied hosts, hosts outside the allow-list and addresses in forbidden ranges.

    A name is resolved with getaddrinfo and every address it resolves to is checked.

    Raises:
        ForbiddenSourceError: the host or one of its addresses is not allowed.
        SourceNotFoundError: the name does not resolve.
    """
    name = host.lower().rstrip(".")
    if any(fnmatch.fnmatch(name, pat.lower()) for pat in cfg.denied_hosts):
        raise ForbiddenSourceError(f"host {host!r} is denied by settings")
    if cfg.allowed_hosts and not any(fnmatch.fnmatch(name, pat.lower()) for pat in cfg.allowed_hosts):
        raise ForbiddenSourceError(f"host {host!r} is not in the allowed hosts")
    try:
        addrs: set[IPAddress] = {ipaddress.ip_address(name.strip("[]"))}
    except ValueError:
        try:
            infos = socket.getaddrinfo(name, port or 0, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise SourceNotFoundError(f"host {host!r} does not resolve: {exc}", reason="host_not_found") from exc
        addrs = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    for addr in addrs:
        _check_address(addr, host, cfg)


@lru_cache(maxsize=64)
def _resolved_roots(roots: tuple[Path | str, ...]) -> tuple[Path, ...]:
    """The file roots with symlinks resolved, once per set of roots (not once per reference)."""
    return tuple(Path(os.path.realpath(Path(r).expanduser())) for r in roots)


_O_PATH = getattr(os, "O_PATH", 0)


def _real_path(path: Path) -> Path:
    """``path`` with ``..`` and every symlink resolved, as ``Path.resolve(strict=False)`` gives it.

    On Linux an existing file is opened with O_PATH and the kernel's own answer read back from
    /proc/self/fd (three system calls, where ``os.path.realpath`` makes one ``lstat`` per path
    component in Python: a tenth of the worker's time on small snapshot references). Anything
    else (a path that does not exist, no /proc) takes ``Path.resolve``.
    """
    if _O_PATH:
        try:
            fd = os.open(path, _O_PATH | os.O_CLOEXEC)
        except OSError:
            return path.resolve(strict=False)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return path.resolve(strict=False)
        finally:
            os.close(fd)
        if real.startswith("/") and not real.endswith(" (deleted)"):
            return Path(real)
    return path.resolve(strict=False)


def check_file(path: Path, cfg: DecoderConfig) -> Path:
    """Resolve a local path (``..`` and symlinks included) and require it under a file root.

    Raises:
        BadUriError: the path cannot be resolved (a symlink loop).
        ForbiddenSourceError: the resolved path lies outside every root.
    """
    try:
        real = _real_path(path.expanduser())
    except (OSError, RuntimeError) as exc:
        raise BadUriError(f"cannot resolve path {str(path)!r}: {exc}") from exc
    roots = _resolved_roots(tuple(cfg.file_roots))  # also when settings were copied unvalidated
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise ForbiddenSourceError(
            f"file {str(path)!r} resolves outside the allowed roots ({', '.join(str(r) for r in roots)})"
        )
    return real


def check_uri(uri: str, cfg: DecoderConfig) -> Source:
    """Parse and check a media URI; nothing is opened.

    Local paths may be given without a scheme. Kinds come from the scheme and extension:
    .m3u8 -> hls (needs "hls" in ``allowed_schemes``), .jpg/.jpeg/.png/.webp/.bmp -> image,
    rtmp(s) -> rtmp (live), rtsp -> rtsp (live), anything else a finite file or HTTP segment.

    Raises:
        BadUriError: the URI cannot be parsed or names nothing.
        ForbiddenSourceError: settings do not allow its scheme, host, address or path.
        SourceNotFoundError: its host name does not resolve.
    """
    if not uri or not uri.strip() or "\x00" in uri:
        raise BadUriError("empty URI or NUL byte in URI")
    uri = uri.strip()
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise BadUriError(f"cannot parse URI {redact(uri)!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter is not a scheme
        scheme = ""
    if scheme in ("", "file"):
        if "file" not in cfg.allowed_schemes:
            raise ForbiddenSourceError(f"file sources are not allowed by settings: {uri!r}")
        raw = unquote(parts.path) if scheme == "file" else uri
        if scheme == "file" and parts.netloc not in ("", "localhost"):
            raise BadUriError(f"file URI with a remote host: {uri!r}")
        if not raw:
            raise BadUriError(f"no path in {uri!r}")
        real = check_file(Path(raw), cfg)
        src = Source(str(real), "file", _kind(real.name, "file"), False, None, str(real))
    elif scheme not in NETWORK_SCHEMES or scheme not in cfg.allowed_schemes:
        allowed = ", ".join(cfg.allowed_schemes)
        raise ForbiddenSourceError(f"scheme {scheme!r} of {redact(uri)!r} is not allowed (allowed: {allowed})")
    else:
        if not parts.hostname:
            raise BadUriError(f"no host in {redact(uri)!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise BadUriError(f"bad port in {redact(uri)!r}") from exc
        check_host(parts.hostname, port, cfg)
        kind = _kind(parts.path, scheme)
        src = Source(uri, scheme, kind, kind in ("rtmp", "rtsp"), parts.hostname, parts.path)
    if src.kind == "hls" and "hls" not in cfg.allowed_schemes:
        raise ForbiddenSourceError(f"HLS playlists are not allowed by settings: {src.display!r}")
    return src
