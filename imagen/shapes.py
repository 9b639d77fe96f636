"""The shapes world: captioned images of coloured shapes that need no download, rendered from a seed.

A scene is a few flat-coloured shapes (circle, square, triangle) on a plain white background. Each scene is drawn
for one caption category and captioned from templates; the caption's facts are kept as structured columns so that
`imagen.shapes_scorer` can check a generated image against them.

Categories and the DrawBench categories they stand in for (Saharia et al. 2022, section 4.2 and appendix A):

    ours           DrawBench                      example caption
    Colors         Colors                         "a photo of a red circle"
    Counting       Counting                       "three green triangles on a white background"
    Positional     Positional                     "a red circle to the left of a blue square"
    Binding        Colors / DALL-E (attribute     "a red circle and a blue square"
                   binding with two objects)
    Misspellings   Misspellings                   "a yelolw square" (a Colors or Binding caption with one typo)

Geometry is in [0, 1] units of the image side (x to the right, y downwards), so a scene renders at any resolution.
Objects never overlap and keep a margin from each other and from the border, so every object can be scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from imagen.errors import UserError

# ----------------------------------------------------------------------------- vocabulary

# Object colours, far apart in RGB and all far from the white background (min pairwise distance ~95, min distance
# to white ~215), so the scorer can name the colour of a blurry or noisy blob.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 150, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 20),
    "purple": (130, 40, 170),
    "orange": (245, 130, 15),
    "cyan": (20, 190, 210),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255)}
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")

COLORS_CAT, COUNTING, POSITIONAL, BINDING, MISSPELLINGS = "Colors", "Counting", "Positional", "Binding", "Misspellings"
CATEGORIES: tuple[str, ...] = (COLORS_CAT, COUNTING, POSITIONAL, BINDING, MISSPELLINGS)
# Our category -> the DrawBench category it measures (DrawBench files attribute binding under Colors and DALL-E).
DRAWBENCH_CATEGORY: dict[str, str] = {
    COLORS_CAT: "Colors", COUNTING: "Counting", POSITIONAL: "Positional", BINDING: "Colors", MISSPELLINGS: "Misspellings",
}
SPLITS: dict[str, int] = {"train": 0, "heldout": 1}  # disjoint seed streams: SeedSequence([seed, split, i])

NUMBER_WORDS = ("zero", "one", "two", "three", "four")
MARGIN = 0.04  # minimum gap between objects and between an object and the border, in image units
_ALPHA_SUPERSAMPLE = 4  # coverage is averaged over 4x4 sub-pixel samples per pixel


# ----------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Shape:
    """One object: `size` is the width of its bounding box; (cx, cy) the centre of that box, in [0, 1] units."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    @property
    def radius(self) -> float:
        """Radius of a circle that holds the object (half the square's diagonal), used to keep objects apart."""
        return self.size * math.sqrt(0.5)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Shape, ...]
    background: str = "white"


@dataclass(frozen=True)
class Facts:
    """What a caption says, as columns. Kind 1 is the caption's first object kind, kind 2 its second (or None).

    `relation` is kind 1 relative to kind 2 ("left": kind 1 is to the left of kind 2), for Positional captions.
    """

    category: str
    color_1: str
    shape_1: str
    count_1: int = 1
    color_2: str | None = None
    shape_2: str | None = None
    count_2: int | None = None
    relation: str | None = None

    def kinds(self) -> list[tuple[str, str, int]]:
        """[(color, shape, count)] for the one or two object kinds of the caption."""
        out = [(self.color_1, self.shape_1, int(self.count_1))]
        if self.color_2 is not None:
            out.append((self.color_2, self.shape_2, int(self.count_2 or 1)))
        return out


FACT_COLUMNS: tuple[str, ...] = ("category", "color_1", "shape_1", "count_1", "color_2", "shape_2", "count_2", "relation")


def facts_to_row(facts: Facts) -> dict:
    """Facts as a flat dict of the FACT_COLUMNS (None where a column does not apply)."""
    return {name: getattr(facts, name) for name in FACT_COLUMNS}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and value == "")


