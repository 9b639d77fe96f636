"""Reads an image of the shapes world and checks each fact of a caption: colour, shape, count, relative position.

Pipeline (pure functions, numpy + scipy.ndimage):

1. background = median of the 1-pixel border; foreground = pixels farther than FG_DISTANCE from it in RGB;
2. objects = 8-connected foreground components of at least MIN_AREA_FRACTION of the image (drops noise specks);
3. colour = mean of the component's most saturated quarter of pixels (its core, away from anti-aliased or blurred
   edges), named by the nearest palette colour, or None when farther than COLOR_DISTANCE from every colour;
4. shape from coverage-weighted moments (coverage alpha = projection of each pixel on the background->colour line,
   so edges count fractionally): a triangle's vertical marginal is skewed (|skewness| ~0.57, 0 for circle and
   square); a square's marginal is flat along the axes (kurtosis 1.8) and peaked along the diagonals (2.4), a
   circle's is 2.0 both ways.

Which facts a caption tests (`tested_facts`): Colors and Binding (and Misspellings, which are either) test colour
and shape; Counting tests count, colour and shape; Positional tests position, colour and shape. Definitions:

- color: the set of detected object colours equals the set of caption colours (every named colour, no other);
- shape: for each kind, the objects of its colour all have its shape (that is the binding test); when no object
  has the colour, some object has the shape (a wrong colour is the colour fact's failure, not the shape's);
- count: the number of objects equals the caption's number (for two kinds, also per colour);
- position: the largest object of colour_1 stands in `relation` to the largest of colour_2: the offset between
  centroids is mostly along the relation's axis (|along| > |across|) with the right sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imagen.shapes import COUNTING, PALETTE, POSITIONAL, Facts

FACT_TYPES: tuple[str, ...] = ("color", "shape", "count", "position")
FG_DISTANCE = 70.0  # RGB distance from the background above which a pixel is part of an object
MIN_AREA_FRACTION = 0.004  # smallest object, as a fraction of the image (the world's smallest is ~0.017)
COLOR_DISTANCE = 100.0  # a blob farther than this from every palette colour has no colour name
TRIANGLE_SKEW = 0.25  # |vertical skewness| above this: triangle (ideal 0.57; circle and square 0)
SQUARE_KURT_GAP = 0.3  # diagonal minus axis kurtosis above this: square (ideal 0.6; circle 0)

_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[c] for c in _PALETTE_NAMES], dtype=np.float64)  # [K, 3]


@dataclass(frozen=True)
class Blob:
    """One detected object: colour name (or None), shape name, centroid in [0, 1] units (x right, y down), area
    as a fraction of the image, and the two shape features."""

    color: str | None
    shape: str
    cx: float
    cy: float
    area: float
    skew: float
    kurt_gap: float


def tested_facts(facts: Facts) -> tuple[str, ...]:
    """The fact types a caption of this category states."""
    if facts.category == COUNTING:
        return ("color", "shape", "count")
    if facts.category == POSITIONAL:
        return ("color", "shape", "position")
    return ("color", "shape")  # Colors, Binding, Misspellings


def _background(img: np.ndarray) -> np.ndarray:
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]], axis=0)  # [4S, 3]
    return np.median(border, axis=0)


def _shape_features(alpha: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[float, float, float, float, float]:
    """(area, cx, cy, vertical skewness, diagonal-minus-axis kurtosis) of a coverage map; alpha, ys, xs: [N]."""
    area = alpha.sum()
    cx, cy = (alpha * xs).sum() / area, (alpha * ys).sum() / area
    dx, dy = xs - cx, ys - cy
    # Sheppard's correction: a pixel is a 1x1 square, not a point, which adds 1/12 px^2 to the second moment
    m2y = (alpha * dy**2).sum() / area - 1 / 12
    skew = (alpha * dy**3).sum() / area / max(m2y, 1e-6) ** 1.5

    def kurt(d: np.ndarray) -> float:
        m2 = (alpha * d**2).sum() / area - 1 / 12
        m4 = (alpha * d**4).sum() / area - m2 / 2 - 7 / 240  # Sheppard's correction for the 4th moment
        return m4 / max(m2, 1e-6) ** 2

    u, v = (dx + dy) / np.sqrt(2), (dx - dy) / np.sqrt(2)
    gap = (kurt(u) + kurt(v)) / 2 - (kurt(dx) + kurt(dy)) / 2
    return float(area), float(cx), float(cy), float(skew), float(gap)


def detect(image: np.ndarray) -> list[Blob]:
    """The objects in an image (uint8 [H, W, 3]), largest first."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
    h, w = img.shape[:2]
    bg = _background(img)
    dist = np.linalg.norm(img - bg, axis=2)  # [H, W]
    fg = dist > FG_DISTANCE
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    min_area = max(3.0, MIN_AREA_FRACTION * h * w)
    blobs = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        comp = labels[sl] == k
        if comp.sum() < min_area:
            continue
        # colour: the core of the blob (its most distant quarter from the background)
        d = dist[sl][comp]
        core = img[sl][comp][d >= np.quantile(d, 0.75)]
        mean = core.mean(axis=0)
        cd = np.linalg.norm(_PALETTE_RGB - mean, axis=1)
        color = _PALETTE_NAMES[int(cd.argmin())] if cd.min() <= COLOR_DISTANCE else None
        # coverage on the blob grown by 1 px (anti-aliased edges fall below FG_DISTANCE), not on other blobs
        y0, y1 = max(0, sl[0].start - 1), min(h, sl[0].stop + 1)
        x0, x1 = max(0, sl[1].start - 1), min(w, sl[1].stop + 1)
        own = labels[y0:y1, x0:x1] == k
        region = ndimage.binary_dilation(own, structure=np.ones((3, 3), dtype=bool))
        region &= (labels[y0:y1, x0:x1] == 0) | own
        ref = mean - bg
        alpha = np.clip(((img[y0:y1, x0:x1] - bg) @ ref) / max(ref @ ref, 1e-6), 0.0, 1.0)[region]
        ys, xs = np.nonzero(region)
        area, cx, cy, skew, gap = _shape_features(alpha, ys + y0 + 0.5, xs + x0 + 0.5)
        if abs(skew) > TRIANGLE_SKEW:
            shape = "triangle"
        elif gap > SQUARE_KURT_GAP:
            shape = "square"
        else:
            shape = "circle"
        blobs.append(Blob(color, shape, cx / w, cy / h, area / (h * w), skew, gap))
    return sorted(blobs, key=lambda b: -b.area)


