"""Fetch Apache Kafka's server jars once into .cache/kafka/libs with Maven (idempotent: a stamp file).

`python -m tests.kafka.fetch` is what `make test` runs; the pytest plugin calls `fetch()` too, so a bare
`pytest` works. Where Java or Maven is missing the command says why and exits 0 (the Kafka lane then
skips with that reason), and so does a failed fetch, except under CI=true, where both exit 1: CI has
Java and Maven and must run the lane.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
POM = Path(__file__).with_name("pom.xml")
CACHE = REPO / ".cache" / "kafka"
LIBS = CACHE / "libs"
KAFKA_VERSION = "4.4.0"
SERVER_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
MIN_JAVA = 17


class FetchError(RuntimeError):
    """Maven could not fetch the jars."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def java_version(java: str) -> int | None:
    """The feature version of `java` (17 for "17.0.15"), or None if it does not answer."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def java_problem() -> str | None:
    """Why a Kafka broker cannot run here (no `java`, or older than 17), or None."""
    java = shutil.which("java")
    if java is None:
        return "no `java` on PATH: Apache Kafka 4.4 needs Java 17+ (apt install openjdk-17-jre-headless)"
    version = java_version(java)
    if version is None or version < MIN_JAVA:
        return f"`{java}` is Java {version}, Apache Kafka 4.4 needs Java {MIN_JAVA}+"
    return None


def _digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def fetched(libs: Path = LIBS) -> bool:
    """True when `libs` holds the jars of the current pom.xml."""
    stamp = libs / ".fetched"
    return stamp.is_file() and stamp.read_text().strip() == _digest() and (libs / SERVER_JAR).is_file()


def fetch_problem(libs: Path = LIBS) -> str | None:
    """Why the jars cannot be had (not fetched and no `mvn`), or None."""
    if fetched(libs) or shutil.which("mvn"):
        return None
    return f"Apache Kafka's jars are not in {libs} and there is no `mvn` to fetch them (apt install maven)"


def fetch(libs: Path = LIBS, *, log: Callable[[str], None] = print) -> Path:
    """Copy Kafka and its runtime dependencies from Maven (Central or ~/.m2) into `libs`, once.

    Safe to call from several processes at once (a file lock); a finished fetch is marked by
    `libs/.fetched` holding the pom's sha256, so a changed pom fetches again.
    """
    if fetched(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FetchError(fetch_problem(libs) or "no mvn")
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if fetched(libs):
            return libs
        tmp = libs.with_name(libs.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven into {libs} ...")
        t0 = time.monotonic()
        cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
               f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        except subprocess.TimeoutExpired as exc:
            raise FetchError(f"`{' '.join(cmd)}` took more than 20 minutes") from exc
        if done.returncode != 0 or not (tmp / SERVER_JAR).is_file():
            tail = (done.stdout + done.stderr)[-3000:]
            raise FetchError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")
        (tmp / ".fetched").write_text(_digest() + "\n")
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        jars = list(libs.glob("*.jar"))
        size = sum(j.stat().st_size for j in jars) / 2**20
        log(f"fetched {len(jars)} jars ({size:.0f} MiB) in {time.monotonic() - t0:.1f} s")
    return libs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libs", type=Path, default=LIBS, help="where the jars go (default: %(default)s)")
    args = ap.parse_args(argv)
    problem = java_problem() or fetch_problem(args.libs)
    if problem:
        if in_ci():
            print(f"kafka: {problem} (CI=true: the Kafka lane must run)", file=sys.stderr)
            return 1
        print(f"kafka: {problem}; the Kafka tests will be skipped", file=sys.stderr)
        return 0
    try:
        fetch(args.libs)
    except FetchError as exc:
        print(f"kafka: {exc}", file=sys.stderr)
        return 1 if in_ci() else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
