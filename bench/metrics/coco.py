"""The COCO zero-shot FID protocol (Imagen, Saharia et al. 2022, section 4.1 and appendix).

Captions are drawn at random, with a fixed seed, from the MS-COCO 2014 validation set, one caption per image
(30,000 for FID-30K; any N for smaller runs); one image is generated per caption; generated images are compared with
the validation images at 256x256 (`bench.metrics.features.COCO_PROTOCOL`, `crop256+torch-fidelity`: centre crop + PIL
bicubic to 256, then the extractor's own resize; `--protocol clean` puts clean-fid's resize after the 256 px step).

Pieces, each a function: `read_captions` (the official captions_val2014.json or a CSV), `sample_captions`
(the protocol's draw), `reference_stats` (from the image folder, cached by content hash, or a user's .npz),
`build_manifest` / `comparable` (what must agree for two numbers to be compared), and `CocoRun`, a run's
parameters. The run itself is a grid study (bench.coco_study): the `coco=<captions>:N` suite, one image per caption,
the FID metric at this protocol, with OUT/manifest.json and OUT/result.json beside the study's tables.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagen.errors import UserError
from imagen.fileio import atomic_write, sha256_file

FID_30K = 30_000  # the paper's number of samples
MIN_COMPARABLE_N = 10_000  # below this FID's small-sample bias dominates differences between models
PROTOCOL_NAME = "coco2014-val-zero-shot"
RESOLUTION = 256  # generated and reference images are compared at 256x256


@dataclass(frozen=True)
class Caption:
    caption_id: int
    image_id: int
    caption: str
    file_name: str


# ----------------------------------------------------------------------------- reading


def read_captions(path: Path | str) -> list[Caption]:
    """Captions from the official annotation file (captions_val2014.json: images[] + annotations[]) or a CSV with
    columns caption_id, image_id, caption, file_name (as ../shared/data/coco/val2014_captions_5k.csv)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"captions file {path} does not exist (give captions_val2014.json or a captions CSV)")
    if path.suffix.lower() == ".json":
        return _read_json(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    raise UserError(f"{path}: captions must be a .json (COCO annotations) or a .csv file")


def _read_json(path: Path) -> list[Caption]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {int(im["id"]): im["file_name"] for im in data["images"]}
        out = [Caption(int(a["id"]), int(a["image_id"]), str(a["caption"]).strip(), files[int(a["image_id"])])
               for a in data["annotations"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is not a COCO captions file (needs images[id, file_name] and "
                        f"annotations[id, image_id, caption]): {exc}") from exc
    if not out:
        raise UserError(f"{path} has no captions")
    return out


def _read_csv(path: Path) -> list[Caption]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    need = {"caption_id", "image_id", "caption", "file_name"}
    if not rows or not need <= set(rows[0]):
        raise UserError(f"{path} needs columns {', '.join(sorted(need))}")
    try:
        return [Caption(int(r["caption_id"]), int(r["image_id"]), r["caption"].strip(), r["file_name"]) for r in rows]
    except ValueError as exc:
        raise UserError(f"{path}: caption_id and image_id must be integers: {exc}") from exc


# ----------------------------------------------------------------------------- the protocol's draw


def sample_captions(captions: Sequence[Caption], n: int, seed: int) -> list[Caption]:
    """n captions, one per distinct image: images drawn without replacement, then one of each image's captions,
    all with numpy's PCG64 seeded by `seed`. Deterministic given (caption set, n, seed), whatever the file order."""
    by_image: dict[int, list[Caption]] = {}
    for c in sorted(captions, key=lambda c: c.caption_id):
        by_image.setdefault(c.image_id, []).append(c)
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if n > len(by_image):
        raise UserError(f"--n {n} is more than the {len(by_image)} images in the captions file (one caption per "
                        "image); lower --n or use the full captions_val2014.json")
    rng = np.random.default_rng(seed)
    image_ids = sorted(by_image)
    chosen = rng.choice(len(image_ids), size=n, replace=False)  # [n] image indices
    out = []
    for k in chosen:
        options = by_image[image_ids[int(k)]]
        out.append(options[int(rng.integers(len(options)))])
    return out


def small_n_warning(n: int) -> str | None:
    """The warning for an N whose FID is not comparable with published FID-30K figures (None when N >= 30,000)."""
    if n >= FID_30K:
        return None
    strength = "far too few" if n < MIN_COMPARABLE_N else "fewer than the paper's 30,000"
    return (f"N={n} is {strength} samples: FID is biased upward at small N, so this number is not comparable "
            f"with published FID-30K figures; compare it only with runs whose manifest has the same N, seed, "
            f"reference and extractor")


# ----------------------------------------------------------------------------- reference statistics


def reference_stats(images_dir: Path | str | None = None, stats_file: Path | str | None = None,
                    extractor="effnet-lite0", size: int = RESOLUTION, batch_size: int = 32, progress: bool = False,
                    kind: str = "torch-fidelity", verify: bool = False):
    """Reference FID statistics: every image in the COCO image folder under the protocol (`size` px crop step, then
    `kind`; cached by content hash), or a precomputed .npz (ours, or clean-fid / pytorch-fid mu+sigma). Exactly one
    of the two."""
    from bench.metrics import fid as F
    from bench.metrics.features import Protocol

    if (images_dir is None) == (stats_file is None):
        raise UserError("give the reference as either --images DIR (the COCO val2014 images) or "
                        "--reference-stats FILE.npz, not both")
    if stats_file is not None:
        name = extractor if isinstance(extractor, str) else extractor.name
        return F.load_stats(stats_file, name)
    return F.stats_from_folder(images_dir, extractor, Protocol(kind, size), batch_size, True, progress, verify)


# ----------------------------------------------------------------------------- manifest


# Keys that must be equal for two COCO FID numbers to be compared.
COMPARABLE_KEYS = ("protocol", "captions_sha256", "seed", "n", "caption_ids", "reference_stats", "extractor",
                   "extractor_weights", "metric", "fid_protocol")


def build_manifest(*, captions_file: Path | str, sampled: Sequence[Caption], seed: int, reference, extractor: str,
                   size: int, model: dict | None = None, sampler: dict | None = None, kind: str = "torch-fidelity",
                   extractor_weights: str | None = None) -> dict:
    """Everything needed to reproduce a number, and to refuse comparing two numbers that differ in any of it."""
    from bench.metrics.features import COCO_PROTOCOL, INCEPTION, Protocol, canonical_id
    from bench.metrics.fid import fid_metric_name

    n = len(sampled)
    protocol = Protocol(kind, size)
    return {
        "protocol": PROTOCOL_NAME,
        "captions_file": str(captions_file),
        "captions_sha256": sha256_file(captions_file),
        "seed": int(seed),
        "n": n,
        "caption_ids": [c.caption_id for c in sampled],
        "image_ids": [c.image_id for c in sampled],
        "reference_stats": reference.key if reference.source_hash else _stats_digest(reference),
        "reference_n": int(reference.n),
        "extractor": extractor,
        "extractor_weights": extractor_weights or getattr(reference, "weights", None),
        "reference_weights": getattr(reference, "weights", None),
        "metric": fid_metric_name(extractor, protocol),
        "fid_protocol": protocol.id,
        "reference_protocol": canonical_id(reference.protocol),
        # published FID-30K figures: Inception features, the 256 px step then the network's own resize, N >= 30k;
        # a reference statistics file that does not record its protocol cannot be shown to be at it
        "comparable_with_fid30k": (n >= FID_30K and extractor == INCEPTION and protocol == COCO_PROTOCOL
                                   and canonical_id(reference.protocol) == COCO_PROTOCOL.id),
        "versions": _versions(),
        "warning": small_n_warning(n),
        "model": model or {},
        "sampler": sampler or {},
    }


def _versions() -> dict:
    from bench.filehash import package_versions

    return package_versions()


def _stats_digest(stats) -> str:
    """A key for user-supplied statistics with no recorded source: a hash of the numbers themselves."""
    h = hashlib.sha256(np.ascontiguousarray(stats.mu).tobytes())
    h.update(np.ascontiguousarray(stats.sigma).tobytes())
    return h.hexdigest()


def comparable(a: dict, b: dict) -> list[str]:
    """The manifest keys on which two runs differ (empty: their FIDs may be compared)."""
    return [k for k in COMPARABLE_KEYS if a.get(k) != b.get(k)]


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (temp file + rename)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


# ----------------------------------------------------------------------------- a run's parameters


@dataclass(frozen=True)
class CocoRun:
    model: str
    captions: str
    out: str
    n: int = 30_000
    seed: int = 0
    images: str | None = None  # the COCO val2014 image folder (reference)
    reference_stats: str | None = None  # or a precomputed statistics .npz
    extractor: str = "effnet-lite0"
    size: int = RESOLUTION  # the protocol's crop step (256 px in the paper)
    protocol: str = "torch-fidelity"  # after it: the extractor's own resize, or clean-fid's ("clean")
    batch_size: int = 8
    device: str = "cpu"
    verify: bool = False  # re-hash every reference image
