"""Reads an image of the hard shapes world (imagen.shapes_hard) and checks each fact of a caption.

Detection (numpy + scipy.ndimage), the plain scorer's method (imagen.shapes_scorer) with three additions:

1. background = a plane per channel fitted to the 2-pixel border (a gradient background is linear; plain and clutter
   are flat, and the clutter is too pale to reach the foreground distance); foreground = pixels farther than
   FG_DISTANCE from the fitted background; objects = 8-connected components of at least MIN_AREA_FRACTION;
2. an object's hole (binary_fill_holes minus the component) makes it "outlined" when the ring covers less than
   OUTLINED_FILL of the filled shape; shape and size are read from the filled shape (the hole counts as covered);
3. size = the side of the named shape with the filled area (small <= 0.14, large >= 0.24 of the image side; the
   class boundary is SIZE_BOUNDARY).

Facts, for the objects a caption names (every other object is a distractor in a colour the caption does not use):

- color: every named colour is the colour of some object;
- shape: every object of a named colour has the named shape (none of that colour: some object has the shape);
- count: the number of objects of the named colour equals the caption's number;
- size: the largest object of each named colour has the named class; "largest": the largest object of all is the
  named colour; for Counting, every object of the colour has the class;
- style: the largest object of each named colour has the named style (solid / outlined);
- position: left/right/above/below as in imagen.shapes_scorer; "next to": the two objects' pixels come within
  NEXT_TO_MAX of each other; "inside": the first object's centroid lies in the second's hole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imagen.shapes_hard import COUNTING, HardFacts
from imagen.shapes_scorer import COLOR_DISTANCE, FG_DISTANCE, SQUARE_KURT_GAP, TRIANGLE_SKEW, _PALETTE_NAMES, \
    _PALETTE_RGB, _shape_features

FACT_TYPES: tuple[str, ...] = ("color", "shape", "count", "size", "style", "position")
MIN_AREA_FRACTION = 0.002  # the smallest object (0.11 side triangle) covers ~0.005 of the image
OUTLINED_FILL = 0.88  # ring pixels / filled pixels below this: outlined (rings cover 0.56-0.75; solid objects 1.0)
SIZE_BOUNDARY = 0.19  # between the small (<= 0.14) and large (>= 0.24) classes, in image sides
NEXT_TO_MAX = 0.12  # "next to": the pixel gap between two objects, in image sides (drawn with 0.03-0.06)
_AREA_FACTOR = {"circle": math.pi / 4, "square": 1.0, "triangle": math.sqrt(3) / 4}  # area / side^2


@dataclass(frozen=True)
class HardBlob:
    color: str | None
    shape: str
    cx: float
    cy: float
    area: float  # filled area, fraction of the image
    side: float  # the side of `shape` with that area, in image sides
    style: str  # "solid" | "outlined"
    fill: float  # ring pixels / filled pixels
    label: int  # component label in `labels` (for the relation checks)


def tested_facts(facts: HardFacts) -> tuple[str, ...]:
    out = ["color", "shape"]
    if facts.count_1 is not None:
        out.append("count")
    if facts.size_1 is not None or facts.size_2 is not None:
        out.append("size")
    if facts.style_1 is not None or facts.style_2 is not None:
        out.append("style")
    if facts.relation is not None:
        out.append("position")
    return tuple(out)


def _background(img: np.ndarray) -> np.ndarray:
    """A least-squares plane per channel through the 2-pixel border, refitted once without outliers: [H, W, 3]."""
    h, w = img.shape[:2]
    border = np.zeros((h, w), dtype=bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    ys, xs = np.nonzero(border)
    design = np.stack([np.ones_like(xs), xs / w, ys / h], axis=1).astype(np.float64)  # [N, 3]
    vals = img[ys, xs]  # [N, 3]
    keep = np.ones(len(xs), dtype=bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], vals[keep], rcond=None)  # [3, 3]
        resid = np.linalg.norm(design @ coef - vals, axis=1)
        keep = resid <= max(20.0, np.quantile(resid, 0.9))
    yy, xx = np.mgrid[0:h, 0:w]
    full = np.stack([np.ones((h, w)), xx / w, yy / h], axis=-1)
    return full @ coef


def detect(image: np.ndarray) -> tuple[list[HardBlob], np.ndarray]:
    """(objects largest first, the component labels [H, W]) of an image (uint8 [H, W, 3])."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
    h, w = img.shape[:2]
    bg = _background(img)
    diff = img - bg
    dist = np.linalg.norm(diff, axis=2)
    labels, _ = ndimage.label(dist > FG_DISTANCE, structure=np.ones((3, 3), dtype=bool))
    min_area = max(3.0, MIN_AREA_FRACTION * h * w)
    blobs = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        y0, y1 = max(0, sl[0].start - 1), min(h, sl[0].stop + 1)
        x0, x1 = max(0, sl[1].start - 1), min(w, sl[1].stop + 1)
        own = labels[y0:y1, x0:x1] == k
        n_own = int(own.sum())
        if n_own < min_area:
            continue
        filled = ndimage.binary_fill_holes(own)
        hole = filled & ~own
        fill = n_own / max(int(filled.sum()), 1)
        d = dist[y0:y1, x0:x1][own]
        core = img[y0:y1, x0:x1][own][d >= np.quantile(d, 0.75)]
        mean = core.mean(axis=0)
        cd = np.linalg.norm(_PALETTE_RGB - mean, axis=1)
        color = _PALETTE_NAMES[int(cd.argmin())] if cd.min() <= COLOR_DISTANCE else None
        # coverage: projection on the background -> colour line, on the component grown by 1 px; the hole counts 1
        region = ndimage.binary_dilation(own, structure=np.ones((3, 3), dtype=bool))
        region &= (labels[y0:y1, x0:x1] == 0) | own
        region |= hole
        ref = mean - bg[y0:y1, x0:x1]  # [h, w, 3]
        alpha = np.clip((diff[y0:y1, x0:x1] * ref).sum(-1) / np.maximum((ref * ref).sum(-1), 1e-6), 0.0, 1.0)
        alpha[hole] = 1.0
        ys, xs = np.nonzero(region)
        area, cx, cy, skew, gap = _shape_features(alpha[region], ys + y0 + 0.5, xs + x0 + 0.5)
        shape = "triangle" if abs(skew) > TRIANGLE_SKEW else "square" if gap > SQUARE_KURT_GAP else "circle"
        area_frac = area / (h * w)
        side = math.sqrt(area_frac / _AREA_FACTOR[shape])
        blobs.append(HardBlob(color, shape, cx / w, cy / h, area_frac, side,
                              "outlined" if fill < OUTLINED_FILL else "solid", fill, k))
    return sorted(blobs, key=lambda b: -b.area), labels


