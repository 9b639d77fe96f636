"""HPS v2 and v2.1 (Wu et al., "Human Preference Score v2: A Solid Benchmark for Evaluating Human Preferences of
Text-to-Image Synthesis", 2023): an OpenCLIP ViT-H-14 fine-tuned on HPD v2's human choices; an image's score for a
prompt is cos(image embedding, text embedding), what the `hpsv2` package's `score()` returns (its benchmark table
shows 100 times that). v2.0 and v2.1 are two trainings with different weights: two metrics, `hpsv2_0` and `hpsv2_1`,
whose numbers never compare.

Through open_clip, not the `hpsv2` package: hpsv2 1.2.0 pins pytest==7.2.0 and protobuf<4 (it would downgrade this
project's test runner and protobuf) and carries its own copy of open_clip 2.16. Its model is open_clip's ViT-H-14
(the same configuration and state_dict names in open_clip 3), built here without pretrained weights and then given
the HPS checkpoint's `state_dict` whole, as hpsv2 does (strictly: every tensor comes from the HPS file).

Preprocessing is hpsv2's inference transform (its `light_augmentation` path, open_clip's mean and std): the image
as a [0, 1] tensor, its longest side resized to 224 (torchvision's bicubic tensor resize, antialiased: its default
since torchvision 0.17, so what hpsv2 computes today; older torchvision did not antialias tensors), centred on a
black 224 x 224 square, normalised. Texts: open_clip's tokenizer, 77 tokens. On a GPU the authors score under
float16 autocast (`precision='amp'`): dtype `auto` does the same there and runs float32 on a CPU.

Weights: `HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt` of the hub repository `xswu/HPSv2`, from the Hugging Face
cache, a folder holding them, or the file. A file whose sha256 is not the published one for its version is named
`..._file_<sha256[:8]>`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.metrics.hub import file_sha256, hub_file, load_checkpoint
from imagen.errors import UserError

DEFAULT_REPO = "xswu/HPSv2"
DEFAULT_VERSION = "v2.1"
ARCHITECTURE = "ViT-H-14"
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: float16 autocast on a GPU (the authors'), float32 on a CPU


@dataclass(frozen=True)
class Release:
    """One published HPS checkpoint: its file in DEFAULT_REPO, the LFS sha256 and size the hub lists for it."""

    version: str
    filename: str
    sha256: str
    size: int

    @property
    def key(self) -> str:  # "v2.1" -> "hpsv2_1"
        return "hps" + self.version.replace(".", "_")


# From the hub repository's commit 697403c ("Upload 2 files"), the LFS pointers of both files.
RELEASES = {
    "v2.0": Release("v2.0", "HPS_v2_compressed.pt",
                    "07cb0d20626232204ca3a6ec53ff5984e7e53212a8a7b0e0ec2bac1bdaf125a1", 1972484501),
    "v2.1": Release("v2.1", "HPS_v2.1_compressed.pt",
                    "c57a38fb4a2f7e7c15bf00da2ea377cdf165448b4dd1052a484c215a998c9837", 1972490005),
}
KEY_HPSV2_0, KEY_HPSV2_1 = RELEASES["v2.0"].key, RELEASES["v2.1"].key


def release(version: str, where: str = "metrics.hpsv2.version") -> Release:
    if version not in RELEASES:
        raise UserError(f"{where}: {version!r}; use one of {', '.join(RELEASES)} (different weights, different "
                        "metrics)")
    return RELEASES[version]


def metric_name(version: str, sha256: str) -> str:
    """`hpsv2_0` / `hpsv2_1` for the published file of that version; another file: `..._file_<sha256[:8]>`."""
    rel = release(version)
    return rel.key if sha256 == rel.sha256 else f"{rel.key}_file_{sha256[:8]}"


def example(version: str) -> str:
    return f'hpsv2 = {{ weights = "/path/to/{release(version).filename}", version = "{version}" }}'


def weights_file(source: str | None, version: str) -> str:
    """The checkpoint of `version`: a file, a folder holding its published file name, or a hub repository (default
    xswu/HPSv2) in the Hugging Face cache; else one line naming the download."""
    rel = release(version)
    return hub_file(source or DEFAULT_REPO, rel.filename, f"HPS {version}'s weights", example(version))


def checked_file(source: str | None, version: str) -> tuple[str, str]:
    """(the checkpoint of `version`, its sha256), refusing the other version's published file in one line (a grid
    checks this before any image)."""
    rel = release(version)
    path = weights_file(source, version)
    sha256 = file_sha256(path)
    other = [r for r in RELEASES.values() if r.sha256 == sha256 and r.version != version]
    if other:
        raise UserError(f"HPS weights {path} are the published {other[0].version} file, not {version}'s: "
                        f"set version = \"{other[0].version}\" or give {rel.filename}")
    return path, sha256


def resolve_dtype(dtype: str, device: str):
    """The autocast dtype, or None for plain float32."""
    import torch

    if dtype not in DTYPES:
        raise UserError(f"metrics.hpsv2.dtype: {dtype!r}; use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float16 if str(device).startswith("cuda") else None
    return None if dtype == "float32" else getattr(torch, dtype)


def hps_transform(image: np.ndarray, size: int, mean, std):
    """hpsv2's inference transform of one uint8 [H, W, 3] image -> [3, size, size] float32: longest side to `size`
    (bicubic tensor resize, Python's rounding of each side), centred on black, then mean/std. (hpsv2 also skips the
    padding when the longest side is already `size`, which only a square image survives; here it always pads.)"""
    import torch
    import torchvision.transforms.functional as TF

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)  # ToTensor: [3, H, W]
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        x = TF.resize(x, [round(h * scale), round(w * scale)], TF.InterpolationMode.BICUBIC, antialias=True)
    pad_h, pad_w = size - x.shape[1], size - x.shape[2]
    x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)  # left, top, right, bottom
    return TF.normalize(x, mean, std)


class HPSv2:
    """One HPS model (v2.0 or v2.1) loaded once; `scorer(images, prompts)` -> cos(image, text) per image."""

    def __init__(self, source: str | None = None, device: str = "cpu", dtype: str = "auto",
                 version: str = DEFAULT_VERSION, architecture: str = ARCHITECTURE):
        import torch

        rel = release(version)
        self.autocast = resolve_dtype(dtype, device)
        self.path, self.sha256 = checked_file(source, version)
        state = load_checkpoint(self.path, self.sha256, known=self.sha256 == rel.sha256, what="HPS")
        self.model, self.tokenizer, self.image_size, self.mean, self.std = _open_clip(architecture, state, self.path)
        self.model = self.model.to(device)
        self.source, self.version, self.architecture = source, version, architecture
        self.device, self.torch = device, torch
        self.dtype = "float32" if self.autocast is None else f"autocast_{str(self.autocast).removeprefix('torch.')}"

    @property
    def name(self) -> str:
        return metric_name(self.version, self.sha256)

    def pixels(self, images):
        """uint8 [H, W, 3] images -> [N, 3, S, S] float32 on the model's device."""
        return self.torch.stack([hps_transform(np.asarray(im), self.image_size, self.mean, self.std)
                                 for im in images]).to(self.device)

    def __call__(self, images, prompts: list[str], batch_size: int = 8) -> np.ndarray:
        """HPS for each (image uint8 [H, W, 3], prompt), in batches of batch_size."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        torch = self.torch
        device_type = torch.device(self.device).type
        out = []
        with torch.inference_mode(), torch.autocast(device_type, dtype=self.autocast or torch.float32,
                                                    enabled=self.autocast is not None):
            for start in range(0, len(prompts), batch_size):
                img = self.model.encode_image(self.pixels(images[start:start + batch_size]), normalize=True)
                txt = self.model.encode_text(self.tokenizer(list(prompts[start:start + batch_size])).to(self.device),
                                             normalize=True)
                out.append((img.double() * txt.double()).sum(-1).cpu().numpy())  # the diagonal of img @ txt.T
        return np.concatenate(out) if out else np.zeros(0)


def _open_clip(architecture: str, state: dict, path: str):
    """open_clip's `architecture` without pretrained weights, given the HPS state_dict strictly; with its tokenizer,
    input size and mean/std."""
    import contextlib
    import io
    import logging

    import open_clip

    if architecture not in open_clip.list_models():
        raise UserError(f"HPS architecture {architecture!r} is not an open_clip model (HPS v2 is {ARCHITECTURE})")
    with contextlib.redirect_stdout(io.StringIO()):
        logging.disable(logging.WARNING)  # "no pretrained weights loaded": the HPS weights come next
        try:
            model = open_clip.create_model(architecture, pretrained=None)
        finally:
            logging.disable(logging.NOTSET)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"HPS weights {path} do not fit open_clip's {architecture} ({first})") from None
    model.eval().requires_grad_(False)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return model, open_clip.get_tokenizer(architecture), int(size), tuple(mean), tuple(std)


__all__ = ["checked_file", "HPSv2", "Release", "RELEASES", "DEFAULT_REPO", "DEFAULT_VERSION", "ARCHITECTURE", "DTYPES",
           "KEY_HPSV2_0", "KEY_HPSV2_1", "release", "metric_name", "weights_file", "resolve_dtype", "hps_transform"]
