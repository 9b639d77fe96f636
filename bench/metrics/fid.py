"""FID as a chain of pure functions: images -> features -> statistics (cached by content hash) -> distance.

Features come from torch-fidelity's extractors and the statistics from its `fid_features_to_statistics`; the
distance uses a numerically stable trace term (`trace_sqrt_product`; `trace_sqrt_low_rank` when a set has fewer
images than feature dimensions, exact and ~1000x faster), so a number here equals
`torch_fidelity.calculate_metrics(..., fid=True, feature_extractor=...)` on the same images to within that
library's own rounding noise (~1e-4 when N < D), and FID(A, A) is 0 to ~1e-11. One function per input mode: arrays, files, a folder, a study, a saved
statistics file; `resolve_stats` picks one for the CLI from what a path is.

The metric name carries the extractor and the preprocessing protocol (`fid_inception_clean`,
`fid_effnet_lite0_crop256_torch_fidelity`; see bench.metrics.features): numbers from different extractors or
protocols are never put in one column, and `frechet_distance` refuses to mix them. Features and statistics are
cached under a key of the image set's content hash (each file's sha256 remembered by path, size and mtime), the
extractor, its weights' sha256 and the protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.metrics.features import (
    DEFAULT_EXTRACTOR,
    DEFAULT_PROTOCOL,
    canonical_id,
    Extractor,
    LazyExtractor,
    Protocol,
    apply_protocol,
    arrays_hash,
    as_extractor,
    extract_features,
    extractor_spec,
    files_hash,
    list_images,
    load_image,
    metric_key,
    parse_protocol,
    weights_sha256,
)
from imagen.errors import UserError
from imagen.fileio import atomic_write, save_npy

STATS_SUFFIX = ".npz"
ExtractorLike = str | Extractor | LazyExtractor  # a name, a loaded extractor, or one loaded on a cache miss


def fid_metric_name(extractor: str, protocol: Protocol | str = DEFAULT_PROTOCOL) -> str:
    """The metric/column name: 'fid_effnet_lite0_clean', 'fid_inception_crop256_torch_fidelity',
    'fd_dinov2_vit_l_14_clean' (a Frechet distance on DINOv2 features is FD-DINOv2, not FID)."""
    proto = protocol if isinstance(protocol, Protocol) else parse_protocol(protocol)
    return f"{extractor_spec(extractor).distance}_{metric_key(extractor)}_{proto.slug}"


KEY_FID_INCEPTION = "fid_inception_clean"
KEY_FID_EFFNET_LITE0 = "fid_effnet_lite0_clean"


def cache_root() -> Path:
    """$IMAGEN_BENCH_CACHE or ~/.cache/imagen-bench (read each call: tests point it at a temp dir)."""
    return Path(os.environ.get("IMAGEN_BENCH_CACHE") or Path.home() / ".cache" / "imagen-bench")


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class FidStats:
    """Gaussian statistics of one image set's features, and what made them."""

    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D] float64
    n: int
    extractor: str  # "inception" | "effnet-lite0"
    protocol: str  # Protocol.id, or "unknown" for a user-supplied file
    source_hash: str  # content hash of the image set ("" when unknown)
    factor: np.ndarray | None = None  # [N, D] centred features / sqrt(N-1), kept when N <= D: sigma = F^T F
    weights: str | None = None  # sha256 of the extractor's weights ("" / None when unknown)

    @property
    def low_rank(self) -> bool:
        return self.factor is not None

    @property
    def key(self) -> str:
        """The cache key: the image set, the extractor (layer and weights) and the preprocessing."""
        return stats_key(self.source_hash, self.extractor, self.protocol, self.weights)


def stats_key(source_hash: str, extractor: str, protocol: str, weights: str | None = None) -> str:
    spec = extractor_spec(extractor)
    text = json.dumps([source_hash, spec.fidelity_name, spec.layer, protocol] + ([weights] if weights else []))
    return hashlib.sha256(text.encode()).hexdigest()


