"""CLIP score through open_clip: 100 * max(cos(E_image, E_text), 0) per image, and its mean (Hessel et al. 2021;
the definition torchmetrics' CLIPScore uses).

Any open_clip model: an architecture name with a pretrained tag (`ViT-L-14` + `openai`, downloaded by open_clip or
read from its Hugging Face cache with HF_HUB_OFFLINE=1), an architecture with a weights file
(`--clip-pretrained /path/to/file.bin`), an `hf-hub:` / `local-dir:` name, or `shapes-clip`, the small CLIP the
project trains on the shapes world and ships as package data (works offline). Texts longer than the model's context
are truncated by open_clip's tokenizer (the end-of-text token is kept). The metric name carries the model and its
weights: `clip_score_vit_l_14_openai`, `clip_score_shapes_clip`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imagen.errors import UserError

SHAPES_CLIP = "shapes-clip"
KEY_CLIP_SCORE_SHAPES_CLIP = "clip_score_shapes_clip"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def weights_tag(pretrained: str | None) -> str | None:
    """What names a model's weights in its metric name: a pretrained tag as it is ('openai', 'laion2b_s32b_b82k'),
    a weights file as 'file_' + the first 8 hex digits of its sha256 (two files never share a name)."""
    if not pretrained:
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        from bench.filehash import HashMemo

        memo = HashMemo()
        digest = memo.sha256(path)
        memo.save()
        return f"file_{digest[:8]}"
    return _slug(pretrained)


def clip_score_metric_name(model: str, pretrained: str | None = None) -> str:
    """The metric name carries the model AND its weights: 'ViT-L-14' + 'openai' -> 'clip_score_vit_l_14_openai';
    'hf-hub:org/name' -> 'clip_score_name' (the repository is the weights); the shipped 'shapes-clip' ->
    'clip_score_shapes_clip' (another shapes-clip weights file: '..._file_<sha8>')."""
    name = model.split(":", 1)[1] if model.startswith(("hf-hub:", "local-dir:")) else model
    name = Path(name.rstrip("/")).name or name
    tag = None if model.startswith(("hf-hub:", "local-dir:")) else weights_tag(pretrained)
    if model == SHAPES_CLIP and pretrained is not None and Path(pretrained).resolve() == _shipped_shapes_clip():
        tag = None
    return "clip_score_" + _slug(name) + (f"_{tag}" if tag else "")


def _shipped_shapes_clip() -> Path:
    from bench.metrics.clip_train import WEIGHTS_FILE, shipped_dir

    return (shipped_dir() / WEIGHTS_FILE).resolve()


def needs_weights(model: str, pretrained: str | None) -> str | None:
    """Why a CLIP model cannot score as given (a bare architecture is a randomly initialised network), or None."""
    if model == SHAPES_CLIP or model.startswith(("hf-hub:", "local-dir:")) or pretrained:
        return None
    import open_clip

    if model not in open_clip.list_models():
        return None  # an unknown architecture: load_clip says so
    tags = open_clip.list_pretrained_tags_by_model(model)
    shown = ", ".join(tags[:6]) + (" ..." if len(tags) > 6 else "")
    return (f"CLIP model {model!r} has no weights: it would score with a randomly initialised network; give "
            f"pretrained weights: a tag ({shown or 'see open_clip.list_pretrained()'}; offline, from the Hugging Face "
            f"cache with HF_HUB_OFFLINE=1), a weights file, or an hf-hub:ORG/NAME model")


@dataclass(frozen=True)
class ClipModel:
    """A loaded open_clip model with its eval preprocess and tokenizer."""

    name: str  # what the user asked for: "shapes-clip", "ViT-L-14", "hf-hub:..."
    pretrained: str | None  # the weights: a tag, a file, or None (shapes-clip's shipped weights, an hf-hub model)
    model: torch.nn.Module
    preprocess: object  # PIL.Image -> [3, S, S]
    tokenizer: object  # list[str] -> [B, context_length] int64 (truncating)
    device: torch.device

    @property
    def metric(self) -> str:
        return clip_score_metric_name(self.name, self.pretrained)


def load_clip(model: str = SHAPES_CLIP, pretrained: str | None = None, device: str | torch.device = "cpu") -> ClipModel:
    """Load any open_clip model; a missing architecture or weights is a UserError saying what to do."""
    import open_clip

    name, asked = model, pretrained
    why = needs_weights(model, pretrained)
    if why:
        raise UserError(why + " (--clip-pretrained on the command line, pretrained = ... in a grid spec)")
    if model == SHAPES_CLIP:
        from bench.metrics.clip_train import CONFIG_FILE, WEIGHTS_FILE, register_shapes_clip, shipped_dir

        beside = Path(pretrained).parent if pretrained else None  # a train-clip output folder has its config
        register_shapes_clip(beside if beside and (beside / CONFIG_FILE).is_file() else None)
        pretrained = pretrained or str(shipped_dir() / WEIGHTS_FILE)
        if not Path(pretrained).is_file():
            raise UserError(f"shapes-clip weights {pretrained} are missing; run `imagen-bench train-clip` to make "
                            "them or reinstall the package")
    elif not model.startswith(("hf-hub:", "local-dir:")) and model not in open_clip.list_models():
        raise UserError(f"unknown open_clip architecture {model!r}; e.g. ViT-B-32, ViT-L-14, {SHAPES_CLIP}, "
                        "hf-hub:ORG/NAME or local-dir:/path (open_clip.list_models() lists them all)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            logging.disable(logging.WARNING)
            try:
                net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained,
                                                                           device=device)
            finally:
                logging.disable(logging.NOTSET)
        tokenizer = open_clip.get_tokenizer(model)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - download failures, missing files, bad checkpoints
        hint = open_clip.list_pretrained_tags_by_model(model) if model in open_clip.list_models() else []
        raise UserError(
            f"cannot load open_clip model {model!r} with weights {pretrained!r}: {type(exc).__name__}: {exc}. "
            f"Offline, give --clip-pretrained /path/to/weights.bin (or .safetensors), or set HF_HUB_OFFLINE=1 with "
            f"the weights in the Hugging Face cache; known tags for this model: {', '.join(hint) or 'none'}"
        ) from exc
    net.eval().requires_grad_(False)
    return ClipModel(name, asked, net, preprocess, tokenizer, torch.device(device))


# ----------------------------------------------------------------------------- embeddings and score


@torch.no_grad()
def image_embeddings(clip: ClipModel, images: Sequence[np.ndarray], batch_size: int = 64) -> torch.Tensor:
    """uint8 [H,W,3] images -> unit-norm embeddings [N, E] (float32, on the CPU)."""
    from PIL import Image

    out = []
    for k in range(0, len(images), batch_size):
        x = torch.stack([clip.preprocess(Image.fromarray(np.asarray(im, dtype=np.uint8)))
                         for im in images[k:k + batch_size]])  # [B,3,S,S]
        out.append(F.normalize(clip.model.encode_image(x.to(clip.device)).float(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def text_embeddings(clip: ClipModel, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Texts -> unit-norm embeddings [N, E]; the tokenizer truncates to the model's context length."""
    out = []
    for k in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(list(texts[k:k + batch_size]))  # [B, L]
        out.append(F.normalize(clip.model.encode_text(tokens.to(clip.device)).float(), dim=-1).cpu())
    return torch.cat(out)


