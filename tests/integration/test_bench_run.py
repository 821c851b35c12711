"""The benchmark entry point runs every section at its smoke size and writes the table and the plots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.broker]

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("baseline", "stages", "service", "ceiling", "rules")


def test_bench_run_quick_writes_table_and_plots(tmp_path, models_dir):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--out", str(out),
                        "--models-dir", str(models_dir)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "[bench 00:" in r.stderr and "stages done in" in r.stderr  # progress lines on stderr
    table = (out / "results.md").read_text()
    assert "Machine: " in table and " cores, Python " in table and "onnxruntime " in table
    assert "FAILED" not in table
    for name in SECTIONS:
        rows = [line for line in table.splitlines() if line.startswith(f"| {name} |")]
        assert rows, f"no {name} row in results.md"
        assert all(f"--only {name} --quick" in line for line in rows)
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
        assert f"![{name}]({name}.png)" in table
    assert "ratio baseline / livemod, wall time" in table
    assert "INT8" in table and "FP32" in table
    assert "refs/s" in table and "frames/s" in table
