"""The hard shapes world (`shapes-hard`): busier scenes in which an unguided model still misses facts.

The plain world (imagen.shapes) draws one or two objects on white, and its caption fixes the image exactly. Here a
scene holds up to 6 objects, each with four bound attributes (colour, shape, size small/large, and for large objects
a solid or outlined style); relations go beyond left/right (above, below, next to, inside, "the largest"); the
background is plain, a pale gradient or pale clutter; and a caption names only some of the objects (the others are
distractors, in colours the caption does not use, so every named object is found by its colour).

    category     example caption                                                     facts it tests
    Attributes   "a large outlined red circle and a small blue square"               color shape size style
    Counting     "three small green triangles among other shapes"                    color shape count size
    Positional   "a red circle above a blue square" / "... next to ..."               color shape position
    Inside       "a small yellow triangle inside a large outlined blue square"       color shape position style
    Largest      "the largest shape is a green circle"                               color shape size

Geometry is in [0, 1] units of the image side (x to the right, y downwards), as in imagen.shapes, so a scene renders
at any resolution. Objects never overlap and keep a margin from each other and the border, except the one that an
Inside caption puts in the hole of an outlined object. The scorer is imagen.shapes_hard_scorer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from imagen.errors import UserError
from imagen.shapes import _ALPHA_SUPERSAMPLE, COLORS, MARGIN, NUMBER_WORDS, PALETTE, SHAPES, Shape, ShapesWorld, _coverage

WORLD = "shapes-hard"
ATTRIBUTES, COUNTING, POSITIONAL, INSIDE, LARGEST = "Attributes", "Counting", "Positional", "Inside", "Largest"
CATEGORIES: tuple[str, ...] = (ATTRIBUTES, COUNTING, POSITIONAL, INSIDE, LARGEST)
DRAWBENCH_CATEGORY: dict[str, str] = {
    ATTRIBUTES: "Colors", COUNTING: "Counting", POSITIONAL: "Positional", INSIDE: "Positional", LARGEST: "Colors",
}
SIZE_RANGE: dict[str, tuple[float, float]] = {"small": (0.11, 0.14), "large": (0.24, 0.30)}  # bounding-box width
STYLES: tuple[str, ...] = ("solid", "outlined")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below", "next to")
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "clutter")
MAX_OBJECTS = 6
RING_WIDTH, RING_CLIP = 0.45, (0.03, 0.05)  # an outlined object's ring: 0.45 of its inradius, within 0.03 .. 0.05
CONTAINER_SIZE = (0.34, 0.40)  # the outlined circle or square an Inside caption puts an object in
NEXT_TO_GAP = (0.03, 0.06)  # bounding-box gap of a "next to" pair
# Pale background tones: all within ~45 of white in RGB, so the palette (>= 215 from white) stays far from them.
PALE: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255), (236, 240, 250), (250, 242, 228), (236, 248, 236), (246, 236, 246), (242, 242, 242),
)


@dataclass(frozen=True)
class Obj:
    """One object: geometry as imagen.shapes.Shape plus its size class and style."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float
    size_class: str = "small"
    style: str = "solid"

    @property
    def radius(self) -> float:
        return self.size * math.sqrt(0.5)

    def geometry(self) -> Shape:
        return Shape(self.shape, self.color, self.cx, self.cy, self.size)

    @property
    def inradius(self) -> float:
        return self.size * (math.sqrt(3) / 6 if self.shape == "triangle" else 0.5)

    @property
    def incentre(self) -> tuple[float, float]:
        """The centre of the largest circle inside the object (a triangle's lies 2/3 of the way down from its apex)."""
        return (self.cx, self.cy + (self.size * math.sqrt(3) / 12 if self.shape == "triangle" else 0.0))

    def hole(self) -> Shape:
        """The background-coloured hole of an outlined object: the shape shrunk about its incentre by the ring width
        (RING_WIDTH of the inradius, clipped to RING_CLIP), so the ring has the same width all round."""
        inr = self.inradius
        width = min(max(RING_WIDTH * inr, RING_CLIP[0]), RING_CLIP[1])
        k = (inr - width) / inr
        ix, iy = self.incentre
        if self.shape != "triangle":
            return Shape(self.shape, self.color, ix, iy, self.size * k)
        return Shape(self.shape, self.color, ix, iy - k * self.size * math.sqrt(3) / 12, self.size * k)


