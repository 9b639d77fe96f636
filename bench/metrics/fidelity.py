"""Distances between two image sets from one feature pass each: FID, KID and precision/recall on the FID
extractor's features (torch-fidelity's own functions), CMMD and FD on CLIP image embeddings.

- KID (Binkowski et al. 2018): torch-fidelity's `kid_features_to_metric` (polynomial kernel of degree 3, 100
  subsets). The subset size defaults to min(1000, the smaller set) and is recorded with the value, with the std
  over the subsets.
- Precision / recall (Kynkaanniemi et al. 2019): torch-fidelity's `prc_features_to_metric`, k = 3 neighbours; A is
  the generated set, B the reference.
- CMMD (Jayasumana et al. 2024, "Rethinking FID"): MMD^2 with a Gaussian RBF kernel, sigma = 10, on unit-norm CLIP
  image embeddings, the paper's estimator (every pair, the diagonal included), x 1000. Any open_clip model with
  weights; the name says which (`cmmd_vit_l_14_openai`, `cmmd_shapes_clip`).
- FD on CLIP features: the Frechet distance of the same embeddings (`fd_clip_vit_l_14_openai`).

Metric names carry the extractor and protocol (`kid_effnet_lite0_clean`, `precision_inception_torch_fidelity`)
or the CLIP model and weights, like FID's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imagen.errors import UserError
from imagen.fileio import save_npy

FEATURE_METRICS = ("fid", "kid", "prc")  # on the FID extractor's features
CLIP_METRICS = ("cmmd", "fd_clip")  # on CLIP image embeddings
CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0
KID_SUBSETS, KID_MAX_SUBSET = 100, 1000


@dataclass
class Values:
    """Metric name -> value, and per metric what else made it (subset size, std, n)."""

    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)

    def add(self, name: str, value: float, **details) -> None:
        self.metrics[name] = float(value)
        if details:
            self.details[name] = details


def kid(fa: np.ndarray, fb: np.ndarray, subset_size: int | None = None, subsets: int = KID_SUBSETS,
        seed: int = 2020) -> tuple[float, float, int]:
    """(KID, its std over subsets, the subset size) with torch-fidelity's polynomial-kernel MMD."""
    import torch
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = subset_size or min(KID_MAX_SUBSET, len(fa), len(fb))
    if size < 2 or size > min(len(fa), len(fb)):
        raise UserError(f"KID subset size {size} needs 2 <= size <= the smaller set ({min(len(fa), len(fb))} images)")
    out = kid_features_to_metric(torch.from_numpy(np.asarray(fa)), torch.from_numpy(np.asarray(fb)),
                                 kid_subsets=subsets, kid_subset_size=size, kid_kernel="poly",
                                 kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
                                 rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD], size


def prc(generated: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of the generated set against the real one, k-NN manifolds (torch-fidelity)."""
    import torch
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    if min(len(generated), len(real)) <= k:
        raise UserError(f"precision/recall needs more than {k} images in each set (k = {k} neighbours)")
    out = prc_features_to_metric(torch.from_numpy(np.asarray(generated, np.float32)),
                                 torch.from_numpy(np.asarray(real, np.float32)), prc_neighborhood=k,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


def cmmd(ea: np.ndarray, eb: np.ndarray, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD: scale * (mean k(a, a') + mean k(b, b') - 2 mean k(a, b)), k = exp(-||x - y||^2 / (2 sigma^2)), over
    every pair (the paper's estimator), on unit-norm embeddings [N, E] (float64)."""
    a, b = np.asarray(ea, np.float64), np.asarray(eb, np.float64)
    gamma = 1.0 / (2.0 * sigma * sigma)

    def mean_k(x, y):  # mean of exp(-gamma ||x_i - y_j||^2), from the Gram matrix
        d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T  # [Nx, Ny]
        return float(np.exp(-gamma * np.maximum(d2, 0.0)).mean())

    return scale * (mean_k(a, a) + mean_k(b, b) - 2.0 * mean_k(a, b))


def fd(fa: np.ndarray, fb: np.ndarray, label: str) -> float:
    """The Frechet distance of two feature sets [N, D] (the FID formula and code on any features; `label` names
    the features on both sides)."""
    from bench.metrics.fid import features_to_stats, frechet_distance

    return frechet_distance(features_to_stats(fa, label, label, ""), features_to_stats(fb, label, label, ""))


def feature_values(fa: np.ndarray, fb: np.ndarray, extractor: str, protocol, wanted: set[str],
                   kid_subset_size: int | None = None) -> Values:
    """FID / KID / precision-recall of generated features fa against reference features fb."""
    from bench.metrics.features import metric_key
    from bench.metrics.fid import fid_metric_name

    out = Values()
    suffix = f"{metric_key(extractor)}_{protocol.slug}"
    if "fid" in wanted:
        out.add(fid_metric_name(extractor, protocol), fd(fa, fb, extractor), n_a=len(fa), n_b=len(fb))
    if "kid" in wanted:
        value, std, size = kid(fa, fb, kid_subset_size)
        out.add(f"kid_{suffix}", value, std=std, subset_size=size, subsets=KID_SUBSETS, n_a=len(fa), n_b=len(fb))
    if "prc" in wanted:
        p, r = prc(fa, fb)
        out.add(f"precision_{suffix}", p, k=3, n_a=len(fa), n_b=len(fb))
        out.add(f"recall_{suffix}", r, k=3, n_a=len(fa), n_b=len(fb))
    return out


def clip_values(ea: np.ndarray, eb: np.ndarray, clip_metric: str, wanted: set[str]) -> Values:
    """CMMD / FD of CLIP embeddings; `clip_metric` is the CLIP score name of the model (clip_score_<model>...)."""
    tag = clip_metric[len("clip_score_"):]
    out = Values()
    if "cmmd" in wanted:
        out.add(f"cmmd_{tag}", cmmd(ea, eb), sigma=CMMD_SIGMA, scale=CMMD_SCALE, n_a=len(ea), n_b=len(eb))
    if "fd_clip" in wanted:
        out.add(f"fd_clip_{tag}", fd(ea, eb, "clip"), n_a=len(ea), n_b=len(eb))
    return out


def clip_embeddings(clip, images) -> np.ndarray:
    """Unit-norm CLIP image embeddings [N, E] (float64) of uint8 images."""
    from bench.metrics.clip_score import image_embeddings

    return image_embeddings(clip, list(images)).double().numpy()


def clip_embeddings_of_files(clip, paths, cache: bool = True, verify: bool = False, chunk: int = 256) -> np.ndarray:
    """CLIP embeddings [N, E] of image files, read a chunk at a time and cached under (the files' content hash, the
    CLIP model and its weights), so a reference set is embedded once."""
    import hashlib
    import json

    from bench.metrics.features import files_hash, load_image
    from bench.metrics.fid import cache_root

    key = hashlib.sha256(json.dumps([files_hash(paths, verify), clip.metric]).encode()).hexdigest()
    path = cache_root() / "clip-embeddings" / f"{key}.npy"
    if cache and path.is_file():
        try:
            return np.load(path, allow_pickle=False).astype(np.float64)
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed
    parts = [clip_embeddings(clip, [load_image(p) for p in paths[k:k + chunk]]) for k in range(0, len(paths), chunk)]
    emb = np.concatenate(parts)
    if cache:
        save_npy(path, emb.astype(np.float32))
    return emb


__all__ = ["Values", "kid", "prc", "cmmd", "fd", "feature_values", "clip_values", "clip_embeddings",
           "clip_embeddings_of_files",
           "FEATURE_METRICS", "CLIP_METRICS"]
