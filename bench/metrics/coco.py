"""The COCO zero-shot FID protocol (Imagen, Saharia et al. 2022, section 4.1 and appendix).

Captions are drawn at random, with a fixed seed, from the MS-COCO 2014 validation set, one caption per image
(30,000 for FID-30K; any N for smaller runs); one image is generated per caption; generated images are compared with
the validation images at 256x256 (`bench.metrics.features.COCO_PROTOCOL`, `crop256+torch-fidelity`: centre crop + PIL
bicubic to 256, then the extractor's own resize; `--protocol clean` puts clean-fid's resize after the 256 px step).

Pieces, each a function: `read_captions` (the official captions_val2014.json or a CSV), `sample_captions`
(the protocol's draw), `reference_stats` (from the image folder, cached by content hash, or a user's .npz),
`build_manifest` / `comparable` (what must agree for two numbers to be compared), and `run_coco`, which generates
with `imagen.pipeline.Pipeline` into OUT/images (resumable), computes FID and writes OUT/manifest.json and
OUT/result.json.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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


# ----------------------------------------------------------------------------- end to end


def image_seed(seed: int, index: int) -> int:
    """The noise seed of the index-th image of a run: independent streams per (seed, index)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def image_name(index: int, caption: Caption) -> str:
    return f"{index:05d}-{caption.caption_id}.png"


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


GENERATION_FILE = "generation.json"


def generation_identity(checkpoint_hash: str, sampler, n_stages: int, seed: int, captions_sha256: str) -> dict:
    """What made a run's images, in one canonical form: per-stage guidance and SR augmentation spelled out, the
    threshold in its canonical spelling. A per-stage list of the wrong length is a UserError here, before any work."""
    from imagen.config import normalize_threshold

    aug = list(sampler.per_stage(sampler.aug_level, n_stages - 1, "--aug-level")) if n_stages > 1 else []
    return {
        "checkpoint_hash": checkpoint_hash,
        "sampler": {"sampler": sampler.sampler, "steps": int(sampler.steps),
                    "guidance": list(sampler.per_stage(sampler.guidance, n_stages, "--guidance")),
                    "threshold": normalize_threshold(sampler.threshold, "--threshold"), "aug_level": aug},
        "seed": int(seed), "captions_sha256": captions_sha256,
    }


def check_same_generation(out: Path, identity: dict, n_stages: int) -> None:
    """Keep a folder's images only if the same weights, sampler settings, seed and captions made them.

    OUT/generation.json records that identity (written here, before the first image). A folder with images but
    without it (made before this check existed) is matched against its manifest.json; with neither, it is refused.
    A folder with no image yet takes the new identity (a run stopped before its first image)."""
    from imagen.config import SamplerConfig, from_dict

    path = out / GENERATION_FILE
    images_dir = out / "images"
    has_images = images_dir.is_dir() and any(images_dir.glob("*.png"))
    before = None
    if has_images and path.is_file():
        try:
            before = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            before = None
        if not isinstance(before, dict):
            raise UserError(f"{path} is unreadable, so the images in {images_dir} cannot be matched to a model "
                            f"and sampler; use a new --out or delete both")
    elif has_images:
        manifest = out / "manifest.json"
        try:
            m = json.loads(manifest.read_text())
            before = generation_identity(m["model"]["checkpoint_hash"], from_dict(SamplerConfig, m["sampler"]),
                                         n_stages, m["seed"], m["captions_sha256"])
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, UserError):
            raise UserError(f"{images_dir} holds images but no record of what made them ({GENERATION_FILE} or "
                            f"manifest.json); use a new --out or delete that folder") from None
    if before is not None:
        differ = [k for k in identity if before.get(k) != identity[k]]
        if differ:
            raise UserError(f"{images_dir} holds images made with another {', '.join(differ)} "
                            f"({'; '.join(f'{k}: {before.get(k)} now {identity[k]}' for k in differ)}); "
                            f"use a new --out or delete that folder and {GENERATION_FILE}")
    if not path.is_file() or before is None:
        write_json(path, identity)


FLAGGED_FILE = "flagged.txt"  # names of images a safety checker blacked out, one per line


def _write_flag(out: Path, name: str) -> None:
    with open(out / FLAGGED_FILE, "a", encoding="utf-8") as fh:
        fh.write(name + "\n")


def _read_flags(out: Path) -> set[str]:
    f = out / FLAGGED_FILE
    return set(f.read_text(encoding="utf-8").split()) if f.is_file() else set()


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