@dataclass(frozen=True)
class Background:
    kind: str = "plain"
    color_a: tuple[int, int, int] = (255, 255, 255)
    color_b: tuple[int, int, int] = (255, 255, 255)
    angle: float = 0.0  # gradient direction, radians
    seed: int = 0  # clutter marks


@dataclass(frozen=True)
class HardScene:
    objects: tuple[Obj, ...]
    background: Background = Background()


@dataclass(frozen=True)
class HardFacts:
    """What a caption says. Named object 1 (and 2) with the attributes the caption gives (None = not said).

    `count_1`: Counting captions, the number of objects of kind 1. `relation`: object 1 relative to object 2
    ("left" .. "next to", or "inside": object 1 is inside object 2). size "largest": object 1 is the largest object.
    """

    category: str
    color_1: str
    shape_1: str
    size_1: str | None = None
    style_1: str | None = None
    count_1: int | None = None
    color_2: str | None = None
    shape_2: str | None = None
    size_2: str | None = None
    style_2: str | None = None
    relation: str | None = None

    def named(self) -> list[tuple[str, str, str | None, str | None]]:
        out = [(self.color_1, self.shape_1, self.size_1, self.style_1)]
        if self.color_2 is not None:
            out.append((self.color_2, self.shape_2, self.size_2, self.style_2))
        return out


FACT_COLUMNS: tuple[str, ...] = ("category", "color_1", "shape_1", "size_1", "style_1", "count_1", "color_2",
                                 "shape_2", "size_2", "style_2", "relation")


def facts_to_row(facts: HardFacts) -> dict:
    """Facts as a flat dict, with "world" so a stored row says which scorer reads it."""
    return {"world": WORLD, **{name: getattr(facts, name) for name in FACT_COLUMNS}}


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v == "")


def row_to_facts(row) -> HardFacts:
    get = row.get if hasattr(row, "get") else (lambda k: row[k])
    vals = {name: (None if _missing(get(name)) else get(name)) for name in FACT_COLUMNS}
    if vals["count_1"] is not None:
        vals["count_1"] = int(vals["count_1"])
    if vals["category"] not in CATEGORIES:
        raise UserError(f"unknown {WORLD} category {vals['category']!r}; expected one of {', '.join(CATEGORIES)}")
    return HardFacts(**vals)


def facts_json(facts: HardFacts) -> str:
    return json.dumps(facts_to_row(facts), sort_keys=True)


# ----------------------------------------------------------------------------- rendering


def _background(bg: Background, size: int) -> np.ndarray:
    """[size, size, 3] float32 background."""
    a, b = np.array(bg.color_a, np.float32), np.array(bg.color_b, np.float32)
    if bg.kind == "plain":
        return np.broadcast_to(a, (size, size, 3)).copy()
    u = (np.arange(size, dtype=np.float32) + 0.5) / size
    if bg.kind == "gradient":
        t = (u[None, :] - 0.5) * math.cos(bg.angle) + (u[:, None] - 0.5) * math.sin(bg.angle)
        t = np.clip(t / math.sqrt(0.5) + 0.5, 0, 1)[..., None]  # 0 .. 1 across the image along the direction
        return a * (1 - t) + b * t
    if bg.kind == "clutter":  # pale marks: 25 short strokes and dots in the second tone
        img = np.broadcast_to(a, (size, size, 3)).copy()
        rng = np.random.default_rng(bg.seed)
        mark = np.clip(b - 12, 0, 255)  # within ~50 of the base tone: far below the scorer's foreground distance
        for _ in range(25):
            x, y, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.01, 0.03)
            ang = rng.uniform(0, math.pi)
            length = rng.uniform(0.0, 0.08)
            ts = np.linspace(-length / 2, length / 2, 8)
            for t in ts:
                px, py = x + t * math.cos(ang), y + t * math.sin(ang)
                d2 = (u[None, :] - px) ** 2 + (u[:, None] - py) ** 2
                img[d2 <= (r / 2) ** 2] = mark
        return img
    raise ValueError(f"unknown background kind {bg.kind!r}")