def scores_from_embeddings(img: torch.Tensor, txt: torch.Tensor) -> np.ndarray:
    """Per-pair CLIP score 100 * max(cos, 0) for row-aligned [N, E] embeddings -> [N]."""
    cos = F.cosine_similarity(img.double(), txt.double(), dim=-1)  # [N]
    return (100.0 * cos.clamp(min=0)).numpy()


def clip_scores(clip: ClipModel, images: Sequence[np.ndarray], captions: Sequence[str],
                batch_size: int = 64) -> np.ndarray:
    """Per-image CLIP scores [N] of images against their own captions (same order, same length)."""
    if len(images) != len(captions):
        raise UserError(f"CLIP score needs one caption per image: got {len(images)} images and "
                        f"{len(captions)} captions")
    if not images:
        raise UserError("CLIP score needs at least one image")
    return scores_from_embeddings(image_embeddings(clip, images, batch_size), text_embeddings(clip, captions))


@dataclass(frozen=True)
class ClipScoreResult:
    metric: str
    value: float  # mean over images
    n: int
    per_image: tuple[float, ...]

    def to_json(self) -> dict:
        return {"metric": self.metric, "value": self.value, "n": self.n}


def clip_score(clip: ClipModel, images: Sequence[np.ndarray], captions: Sequence[str],
               batch_size: int = 64) -> ClipScoreResult:
    """The mean CLIP score and the per-image values, named by the model."""
    per = clip_scores(clip, images, captions, batch_size)
    return ClipScoreResult(clip.metric, float(per.mean()), len(per), tuple(float(v) for v in per))