def features_to_stats(features: np.ndarray, extractor: str, protocol: str, source_hash: str,
                      weights: str | None = None) -> FidStats:
    """features [N, D] -> (mu [D], sigma [D, D]) with torch-fidelity's function (np.cov, ddof=1)."""
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics

    if features.shape[0] < 2:
        raise UserError(f"FID needs at least 2 images per set, got {features.shape[0]}")
    features = np.asarray(features, dtype=np.float64)  # [N, D]
    st = fid_features_to_statistics(torch.from_numpy(features))
    n, d = features.shape
    factor = (features - st["mu"]) / np.sqrt(n - 1) if n <= d else None  # [N, D]
    return FidStats(st["mu"], st["sigma"], n, extractor, protocol, source_hash, factor, weights)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a PSD matrix [D, D] (eigh; rounding-negative eigenvalues clamped to 0)."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """Tr((S_a S_b)^1/2) as the nuclear norm of S_b^1/2 S_a^1/2 (the same number: the eigenvalues of
    S_a^1/2 S_b S_a^1/2 are the squared singular values of S_b^1/2 S_a^1/2).

    torch-fidelity's sqrt(eigvals(S_a S_b)) takes square roots of rounding noise on the null space when
    N < D (always true for small runs), an error of ~1e-4 here; singular values have no such amplification,
    so FID(A, A) comes out 0 to ~1e-11."""
    return float(np.linalg.svd(_psd_sqrt(sigma_b) @ _psd_sqrt(sigma_a), compute_uv=False).sum())


def trace_sqrt_low_rank(factor_a: np.ndarray, factor_b: np.ndarray) -> float:
    """Tr((S_a S_b)^1/2) for S = F^T F with F [N, D], N <= D: the nonzero eigenvalues of F_a^T F_a F_b^T F_b are
    the squared singular values of F_a F_b^T [N_a, N_b], so the trace is that small matrix's nuclear norm."""
    return float(np.linalg.svd(factor_a @ factor_b.T, compute_uv=False).sum())


def frechet_distance(a: FidStats, b: FidStats) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^1/2) (Heusel et al. 2017), in float64."""
    if a.extractor != b.extractor:
        raise UserError(f"cannot compare FID statistics from different extractors ({a.extractor} vs {b.extractor}); "
                        "recompute one side with --extractor " + a.extractor)
    if a.weights and b.weights and a.weights != b.weights:
        raise UserError(f"cannot compare FID statistics made with different {a.extractor} weights (sha256 "
                        f"{a.weights[:12]} vs {b.weights[:12]}); recompute one side with the same weights file")
    if "unknown" not in (a.protocol, b.protocol) and canonical_id(a.protocol) != canonical_id(b.protocol):
        raise UserError(f"cannot compare FID statistics made under different protocols ({a.protocol} vs "
                        f"{b.protocol}); recompute one side with --protocol {a.protocol}")
    if a.mu.shape != b.mu.shape:
        raise UserError(f"FID statistics have different widths ({a.mu.shape[0]} vs {b.mu.shape[0]})")
    diff = a.mu.astype(np.float64) - b.mu.astype(np.float64)  # [D]
    sa, sb = a.sigma.astype(np.float64), b.sigma.astype(np.float64)  # [D, D]
    if a.low_rank and b.low_rank:  # fewer images than feature dimensions: exact and fast ([N_a, N_b] SVD)
        tr = trace_sqrt_low_rank(a.factor, b.factor)
    else:  # the general case: two [D, D] square roots and an SVD
        tr = trace_sqrt_product(sa, sb)
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * tr)


def save_stats(stats: FidStats, path: Path | str) -> Path:
    """Write statistics as .npz (mu, sigma + metadata), atomically."""
    path = Path(path)
    extra = {} if stats.factor is None else {"factor": stats.factor}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n), extractor=np.str_(stats.extractor),
                     protocol=np.str_(stats.protocol), source_hash=np.str_(stats.source_hash),
                     weights=np.str_(stats.weights or ""), **extra)

    atomic_write(path, write)
    return path


def load_stats(path: Path | str, extractor: str | None = None) -> FidStats:
    """Read a statistics .npz: ours, or a clean-fid / pytorch-fid file with only `mu` and `sigma` (then the
    extractor is taken to be `extractor`, default inception: those files hold Inception statistics)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read FID statistics {path}: {exc}") from exc
    if "mu" not in data or "sigma" not in data:
        raise UserError(f"{path} is not a FID statistics file: it needs arrays 'mu' and 'sigma', has {sorted(data)}")
    stored = str(data["extractor"]) if "extractor" in data else None
    if stored and extractor and stored != extractor:
        raise UserError(f"{path} holds {stored} statistics, not {extractor}; use --extractor {stored}")
    name = stored or extractor or "inception"
    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]) or mu.shape[0] != extractor_spec(name).dim:
        raise UserError(f"{path}: mu {mu.shape} / sigma {sigma.shape} do not fit the {name} extractor "
                        f"({extractor_spec(name).dim}-d features)")
    n = int(data["n"]) if "n" in data else 0
    protocol = str(data["protocol"]) if "protocol" in data else "unknown"
    source = str(data["source_hash"]) if "source_hash" in data else ""
    factor = data["factor"].astype(np.float64) if "factor" in data else None
    weights = str(data["weights"]) or None if "weights" in data else None
    return FidStats(mu, sigma, n, name, protocol, source, factor, weights)