def _alpha(shape: Shape, size: int, window) -> np.ndarray:
    x0, x1, y0, y1 = window
    s = _ALPHA_SUPERSAMPLE
    sub = (np.arange(s, dtype=np.float64) + 0.5) / s
    px = ((np.arange(x0, x1)[:, None] + sub[None, :]) / size).reshape(-1)
    py = ((np.arange(y0, y1)[:, None] + sub[None, :]) / size).reshape(-1)
    inside = _coverage(shape, px[None, :], py[:, None])
    return inside.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3)).astype(np.float32)[..., None]


def render(scene: HardScene, size: int) -> np.ndarray:
    """The scene as uint8 [size, size, 3], anti-aliased by 4x4 supersampling; objects are drawn largest first, so
    an object inside an outlined one is drawn over its hole."""
    if not 8 <= int(size) <= 4096:
        raise UserError(f"image size must be between 8 and 4096 pixels, got {size}")
    size = int(size)
    img = _background(scene.background, size)
    for obj in sorted(scene.objects, key=lambda o: -o.size):
        r = obj.size / 2 + 1.0 / size
        x0, x1 = max(0, int(math.floor((obj.cx - r) * size))), min(size, int(math.ceil((obj.cx + r) * size)))
        y0, y1 = max(0, int(math.floor((obj.cy - r) * size))), min(size, int(math.ceil((obj.cy + r) * size)))
        if x1 <= x0 or y1 <= y0:
            continue
        win = (x0, x1, y0, y1)
        alpha = _alpha(obj.geometry(), size, win)
        if obj.style == "outlined":
            alpha = np.clip(alpha - _alpha(obj.hole(), size, win), 0, 1)
        color = np.array(PALETTE[obj.color], dtype=np.float32)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + color * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_image(scene: HardScene, size: int):
    from PIL import Image

    return Image.fromarray(render(scene, size), mode="RGB")


# ----------------------------------------------------------------------------- scene sampling


def _size(rng, cls: str) -> float:
    lo, hi = SIZE_RANGE[cls]
    return float(rng.uniform(lo, hi))


def _place_one(rng, size: float, placed: list[Obj], tries: int = 300) -> tuple[float, float] | None:
    lo, hi = size / 2 + MARGIN, 1 - size / 2 - MARGIN
    rad = size * math.sqrt(0.5)
    for _ in range(tries):
        c = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        if all(math.dist(c, (o.cx, o.cy)) >= rad + o.radius + MARGIN for o in placed):
            return c
    return None


def _background_of(rng) -> Background:
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    i, j = rng.choice(len(PALE), size=2, replace=False)
    if kind == "plain":
        return Background("plain", PALE[i], PALE[i])
    return Background(kind, PALE[i], PALE[j], float(rng.uniform(0, 2 * math.pi)), int(rng.integers(1 << 31)))


def _pick_colors(rng, k: int) -> list[str]:
    return [COLORS[i] for i in rng.choice(len(COLORS), size=k, replace=False)]


def _add_distractors(rng, placed: list[Obj], n: int, colors: list[str], small_only: bool = False) -> list[Obj]:
    """Up to n more objects in the given colours (not the caption's), each placed where it fits."""
    out = list(placed)
    for _ in range(n):
        cls = "small" if small_only or sum(o.size_class == "large" for o in out) >= 2 or rng.random() < 0.6 \
            else "large"
        size = _size(rng, cls)
        c = _place_one(rng, size, out)
        if c is None:
            continue
        style = STYLES[rng.integers(2)] if cls == "large" else "solid"
        out.append(Obj(SHAPES[rng.integers(len(SHAPES))], colors[rng.integers(len(colors))], c[0], c[1], size,
                       cls, style))
    return out


def _relation_pair(rng, sizes: list[float], relation: str) -> list[tuple[float, float]]:
    """Centres of two objects, object 0 in `relation` to object 1 (as imagen.shapes._place_relation; "next to":
    side by side along a random axis, bounding boxes NEXT_TO_GAP apart)."""
    from imagen.shapes import _place_relation

    if relation != "next to":
        return _place_relation(rng, sizes, relation)
    h0, h1 = sizes[0] / 2, sizes[1] / 2
    d = h0 + h1 + float(rng.uniform(*NEXT_TO_GAP))
    delta = float(rng.uniform(-0.15, 0.15)) * min(sizes)
    hm = max(h0, h1)
    a0 = float(rng.uniform(MARGIN + h0, 1 - MARGIN - h1 - d))
    mid = float(rng.uniform(MARGIN + hm + abs(delta) / 2, 1 - MARGIN - hm - abs(delta) / 2))
    pts = [(a0, mid - delta / 2), (a0 + d, mid + delta / 2)]
    if rng.random() < 0.5:
        pts = pts[::-1]
    if rng.random() < 0.5:
        pts = [(y, x) for x, y in pts]
    return pts


