"""The real prepared models: sha256, the CAM contract, known photos, Open-NSFW unchanged."""

from __future__ import annotations


import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
from onnx import numpy_helper

from livemod.core.errors import ModelError
from livemod.engines.card import load_cards, sha256_file
from livemod.engines.ort import OrtClassifier
from livemod.engines.prepare import (
    build_lite0_graph,
    check_model,
    imagenet_labels,
    lite0_source,
    open_nsfw_source,
    prepare_models,
)
from livemod.engines.preprocess import prepare_batch
from livemod.engines.torchfile import load_state_dict

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


def test_prepare_reproduces_the_card_digests(tmp_path, cards):
    """A fresh build, here and now, gives byte-identical files (no `.sha256` side file needed)."""
    paths = prepare_models(tmp_path, force=True, int8=False, log=lambda _m: None)  # INT8: test_engines_int8.py
    for name, path in paths.items():
        assert sha256_file(path) == cards[name].sha256, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(c.file for c in cards.values())


def _head_bias(card, path) -> np.ndarray:
    """The classifier's bias, read from the graph: logits (-> Identity) <- Gemm / Add with an initializer."""
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    node = producer[card.logits]
    if node.op_type == "Identity":
        node = producer[node.input[0]]
    return numpy_helper.to_array(inits[node.input[2] if node.op_type == "Gemm" else node.input[1]])


@pytest.mark.parametrize("name", ["open-nsfw", "efficientnet-lite0"])
def test_cam_contract_on_real_photos(models_dir, cards, name):
    card = cards[name]
    clf = OrtClassifier(card, card.path(models_dir), threads=1)
    out = clf.infer(prepare_batch(card, [_working(card, p) for p in PHOTOS.values()]))
    assert out.cams.shape == (len(PHOTOS), len(card.labels), 7, 7)
    bias = _head_bias(card, card.path(models_dir))
    np.testing.assert_allclose(out.cams.mean(axis=(2, 3)) + bias, out.logits, atol=1e-4)
    check_model(card, card.path(models_dir))


@pytest.mark.parametrize("name", ["open-nsfw", "efficientnet-lite0"])
def test_batch_axis_is_dynamic(models_dir, cards, name):
    card = cards[name]
    model = onnx.load(str(card.path(models_dir)), load_external_data=False)
    assert {vi.type.tensor_type.shape.dim[0].dim_param for vi in [*model.graph.input, *model.graph.output]} == {"N"}
    assert model.producer_name == "livemod"
    clf = OrtClassifier(card, card.path(models_dir), threads=1)
    one = clf.infer(prepare_batch(card, [_working(card, PHOTOS["coffee"])]))
    batch = [_working(card, PHOTOS[p]) for p in ("coffee", "chelsea", "coffee")]
    three = clf.infer(prepare_batch(card, batch))
    np.testing.assert_allclose(three.logits[[0, 2]], np.repeat(one.logits, 2, axis=0), atol=1e-4)


@pytest.mark.parametrize(
    "photo, expected_top5",
    [("chelsea", {"Egyptian cat", "tabby", "tiger cat"}), ("coffee", {"espresso", "cup"})],
)
def test_efficientnet_knows_the_photos(models_dir, cards, photo, expected_top5):
    card = cards["efficientnet-lite0"]
    clf = OrtClassifier(card, card.path(models_dir), threads=1)
    out = clf.infer(prepare_batch(card, [_working(card, PHOTOS[photo])]))
    top5 = {card.labels[i] for i in np.argsort(-out.probs[0])[:5]}
    assert expected_top5 <= top5
    if photo == "chelsea":
        assert out.probs[0, list(card.label_indices("cat"))].sum() > 0.8


def test_open_nsfw_matches_the_original_graph(models_dir, cards):
    card = cards["open-nsfw"]
    batch = prepare_batch(card, [_working(card, p) for p in PHOTOS.values()])
    original = ort.InferenceSession(str(open_nsfw_source()), providers=["CPUExecutionProvider"])
    (ref,) = original.run(None, {"input:0": batch})
    ours = OrtClassifier(card, card.path(models_dir), threads=1).infer(batch)
    np.testing.assert_allclose(ours.probs, ref, atol=1e-5)


def test_prepare_is_idempotent(models_dir):
    before = {p.name: p.stat().st_mtime_ns for p in models_dir.glob("*.onnx")}
    prepare_models(models_dir, log=lambda _m: None)
    assert {p.name: p.stat().st_mtime_ns for p in models_dir.glob("*.onnx")} == before


@pytest.mark.parametrize(
    "edit, match",
    [("drop_last_block", "does not fit lite0"), ("extra_block", "more than the 16 blocks"),
     ("no_head_bn", "lacks '_bn1.running_var'")],
)
def test_lite0_builder_refuses_another_architecture(edit, match):
    sd = load_state_dict(lite0_source())
    if edit == "drop_last_block":
        sd = {k: v for k, v in sd.items() if not k.startswith("_blocks.15.")}
    elif edit == "extra_block":
        sd["_blocks.16._depthwise_conv.weight"] = sd["_blocks.15._depthwise_conv.weight"]
    else:
        del sd["_bn1.running_var"]
    with pytest.raises(ModelError, match=match):
        build_lite0_graph(sd)


def test_labels(cards):
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[281] == "tabby" and labels[413] == "assault rifle" and labels[763] == "revolver"
    assert cards["efficientnet-lite0"].labels == labels


def test_optional_torch_reference(models_dir, cards):
    """Compare with the reference PyTorch implementation, where torch and efficientnet-lite-pytorch are installed."""
    torch = pytest.importorskip("torch", reason="torch is not installed (optional check; livemod never needs torch)")
    lite = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed")
    card = cards["efficientnet-lite0"]
    net = lite.EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(lite0_source(), map_location="cpu"))
    net.eval()
    x = prepare_batch(card, [_working(card, p) for p in PHOTOS.values()])
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    ours = OrtClassifier(card, card.path(models_dir), threads=1).infer(x)
    np.testing.assert_allclose(ours.logits, ref, atol=1e-3, rtol=1e-3)
