"""Guaranteed callbacks: alerts POSTed with an HMAC signature, retried with backoff until a TTL."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass

import aiohttp

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Livemod-Signature"
ALERT_ID_HEADER = "X-Livemod-Alert-Id"
TIMESTAMP_HEADER = "X-Livemod-Timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, timestamp + "." + body); receivers recompute and compare."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True)
class Delivery:
    """How a delivery ended."""

    ok: bool
    attempts: int
    status: int | None
    error: str


def secret_from_env(name: str | None) -> bytes:
    """The HMAC secret from the named environment variable (empty when unset; never logged)."""
    return os.environ.get(name, "").encode() if name else b""


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    alert_id: str,
    secret: bytes,
    *,
    ttl_s: float,
    backoff_s: float = 0.5,
    backoff_max_s: float = 30.0,
    timeout_s: float = 10.0,
) -> Delivery:
    """POST until a 2xx answer or until ``ttl_s`` has passed; 4xx other than 408/429 stop at once."""
    deadline = time.monotonic() + ttl_s
    attempt, delay, status, error = 0, backoff_s, None, ""
    while True:
        attempt += 1
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            ALERT_ID_HEADER: alert_id,
            TIMESTAMP_HEADER: ts,
        }
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, ts, body)
        try:
            async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                status = resp.status
                if 200 <= status < 300:
                    return Delivery(True, attempt, status, "")
                error = f"HTTP {status}"
                if 400 <= status < 500 and status not in (408, 429):
                    return Delivery(False, attempt, status, error)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        left = deadline - time.monotonic()
        if left <= 0:
            return Delivery(False, attempt, status, f"TTL of {ttl_s:.0f} s passed; last error: {error}")
        log.info("callback %s for alert %s failed (%s); retry in %.1f s", url, alert_id, error, min(delay, left))
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, backoff_max_s)
