"""The webhook agent's work: POST each alert of a policy with a webhook, dead-letter it after the TTL."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from livemod.core.errors import ConfigError
from livemod.stream.records import CallbackDeadLetter
from livemod.stream.webhook import deliver, secret_from_env

if TYPE_CHECKING:
    from livemod.stream.service import Worker

log = logging.getLogger(__name__)

ALERT_ID_HEADER = "alert-id"


class Callbacks:
    """Delivers alerts to their policy's webhook (one HTTP session per worker)."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self._http: Any = None

    async def handle(self, msg: Any) -> None:
        """Deliver one message of the alerts topic; messages that are not ours to deliver are skipped."""
        w = self.worker
        try:
            alert = json.loads(msg.value)
            policy = w.moderator.policy(alert.get("policy"))
        except (ValueError, AttributeError, ConfigError):
            return
        if policy.webhook is None:
            return
        if self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession()
        hook = policy.webhook
        ws = w.settings.worker
        result = await deliver(self._http, hook.url, msg.value, alert.get("id", ""), secret_from_env(hook.secret_env),
                               ttl_s=hook.ttl_s, backoff_s=ws.retry_backoff_s, backoff_max_s=ws.retry_backoff_max_s)
        w.metrics.callbacks.labels("delivered" if result.ok else "dead_letter").inc()
        if result.ok:
            return
        record = CallbackDeadLetter(alert_id=alert.get("id"), url=hook.url, attempts=result.attempts,
                                    status=result.status, error=result.error, worker_id=w.worker_id, alert=alert)
        fut = await w.callbacks_dlq_topic.send(key=msg.key, value=record.to_bytes(),
                                               headers=[(ALERT_ID_HEADER, str(alert.get("id")).encode())])
        await fut
        w.metrics.dlq.labels(w.settings.kafka.callbacks_dlq_topic, "callback_ttl").inc()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