def sample_scene(rng: np.random.Generator, kind: str) -> tuple[HardScene, HardFacts]:
    """A scene for one caption category and the facts its caption states (named objects come first)."""
    bg = _background_of(rng)
    for _ in range(100):
        out = _try_scene(rng, kind)
        if out is not None:
            objs, facts = out
            return HardScene(tuple(objs), bg), facts
    raise RuntimeError(f"could not place a {kind} scene")  # pragma: no cover - placement always succeeds in tests


def _try_scene(rng, kind: str):
    if kind == ATTRIBUTES:
        k = int(rng.integers(1, 3))
        colors = _pick_colors(rng, 7)
        named, placed = [], []
        for i in range(k):
            cls = ("small", "large")[rng.integers(2)]
            style = STYLES[rng.integers(2)] if cls == "large" else None
            size = _size(rng, cls)
            c = _place_one(rng, size, placed)
            if c is None:
                return None
            shape = SHAPES[rng.integers(len(SHAPES))]
            placed.append(Obj(shape, colors[i], c[0], c[1], size, cls, style or "solid"))
            named.append((colors[i], shape, cls, style))
        objs = _add_distractors(rng, placed, int(rng.integers(0, 5 - k)), colors[k:])
        f = dict(category=kind, color_1=named[0][0], shape_1=named[0][1], size_1=named[0][2], style_1=named[0][3])
        if k == 2:
            f.update(color_2=named[1][0], shape_2=named[1][1], size_2=named[1][2], style_2=named[1][3])
        return objs, HardFacts(**f)
    if kind == COUNTING:
        n = int(rng.integers(1, 5))
        colors = _pick_colors(rng, 7)
        shape = SHAPES[rng.integers(len(SHAPES))]
        cls = "large" if n <= 2 and rng.random() < 0.4 else "small"
        placed: list[Obj] = []
        for _ in range(n):
            size = _size(rng, cls)
            c = _place_one(rng, size, placed)
            if c is None:
                return None
            placed.append(Obj(shape, colors[0], c[0], c[1], size, cls, "solid"))
        objs = _add_distractors(rng, placed, int(rng.integers(0, MAX_OBJECTS - n + 1)), colors[1:])
        return objs, HardFacts(kind, colors[0], shape, cls, None, n)
    if kind == POSITIONAL:
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        colors = _pick_colors(rng, 7)
        s1, s2 = SHAPES[rng.integers(len(SHAPES))], SHAPES[rng.integers(len(SHAPES))]
        classes = [("small", "large")[rng.integers(2)] for _ in range(2)]
        sizes = [_size(rng, c) for c in classes]
        (x0, y0), (x1, y1) = _relation_pair(rng, sizes, relation)
        placed = [Obj(s1, colors[0], x0, y0, sizes[0], classes[0]), Obj(s2, colors[1], x1, y1, sizes[1], classes[1])]
        objs = _add_distractors(rng, placed, int(rng.integers(0, 4)), colors[2:], small_only=True)
        return objs, HardFacts(kind, colors[0], s1, None, None, None, colors[1], s2, None, None, relation)
    if kind == INSIDE:
        colors = _pick_colors(rng, 7)
        s_in, s_out = SHAPES[rng.integers(len(SHAPES))], ("circle", "square")[rng.integers(2)]
        big = float(rng.uniform(*CONTAINER_SIZE))  # larger than other large objects, so its hole holds a small one
        c = _place_one(rng, big, [])
        outer = Obj(s_out, colors[1], c[0], c[1], big, "large", "outlined")
        hole = Obj(s_out, colors[1], c[0], c[1], outer.hole().size)
        # the inner object: its incentre on the hole's centre, its farthest point MARGIN inside the hole
        reach = {"circle": 0.5, "square": math.sqrt(0.5), "triangle": 1 / math.sqrt(3)}[s_in]  # per unit of size
        top = min(SIZE_RANGE["small"][1], (hole.inradius - MARGIN) / reach)
        if top < SIZE_RANGE["small"][0]:
            return None
        small = float(rng.uniform(SIZE_RANGE["small"][0], top))
        inner_cy = c[1] - (small * math.sqrt(3) / 12 if s_in == "triangle" else 0.0)
        inner = Obj(s_in, colors[0], c[0], inner_cy, small, "small", "solid")
        objs = [inner] + _add_distractors(rng, [outer], int(rng.integers(0, 4)), colors[2:], small_only=True)
        return objs, HardFacts(kind, colors[0], s_in, "small", None, None, colors[1], s_out, "large", "outlined",
                               "inside")
    if kind == LARGEST:
        colors = _pick_colors(rng, 7)
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = _size(rng, "large")
        c = _place_one(rng, size, [])
        placed = [Obj(shape, colors[0], c[0], c[1], size, "large", "solid")]
        n = int(rng.integers(2, MAX_OBJECTS))
        objs = _add_distractors(rng, placed, n, colors[1:], small_only=True)  # all smaller
        if len(objs) < 3:
            return None
        return objs, HardFacts(kind, colors[0], shape, "largest")
    raise UserError(f"unknown {WORLD} category {kind!r}; expected one of {', '.join(CATEGORIES)}")