# ----------------------------------------------------------------------------- inputs


def read_captions_csv(path: Path | str) -> list[tuple[str, str]]:
    """A CSV with columns file, caption -> [(file, caption)] in file order."""
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise UserError(f"cannot read captions file {path}: {exc}") from exc
    if not rows or not {"file", "caption"} <= set(rows[0]):
        raise UserError(f"{path} needs a header with columns file,caption (one row per image)")
    return [(r["file"], r["caption"]) for r in rows]


def pairs_from_folder(images_dir: Path | str, captions_csv: Path | str) -> tuple[list[Path], list[str]]:
    """(image paths, captions) from a folder and a file,caption CSV; a listed file that is missing is an error."""
    from bench.metrics.features import IMAGE_EXTENSIONS

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(f"--images {images_dir} is not a folder")
    pairs = read_captions_csv(captions_csv)
    paths = [images_dir / f for f, _ in pairs]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{len(missing)} caption(s) in {captions_csv} have no image in {images_dir}: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    files = [f for f, _ in pairs]
    repeated = sorted({f for f in files if files.count(f) > 1})
    if repeated:
        raise UserError(f"{captions_csv} lists {len(repeated)} image(s) twice: {', '.join(repeated[:5])}; give one "
                        f"caption per image")
    listed = {Path(f).name for f in files}
    extra = sorted(p.name for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and p.name not in listed)
    if extra:
        raise UserError(f"{len(extra)} image(s) in {images_dir} have no caption in {captions_csv}: "
                        f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}; add their rows, or move them out")
    return paths, [c for _, c in pairs]


def pairs_from_study(study: Path | str, cell: str | None = None) -> tuple[list[Path], list[str]]:
    """(image paths, prompts) of a study's samples (optionally one cell)."""
    from bench.store import (COL_CELL_ID, COL_FLAGGED, COL_IMAGE_PATH, COL_PROMPT, COL_SAMPLE_ID, SAMPLES, is_study,
                             read_table)

    if not is_study(study):
        raise UserError(f"{study} is not a study directory (no tables/samples); give --images and --captions")
    df = read_table(study, SAMPLES, key=COL_SAMPLE_ID)
    if COL_FLAGGED in df:  # blacked out by a safety checker: never scored
        df = df[~df[COL_FLAGGED].fillna(False).astype(bool).to_numpy()]
    if cell is not None:
        df = df[df[COL_CELL_ID] == cell]
    if not len(df):
        raise UserError(f"no samples in {study}" + (f" for cell {cell!r}" if cell else ""))
    return [Path(study) / p for p in df[COL_IMAGE_PATH]], list(df[COL_PROMPT])
