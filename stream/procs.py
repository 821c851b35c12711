"""Several worker processes on one node: one Python process cannot use more than about one core for its
event loop, so a node runs N workers that share the partitions through the consumer group.

`livemod worker --processes N` starts N `livemod worker` processes with ids ``<id>-<i>`` and web ports
``worker.web_port + i``, forwards SIGTERM/SIGINT to them, and starts again one that died.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from livemod.stream.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Child:
    index: int
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    starts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "livemod.stream.cli", "worker"], env=self.env)
        self.starts.append(time.monotonic())


def child_env(settings: Settings, index: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker process ``index``: its own id and web port, everything else inherited."""
    env = dict(os.environ if base is None else base)
    w = settings.worker
    env["LIVEMOD_WORKER__ID"] = f"{w.id or socket.gethostname()}-{index}"
    env["LIVEMOD_WORKER__WEB_PORT"] = str(w.web_port + index if w.web_port else 0)
    return env


def run_processes(settings: Settings, n: int) -> int:
    """Run ``n`` worker processes until SIGTERM/SIGINT; returns 0 when they stopped cleanly."""
    children = [_Child(i, child_env(settings, i)) for i in range(n)]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for c in children:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for c in children:
        c.start()
    log.warning("started %d worker processes (web ports %s)", n,
                ", ".join(c.env["LIVEMOD_WORKER__WEB_PORT"] for c in children))
    while True:
        time.sleep(0.5)
        alive = [c for c in children if c.proc is not None and c.proc.poll() is None]
        if stopping:
            if not alive:
                break
            continue
        for c in children:
            if c.proc is not None and c.proc.poll() is not None:
                recent = [t for t in c.starts if time.monotonic() - t < 60]
                delay = min(2 ** len(recent), 30)
                log.error("worker process %d exited with %s; starting it again in %d s", c.index,
                          c.proc.returncode, delay)
                time.sleep(delay)
                if not stopping:
                    c.start()
    codes = [c.proc.returncode for c in children if c.proc is not None]
    return 0 if all(code in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes) else 1