def row_to_facts(row) -> Facts:
    """The inverse of facts_to_row; accepts a dict or pandas row read back from Parquet/CSV (NaN or "" = None)."""
    get = row.get if hasattr(row, "get") else (lambda k: row[k])
    vals = {}
    for name in FACT_COLUMNS:
        v = get(name)
        vals[name] = None if _missing(v) else v
    for name in ("count_1", "count_2"):
        if vals[name] is not None:
            vals[name] = int(vals[name])
    if vals["category"] not in CATEGORIES:
        raise UserError(f"unknown shapes category {vals['category']!r}; expected one of {', '.join(CATEGORIES)}")
    return Facts(**vals)


# ----------------------------------------------------------------------------- rendering


def _coverage(obj: Shape, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean inside-mask of `obj` at sample points xs, ys (same shape), in [0, 1] units."""
    h = obj.size / 2
    dx, dy = xs - obj.cx, ys - obj.cy
    if obj.shape == "circle":
        return dx * dx + dy * dy <= h * h
    if obj.shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if obj.shape == "triangle":
        # equilateral, apex up, side = size, centred in its bounding box (height = size * sqrt(3)/2)
        th = obj.size * math.sqrt(3) / 2
        top, bottom = obj.cy - th / 2, obj.cy + th / 2
        half_w = (ys - top) / th * h  # half width grows linearly from the apex
        return (ys >= top) & (ys <= bottom) & (np.abs(dx) <= half_w)
    raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene, size: int) -> np.ndarray:
    """The scene as uint8 [size, size, 3], anti-aliased by 4x4 supersampling of each object's bounding box."""
    if not 8 <= int(size) <= 4096:
        raise UserError(f"image size must be between 8 and 4096 pixels, got {size}")
    size = int(size)
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    img = np.broadcast_to(bg, (size, size, 3)).copy()  # [H, W, 3] float
    s = _ALPHA_SUPERSAMPLE
    sub = (np.arange(s, dtype=np.float64) + 0.5) / s  # sub-pixel offsets
    for obj in scene.objects:
        # pixel window holding the object's bounding box (+1 px), to keep rendering cheap at 1024 px
        r = obj.size / 2 + 1.0 / size
        x0, x1 = max(0, int(math.floor((obj.cx - r) * size))), min(size, int(math.ceil((obj.cx + r) * size)))
        y0, y1 = max(0, int(math.floor((obj.cy - r) * size))), min(size, int(math.ceil((obj.cy + r) * size)))
        if x1 <= x0 or y1 <= y0:
            continue
        px = ((np.arange(x0, x1)[:, None] + sub[None, :]) / size).reshape(-1)  # [(x1-x0)*s]
        py = ((np.arange(y0, y1)[:, None] + sub[None, :]) / size).reshape(-1)  # [(y1-y0)*s]
        inside = _coverage(obj, px[None, :], py[:, None])  # [(y1-y0)*s, (x1-x0)*s]
        alpha = inside.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3)).astype(np.float32)[..., None]
        color = np.array(PALETTE[obj.color], dtype=np.float32)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + color * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_image(scene: Scene, size: int):
    """The scene as a PIL RGB image (for saving)."""
    from PIL import Image

    return Image.fromarray(render(scene, size), mode="RGB")


# ----------------------------------------------------------------------------- scene sampling

# Object size range (bounding-box width, image units) by the number of objects in the scene: small enough that four
# fit with margins, large enough that a 32 px render still shows each shape with ~6 px.
_SIZE_RANGE = {1: (0.30, 0.50), 2: (0.22, 0.34), 3: (0.20, 0.28), 4: (0.20, 0.26)}


def _place(rng: np.random.Generator, sizes: list[float], tries: int = 200) -> list[tuple[float, float]] | None:
    """Centres for objects of the given sizes, inside the border and apart by MARGIN (rejection sampling)."""
    centres: list[tuple[float, float]] = []
    for size in sizes:
        rad = size * math.sqrt(0.5)
        lo, hi = size / 2 + MARGIN, 1 - size / 2 - MARGIN  # the bounding box stays inside the border
        for _ in range(tries):
            c = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
            if all(math.dist(c, o) >= rad + osz * math.sqrt(0.5) + MARGIN for o, osz in zip(centres, sizes)):
                centres.append(c)
                break
        else:
            return None
    return centres