def _weights(extractor: ExtractorLike) -> str | None:
    if isinstance(extractor, str):
        return weights_sha256(extractor)
    return extractor.weights


def _cache_path(kind: str, source_hash: str, name: str, protocol: Protocol, weights: str | None, suffix: str) -> Path:
    return cache_root() / kind / f"{stats_key(source_hash, name, protocol.id, weights)}{suffix}"


def cached_features(source_hash: str, extractor: ExtractorLike, protocol: Protocol, compute,
                    cache: bool = True) -> tuple[np.ndarray, str | None]:
    """(features [N, D] float64, the weights' sha256) of an image set: from the cache under (content hash,
    extractor, weights, protocol), or `compute(loaded extractor)` and stored. Weights not on the machine yet (an
    Inception to download) cannot hit the cache: the features are stored under the real key once loaded."""
    name = extractor if isinstance(extractor, str) else extractor.name
    weights = _weights(extractor)
    path = _cache_path("features", source_hash, name, protocol, weights, ".npy")
    if cache and weights and path.is_file():
        try:
            return np.load(path, allow_pickle=False).astype(np.float64), weights
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed
    ext = as_extractor(extractor)
    feats = compute(ext)  # features are float32 values: stored as float32 without loss
    if cache and ext.weights:
        path = _cache_path("features", source_hash, name, protocol, ext.weights, ".npy")
        save_npy(path, feats.astype(np.float32))
    return feats, ext.weights


def _cached(source_hash: str, extractor: ExtractorLike, protocol: Protocol, compute, cache: bool) -> FidStats:
    """Statistics from the cache under their key; on a miss from the (cached) features, and stored."""
    name = extractor if isinstance(extractor, str) else extractor.name
    weights = _weights(extractor)
    path = _cache_path("fid-stats", source_hash, name, protocol, weights, STATS_SUFFIX)
    if cache and weights and path.is_file():
        return load_stats(path, name)
    feats, weights = cached_features(source_hash, extractor, protocol, compute, cache)
    stats = features_to_stats(feats, name, protocol.id, source_hash, weights)
    if cache and weights:
        save_stats(stats, _cache_path("fid-stats", source_hash, name, protocol, weights, STATS_SUFFIX))
    return stats


def _feed(images, protocol: Protocol, ext: Extractor):
    return (apply_protocol(im, protocol, ext.spec.input_size) for im in images)


# ----------------------------------------------------------------------------- one function per input mode