def run_coco(run: CocoRun, sampler=None, progress: bool = True, log=None, *, flags: dict | None = None,
             generator=None) -> dict:
    """Sample captions, generate missing images into OUT/images, FID against the reference; write the manifest
    and the result. Returns the result dict ({"metric", "value", "n", "n_ref", ...}).

    `run.model` is any model spec string (bench.generators); `sampler` the settings to use, or None for the
    model's own with `flags` (the settings a user gave) put over them; a precomputed `images:` set has none."""
    from imagen.config import to_dict

    from bench.generators import Request, contract, load_generator
    from bench.metrics import fid as F
    from bench.metrics.features import LazyExtractor, Protocol
    from bench.ids import prompt_id

    out = Path(run.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    sampled = sample_captions(read_captions(run.captions), run.n, run.seed)
    warning = small_n_warning(run.n)
    if warning:
        warnings.warn(warning, stacklevel=2)
        if log:
            log(f"warning: {warning}")
    gen = contract(generator) if generator is not None else load_generator(run.model, run.device)
    if sampler is None and gen.sampler_defaults is not None:
        sampler = gen.sampler_defaults.given(**(flags or {}))
    elif sampler is None and any(v is not None for v in (flags or {}).values()):
        raise UserError(f"{run.model} is a precomputed image set: it takes no sampling flags")
    pids = [prompt_id("coco", c.caption) for c in sampled]
    n_stages = gen.n_stages or 1
    # before the (possibly slow) reference statistics: the images already there must be this run's
    if gen.kind == "imagen":  # (per-stage lists checked here first, so the error names the command's flags)
        identity = generation_identity(gen.checkpoint_hash, sampler, n_stages, run.seed, sha256_file(run.captions))
    gen.check([sampler], [Request(c.caption, image_seed(run.seed, i), pids[i], 0) for i, c in enumerate(sampled)])
    if gen.kind != "imagen":
        identity = {"checkpoint_hash": gen.checkpoint_hash, "sampler": gen.describe(sampler), "seed": int(run.seed),
                    "captions_sha256": sha256_file(run.captions)}
        identity = json.loads(json.dumps(identity, default=str))  # as it reads back from generation.json
    check_same_generation(out, identity, n_stages)
    extractor = LazyExtractor(run.extractor, run.device)
    protocol = Protocol(run.protocol, run.size)
    reference = reference_stats(run.images, run.reference_stats, extractor, run.size, progress=progress,
                                kind=run.protocol, verify=run.verify)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    paths = [images_dir / image_name(i, c) for i, c in enumerate(sampled)]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]  # resumable: finished images are kept

    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="generate", unit="img", disable=not progress)
        for start in range(0, len(todo), run.batch_size):
            chunk = todo[start:start + run.batch_size]
            made = gen.generate([Request(sampled[i].caption, image_seed(run.seed, i), pids[i], 0) for i in chunk],
                                sampler, batch_size=run.batch_size)  # uint8 [H, W, 3] each
            for i, im, bad in zip(chunk, made.images, made.flagged):
                if bad:  # first the flag: a kill between the two regenerates the image, and flags it again
                    _write_flag(out, paths[i].name)
                _write_png(paths[i], im)
            bar.update(len(chunk))
        bar.close()
    flagged = _read_flags(out)
    kept = [p for p in paths if p.name not in flagged]
    if flagged and log:
        log(f"warning: {len(paths) - len(kept)} of {len(paths)} images were blacked out by the model's safety "
            f"checker ({FLAGGED_FILE}); FID leaves them out")
    if len(kept) < 2:
        raise UserError(f"only {len(kept)} of {len(paths)} images are left after the safety checker's; FID needs 2 "
                        f"(turn the checker off with ?safety_checker=off if that is right for this study)")
    generated = F.stats_from_files(kept, extractor, protocol, progress=progress)
    result = F.fid(generated, reference)
    manifest = build_manifest(
        captions_file=run.captions, sampled=sampled, seed=run.seed, reference=reference, extractor=run.extractor,
        size=run.size, kind=run.protocol, extractor_weights=generated.weights,
        model={"model": gen.model_id, "checkpoint_hash": gen.checkpoint_hash, "kind": gen.kind},
        sampler=to_dict(sampler) if sampler is not None else {})
    manifest["generation"] = identity["sampler"]
    manifest["n_flagged"] = len(paths) - len(kept)
    write_json(out / "manifest.json", manifest)
    payload = {**result.to_json(), "n": result.n_a, "n_ref": result.n_b, "warning": warning,
               "manifest": "manifest.json", "run": asdict(run)}
    write_json(out / "result.json", payload)
    return payload