def _place_relation(rng: np.random.Generator, sizes: list[float], relation: str) -> list[tuple[float, float]]:
    """Two centres where object 0 is clearly `relation` of object 1: their bounding boxes are apart by MARGIN
    along the relation's axis, and the offset across that axis is at most 0.45x the offset along it."""
    h0, h1 = sizes[0] / 2, sizes[1] / 2
    d_lo, d_hi = h0 + h1 + MARGIN, 1 - 2 * MARGIN - h0 - h1  # centre distance along the axis
    d = float(rng.uniform(d_lo, d_hi))
    a0 = float(rng.uniform(MARGIN + h0, 1 - MARGIN - h1 - d))  # object 0 has the smaller coordinate on the axis
    a1 = a0 + d
    delta = float(rng.uniform(-0.45, 0.45)) * d  # offset across the axis, object 1 minus object 0
    hm = max(h0, h1)
    mid = float(rng.uniform(MARGIN + hm + abs(delta) / 2, 1 - MARGIN - hm - abs(delta) / 2))
    b0, b1 = mid - delta / 2, mid + delta / 2
    if relation in ("right", "below"):  # mirror so that object 0 has the larger coordinate
        a0, a1 = 1 - a0, 1 - a1
    if relation in ("left", "right"):
        return [(a0, b0), (a1, b1)]
    return [(b0, a0), (b1, a1)]


def _scene(objs: list[tuple[str, str]], sizes: list[float], centres: list[tuple[float, float]]) -> Scene:
    return Scene(tuple(Shape(s, c, x, y, z) for (c, s), z, (x, y) in zip(objs, sizes, centres)))


def _sizes(rng: np.random.Generator, n: int) -> list[float]:
    lo, hi = _SIZE_RANGE[n]
    return [float(rng.uniform(lo, hi)) for _ in range(n)]


def sample_scene(rng: np.random.Generator, kind: str) -> tuple[Scene, Facts]:
    """A scene for one caption category and the facts a caption of it states (object 0 is the caption's kind 1)."""
    if kind == MISSPELLINGS:  # a Colors or Binding scene; the typo is applied to its caption
        base = COLORS_CAT if rng.random() < 0.5 else BINDING
        scene, facts = sample_scene(rng, base)
        return scene, Facts(**{**facts_to_row(facts), "category": MISSPELLINGS})
    if kind == COLORS_CAT:
        color, shape = COLORS[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))]
        sizes = _sizes(rng, 1)
        return _scene([(color, shape)], sizes, _place(rng, sizes)), Facts(kind, color, shape, 1)
    if kind == COUNTING:
        n = int(rng.integers(1, 5))
        color, shape = COLORS[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))]
        while True:
            sizes = _sizes(rng, n)
            centres = _place(rng, sizes)
            if centres is not None:
                return _scene([(color, shape)] * n, sizes, centres), Facts(kind, color, shape, n)
    if kind in (POSITIONAL, BINDING):
        c1, c2 = (COLORS[i] for i in rng.choice(len(COLORS), size=2, replace=False))  # colours always differ
        if kind == BINDING:  # shapes differ too, so "the red one is the circle" is a real test of binding
            s1, s2 = (SHAPES[i] for i in rng.choice(len(SHAPES), size=2, replace=False))
        else:
            s1, s2 = SHAPES[rng.integers(len(SHAPES))], SHAPES[rng.integers(len(SHAPES))]
        sizes = _sizes(rng, 2)
        if kind == BINDING:
            while (centres := _place(rng, sizes)) is None:
                sizes = _sizes(rng, 2)
            return _scene([(c1, s1), (c2, s2)], sizes, centres), Facts(kind, c1, s1, 1, c2, s2, 1)
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        centres = _place_relation(rng, sizes, relation)
        return _scene([(c1, s1), (c2, s2)], sizes, centres), Facts(kind, c1, s1, 1, c2, s2, 1, relation)
    raise UserError(f"unknown shapes category {kind!r}; expected one of {', '.join(CATEGORIES)}")


# ----------------------------------------------------------------------------- captions

