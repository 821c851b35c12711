"""The `livemod` command: moderate, demo, worker, check-config, models prepare / fp16."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from livemod.core.errors import LivemodError
from livemod.stream.settings import Settings

log = logging.getLogger("livemod")

EXIT_OK, EXIT_FATAL, EXIT_BAD_INPUT = 0, 1, 2


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment (LIVEMOD_*), then the command-line flags on top."""
    s = Settings()
    eng, rules = s.engines.model_copy(), s.rules.model_copy()
    if getattr(args, "engine", None):
        eng.engine = args.engine
    if getattr(args, "models_dir", None):
        eng.models_dir = Path(args.models_dir)
    if getattr(args, "cards_dir", None):
        eng.cards_dir = Path(args.cards_dir)
    if getattr(args, "threads", None) is not None:
        eng.threads = args.threads
    if getattr(args, "policies_dir", None):
        rules.policies_dir = Path(args.policies_dir)
    if getattr(args, "policy", None):
        rules.default_policy = args.policy
    if getattr(args, "out", None):
        rules.evidence_dir = Path(args.out) / "evidence"
        rules.review_dir = Path(args.out) / "review"
    if getattr(args, "no_evidence", False):
        rules.write_evidence = False
    return s.model_copy(update={"engines": eng, "rules": rules})


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["auto", "tensorrt", "onnxruntime"], help="backend (default: settings, auto)")
    p.add_argument("--models-dir", help="model cache folder (default .cache/livemod/models)")
    p.add_argument("--cards-dir", help="model cards folder (default: the shipped cards)")
    p.add_argument("--policies-dir", help="policies folder (default: the shipped policies)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (0 = all cores)")


# ---- commands ------------------------------------------------------------------------------


def cmd_models_prepare(args: argparse.Namespace) -> int:
    from livemod.engines.prepare import prepare_models

    s = _settings(args)
    paths = prepare_models(s.engines.models_dir, args.only or None, force=args.force, log=_err)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return EXIT_OK


def cmd_models_fp16(args: argparse.Namespace) -> int:
    from livemod.engines.fp16 import fp16_command

    s = _settings(args)
    print(fp16_command(args.name, s.engines.models_dir))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from livemod.engines.card import load_cards
    from livemod.rules.policy import load_policies, validate_against_cards

    s = _settings(args)
    cards = load_cards(s.engines.cards_dir)
    policies = load_policies(s.rules.policies_dir)
    for policy in policies.values():
        validate_against_cards(policy, cards)
    if s.rules.default_policy not in policies:
        raise LivemodError(f"default policy {s.rules.default_policy!r} not among {sorted(policies)}", reason="bad_config")
    missing = [c.name for c in cards.values() if not c.path(s.engines.models_dir).is_file()]
    print(f"settings: ok (engine={s.engines.engine}, models_dir={s.engines.models_dir})")
    print(f"model cards: {', '.join(sorted(cards))}")
    from livemod.engines.backend import describe_precision

    print(describe_precision(cards, s.engines.models_dir, s.engines.precision))
    print(f"policies: {', '.join(f'{p.name} ({len(p.rules)} rules)' for p in policies.values())}")
    if missing:
        print(f"models not prepared yet: {', '.join(missing)} (run `livemod models prepare`)")
    return EXIT_OK


class Progress:
    """Periodic status lines on stderr for long work."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.start = self.last = time.monotonic()
        self.frames = self.rechecks = self.alerts = 0

    def tick(self, label: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            el = now - self.start
            _err(
                f"[{el:6.1f}s] {label}: {self.frames} frames ({self.frames / max(el, 1e-9):.1f}/s), "
                f"{self.rechecks} re-checks, {self.alerts} alerts"
            )


def moderate_uris(
    settings: Settings, uris: Sequence[str], *, stream_id: str | None = None, jobs: int | None = None
) -> tuple[dict[str, Any], int]:
    """Run the in-process pipeline over URIs; alerts go to stdout as JSON lines. Returns (summary, exit code).

    Inputs run on one event loop: each decodes in its own thread while frames are scored one at a
    time on the loop, so one input's decoding overlaps another's inference. Files and other
    finite inputs run ``jobs`` at a time (default: the number of CPU cores, at most
    ``MAX_DEFAULT_JOBS``; more only adds contention, and each input holds up to 32 decoded frames
    waiting for the engine); every live source (rtmp, rtsp) runs at once, whatever ``jobs`` says. With
    ``stream_id`` the inputs are consecutive parts of one stream: they run in order and the
    stream's rule and sampler state carries from one to the next.
    """
    from livemod.stream.pipeline import Moderator

    moderator = Moderator(settings)
    _err(f"backend: {moderator.choice.backend} ({moderator.choice.reason}); models: {', '.join(moderator.models)}")
    if stream_id is not None:
        jobs = 1
    jobs = max(1, min(len(uris), jobs if jobs is not None else min(os.cpu_count() or 1, MAX_DEFAULT_JOBS)))
    progress = Progress()
    summary: dict[str, Any] = {"inputs": len(uris), "failed": [], "frames": 0, "alerts": 0, "reviews": 0,
                               "alerts_needing_recheck": 0, "rechecks": 0, "seconds": 0.0, "max_gap_s": {}}
    t0 = time.monotonic()
    asyncio.run(_moderate_all(moderator, uris, stream_id, jobs, progress, summary))
    summary.update(frames=progress.frames, alerts=progress.alerts, rechecks=progress.rechecks,
                   seconds=round(time.monotonic() - t0, 2))
    return summary, (EXIT_BAD_INPUT if summary["failed"] else EXIT_OK)


MAX_DEFAULT_JOBS = 8
"""``moderate``'s default files at once on a many-core machine: one engine thread scores them all."""


