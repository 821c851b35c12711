"""Still images (JPEG, PNG, WebP, BMP) read with OpenCV: size from the header first, JPEG reduced in the DCT domain."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from livemod.core.errors import CorruptMediaError

# files larger than this are left to PyAV, which streams them instead of reading them whole
MAX_FILE_BYTES = 64 << 20
# FFmpeg demuxers that read each format: the fast path runs only where the allow-list lets FFmpeg read it too
DEMUXERS_FOR = {
    "jpeg": ("image2", "jpeg_pipe", "mjpeg"),
    "png": ("image2", "png_pipe"),
    "webp": ("image2", "webp_pipe"),
    "bmp": ("image2", "bmp_pipe"),
}
# libjpeg scales by 1/2, 1/4, 1/8 while it decodes (IDCT on fewer coefficients); PNG/WebP/BMP would be
# decoded whole and then resized by OpenCV, which saves nothing
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
# FFmpeg does not apply EXIF orientation either: the same pixels whichever path reads the file
_FLAGS = cv2.IMREAD_IGNORE_ORIENTATION
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


@dataclass(frozen=True)
class ImageHeader:
    """What the first bytes of a still image say.

    Attributes:
        format: jpeg, png, webp or bmp.
        width, height: size in pixels.
        animated: a WebP animation (left to FFmpeg).
    """

    format: str
    width: int
    height: int
    animated: bool = False


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 9 > n or length < 7:
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        if length < 2:
            return None
        i += 2 + length
    return None


def read_header(data: bytes) -> ImageHeader | None:
    """The format and size of a JPEG, PNG, WebP or BMP from its bytes, without decoding it.

    Returns:
        None when the bytes do not start like one of these formats or the header is cut short
        (a zero size counts as cut short).
    """
    head: ImageHeader | None = None
    if data[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
        head = ImageHeader("jpeg", *size) if size else None
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        head = ImageHeader("png", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            head = ImageHeader("webp", 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little"),
                               animated=bool(data[20] & 0x02))
        elif chunk == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            head = ImageHeader("webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
        elif chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            head = ImageHeader("webp", int.from_bytes(data[26:28], "little") & 0x3FFF,
                               int.from_bytes(data[28:30], "little") & 0x3FFF)
    elif data[:2] == b"BM" and len(data) >= 26 and int.from_bytes(data[14:18], "little") >= 40:
        head = ImageHeader("bmp", abs(int.from_bytes(data[18:22], "little", signed=True)),
                           abs(int.from_bytes(data[22:26], "little", signed=True)))
    if head is None or head.width <= 0 or head.height <= 0:
        return None
    return head


def reduction(head: ImageHeader, targets: Sequence[tuple[int, int]]) -> int:
    """The largest JPEG decode reduction (8, 4, 2 or 1) that keeps the image at least as large as
    every target (w, h); 1 for other formats."""
    if head.format != "jpeg" or not targets:
        return 1
    need_w, need_h = max(w for w, _ in targets), max(h for _, h in targets)
    for r, _flag in _REDUCED:
        if math.ceil(head.width / r) >= need_w and math.ceil(head.height / r) >= need_h:
            return r
    return 1


def _decode(buf: np.ndarray, r: int) -> np.ndarray | None:
    flag = dict(_REDUCED).get(r, cv2.IMREAD_COLOR)
    return cv2.imdecode(buf, flag | _FLAGS)


@dataclass(frozen=True)
class Still:
    """A still image decoded for classification.

    Attributes:
        width, height: full size in pixels.
        images: RGB uint8 (h, w, 3) per working size, in the order asked.
        full_rgb: the full-size RGB uint8 (height, width, 3), decoded on first call and kept.
    """

    width: int
    height: int
    images: list[np.ndarray]
    full_rgb: Callable[[], np.ndarray]


def decode_still(data: bytes, head: ImageHeader, targets: Sequence[tuple[int, int]]) -> Still | None:
    """Decode a still image whose header was read and checked, straight to the working sizes.

    A JPEG is decoded at the largest reduction that keeps it at least as large as every
    target; each working image is then made with ``cv2.resize(INTER_AREA)`` and converted to
    RGB at its small size. The full-size picture is decoded only when ``full_rgb`` is called
    (for a JPEG that was reduced) and is kept after that.

    Args:
        data: the whole file.
        head: ``read_header(data)``.
        targets: (w, h) of each working image.

    Returns:
        None when OpenCV cannot decode it, or decodes another size than the header says
        (corrupt, truncated, a variant this build does not read): the caller falls back to FFmpeg.
    """
    buf = np.frombuffer(data, np.uint8)
    r = reduction(head, targets)
    bgr = _decode(buf, r)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        return None
    if bgr.shape[:2] != (math.ceil(head.height / r), math.ceil(head.width / r)):
        return None
    # each from the decoded picture: making the smaller working images from the larger one saves about
    # 1 ms on a 1280x720 JPEG but moved EfficientNet-Lite0's probabilities by up to 0.10 (0.007 direct)
    images = []
    for w, h in targets:
        small = bgr if bgr.shape[:2] == (h, w) else cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        images.append(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
    full: list[np.ndarray] = []
    kept: np.ndarray | None = bgr if r == 1 else None

    def full_rgb() -> np.ndarray:
        nonlocal kept
        if not full:
            src = kept if kept is not None else _decode(buf, 1)
            if src is None:  # it decoded reduced a moment ago: only a broken libjpeg gets here
                raise CorruptMediaError("the image decodes reduced but not at full size")
            full.append(cv2.cvtColor(src, cv2.COLOR_BGR2RGB))
            kept = None
        return full[0]

    return Still(head.width, head.height, images, full_rgb)


def read_file(path: Path) -> bytes | None:
    """The bytes of a local image, or None when it cannot be read here or is too large to read whole
    (the caller then lets FFmpeg open it, which reports why)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    return data if 0 < len(data) <= MAX_FILE_BYTES else None