def stats_from_images(images: Sequence[np.ndarray], extractor: ExtractorLike = DEFAULT_EXTRACTOR,
                      protocol: Protocol = DEFAULT_PROTOCOL, batch_size: int = 32, cache: bool = True,
                      progress: bool = False) -> FidStats:
    """uint8 [H,W,3] arrays (e.g. Pipeline.generate output) -> statistics; no file or JPEG round trip."""
    images = list(images)
    if len(images) < 2:
        raise UserError(f"FID needs at least 2 images, got {len(images)}")

    def compute(ext: Extractor) -> np.ndarray:
        return extract_features(_feed(images, protocol, ext), ext, batch_size, total=len(images), progress=progress)

    return _cached(arrays_hash(images), extractor, protocol, compute, cache)


def stats_from_files(paths: Sequence[Path | str], extractor: ExtractorLike = DEFAULT_EXTRACTOR,
                     protocol: Protocol = DEFAULT_PROTOCOL, batch_size: int = 32, cache: bool = True,
                     progress: bool = False, verify: bool = False) -> FidStats:
    """Image files -> statistics, cached by a hash of the files' contents (`verify`: re-hash every file)."""
    paths = _existing(paths)
    if len(paths) < 2:
        raise UserError(f"FID needs at least 2 images, got {len(paths)}")
    compute = _files_compute(paths, protocol, batch_size, progress)
    return _cached(files_hash(paths, verify), extractor, protocol, compute, cache)


def _existing(paths: Sequence[Path | str]) -> list[Path]:
    paths = [Path(p) for p in paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"image file {missing[0]} does not exist ({len(missing)} missing)")
    return paths


def _files_compute(paths: list[Path], protocol: Protocol, batch_size: int, progress: bool):
    """The features of image files, read one at a time through the protocol (for the caches to call on a miss)."""
    def compute(ext: Extractor) -> np.ndarray:
        feed = _feed((load_image(p) for p in paths), protocol, ext)
        return extract_features(feed, ext, batch_size, total=len(paths), progress=progress)

    return compute


def features_from_files(paths: Sequence[Path | str], extractor: ExtractorLike = DEFAULT_EXTRACTOR,
                        protocol: Protocol = DEFAULT_PROTOCOL, batch_size: int = 32, cache: bool = True,
                        progress: bool = False, verify: bool = False) -> tuple[np.ndarray, str | None]:
    """Image files -> (features [N, D], the extractor weights' sha256), cached like the statistics (KID and
    precision/recall need the features themselves)."""
    paths = _existing(paths)
    compute = _files_compute(paths, protocol, batch_size, progress)
    return cached_features(files_hash(paths, verify), extractor, protocol, compute, cache)


def features_from_images(images: Sequence[np.ndarray], extractor: ExtractorLike = DEFAULT_EXTRACTOR,
                         protocol: Protocol = DEFAULT_PROTOCOL, batch_size: int = 32,
                         cache: bool = True) -> np.ndarray:
    """uint8 [H,W,3] arrays -> features [N, D], cached by the arrays' content (a cell's FID computed them)."""
    images = list(images)

    def compute(ext: Extractor) -> np.ndarray:
        return extract_features(_feed(images, protocol, ext), ext, batch_size, total=len(images))

    return cached_features(arrays_hash(images), extractor, protocol, compute, cache)[0]


def image_paths(source: Path | str, cell: str | None = None) -> list[Path]:
    """A folder of images or a study directory (optionally one cell) -> its image files."""
    from bench.store import is_study

    path = Path(source)
    if path.is_dir() and is_study(path):
        return study_image_paths(path, cell)
    if path.is_dir():
        return list_images(path)
    raise UserError(f"{source}: expected a folder of images or a study directory (a statistics file holds only "
                    f"mu and sigma: give it to `imagen-bench fid`)")


def stats_from_folder(folder: Path | str, extractor: ExtractorLike = DEFAULT_EXTRACTOR,
                      protocol: Protocol = DEFAULT_PROTOCOL, batch_size: int = 32, cache: bool = True,
                      progress: bool = False, verify: bool = False) -> FidStats:
    """The images directly inside a folder -> statistics."""
    return stats_from_files(list_images(folder), extractor, protocol, batch_size, cache, progress, verify)


