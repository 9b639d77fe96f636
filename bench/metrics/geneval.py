"""GenEval's scoring rules (Ghosh et al. 2023), on detections from any detector.

An image of a GenEval prompt is correct when every `include` clause holds and no `exclude` clause does:
  - detections count above a confidence threshold: 0.3, or 0.9 for the `counting` tag; at most 16 per class, the
    most confident first (the published run keeps overlapping boxes: no suppression);
  - an include clause {class, count} needs `count` detections of the class; only the `count` most confident are
    looked at further;
  - with `color`, each of those must be classified that colour (zero-shot CLIP on the object crop, background masked
    grey; `color_of` below);
  - with `position` [relation, k], each of them must stand in that relation to every object matched by clause k:
    the centres' offset is shrunk by 0.1 x (the two boxes' widths, heights) on each axis, and a relation holds when
    what is left on its axis is more than half of the centres' distance;
  - an exclude clause {class, count} fails the image when `count` or more detections of the class remain.
The score of a tag is the share of its images that are correct; GenEval's overall score is the mean of the six tags'.
Written from the published rules (evaluation/evaluate_images.py and summary_scores.py of djghosh13/geneval).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_MARGIN = 0.1
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLOR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")


@dataclass(frozen=True)
class Detection:
    """One detected object: its class name (GenEval's 80 COCO names), confidence, box (x0, y0, x1, y1 in pixels)
    and, where the detector gives one, its mask ([H, W] bool)."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None


def kept(detections: Sequence[Detection], tag: str, max_overlap: float = 1.0) -> dict[str, list[Detection]]:
    """{class: its detections above the tag's threshold, most confident first, at most 16}; `max_overlap` < 1 drops a
    box overlapping a kept one of its class by that IoU or more (1: none dropped, as published)."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    by_class: dict[str, list[Detection]] = {}
    for d in sorted(detections, key=lambda d: -d.score):
        if d.score > threshold:
            by_class.setdefault(d.label, []).append(d)
    out = {}
    for cls, ds in by_class.items():
        ds = ds[:MAX_OBJECTS]
        chosen: list[Detection] = []
        for d in ds:
            if max_overlap >= 1 or all(iou(d.box, c.box) < max_overlap for c in chosen):
                chosen.append(d)
        out[cls] = chosen
    return out


def iou(a, b) -> float:
    """Intersection over union of two pixel boxes, each side counting its end pixel (+1), as the published code."""
    def area(x0, y0, x1, y1):
        return max(x1 - x0 + 1, 0) * max(y1 - y0 + 1, 0)

    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a) + area(*b) - inter
    return inter / union if union else 0.0


def relations(a, b, margin: float = POSITION_MARGIN) -> set[str]:
    """Where box `a` stands relative to box `b`: a subset of {"left of", "right of", "above", "below"} (image y grows
    downwards); empty when the centres are closer than the margin allows."""
    a, b = np.asarray(a[:4], float).reshape(2, 2), np.asarray(b[:4], float).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)  # [dx, dy] of the centres
    size = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])  # [w_a + w_b, h_a + h_b]
    shrunk = np.maximum(np.abs(offset) - margin * size, 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


ColorOf = Callable[[list[Detection], str], list[str]]  # (objects of a class, the class) -> a colour name each


def judge(objects: dict[str, list[Detection]], metadata: dict, color_of: ColorOf | None = None) -> tuple[bool, list]:
    """(correct, reasons) of one image: `objects` as `kept` gives them, `metadata` the prompt's GenEval line
    (include, exclude); `color_of` classifies objects' colours (needed only by clauses with a colour)."""
    correct, reasons, matched = True, [], []
    for clause in metadata.get("include", []):
        cls, count = clause["class"], int(clause["count"])
        found = objects.get(cls, [])[:count]
        ok = len(found) >= count
        if not ok:
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        elif "color" in clause:
            if color_of is None:
                raise ValueError("a colour clause needs color_of")
            colors = color_of(found, cls)
            if colors.count(clause["color"]) < count:
                ok = False
                reasons.append(f"expected {clause['color']} {cls}>={count}, found {colors.count(clause['color'])}")
        if ok and "position" in clause:
            rel, k = clause["position"]
            targets = matched[int(k)]
            if targets is None:
                ok = False
                reasons.append(f"no target for {cls} to be {rel}")
            elif not all(rel in relations(o.box, t.box) for o in found for t in targets):
                ok = False
                reasons.append(f"expected {cls} {rel} its target")
        matched.append(found if ok else None)
        correct = correct and ok
    for clause in metadata.get("exclude", []):
        n = len(objects.get(clause["class"], []))
        if n >= int(clause["count"]):
            correct = False
            reasons.append(f"expected {clause['class']}<{clause['count']}, found {n}")
    return correct, reasons


def summary(results: Sequence[tuple[str, bool]]) -> dict[str, float]:
    """{tag: share of its images correct, ..., "overall": the mean over the tags present} (summary_scores.py)."""
    by_tag: dict[str, list[bool]] = {}
    for tag, ok in results:
        by_tag.setdefault(tag, []).append(bool(ok))
    out = {tag: float(np.mean(v)) for tag, v in by_tag.items()}
    out["overall"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


Detector = Callable[[np.ndarray], list[Detection]]  # an image (uint8 [H, W, 3]) -> its detections


def score_image(image: np.ndarray, metadata: dict, detect: Detector, colors=None) -> tuple[bool, list]:
    """(correct, reasons) of one image of a GenEval prompt: `detect` finds the objects, `colors(image, objects, cls)`
    names their colours (ClipColors for the published numbers)."""
    objects = kept(detect(image), metadata.get("tag", ""))
    color_of = (lambda objs, cls: colors(image, objs, cls)) if colors is not None else None
    return judge(objects, metadata, color_of)


class ShapesDetector:
    """The shapes world's scorer as a detector whose truth is known: class = shape, box = a square of the object's
    area around its centroid, score 1; its colours (the scorer's palette names) serve as the colour classifier.
    For testing GenEval's rules end to end on rendered scenes; not a COCO detector."""

    def __call__(self, image: np.ndarray) -> list[Detection]:
        from imagen.shapes_scorer import detect

        h, w = image.shape[:2]
        out = []
        for b in detect(image):
            half = 0.5 * float(np.sqrt(b.area * h * w))
            box = (b.cx * w - half, b.cy * h - half, b.cx * w + half, b.cy * h + half)
            out.append(Detection(b.shape, 1.0, box, None))
            self._colors = getattr(self, "_colors", {})
            self._colors[box] = b.color or "none"
        return out

    def colors(self, image: np.ndarray, objects: list[Detection], cls: str) -> list[str]:
        return [self._colors.get(o.box, "none") for o in objects]


class ClipColors:
    """GenEval's colour classifier on an open_clip model: zero-shot over the ten colours with three templates per
    class (the mean of the normalised text embeddings), on each object's box crop with the rest of the image grey
    (#999) where a mask is given. `model` and `preprocess` come from open_clip (ViT-L-14 / openai for the published
    numbers), `tokenizer` likewise."""

    def __init__(self, model, preprocess, tokenizer, device: str = "cpu"):
        self.model, self.preprocess, self.tokenizer, self.device = model, preprocess, tokenizer, device
        self._weights: dict[str, object] = {}

    def classifier(self, cls: str):
        """[D, 10] zero-shot weights of the colours for one class."""
        import torch

        if cls not in self._weights:
            cols = []
            with torch.no_grad():
                for c in COLORS:
                    texts = self.tokenizer([t.format(c=c, cls=cls) for t in COLOR_TEMPLATES]).to(self.device)
                    e = self.model.encode_text(texts).float()
                    e = e / e.norm(dim=-1, keepdim=True)
                    m = e.mean(dim=0)
                    cols.append(m / m.norm())
            self._weights[cls] = torch.stack(cols, dim=1)
        return self._weights[cls]

    def crops(self, image: np.ndarray, objects: list[Detection]):
        from PIL import Image

        pil = Image.fromarray(image).convert("RGB")
        blank = Image.new("RGB", pil.size, color="#999")
        out = []
        for d in objects:
            im = Image.composite(pil, blank, Image.fromarray(d.mask.astype(np.uint8) * 255)) if d.mask is not None \
                else pil
            out.append(im.crop(tuple(float(v) for v in d.box[:4])))
        return out

    def __call__(self, image: np.ndarray, objects: list[Detection], cls: str) -> list[str]:
        import torch

        if not objects:
            return []
        batch = torch.stack([self.preprocess(c) for c in self.crops(image, objects)]).to(self.device)
        with torch.no_grad():
            feats = self.model.encode_image(batch).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = feats @ self.classifier(cls).to(feats)
        return [COLORS[int(i)] for i in logits.argmax(dim=1)]


__all__ = ["Detection", "kept", "iou", "relations", "judge", "summary", "score_image", "ShapesDetector", "ClipColors",
           "THRESHOLD",
           "COUNTING_THRESHOLD", "MAX_OBJECTS", "POSITION_MARGIN", "COLORS", "TAGS"]
