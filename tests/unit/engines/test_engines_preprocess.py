"""Preprocessing: resize policies, channel order, normalisation, layout."""

from __future__ import annotations

import numpy as np
import pytest

from livemod.core.types import Resize
from livemod.engines.card import ModelCard
from livemod.engines.preprocess import fit_size, prepare_batch, to_input_size


def card(**kw) -> ModelCard:
    base = dict(name="m", version="1", file="m.onnx", layout="NHWC", size=(4, 4), channel_order="RGB",
                resize="squash", labels=("a", "b"))
    base.update(kw)
    return ModelCard(**base)


@pytest.mark.parametrize(
    "w, h, bw, bh, expected",
    [(1920, 1080, 224, 224, (224, 126)), (1080, 1920, 224, 224, (126, 224)), (100, 100, 50, 80, (50, 50))],
)
def test_fit_size(w, h, bw, bh, expected):
    assert fit_size(w, h, bw, bh) == expected


@pytest.mark.parametrize(
    "kw, expected_working",
    [
        (dict(resize="squash"), Resize(4, 4)),
        (dict(resize="letterbox"), Resize(4, 4, keep_aspect=True)),
        (dict(resize="resize_crop", resize_to=(6, 6)), Resize(6, 6)),
    ],
)
def test_working_size(kw, expected_working):
    assert card(**kw).working_size == expected_working


def test_resize_crop_takes_the_centre():
    img = np.zeros((6, 6, 3), np.uint8)
    img[1:5, 1:5] = 200
    out = to_input_size(card(resize="resize_crop", resize_to=(6, 6)), img)
    assert out.shape == (4, 4, 3) and (out == 200).all()


def test_letterbox_pads_with_black():
    img = np.full((2, 4, 3), 255, np.uint8)
    out = to_input_size(card(resize="letterbox"), img)
    assert out.shape == (4, 4, 3)
    assert (out[1:3] == 255).all() and (out[0] == 0).all() and (out[3] == 0).all()


@pytest.mark.parametrize(
    "kw, shape, first_channel_value",
    [
        (dict(layout="NHWC", channel_order="RGB"), (2, 4, 4, 3), 10.0),
        (dict(layout="NHWC", channel_order="BGR"), (2, 4, 4, 3), 30.0),
        (dict(layout="NCHW", channel_order="RGB"), (2, 3, 4, 4), 10.0),
        (dict(layout="NCHW", channel_order="RGB", mean=(5.0, 5.0, 5.0), std=(5.0, 1.0, 1.0)), (2, 3, 4, 4), 1.0),
        (dict(layout="NHWC", channel_order="BGR", mean=(104.0, 117.0, 123.0)), (2, 4, 4, 3), 30.0 - 104.0),
    ],
)
def test_normalise_layout_and_order(kw, shape, first_channel_value):
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30
    x = prepare_batch(card(**kw), [img, img])
    assert x.shape == shape and x.dtype == np.float32 and x.flags.c_contiguous
    first = x[0, ..., 0] if kw["layout"] == "NHWC" else x[0, 0]
    assert float(first.flat[0]) == pytest.approx(first_channel_value)
