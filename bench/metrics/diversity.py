"""Diversity within a prompt: how different the images of one prompt (its seeds) are from one another, on a named
embedding. Distilled and preference-tuned models often give nearly the same picture for every seed; these numbers
show it where FID (one distribution against another) barely moves.

Per prompt, on L2-normalised embeddings of its images:
- the mean pairwise cosine distance, 1 - cos(a, b) over every pair of its images (0: every image the same);
- the Vendi score (Friedman & Dieng 2023, the `vendi-score` package's `score_X`, q = 1, cosine kernel): the
  exponential of the entropy of the eigenvalues of K / n, an "effective number of distinct images" between 1 (all
  the same) and n (all orthogonal).
A cell's value is the mean over its prompts, with a bootstrap interval over prompts. Names carry the embedding:
`diversity_dinov2_vit_l_14`, `vendi_dinov2_vit_l_14`, `vendi_vit_l_14_openai` (a CLIP model and its weights).
"""

from __future__ import annotations

import numpy as np

EMBEDDINGS = ("dinov2-vit-l-14", "inception", "effnet-lite0", "clip")  # feature extractors, or the CLIP of the table


def _normalised(emb) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def mean_pairwise_distance(emb) -> float:
    """The mean of 1 - cos(a, b) over every unordered pair of rows (at least 2)."""
    x = _normalised(emb)
    n = len(x)
    if n < 2:
        raise ValueError("diversity needs at least 2 images of a prompt")
    cos = x @ x.T
    return float((n * n - cos.sum()) / (n * (n - 1)))  # the diagonal's 1s contribute 0 distance


def vendi(emb) -> float:
    """The Vendi score (q = 1) of the rows with the cosine-similarity kernel, by the vendi-score package."""
    import warnings

    from vendi_score import vendi as V

    with warnings.catch_warnings():  # vendi-score 0.0.3 reads scipy.sparse.csr, deprecated by SciPy
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(V.score_X(np.asarray(emb, dtype=np.float64), q=1, normalize=True))


def per_prompt(emb, prompt_ids) -> dict:
    """{prompt id: (mean pairwise distance, Vendi score)} for every prompt with at least 2 images."""
    ids = np.asarray(prompt_ids, dtype=object)
    out = {}
    for pid in dict.fromkeys(ids):
        rows = np.flatnonzero(ids == pid)
        if len(rows) >= 2:
            sub = np.asarray(emb)[rows]
            out[pid] = (mean_pairwise_distance(sub), vendi(sub))
    return out


def metric_names(slug: str) -> tuple[str, str]:
    return f"diversity_{slug}", f"vendi_{slug}"


__all__ = ["EMBEDDINGS", "mean_pairwise_distance", "vendi", "per_prompt", "metric_names"]
