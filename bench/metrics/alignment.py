"""Caption alignment on the shapes worlds: each world's scorer as a metric.

Every image is scored on the facts its caption states (the world's `tested_facts`): colour, shape, count, relative
position, and in the hard world (imagen.shapes_hard) also size and style. A facts row says its world ("world":
"shapes-hard"; the plain world's rows have no key). Definitions of the metrics (each a fraction in [0, 1] with a
95% Wilson interval):

- `align_color`, `align_shape`, `align_count`, `align_position`, `align_size`, `align_style`: over the images
  whose caption tests that fact, the fraction that pass it. A fact type no image tested is absent, never 0.
- `align_overall`: over all images, the fraction whose EVERY tested fact passes (an image is aligned only if
  the whole caption is right; this is the number to compare models by).

Each metric is also given per caption category (plain world: Colors, Counting, Positional, Binding, Misspellings;
hard world: Attributes, Counting, Positional, Inside, Largest; see imagen.shapes and imagen.shapes_hard). Pure functions: images + facts in, a DataFrame and dicts out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.store import COL_CATEGORY, COL_HIGH, COL_LOW, COL_METRIC, COL_N, COL_VALUE
from imagen.shapes import Facts, row_to_facts
from imagen.shapes_hard import WORLD as HARD_WORLD
from imagen.shapes_hard import HardFacts
from imagen.shapes_hard import row_to_facts as hard_row_to_facts
from imagen.shapes_hard_scorer import FACT_TYPES as HARD_FACT_TYPES
from imagen.shapes_hard_scorer import score as hard_score
from imagen.shapes_scorer import FACT_TYPES as PLAIN_FACT_TYPES
from imagen.shapes_scorer import score as plain_score

# every fact type of either world, in report order
FACT_TYPES: tuple[str, ...] = PLAIN_FACT_TYPES + tuple(t for t in HARD_FACT_TYPES if t not in PLAIN_FACT_TYPES)

ALIGN_COLOR = "align_color"
ALIGN_SHAPE = "align_shape"
ALIGN_COUNT = "align_count"
ALIGN_POSITION = "align_position"
ALIGN_SIZE = "align_size"
ALIGN_STYLE = "align_style"
ALIGN_OVERALL = "align_overall"
METRIC_NAMES: dict[str, str] = {
    "color": ALIGN_COLOR, "shape": ALIGN_SHAPE, "count": ALIGN_COUNT, "position": ALIGN_POSITION, "size": ALIGN_SIZE,
    "style": ALIGN_STYLE, "overall": ALIGN_OVERALL,
}
ALL = "all"  # the category label of the aggregate over every category


@dataclass(frozen=True)
class Accuracy:
    """Fraction passed among n tested, with a 95% Wilson score interval."""

    value: float
    n: int
    low: float
    high: float


@dataclass(frozen=True)
class Alignment:
    """per_image: one row per image (index, category, one column per fact type: True / False / None = not
    tested, overall). accuracy: {fact type or "overall": Accuracy} over all images. by_category: the same per
    caption category."""

    per_image: pd.DataFrame
    accuracy: dict[str, Accuracy]
    by_category: dict[str, dict[str, Accuracy]]


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # clamp so that the interval always holds p (rounding at k = 0 or k = n)
    return (min(p, max(0.0, mid - half)), max(p, min(1.0, mid + half)))


def as_facts(value) -> Facts | HardFacts:
    """Facts (of either world) from a Facts / HardFacts, a fact-column dict/row, or its JSON text (the samples
    table's `facts` column); a row with "world": "shapes-hard" is the hard world's."""
    if isinstance(value, (Facts, HardFacts)):
        return value
    if isinstance(value, str):
        value = json.loads(value)
    get = value.get if hasattr(value, "get") else (lambda k: value[k])
    try:
        world = get("world")
    except KeyError:
        world = None
    return hard_row_to_facts(value) if world == HARD_WORLD else row_to_facts(value)


def score(image, facts) -> dict[str, bool]:
    """The facts' own world's scorer on one image."""
    return hard_score(image, facts) if isinstance(facts, HardFacts) else plain_score(image, facts)


def score_images(images, facts_list, categories=None) -> pd.DataFrame:
    """One row per image: index, category, a pass/fail (or None when untested) per fact type, overall.

    images: uint8 [B, H, W, 3] array or a list of [H, W, 3]; facts_list: B facts (see as_facts); categories: B
    labels to group by (default: each caption's own category).
    """
    facts_list = [as_facts(f) for f in facts_list]
    if len(images) != len(facts_list):
        raise ValueError(f"{len(images)} images but {len(facts_list)} facts")
    if categories is None:
        categories = [f.category for f in facts_list]
    elif len(categories) != len(facts_list):
        raise ValueError(f"{len(categories)} categories but {len(facts_list)} facts")
    rows = []
    for i, (img, facts, cat) in enumerate(zip(images, facts_list, categories)):
        result = score(np.asarray(img), facts)
        row = {"index": i, "category": cat}
        row.update({t: result.get(t) for t in FACT_TYPES})
        row["overall"] = all(result.values())
        rows.append(row)
    df = pd.DataFrame(rows, columns=["index", "category", *FACT_TYPES, "overall"])
    for t in (*FACT_TYPES, "overall"):
        df[t] = df[t].astype("boolean")  # nullable: <NA> = fact not tested
    return df


def aggregate(per_image: pd.DataFrame) -> dict[str, Accuracy]:
    """{fact type or "overall": Accuracy} over the rows given; fact types no row tested are absent."""
    out = {}
    for t in (*FACT_TYPES, "overall"):
        col = per_image[t].dropna()
        if len(col) == 0:
            continue
        k, n = int(col.sum()), int(len(col))
        low, high = wilson(k, n)
        out[t] = Accuracy(k / n, n, low, high)
    return out


def alignment(images, facts_list, categories=None) -> Alignment:
    """Score every image against its caption's facts and aggregate per fact type and per category."""
    per_image = score_images(images, facts_list, categories)
    by_category = {str(cat): aggregate(grp) for cat, grp in per_image.groupby("category", sort=True)}
    return Alignment(per_image, aggregate(per_image), by_category)


def accuracy_dict(acc: dict[str, Accuracy]) -> dict[str, float]:
    """{fact type: value} (JSON-ready)."""
    return {t: a.value for t, a in acc.items()}


def metric_rows(result: Alignment) -> list[dict]:
    """Rows for the store's metrics table: metric (align_*), category ("all" or a caption category), value, n,
    ci_low, ci_high. The caller adds cell_id and any other keys."""
    rows = []
    for cat, acc in [(ALL, result.accuracy), *result.by_category.items()]:
        for t, a in acc.items():
            rows.append({COL_METRIC: METRIC_NAMES[t], COL_CATEGORY: cat, COL_VALUE: a.value, COL_N: a.n,
                         COL_LOW: a.low, COL_HIGH: a.high})
    return rows