def _size_class(b: HardBlob) -> str:
    return "large" if b.side > SIZE_BOUNDARY else "small"


def check(blobs: list[HardBlob], labels: np.ndarray, facts: HardFacts) -> dict[str, bool]:
    tested = tested_facts(facts)
    named = facts.named()
    of = {c: [b for b in blobs if b.color == c] for c, *_ in named}
    out: dict[str, bool] = {}
    if "color" in tested:
        out["color"] = all(of[c] for c, *_ in named)
    if "shape" in tested:
        out["shape"] = all(all(b.shape == s for b in of[c]) if of[c] else any(b.shape == s for b in blobs)
                           for c, s, *_ in named)
    if "count" in tested:
        out["count"] = len(of[facts.color_1]) == facts.count_1
    if "size" in tested:
        ok = True
        for c, _, size, _ in named:
            if size is None:
                continue
            if size == "largest":
                ok &= bool(blobs) and blobs[0].color == c
            elif facts.category == COUNTING:
                ok &= bool(of[c]) and all(_size_class(b) == size for b in of[c])
            else:
                ok &= bool(of[c]) and _size_class(of[c][0]) == size
        out["size"] = bool(ok)
    if "style" in tested:
        out["style"] = all(bool(of[c]) and of[c][0].style == style for c, _, _, style in named if style is not None)
    if "position" in tested:
        out["position"] = _relation(of[facts.color_1], of[facts.color_2], labels, facts.relation)
    return out


def _relation(first: list[HardBlob], second: list[HardBlob], labels: np.ndarray, relation: str) -> bool:
    if not first or not second:
        return False
    a, b = first[0], second[0]
    if relation == "inside":
        hole = ndimage.binary_fill_holes(labels == b.label) & (labels != b.label)
        h, w = labels.shape
        y, x = min(int(a.cy * h), h - 1), min(int(a.cx * w), w - 1)
        return bool(hole[y, x])
    if relation == "next to":
        gap = ndimage.distance_transform_edt(labels != a.label)[labels == b.label].min()
        return bool(gap <= NEXT_TO_MAX * labels.shape[0])
    dx, dy = a.cx - b.cx, a.cy - b.cy
    return bool({"left": dx < 0 and abs(dx) > abs(dy), "right": dx > 0 and abs(dx) > abs(dy),
                 "above": dy < 0 and abs(dy) > abs(dx), "below": dy > 0 and abs(dy) > abs(dx)}[relation])


def score(image: np.ndarray, facts: HardFacts) -> dict[str, bool]:
    """{fact_type: passed} for the fact types the caption tests (see tested_facts); image is uint8 [H, W, 3]."""
    blobs, labels = detect(image)
    return check(blobs, labels, facts)
