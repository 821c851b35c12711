"""The worker's HTTP pages: /metrics, /health, /ready and /debug/tasks."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING, Any

from livemod.stream import faustcompat

if TYPE_CHECKING:
    from livemod.stream.service import Worker


def task_dump() -> str:
    """Every asyncio task of the running loop with its await chain (for stuck-pipeline diagnosis)."""
    buf = io.StringIO()
    for task in asyncio.all_tasks():
        buf.write(f"--- {task.get_name()}\n")
        c: Any = task.get_coro()
        while c is not None:
            f = getattr(c, "cr_frame", None) or getattr(c, "ag_frame", None) or getattr(c, "gi_frame", None)
            if f is not None:
                buf.write(f"    {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}\n")
            c = getattr(c, "cr_await", None) or getattr(c, "ag_await", None) or getattr(c, "gi_yieldfrom", None)
    return buf.getvalue()


def readiness(worker: "Worker") -> tuple[bool, dict[str, Any]]:
    """Ready means: joined the group, recovered the tables, not rebalancing, and no partition blocked.

    A worker may own nothing (more workers than partitions) and still be ready.
    """
    app = worker.app
    assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in faustcompat.assignment(app))
    blocked = {f"{tp.topic}:{tp.partition}": why for tp, why in worker.blocked.items()}
    ok = app.livemod_rebalanced and not app.rebalancing and not blocked
    body: dict[str, Any] = {"ready": ok, "worker": worker.worker_id, "backend": worker.moderator.choice.backend,
                            "models": worker.moderator.models, "assigned": assigned,
                            "config": worker.config.as_dict(),
                            "policies": {n: worker.moderator.policy_version(p)
                                         for n, p in worker.moderator.policies.items()}}
    if blocked:
        body["blocked"] = blocked
    if not app.livemod_rebalanced:
        body["waiting_for"] = "group join and table recovery"
    return ok, body


def register(worker: "Worker") -> None:
    """Add the pages to the worker's Faust app."""
    app = worker.app

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        worker.update_lag()
        return web.bytes(worker.metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/debug/tasks")
    async def tasks(web: Any, request: Any) -> Any:
        return web.text(task_dump())

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "worker": worker.worker_id})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok, body = readiness(worker)
        worker.metrics.ready.set(1 if ok else 0)
        return web.json(body, status=200 if ok else 503)