# ----------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(color: str, shape: str, size: str | None, style: str | None, with_article: bool = True) -> str:
    words = [w for w in (size if size in ("small", "large") else None, style, color, shape) if w]
    text = " ".join(words)
    return f"{_article(text)} {text}" if with_article else text


_OTHERS = ("", "", " among other shapes", " with some other shapes", " and other shapes")
_BG_WORDS = ("", "", " on a busy background")
_REL_WORDS = {"left": ("to the left of", "left of"), "right": ("to the right of", "right of"),
              "above": ("above",), "below": ("below", "beneath"), "next to": ("next to", "beside")}


def caption_for(facts: HardFacts, rng: np.random.Generator) -> str:
    """A caption stating `facts` (and nothing about the other objects), from templates chosen by rng."""
    cat = facts.category
    tail = _OTHERS[rng.integers(len(_OTHERS))]
    if cat == ATTRIBUTES:
        text = _phrase(facts.color_1, facts.shape_1, facts.size_1, facts.style_1)
        if facts.color_2 is not None:
            text += " and " + _phrase(facts.color_2, facts.shape_2, facts.size_2, facts.style_2)
        return text + tail
    if cat == COUNTING:
        n = facts.count_1
        noun = _phrase(facts.color_1, facts.shape_1 + ("s" if n > 1 else ""), facts.size_1, None, with_article=False)
        return f"{NUMBER_WORDS[n]} {noun}{tail}"
    if cat == POSITIONAL:
        rels = _REL_WORDS[facts.relation]
        rel = rels[rng.integers(len(rels))]
        return (f"{_phrase(facts.color_1, facts.shape_1, None, None)} {rel} "
                f"{_phrase(facts.color_2, facts.shape_2, None, None)}{tail}")
    if cat == INSIDE:
        return (f"{_phrase(facts.color_1, facts.shape_1, facts.size_1, None)} inside "
                f"{_phrase(facts.color_2, facts.shape_2, facts.size_2, facts.style_2)}{tail}")
    if cat == LARGEST:
        form = int(rng.integers(2))
        if form == 0:
            return f"the largest shape is {_phrase(facts.color_1, facts.shape_1, None, None)}"
        return f"a big {facts.color_1} {facts.shape_1} and smaller shapes"
    raise UserError(f"unknown {WORLD} category {cat!r}")


# ----------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class HardWorld(ShapesWorld):
    """The hard world as a seeded endless dataset (imagen.shapes.ShapesWorld's contract): item i depends only on
    (seed, split, i); categories cycle."""

    categories: tuple[str, ...] = CATEGORIES
    WORLD: ClassVar[str] = WORLD
    ALL_CATEGORIES: ClassVar[tuple[str, ...]] = CATEGORIES
    SEED_SALT: ClassVar[tuple[int, ...]] = (2,)  # keeps these streams apart from the plain world's

    sample = staticmethod(sample_scene)
    caption_for = staticmethod(caption_for)
    render = staticmethod(render)
    facts_row = staticmethod(facts_to_row)


def held_out_captions(n: int, seed: int = 0) -> list[tuple[str, HardFacts, str]]:
    """n held-out (caption, facts, category), balanced over CATEGORIES: the `shapes-hard` prompt suite."""
    return HardWorld(seed, "heldout").held_out(n)
