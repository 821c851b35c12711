"""Before a worker consumes: its topics exist and agree; until they do it says why on /ready (503)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

from livemod.stream.settings import Settings
from livemod.stream.topics import TopicReport, bootstrap, check_topics

log = logging.getLogger(__name__)


async def _serve_not_ready(settings: Settings, latest: list[TopicReport], done: asyncio.Event) -> None:
    """Answer /health 200 and /ready 503 (with the latest problems) until ``done`` is set."""
    from aiohttp import web

    async def ready(_request: web.Request) -> web.Response:
        report = latest[-1]
        return web.json_response({"ready": False, "worker": settings.worker.id, "problems": list(report.problems),
                                  "topics": report.counts}, status=503)

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "starting": "waiting for consistent topics"})

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text="# livemod worker not started: topics disagree (see /ready)\nlivemod_ready 0\n",
                            content_type="text/plain")

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, settings.worker.web_host, settings.worker.web_port)
    await site.start()
    try:
        await done.wait()
    finally:
        await runner.cleanup()


async def _check(settings: Settings) -> TopicReport:
    """The topic check; a broker that cannot be reached is reported the same way (and checked again)."""
    try:
        return await check_topics(settings)
    except Exception as exc:  # noqa: BLE001 - unreachable brokers, auth failures: say so, try again
        return TopicReport(counts={}, problems=(f"cannot check the topics at {bootstrap(settings.kafka)}: "
                                                f"{type(exc).__name__}: {exc}",))


async def _wait(settings: Settings) -> bool:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        report = await _check(settings)
        if report.ok:
            return True
        for problem in report.problems:
            log.error("topics: %s", problem)
        log.error("not consuming until the topics agree; /ready answers 503; checking again every %.0f s",
                  settings.worker.topic_check_interval_s)
        done = asyncio.Event()
        latest = [report]
        server = asyncio.ensure_future(_serve_not_ready(settings, latest, done))
        try:
            while not stopping.is_set():
                try:
                    await asyncio.wait_for(stopping.wait(), settings.worker.topic_check_interval_s)
                except asyncio.TimeoutError:
                    pass
                if stopping.is_set():
                    return False
                report = await _check(settings)
                latest.append(report)
                del latest[:-1]
                if report.ok:
                    log.warning("topics agree now: %s", json.dumps(report.counts))
                    return True
            return False
        finally:
            done.set()
            await server
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def wait_for_topics(settings: Settings) -> bool:
    """True once the topics agree; False when the process was asked to stop first."""
    return asyncio.run(_wait(settings))
