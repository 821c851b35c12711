"""`livemod evaluate` on a labelled set made at test time: the demo scene, real models, the real CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import pytest

from livemod.demo.scene import Scene, broadcast_frames
from livemod.demo.synth import write_video
from livemod.stream.evaluate import evaluate_command, evaluate_labels, load_labels, markdown
from livemod.stream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
LIVEMOD = REPO / ".venv" / "bin" / "livemod"
CAT = (3.0, 7.0)  # the picture-in-picture cat is on screen from 3 s to 7 s (PTS 3.0 .. 6.75 at 4 fps)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """studio.ts: 10 s with the cat for CAT (a 1 s GOP at 4 fps); newsroom.mp4: 10 s, no cat."""
    d = tmp_path_factory.mktemp("labelled")
    studio = Scene(width=960, height=540, fps=4, seconds=10, cat_from=CAT[0], cat_to=CAT[1])
    write_video(d / "studio.ts", broadcast_frames(studio), fps=4, codec="libx264", gop=4)
    newsroom = Scene(width=960, height=540, fps=4, seconds=10, background="astronaut", cat_from=1e9, cat_to=1e9)
    write_video(d / "newsroom.mp4", broadcast_frames(newsroom), fps=4, codec="libx264", gop=4)
    labels = {"videos": [
        {"path": "studio.ts",
         "intervals": [{"label": "cat-on-air", "start": CAT[0], "end": CAT[1], "box": list(studio.cat_box())}]},
        {"path": "newsroom.mp4", "intervals": []},
    ]}
    (d / "labels.json").write_text(json.dumps(labels))
    (d / "labels.csv").write_text("video,label,start,end\n"
                                  f"studio.ts,efficientnet-lite0:cat,{CAT[0]},{CAT[1]}\nnewsroom.mp4,,,\n")
    return d


def settings_for(models_dir: Path) -> Settings:
    s = Settings()
    return s.model_copy(update={"engines": s.engines.model_copy(update={"models_dir": models_dir, "threads": 1})})


def livemod(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LIVEMOD), "evaluate", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def check_cat(m: dict, key: str) -> None:
    """The obvious case: one shot, found and alerted; nothing on the clean stretches."""
    assert (m["label"], m["rule"], m["model"], m["model_label"]) == (key, "cat-on-air", "efficientnet-lite0", "cat")
    assert (m["shots"], m["shots_sampled"], m["shots_found"], m["shot_recall"]) == (1, 1, 1, 1.0)
    assert m["shots_alerted"] == 1 and 0.0 <= m["time_to_alert_s"]["median"] <= m["time_to_alert_s"]["max"] <= 2.0
    assert (m["videos"], m["frames"], m["positive_frames"]) == (2, 20, 4)  # keyframes at 0, 1, ..., 9 s per video
    at = m["at_alert_threshold"]
    assert at["threshold"] == 0.6 and at["recall"] == 1.0 and at["precision"] == 1.0
    assert [fm["threshold"] for fm in m["frame_metrics"]] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert m["average_precision"] == 1.0
    assert (m["alerts"], m["alerts_clean"], m["alerts_per_clean_hour"]) == (1, 0, 0.0)
    assert m["clean_seconds"] == pytest.approx(20.0 - (CAT[1] - CAT[0]), abs=0.01)
    # the cat is ~6% of the frame: the whole frame alone never reaches 0.6, every detection is the re-check's
    assert m["detections"] == 4 and m["recheck_share"] == 1.0
    # 2 CAM boxes per frame in the band, plus the small-object sweep that each stream's first frame
    # borrows from its budget (24 tiles for 16:9, two 10-frame videos): 2 + 24 / 10 per frame at most
    assert m["recheck_crops"] > 0 and 0 < m["recheck_crops_per_frame"] <= 2.0 + 24 / 10
    assert m["max_gap_s"] == pytest.approx(1.0)


def test_cli_reports_json_markdown_and_plots(tmp_path, models_dir, labelled):
    out = tmp_path / "out"
    res = livemod(labelled / "labels.json", "--policy", "demo", "--models-dir", models_dir, "--threads", "1",
                  "--json", out / "report.json", "--plots", out / "plots", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "| label | rule | alert thr | shots | shot recall |" in res.stdout
    assert "| cat-on-air | cat-on-air | 0.60 | 1 | 1.00 (1/1) |" in res.stdout
    assert "[2/2]" in res.stderr and "newsroom.mp4: done, 10 frames" in res.stderr  # progress on stderr

    report = json.loads((out / "report.json").read_text())
    assert (report["policy"], report["videos_total"], report["videos_failed"]) == ("demo", 2, [])
    assert report["sampled_frames"] == 20 and report["video_seconds"] == pytest.approx(20.0)
    assert report["max_gap_s"] == pytest.approx(1.0)
    cat, adult = report["labels"]
    check_cat(cat, "cat-on-air")
    assert cat["shots_detail"][0]["box"] == list(Scene(width=960, height=540).cat_box())
    # the rule no interval names is reported too: all 20 s are clean for it
    assert (adult["rule"], adult["shots"], adult["shot_recall"], adult["alerts_clean"]) == ("adult-content", 0, None, 0)
    studio, newsroom = report["videos"]
    assert (studio["duration_s"], studio["duration_from"], studio["sampled_frames"], studio["max_gap_s"]) == (
        10.0, "headers", 10, 1.0)
    assert [a["rule"] for a in studio["alerts"]] == ["cat-on-air"] and studio["alerts"][0]["recheck_used"]
    assert CAT[0] <= studio["alerts"][0]["start_pts"] < CAT[1]
    assert newsroom["alerts"] == [] and len(newsroom["series"]["cat-on-air"]["score"]) == 10
    lite0 = report["inference"]["efficientnet-lite0"]
    stages = lite0["stages"]
    assert stages["frame"] > 0 and stages["recheck"] + stages.get("sweep", 0) == cat["recheck_crops"]
    assert lite0["extra_ratio"] == pytest.approx(lite0["extra_images"] / lite0["stages"]["frame"], abs=1e-3)

    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["pr_cat-on-air.png", "scores_00_studio.png", "scores_01_newsroom.png"]
    for name in pngs:
        img = cv2.imread(str(out / "plots" / name))
        assert img is not None and img.shape[0] > 200 and img.shape[1] > 200


def test_as_a_function_with_csv_labels(models_dir, labelled, capsys):
    lines: list[str] = []
    report = evaluate_labels(settings_for(models_dir), load_labels(labelled / "labels.csv"), policy="demo",
                             thresholds=(0.3, 0.6), progress=lines.append)
    assert [m["label"] for m in report["labels"]] == ["efficientnet-lite0:cat", "adult-content"]
    cat = report["labels"][0]
    check_cat({**cat, "frame_metrics": [{"threshold": t} for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]},
              "efficientnet-lite0:cat")
    assert [fm["threshold"] for fm in cat["frame_metrics"]] == [0.3, 0.6]
    assert any("studio.ts: done" in line for line in lines)
    text = markdown(report)
    assert "| efficientnet-lite0:cat | cat-on-air | 0.60 | 1 | 1.00 (1/1) |" in text
    assert "| studio.ts | 10.0 | 10 | 1.00" in text


@pytest.mark.parametrize(("labels", "message"), [
    ('{"videos": [{"path": "STUDIO", "intervals": [{"label": "cat-on-air", "start": 5, "end": 2}]}]}',
     "videos.0.intervals.0: end 2.0 must be after start 5.0"),
    ('{"videos": [{"path": "missing.ts"}]}', "video 'missing.ts' not found"),
    ('{"videos": [{"path": "STUDIO", "intervals": [{"label": "dog", "start": 1, "end": 2}]}]}',
     "label 'dog' (video"),
    ("{not json", "not JSON"),
])
def test_bad_labels_file_exits_2(tmp_path, labelled, labels, message):
    bad = tmp_path / "bad.json"
    bad.write_text(labels.replace("STUDIO", str(labelled / "studio.ts")))
    res = livemod(bad, "--policy", "demo", "--json", tmp_path / "r.json", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: labels ") and message in res.stderr, res.stderr
    assert res.stdout == "" and not (tmp_path / "r.json").exists()


def test_a_video_that_fails_is_reported_and_exits_2(tmp_path, models_dir, labelled, capsys):
    (tmp_path / "broken.ts").write_bytes(b"\x47" + bytes(range(256)) * 40)
    (tmp_path / "newsroom.mp4").symlink_to(labelled / "newsroom.mp4")
    (tmp_path / "labels.json").write_text(json.dumps({"videos": [
        {"path": "broken.ts", "duration": 5.0, "intervals": [{"label": "cat-on-air", "start": 1, "end": 2}]},
        {"path": "newsroom.mp4"},
    ]}))
    code = evaluate_command(settings_for(models_dir), str(tmp_path / "labels.json"), policy="demo",
                            json_path=str(tmp_path / "r.json"))
    assert code == 2
    report = json.loads((tmp_path / "r.json").read_text())
    assert [f["path"] for f in report["videos_failed"]] == [str(tmp_path / "broken.ts")]
    assert report["videos_failed"][0]["reason"].endswith("media")
    cat = report["labels"][0]
    assert (cat["videos"], cat["shots"], cat["frames"]) == (1, 0, 10)  # the failed video is left out
    out = capsys.readouterr()
    assert "error: " in out.err and "broken.ts" in out.out  # named on stderr and in the table
