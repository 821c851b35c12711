"""Shared helpers of the benchmark scripts (run them as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import av


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, av {av.__version__}"