def study_image_paths(study: Path | str, cell: str | None = None) -> list[Path]:
    """The image files a study's samples table lists (optionally one cell's), as absolute paths."""
    from bench.store import COL_CELL_ID, COL_FLAGGED, COL_IMAGE_PATH, COL_SAMPLE_ID, SAMPLES, read_table

    df = read_table(study, SAMPLES, key=COL_SAMPLE_ID)
    if not len(df):
        raise UserError(f"study {study} has no samples yet; run the grid first")
    if COL_FLAGGED in df:  # blacked out by a safety checker: never fed into a metric
        df = df[~df[COL_FLAGGED].fillna(False).astype(bool).to_numpy()]
    if cell is not None:
        cells = sorted(df[COL_CELL_ID].unique())
        df = df[df[COL_CELL_ID] == cell]
        if not len(df):
            raise UserError(f"study {study} has no cell {cell!r}; cells: {', '.join(cells[:20])}")
    return [Path(study) / p for p in df[COL_IMAGE_PATH]]


def stats_from_study(study: Path | str, cell: str | None = None, extractor: ExtractorLike = DEFAULT_EXTRACTOR,
                     protocol: Protocol = DEFAULT_PROTOCOL, batch_size: int = 32, cache: bool = True,
                     progress: bool = False) -> FidStats:
    """A study's generated images (one cell or all) -> statistics."""
    return stats_from_files(study_image_paths(study, cell), extractor, protocol, batch_size, cache, progress)


def resolve_stats(source: Path | str, extractor: ExtractorLike = DEFAULT_EXTRACTOR,
                  protocol: Protocol = DEFAULT_PROTOCOL, cell: str | None = None, batch_size: int = 32,
                  cache: bool = True, progress: bool = False, verify: bool = False) -> FidStats:
    """A CLI argument -> statistics: a .npz statistics file, a study directory, or a folder of images."""
    from bench.store import is_study

    path = Path(source)
    name = extractor if isinstance(extractor, str) else extractor.name
    if path.is_file() and path.suffix == STATS_SUFFIX:
        return load_stats(path, name)
    if path.is_dir() and is_study(path):
        return stats_from_study(path, cell, extractor, protocol, batch_size, cache, progress)
    if path.is_dir():
        return stats_from_folder(path, extractor, protocol, batch_size, cache, progress, verify)
    raise UserError(f"{source}: expected a folder of images, a study directory or a statistics .npz file")


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FidResult:
    metric: str  # fid_<extractor>_<protocol>
    value: float
    n_a: int
    n_b: int

    def to_json(self) -> dict:
        return {"metric": self.metric, "value": self.value, "n_a": self.n_a, "n_b": self.n_b}


def fid(a: FidStats, b: FidStats, protocol: Protocol | None = None) -> FidResult:
    """The FID between two statistics, named by its extractor and protocol (a side whose protocol is unknown, a
    user's statistics file, is taken to be the other side's; both unknown: `protocol`, the one the user named)."""
    proto = a.protocol if a.protocol != "unknown" else b.protocol
    proto = proto if proto != "unknown" else (protocol or DEFAULT_PROTOCOL).id
    return FidResult(fid_metric_name(a.extractor, proto), frechet_distance(a, b), a.n, b.n)


def fid_images(images: Sequence[np.ndarray], reference: FidStats, batch_size: int = 32, cache: bool = True,
               progress: bool = False, extractor: Extractor | None = None,
               protocol: Protocol | None = None) -> float:
    """The grid's per-cell call: generated uint8 images vs reference statistics, under the reference's protocol
    (`protocol` when the reference has none recorded; a recorded one that differs is refused)."""
    if reference.protocol != "unknown":
        recorded = parse_protocol(reference.protocol)
        if protocol is not None and recorded != protocol:
            raise UserError(f"the FID reference statistics were made under protocol {recorded.id}, not "
                            f"{protocol.id}; recompute them under {protocol.id} or ask for {recorded.id}")
        protocol = recorded
    stats = stats_from_images(images, extractor or reference.extractor, protocol or DEFAULT_PROTOCOL, batch_size,
                              cache, progress)
    return frechet_distance(stats, reference)