def _stream_ids(uris: Sequence[str], stream_id: str | None) -> list[str]:
    """Each input's stream id: ``stream_id`` for all, else the file's stem, made unique (``-2``, ``-3``, ...)."""
    if stream_id is not None:
        return [stream_id] * len(uris)
    seen: dict[str, int] = {}
    out = []
    for n, uri in enumerate(uris):
        sid = Path(uri.split("?", 1)[0]).stem or f"stream-{n}"
        seen[sid] = seen.get(sid, 0) + 1
        out.append(sid if seen[sid] == 1 else f"{sid}-{seen[sid]}")
    return out


async def _moderate_all(
    moderator: Any, uris: Sequence[str], stream_id: str | None, jobs: int, progress: Progress, summary: dict[str, Any]
) -> None:
    from livemod.decoders.uri import LIVE_SCHEMES
    from livemod.stream.pipeline import Progress as StreamProgress
    from livemod.stream.records import FrameRef

    submit = moderator.direct_submit()
    slots = asyncio.Semaphore(jobs)
    live = [uri.split(":", 1)[0] in LIVE_SCHEMES for uri in uris]
    # a decoder thread per input running at once (the loop's default pool may be smaller: live inputs
    # would starve) and one for evidence JPEGs
    executor = ThreadPoolExecutor(max_workers=min(jobs, len(uris)) + sum(live) + 1, thread_name_prefix="livemod-decode")
    carried = StreamProgress()  # one stream's state across its parts (with --stream-id)

    async def one(n: int, uri: str, sid: str) -> None:
        ref = FrameRef(stream_id=sid, uri=uri, kind="live" if live[n] else "segment", seq=n, wall_start=time.time())
        state = carried if stream_id is not None else StreamProgress()
        async with slots if not live[n] or stream_id is not None else contextlib.nullcontext():
            try:
                async for step in moderator.run(ref, state, submit, executor=executor):
                    frame, scores, decision = step.frame, step.scores, step.decision
                    progress.frames += 1
                    if frame.gap_s is not None:  # stream time since the previous sampled frame
                        summary["max_gap_s"][uri] = round(max(summary["max_gap_s"].get(uri, 0.0), frame.gap_s), 3)
                    progress.rechecks += sum(len(fs.rechecks) for fs in scores.values())
                    for alert in decision.alerts:
                        progress.alerts += 1
                        summary["alerts_needing_recheck"] += alert.recheck_used
                        print(alert.model_dump_json(), flush=True)
                    summary["reviews"] += len(decision.reviews)
                    progress.tick(sid)
            except LivemodError as exc:
                kind = "retriable" if exc.retriable else "not retriable"
                _err(f"error: {uri}: {type(exc).__name__} [{exc.reason}, {kind}]: {exc}")
                summary["failed"].append({"uri": uri, "error": type(exc).__name__, "reason": exc.reason,
                                          "message": str(exc)})
            progress.tick(sid, force=True)

    try:
        await asyncio.gather(*(one(n, uri, sid) for n, (uri, sid) in enumerate(zip(uris, _stream_ids(uris, stream_id)))))
    finally:
        executor.shutdown(wait=True)


def cmd_moderate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    summary, code = moderate_uris(settings, args.uris, stream_id=args.stream_id, jobs=args.jobs)
    _err("summary: " + json.dumps(summary, sort_keys=True))
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    if args.no_broker:
        from livemod.demo.scene import run_no_broker_demo

        return run_no_broker_demo(_settings(args), Path(args.out or "out/demo"), seconds=args.seconds)
    from livemod.demo.service import run_service_demo

    return run_service_demo(_settings(args), out=Path(args.out or "out/demo"), seconds=args.seconds)


def cmd_worker(args: argparse.Namespace) -> int:
    if args.processes > 1:
        from livemod.stream.procs import run_processes

        return run_processes(_settings(args), args.processes)
    from livemod.stream.service import run_worker

    return run_worker(_settings(args))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from livemod.stream.evaluate import evaluate_command

    return evaluate_command(_settings(args), args.labels, policy=args.policy, json_path=args.json,
                            plots_dir=args.plots, thresholds=args.thresholds, slack_s=args.slack)


