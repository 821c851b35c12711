"""Model cards: what a model file is and how to feed it, loaded from YAML and validated."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from livemod.core.errors import ConfigError, ModelError
from livemod.core.yamlfile import safe_load
from livemod.core.types import Resize

CARDS_DIR = Path(__file__).parent / "cards"


class Int8Variant(BaseModel):
    """An INT8 copy of the model for ONNX Runtime on the CPU, derived by `livemod models prepare`.

    Same name, labels and pre-processing as its card; its own file, sha256 and version. Whether
    ``precision: auto`` uses it depends on the accuracy check against FP32 that prepare records
    beside the file (engines/quantize.py).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    file: str = Field(description="ONNX file name, relative to the model cache folder")
    sha256: str | None = Field(default=None, description="sha256 of the INT8 file on the machine that pinned it")
    keep_float: tuple[str, ...] = Field(default=(), description="node names of the FP32 graph left unquantized")


class ModelCard(BaseModel):
    """One model, as the engines need to know it.

    The model's ONNX graph takes one float32 input and has two float32 outputs named by the
    card: ``logits`` (N, C) and ``cams`` (N, C, h, w), the per-class maps such that
    mean over (h, w) of cams[:, c] + bias[c] == logits[:, c] (see engines/cam.py).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    version: str
    file: str = Field(description="ONNX file name, relative to the model cache folder")
    sha256: str | None = Field(default=None, description="sha256 of the ONNX file; checked at load")
    layout: Literal["NHWC", "NCHW"]
    size: tuple[int, int] = Field(description="network input (width, height)")
    channel_order: Literal["RGB", "BGR"]
    scale: float = Field(default=1.0, description="multiply 0-255 pixels by this first")
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: Literal["squash", "letterbox", "resize_crop"]
    resize_to: tuple[int, int] | None = Field(
        default=None, description="for resize_crop: (width, height) before the centre crop"
    )
    labels: tuple[str, ...]
    groups: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="named label groups; a group's probability is the sum of its members'",
    )
    input: str = "input"
    logits: str = "logits"
    cams: str = "cams"
    source: str = Field(default="", description="where the weights come from, and their licence")
    int8: Int8Variant | None = Field(default=None, description="the INT8 precision variant, if any")

    @model_validator(mode="after")
    def _check(self) -> "ModelCard":
        if self.resize == "resize_crop":
            if self.resize_to is None:
                raise ValueError("resize_crop needs resize_to")
            if self.resize_to[0] < self.size[0] or self.resize_to[1] < self.size[1]:
                raise ValueError("resize_to must be at least the input size")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        for group, members in self.groups.items():
            if group in self.labels:
                raise ValueError(f"group {group!r} shadows a label")
            missing = [m for m in members if m not in self.labels]
            if missing or not members:
                raise ValueError(f"group {group!r} names unknown labels {missing}")
        return self

    @property
    def working_size(self) -> Resize:
        """The image the decoder should scale each sampled frame to for this model."""
        if self.resize == "resize_crop":
            assert self.resize_to is not None  # checked by the validator
            return Resize(self.resize_to[0], self.resize_to[1])
        if self.resize == "letterbox":
            return Resize(self.size[0], self.size[1], keep_aspect=True)
        return Resize(self.size[0], self.size[1])

    def label_indices(self, label: str) -> tuple[int, ...]:
        """Indices of a label, or of a group's members."""
        if label in self.groups:
            return tuple(self.labels.index(m) for m in self.groups[label])
        try:
            return (self.labels.index(label),)
        except ValueError:
            raise ConfigError(f"model {self.name!r} has no label or group {label!r}") from None

    def at_int8(self) -> "ModelCard":
        """This card for its INT8 variant: same name (policies keep naming it), its own file, sha256, version."""
        if self.int8 is None:
            raise ConfigError(f"model card {self.name!r} has no int8 variant")
        v = self.int8
        return self.model_copy(update={"file": v.file, "sha256": v.sha256, "version": v.version, "int8": None})

    def path(self, cache_dir: Path) -> Path:
        return Path(cache_dir) / self.file

    def verify_file(self, cache_dir: Path) -> Path:
        """Return the model path after checking it exists and matches sha256."""
        path = self.path(cache_dir)
        if not path.is_file():
            raise ModelError(
                f"model file {path} is missing: run `livemod models prepare`", reason="model_missing"
            )
        if self.sha256:
            digest = sha256_file(path)
            sidecar = path.with_name(path.name + ".sha256")  # written by `models prepare` after a functional check
            accepted = {self.sha256}
            if sidecar.is_file():
                accepted.add(sidecar.read_text().strip())
            if digest not in accepted:
                raise ModelError(
                    f"{path} has sha256 {digest}, card {self.name} expects {self.sha256}",
                    reason="model_mismatch",
                )
        return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_card(path: Path) -> ModelCard:
    """Read and validate one model card YAML file."""
    try:
        data = safe_load(Path(path).read_text())
        return ModelCard.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"model card {path}: {exc}") from exc


def load_cards(directory: Path | None = None) -> dict[str, ModelCard]:
    """Load every ``*.yaml`` card in a folder (the shipped cards by default), keyed by name."""
    directory = Path(directory) if directory else CARDS_DIR
    cards: dict[str, ModelCard] = {}
    for path in sorted(directory.glob("*.yaml")):
        card = load_card(path)
        if card.name in cards:
            raise ConfigError(f"two model cards are named {card.name!r}")
        cards[card.name] = card
    return cards