_TEMPLATES_ONE = ("{a} {c} {s}", "a photo of {a} {c} {s}", "{a} {c} {s} on a white background",
                  "an image of {a} {c} {s}", "a drawing of {a} {c} {s}")
_TEMPLATES_COUNT = ("{n} {c} {s}", "a photo of {n} {c} {s}", "{n} {c} {s} on a white background",
                    "an image of {n} {c} {s}", "there are {n} {c} {s}")
_TEMPLATES_TWO = ("{a1} {c1} {s1} and {a2} {c2} {s2}", "a photo of {a1} {c1} {s1} and {a2} {c2} {s2}",
                  "{a1} {c1} {s1} next to {a2} {c2} {s2}", "{a1} {c1} {s1} and {a2} {c2} {s2} on a white background")
_RELATION_PHRASES = {
    "left": ("to the left of", "on the left of", "left of"),
    "right": ("to the right of", "on the right of", "right of"),
    "above": ("above",),
    "below": ("below", "beneath"),
}
_TEMPLATES_POS = ("{a1} {c1} {s1} {rel} {a2} {c2} {s2}", "a photo of {a1} {c1} {s1} {rel} {a2} {c2} {s2}",
                  "{a1} {c1} {s1} is {rel} {a2} {c2} {s2}")
_VOCAB = frozenset(COLORS + SHAPES + tuple(s + "s" for s in SHAPES) + NUMBER_WORDS)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def caption_for(facts: Facts, rng: np.random.Generator) -> str:
    """A caption stating exactly `facts`, from a template chosen by rng (Misspellings get one deterministic typo)."""
    cat = facts.category
    c1, s1 = facts.color_1, facts.shape_1
    if cat == COLORS_CAT or (cat == MISSPELLINGS and facts.color_2 is None):
        text = _TEMPLATES_ONE[rng.integers(len(_TEMPLATES_ONE))].format(a=_article(c1), c=c1, s=s1)
    elif cat == COUNTING:
        n = facts.count_1
        text = _TEMPLATES_COUNT[rng.integers(len(_TEMPLATES_COUNT))].format(n=NUMBER_WORDS[n], c=c1, s=_plural(s1, n))
    elif cat in (BINDING, MISSPELLINGS):
        c2, s2 = facts.color_2, facts.shape_2
        text = _TEMPLATES_TWO[rng.integers(len(_TEMPLATES_TWO))].format(
            a1=_article(c1), c1=c1, s1=s1, a2=_article(c2), c2=c2, s2=s2)
    elif cat == POSITIONAL:
        c2, s2 = facts.color_2, facts.shape_2
        phrases = _RELATION_PHRASES[facts.relation]
        text = _TEMPLATES_POS[rng.integers(len(_TEMPLATES_POS))].format(
            a1=_article(c1), c1=c1, s1=s1, a2=_article(c2), c2=c2, s2=s2, rel=phrases[rng.integers(len(phrases))])
    else:
        raise UserError(f"unknown shapes category {cat!r}")
    if cat == MISSPELLINGS:
        text = misspell(text, rng)
    return text


def misspell(text: str, rng: np.random.Generator) -> str:
    """One typo in one colour or shape word (swap, drop or double a letter); never yields another vocabulary word."""
    words = text.split(" ")
    targets = [i for i, w in enumerate(words) if w in _VOCAB and w not in NUMBER_WORDS and len(w) >= 4]
    i = targets[rng.integers(len(targets))]
    word = words[i]
    for _ in range(50):
        op, j = int(rng.integers(3)), int(rng.integers(1, len(word) - 1))  # keep the first letter
        if op == 0:
            typo = word[:j] + word[j + 1] + word[j] + word[j + 2:]
        elif op == 1:
            typo = word[:j] + word[j + 1:]
        else:
            typo = word[:j] + word[j] + word[j:]
        if typo != word and typo not in _VOCAB:
            break
    words[i] = typo
    return " ".join(words)