def cmd_schemas(args: argparse.Namespace) -> int:
    from livemod.stream.docs import write_docs
    from livemod.stream.records import json_schemas

    if args.out:
        for path in write_docs(Path(args.out)):
            print(path)
        return EXIT_OK
    print(json.dumps(json_schemas(), indent=2, sort_keys=True))
    return EXIT_OK


def cmd_settings(args: argparse.Namespace) -> int:
    from livemod.stream.docs import settings_markdown

    print(settings_markdown(), end="")
    return EXIT_OK


def cmd_topics(args: argparse.Namespace) -> int:
    import asyncio

    from livemod.stream.topics import check_topics

    s = _settings(args)
    report = asyncio.run(check_topics(s, create=args.topics_command == "create"))
    for name, count in report.counts.items():
        print(f"{name}\t{count if count is not None else 'missing'} partitions")
    for problem in report.problems:
        _err(f"problem: {problem}")
    return EXIT_OK if report.ok else EXIT_FATAL


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livemod", description="Streaming video moderation for live broadcasts.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("moderate", help="moderate media URIs in-process; alerts as JSON lines on stdout")
    m.add_argument("uris", nargs="+", help="files, http(s) URLs, HLS playlists, rtmp/rtsp URLs, images")
    m.add_argument("--policy", help="policy name (default: settings' default policy)")
    m.add_argument("--stream-id", help="stream id for all inputs, taken as consecutive parts of one stream "
                   "(default: each input is its own stream, named by its file's stem)")
    m.add_argument("--jobs", type=int, default=None, help="files handled at once (default: the number of "
                   "CPU cores, at most 8; 1 with --stream-id); live sources all run at once")
    m.add_argument("--out", help="folder for evidence and review output (default out/)")
    m.add_argument("--no-evidence", action="store_true", help="do not write evidence images")
    _add_common(m)
    m.set_defaults(func=cmd_moderate)

    e = sub.add_parser("evaluate", help="run a policy over labelled videos; a report to choose thresholds by")
    e.add_argument("labels", help="labels file: JSON, or CSV by extension (see stream/evaluate.py)")
    e.add_argument("--policy", help="policy name (default: settings' default policy)")
    e.add_argument("--json", help="write the full report to this JSON file")
    e.add_argument("--plots", help="folder for PNG plots (PR curve per label, scores over time per video)")
    e.add_argument("--thresholds", help="comma-separated frame-level thresholds (default 0.1,0.2,...,0.9)")
    e.add_argument("--slack", type=float, default=0.0, help="seconds an alert may start outside its shot")
    _add_common(e)
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="the sample broadcast: the service on the bundled broker (or --no-broker)")
    d.add_argument("--no-broker", action="store_true", help="run the pipeline in-process, without a broker")
    d.add_argument("--seconds", type=float, default=12.0, help="length of each sample stream")
    d.add_argument("--out", help="output folder (default out/demo)")
    _add_common(d)
    d.set_defaults(func=cmd_demo, policy=None)

    w = sub.add_parser("worker", help="run a worker against a Kafka cluster (settings from LIVEMOD_* env)")
    w.add_argument("--processes", type=int, default=1,
                   help="run N worker processes on this node (ids <id>-<i>, web ports web_port+i); they share the "
                        "partitions through the consumer group")
    _add_common(w)
    w.set_defaults(func=cmd_worker)

    c = sub.add_parser("check-config", help="validate settings, policies and model cards without running")
    c.add_argument("--policy", help="default policy to check for")
    _add_common(c)
    c.set_defaults(func=cmd_check_config)

    sc = sub.add_parser("schemas", help="JSON schemas of every record on the wire (stdout, or files with --out)")
    sc.add_argument("--out", help="write docs/settings.md-style files: OUT/settings.md and OUT/schemas/*.schema.json")
    sc.set_defaults(func=cmd_schemas)

    st = sub.add_parser("settings", help="every setting with its LIVEMOD_* environment variable, as Markdown")
    st.set_defaults(func=cmd_settings)

    tp = sub.add_parser("topics", help="create the service topics, or check their partition counts")
    tp.add_argument("topics_command", choices=["create", "check"])
    tp.set_defaults(func=cmd_topics)

    models = sub.add_parser("models", help="model preparation")
    msub = models.add_subparsers(dest="models_command", required=True)
    mp = msub.add_parser("prepare", help="derive the shipped models into the cache folder (no network)")
    mp.add_argument("--only", action="append", help="prepare only this model (repeatable)")
    mp.add_argument("--force", action="store_true", help="rebuild even when the file matches its card")
    _add_common(mp)
    mp.set_defaults(func=cmd_models_prepare)
    mf = msub.add_parser("fp16", help="convert a model to FP16 with ModelOpt AutoCast and compare with FP32")
    mf.add_argument("name", help="model card name")
    _add_common(mf)
    mf.set_defaults(func=cmd_models_fp16)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except ValidationError as exc:
        _err(f"fatal: invalid settings: {exc}")
        return EXIT_FATAL
    except LivemodError as exc:
        _err(f"fatal: {type(exc).__name__} [{exc.reason}]: {exc}")
        return EXIT_FATAL
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
