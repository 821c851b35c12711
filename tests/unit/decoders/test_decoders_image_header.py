"""Still-image headers and the JPEG reduction choice (decoders/image.py), as tables."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from livemod.decoders.image import ImageHeader, read_header, reduction


def _encoded(ext: str, w: int, h: int, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, np.full((h, w, 3), 90, np.uint8), list(params))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    "ext, params, fmt",
    [
        (".jpg", (), "jpeg"),
        (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "jpeg"),
        (".png", (), "png"),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), "webp"),  # lossy: VP8
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), "webp"),  # lossless: VP8L
        (".bmp", (), "bmp"),
    ],
)
@pytest.mark.parametrize("w, h", [(1, 1), (64, 48), (1281, 719)])
def test_header_sizes(ext, params, fmt, w, h):
    assert read_header(_encoded(ext, w, h, params)) == ImageHeader(fmt, w, h)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8\xff",  # JPEG start, no frame header
        b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20,  # scan before any frame header
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00",  # cut inside IHDR
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + b"\x00" * 8,  # zero size
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"GIF89a" + b"\x00" * 20,
        b"hello, not an image at all",
    ],
)
def test_header_refuses(data):
    assert read_header(data) is None


def test_header_of_a_cut_jpeg_still_has_its_size():
    data = _encoded(".jpg", 640, 360)
    assert read_header(data[:400]) == ImageHeader("jpeg", 640, 360)


@pytest.mark.parametrize(
    "head, targets, r",
    [
        (ImageHeader("jpeg", 1280, 720), [(32, 32)], 8),
        (ImageHeader("jpeg", 1280, 720), [(224, 224), (256, 256)], 2),
        (ImageHeader("jpeg", 1920, 1080), [(224, 224), (256, 256)], 4),
        (ImageHeader("jpeg", 1920, 1080), [(256, 144)], 4),
        (ImageHeader("jpeg", 64, 64), [(32, 32)], 2),
        (ImageHeader("jpeg", 64, 64), [(224, 224)], 1),  # upscaled: decode whole
        (ImageHeader("jpeg", 257, 257), [(32, 32)], 8),  # ceil(257 / 8) = 33
        (ImageHeader("jpeg", 255, 255), [(33, 32)], 4),  # ceil(255 / 8) = 32 < 33
        (ImageHeader("png", 1920, 1080), [(32, 32)], 1),  # only JPEG decodes reduced
        (ImageHeader("jpeg", 1920, 1080), [], 1),
    ],
)
def test_reduction(head, targets, r):
    assert reduction(head, targets) == r