def facts_of(scene: Scene) -> Facts:
    """The facts a scene shows, read from its objects: one object -> Colors; n alike -> Counting; two differing in
    colour and shape -> Binding; two of different colours otherwise -> Positional, with the relation of object 0 to
    object 1 along the axis of their larger offset."""
    objs = scene.objects
    kinds = {(o.color, o.shape) for o in objs}
    if len(kinds) == 1:
        (color, shape), = kinds
        return Facts(COLORS_CAT if len(objs) == 1 else COUNTING, color, shape, len(objs))
    if len(objs) != 2 or objs[0].color == objs[1].color:
        raise UserError("a shapes caption describes one kind of object (1-4 of it) or two objects of different "
                        f"colours; this scene has {[(o.color, o.shape) for o in objs]}")
    a, b = objs
    if a.shape != b.shape:
        return Facts(BINDING, a.color, a.shape, 1, b.color, b.shape, 1)
    dx, dy = a.cx - b.cx, a.cy - b.cy
    relation = ("left" if dx < 0 else "right") if abs(dx) > abs(dy) else ("above" if dy < 0 else "below")
    return Facts(POSITIONAL, a.color, a.shape, 1, b.color, b.shape, 1, relation)


def caption(scene: Scene, rng: np.random.Generator, facts: Facts | None = None) -> tuple[str, Facts]:
    """(caption text, facts) for a scene: `facts` as drawn by sample_scene, or read from the scene (facts_of)."""
    facts = facts_of(scene) if facts is None else facts
    return caption_for(facts, rng), facts


# ----------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class ShapesWorld:
    """A deterministic, endless captioned dataset: item i depends only on (seed, split, i).

    Item i has category categories[i % len(categories)]: by default each category once per cycle, so any prefix is
    balanced; naming a category twice in `categories` trains on it twice as often. The train and heldout splits draw
    from disjoint seed streams. A world subclasses this with its own categories, scenes and captions
    (imagen.shapes_hard.HardWorld).
    """

    seed: int = 0
    split: str = "train"
    categories: tuple[str, ...] = CATEGORIES
    WORLD: ClassVar[str] = "shapes"
    ALL_CATEGORIES: ClassVar[tuple[str, ...]] = CATEGORIES
    SEED_SALT: ClassVar[tuple[int, ...]] = ()  # extra seed words keep another world's streams apart

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise UserError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if not self.categories:
            raise UserError(f"{self.WORLD} categories must be a non-empty list of {', '.join(self.ALL_CATEGORIES)}")
        unknown = sorted(set(self.categories) - set(self.ALL_CATEGORIES))
        if unknown:
            raise UserError(f"unknown {self.WORLD} categories {', '.join(map(repr, unknown))}; "
                            f"choose from {', '.join(self.ALL_CATEGORIES)}")

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), SPLITS[self.split], int(i), *self.SEED_SALT])

    # the world's own parts (a subclass names its own): scenes, captions, renders, fact rows
    sample = staticmethod(sample_scene)
    caption_for = staticmethod(caption_for)
    render = staticmethod(render)
    facts_row = staticmethod(facts_to_row)

    def item(self, i: int):
        """(scene, caption, facts) of item i."""
        rng = self.rng(i)
        scene, facts = self.sample(rng, self.categories[i % len(self.categories)])
        return scene, self.caption_for(facts, rng), facts

    def record(self, i: int, size: int) -> dict:
        """Item i as a flat record: image (uint8 [size, size, 3]), caption, and the fact columns."""
        scene, text, facts = self.item(i)
        return {"image": self.render(scene, size), "caption": text, **self.facts_row(facts)}

    def held_out(self, n: int) -> list:
        """The first n items' (caption, facts, category): the world's prompt suite (on the heldout split)."""
        out = []
        for i in range(n):
            _, text, facts = self.item(i)
            out.append((text, facts, facts.category))
        return out


def make_dataset(n: int, seed: int = 0, size: int = 64, split: str = "train") -> list[dict]:
    """The first n records of ShapesWorld(seed, split) rendered at `size` px."""
    world = ShapesWorld(seed, split)
    return [world.record(i, size) for i in range(n)]


def held_out_captions(n: int, seed: int = 0) -> list[tuple[str, Facts, str]]:
    """n held-out (caption, facts, category), balanced over CATEGORIES: the `shapes` prompt suite."""
    return ShapesWorld(seed, "heldout").held_out(n)


heldout_captions = held_out_captions  # the name used in some briefs
