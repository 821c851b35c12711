"""The embedded pipeline and the CLI on real clips and real models, end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from livemod.demo.synth import pattern_frames, write_video
from livemod.rules.evaluate import StreamState
from livemod.demo.scene import Scene, broadcast_frames
from livemod.stream.pipeline import Moderator
from livemod.stream.records import FrameRef
from livemod.stream.settings import Settings
from tests.tinymodels import tiny_cam_model

REPO = Path(__file__).resolve().parents[2]


def settings_for(tmp_path: Path, models_dir: Path, policy: str = "demo", **engines) -> Settings:
    s = Settings()
    return s.model_copy(update={
        "engines": s.engines.model_copy(update={"models_dir": models_dir, "threads": 1, **engines}),
        "rules": s.rules.model_copy(update={"default_policy": policy, "evidence_dir": tmp_path / "evidence",
                                            "review_dir": tmp_path / "review"}),
        "decoder": s.decoder.model_copy(update={"file_roots": (tmp_path.resolve(), REPO)}),
    })


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("studio")
    scene = Scene(width=960, height=540, fps=4, seconds=8, cat_from=2.0, cat_to=6.0)
    return write_video(d / "studio.ts", broadcast_frames(scene), fps=4, codec="libx264", gop=4)


def test_small_cat_alert_needs_the_recheck(tmp_path, models_dir, studio):
    local = tmp_path / "studio.ts"
    shutil.copy(studio, local)
    mod = Moderator(settings_for(tmp_path, models_dir))
    ref = FrameRef(stream_id="studio", uri=str(local), seq=3, wall_start=1_700_000_000.0)
    results = list(mod.moderate(ref, StreamState()))
    alerts = [a for _f, _s, d, _st in results for a in d.alerts]
    assert len(alerts) == 1, "one incident, one alert: no flood while it stays open"
    alert = alerts[0].model_dump(mode="json")  # as the alerts topic carries it
    assert alert["rule"] == "cat-on-air" and alert["recheck_used"] is True
    assert 2.0 <= alert["start_pts"] < 6.0
    hit = alert["frames"][-1]
    assert hit["whole_frame_score"] < 0.6 <= hit["score"] and hit["recheck"]["method"] in ("cam_box", "tile")
    x0, y0, x1, y1 = alert["box"]
    cx0, cy0, cx1, cy1 = Scene(width=960, height=540).cat_box()
    assert x0 <= cx0 + 40 and y0 <= cy0 + 40 and x1 >= cx1 - 40 and y1 >= cy1 - 40, "the box holds the cat"
    for path in alert["evidence"].values():
        img = cv2.imread(path)
        assert img is not None and img.shape[:2] == (540, 960)
    assert alert["model_versions"]["efficientnet-lite0"]
    # the incident closed once the cat left
    assert any(d.closed for _f, _s, d, _st in results)

    # a replay of the same reference from the saved state publishes nothing new
    state = results[-1][3]
    replay = list(mod.moderate(ref, StreamState.from_dict(json.loads(json.dumps(state.to_dict())))))
    assert not [a for _f, _s, d, _st in replay for a in d.alerts]
    assert not [r for _f, _s, d, _st in replay for r in d.reviews], "no review or audit sample twice"
    # and from scratch it gives the very same alert id
    again = [a for _f, _s, d, _st in mod.moderate(ref, StreamState()) for a in d.alerts]
    assert [a.id for a in again] == [alert["id"]]


def test_without_recheck_the_cat_is_missed(tmp_path, models_dir, studio):
    """Side by side: the same clip with the re-check switched off raises nothing."""
    pol = tmp_path / "policies"
    pol.mkdir()
    text = (REPO / "rules/policies/demo.yaml").read_text().replace(
        "recheck: {band: [0.001, 0.6], max_boxes: 2, expand: 1.5, tiles: 0}", "recheck: null")
    (pol / "demo.yaml").write_text(text)
    s = settings_for(tmp_path, models_dir)
    s = s.model_copy(update={"rules": s.rules.model_copy(update={"policies_dir": pol})})
    local = tmp_path / "studio.ts"
    shutil.copy(studio, local)
    out = list(Moderator(s).moderate(FrameRef(stream_id="studio", uri=str(local), wall_start=0.0), StreamState()))
    assert out and not [a for _f, _s, d, _st in out for a in d.alerts]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livemod.stream.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def custom_models(tmp_path_factory):
    """Model cards the CLI has never seen: an NHWC and an NCHW tiny model, and a policy for them."""
    d = tmp_path_factory.mktemp("custom")
    (d / "cards").mkdir()
    (d / "models").mkdir()
    (d / "policies").mkdir()
    for name, layout in (("tiny-nhwc", "NHWC"), ("tiny-nchw", "NCHW")):
        tiny_cam_model(d / "models" / f"{name}.onnx", layout=layout, size=32, classes=3, seed=3)
        (d / "cards" / f"{name}.yaml").write_text(
            f"name: {name}\nversion: '1'\nfile: {name}.onnx\nlayout: {layout}\nsize: [32, 32]\n"
            "channel_order: RGB\nscale: 0.00392157\nresize: letterbox\nlabels: [a, b, c]\n"
            "groups: {ab: [a, b]}\n"
        )
    (d / "policies" / "custom.yaml").write_text(
        "name: custom\nrules:\n"
        "  - {name: r1, model: tiny-nhwc, label: ab, review: 0.0, alert: 0.01, window: {k: 1, n: 1}, cooldown_s: 0}\n"
        "  - {name: r2, model: tiny-nchw, label: c, review: 0.0, alert: 0.01, window: {k: 1, n: 1}, cooldown_s: 0,"
        " recheck: {band: [0.0, 1.01], tiles: 2}}\n"
    )
    return d


@pytest.mark.parametrize("codec, ext", [("libx264", ".mp4"), ("libx265", ".mkv"), ("libvpx-vp9", ".webm")])
def test_cli_moderate_unseen_clips_and_cards(tmp_path, custom_models, codec, ext):
    clip = write_video(tmp_path / f"clip{ext}", pattern_frames(24, 192, 108), fps=8, codec=codec, gop=8)
    r = _cli("moderate", str(clip), "--cards-dir", str(custom_models / "cards"), "--models-dir",
             str(custom_models / "models"), "--policies-dir", str(custom_models / "policies"), "--policy", "custom",
             "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    alerts = [json.loads(line) for line in r.stdout.splitlines()]
    assert {a["rule"] for a in alerts} == {"r1", "r2"}
    assert "summary:" in r.stderr and "frames" in r.stderr
    r2 = [a for a in alerts if a["rule"] == "r2"][0]
    assert r2["frames"][0]["recheck"]["crops"] >= 4  # boxes + a 2x2 tile pass ran on the NCHW model


def test_cli_bad_inputs_exit_2_and_name_each_error(tmp_path, models_dir):
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 30)
    good = write_video(tmp_path / "ok.mp4", pattern_frames(8, 160, 90), fps=8, gop=8)
    r = _cli("moderate", str(tmp_path / "zero.mp4"), str(tmp_path / "text.mp4"), str(good), "/etc/passwd",
             "http://169.254.169.254/latest", "--models-dir", str(models_dir), "--no-evidence", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    for needle in ("EmptyMediaError", "CorruptMediaError", "ForbiddenSourceError [forbidden_source"):
        assert needle in r.stderr
    summary = json.loads(r.stderr.split("summary: ", 1)[1].splitlines()[0])
    assert summary["inputs"] == 5 and len(summary["failed"]) == 4 and summary["frames"] >= 1


def test_cli_fatal_error_exit_1(tmp_path):
    r = _cli("moderate", "x.mp4", "--models-dir", str(tmp_path / "nothing-here"), cwd=tmp_path)
    assert r.returncode == 1 and "models prepare" in r.stderr


def test_cli_check_config(tmp_path, models_dir, custom_models):
    r = _cli("check-config", "--models-dir", str(models_dir), cwd=tmp_path)
    assert r.returncode == 0 and "policies: " in r.stdout and "demo" in r.stdout
    bad = tmp_path / "pol"
    bad.mkdir()
    (bad / "x.yaml").write_text("name: x\nrules:\n  - {name: a, model: nope, label: b, review: 0.1, alert: 0.2}\n")
    r = _cli("check-config", "--policies-dir", str(bad), cwd=tmp_path)
    assert r.returncode == 1 and "unknown model 'nope'" in r.stderr


def test_a_policy_rule_s_recheck_settings_reach_the_engine(tmp_path, models_dir):
    """Hot spots below the band, the small-object sweep and the stream budget are the policy's and settings'."""
    s = settings_for(tmp_path, models_dir, recheck_budget=0.5)
    mod = Moderator(s)
    rule = next(r for r in mod.policy(None).rules if r.model == "efficientnet-lite0")
    (watch,) = mod.watches(mod.policy(None))["efficientnet-lite0"]
    assert watch.recheck is not None and mod.scorer.budget == 0.5
    assert (watch.recheck.spot_threshold, watch.recheck.sweep_share) == (
        rule.recheck.spot_threshold, rule.recheck.sweep_share) == (0.5, 0.015)


def test_cli_inputs_run_at_once_give_what_one_at_a_time_gives(tmp_path, custom_models, capsys):
    """`moderate` overlaps inputs (one decoder thread each, scoring on one loop): the same alerts per
    stream as in order; two files with one stem are two streams; --stream-id makes them one stream."""
    from livemod.stream.cli import moderate_uris

    clips = []
    for i, d in enumerate(("a", "b", "c")):
        (tmp_path / d).mkdir()
        clips.append(str(write_video(tmp_path / d / ("seg.mp4" if i < 2 else "other.mp4"),
                                     pattern_frames(16, 192, 108), fps=8, codec="libx264", gop=4)))
    s = settings_for(tmp_path, custom_models / "models")
    s = s.model_copy(update={
        "engines": s.engines.model_copy(update={"cards_dir": custom_models / "cards"}),
        "rules": s.rules.model_copy(update={"policies_dir": custom_models / "policies", "default_policy": "custom",
                                            "write_evidence": False}),
    })

    def alerts(**kw) -> tuple[dict, list[tuple[str, str, int]]]:
        summary, code = moderate_uris(s, clips, **kw)
        assert code == 0
        got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        return summary, sorted((a["stream_id"], a["rule"], len(a["frames"])) for a in got)

    one_by_one, seq = alerts(jobs=1)
    at_once, par = alerts(jobs=3)
    assert par == seq and seq
    assert {sid for sid, _r, _n in seq} == {"seg", "seg-2", "other"}
    assert one_by_one["frames"] == at_once["frames"] == 3 * 4
    assert set(at_once["max_gap_s"]) == set(clips)
    joined, one_stream = alerts(stream_id="cam-1")
    assert {sid for sid, _r, _n in one_stream} == {"cam-1"} and joined["frames"] == 3 * 4