def check(blobs: list[Blob], facts: Facts) -> dict[str, bool]:
    """Each tested fact of `facts` checked against detected objects."""
    kinds = facts.kinds()
    out: dict[str, bool] = {}
    tested = tested_facts(facts)
    if "color" in tested:
        out["color"] = bool(blobs) and {b.color for b in blobs} == {c for c, _, _ in kinds}
    if "shape" in tested:
        ok = True
        for color, shape, _ in kinds:
            same = [b for b in blobs if b.color == color]
            ok &= all(b.shape == shape for b in same) if same else any(b.shape == shape for b in blobs)
        out["shape"] = bool(ok)
    if "count" in tested:
        ok = len(blobs) == sum(n for _, _, n in kinds)
        if len(kinds) > 1:
            ok &= all(sum(b.color == c for b in blobs) == n for c, _, n in kinds)
        out["count"] = bool(ok)
    if "position" in tested:
        first = [b for b in blobs if b.color == facts.color_1]
        second = [b for b in blobs if b.color == facts.color_2]
        if not first or not second or facts.relation is None:
            out["position"] = False
        else:
            a, b = first[0], second[0]  # blobs are sorted largest first
            dx, dy = a.cx - b.cx, a.cy - b.cy  # kind 1 relative to kind 2, y downwards
            out["position"] = bool({
                "left": dx < 0 and abs(dx) > abs(dy),
                "right": dx > 0 and abs(dx) > abs(dy),
                "above": dy < 0 and abs(dy) > abs(dx),
                "below": dy > 0 and abs(dy) > abs(dx),
            }[facts.relation])
    return out


def score(image: np.ndarray, facts: Facts) -> dict[str, bool]:
    """{fact_type: passed} for the fact types the caption tests (see tested_facts); image is uint8 [H, W, 3]."""
    return check(detect(image), facts)
