"""The shapes world (imagen.shapes), its scorer (imagen.shapes_scorer) and `imagen-bench data shapes`."""

import csv
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from imagen import shapes as S
from imagen.errors import UserError
from imagen import shapes_scorer as SC
from imagen.shapes_scorer import FACT_TYPES, check, detect, score


def _coverage_area(img: np.ndarray, color: str) -> float:
    """Object area in px from the pixels alone: each pixel's fraction of the way from white to the colour."""
    bg = np.array([255.0, 255.0, 255.0])
    ref = np.array(S.PALETTE[color], dtype=float) - bg
    return float(np.clip((img.astype(float) - bg) @ ref / (ref @ ref), 0, 1).sum())


# ----------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("shape,area_fn", [
    ("circle", lambda s: math.pi * s * s / 4),
    ("square", lambda s: s * s),
    ("triangle", lambda s: math.sqrt(3) / 4 * s * s),
])
@pytest.mark.parametrize("size", [16, 64, 1024])
def test_render_area_and_colour(shape, area_fn, size):
    scene = S.Scene((S.Shape(shape, "blue", 0.5, 0.5, 0.4),))
    img = S.render(scene, size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert (img[0, 0] == 255).all() and (img[-1, -1] == 255).all()  # white background
    assert tuple(img[size // 2, size // 2]) == S.PALETTE["blue"]  # flat fill at the centre
    expected = area_fn(0.4 * size)
    assert _coverage_area(img, "blue") == pytest.approx(expected, rel=0.03 if size > 16 else 0.08)


def test_render_geometry_is_where_the_scene_says():
    scene = S.Scene((S.Shape("square", "red", 0.25, 0.75, 0.2),))
    img = S.render(scene, 100)
    ys, xs = np.nonzero((img != 255).any(axis=2))
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (15, 34, 65, 84)  # [0.15, 0.35) x [0.65, 0.85) of 100 px
    tri = S.render(S.Scene((S.Shape("triangle", "red", 0.5, 0.5, 0.5),)), 100)
    rows = (tri != 255).any(axis=2).sum(axis=1)
    nz = np.nonzero(rows)[0]
    assert rows[nz[0]] < rows[nz[-1]] / 4  # apex up: narrow at the top, wide at the bottom


def test_render_rejects_bad_size():
    with pytest.raises(UserError):
        S.render(S.Scene(()), 4)


# ----------------------------------------------------------------------------- the world


def test_vocabulary():
    assert len(S.COLORS) >= 6 and set(S.SHAPES) >= {"circle", "square", "triangle"}
    rgb = np.array([S.PALETTE[c] for c in S.COLORS], float)
    pair = np.linalg.norm(rgb[:, None] - rgb[None], axis=2) + np.eye(len(rgb)) * 1e9
    assert pair.min() > 80 and np.linalg.norm(rgb - 255, axis=1).min() > 200  # far apart, far from white


def test_items_are_deterministic_and_splits_disjoint():
    a, b = S.ShapesWorld(0, "train"), S.ShapesWorld(0, "train")
    for i in range(20):
        assert a.item(i) == b.item(i)
    train = [S.ShapesWorld(0, "train").item(i)[0] for i in range(50)]
    held = [S.ShapesWorld(0, "heldout").item(i)[0] for i in range(50)]
    other = [S.ShapesWorld(1, "train").item(i)[0] for i in range(50)]
    assert not set(train) & set(held) and not set(train) & set(other)
    with pytest.raises(UserError):
        S.ShapesWorld(0, "test")


def test_categories_balanced_and_mapped_to_drawbench(data_dir):
    cats = Counter(S.ShapesWorld(3).item(i)[2].category for i in range(100))
    assert cats == {c: 20 for c in S.CATEGORIES}
    drawbench = set(pd.read_csv(data_dir / "drawbench" / "prompts.csv")["category"])
    assert set(S.DRAWBENCH_CATEGORY.values()) <= drawbench


def test_category_cycle_oversamples_and_rejects_unknown_names():
    cycle = ("Colors", "Positional", "Positional")
    world = S.ShapesWorld(3, "train", cycle)
    cats = Counter(world.item(i)[2].category for i in range(30))
    assert cats == {"Colors": 10, "Positional": 20}
    # item i keeps its own seed stream: the same category at the same index gives the same item as the default cycle
    default = S.ShapesWorld(3, "train")
    assert world.item(0) == default.item(0)
    with pytest.raises(UserError, match="Colours"):
        S.ShapesWorld(0, "train", ("Colours",))
    with pytest.raises(UserError, match="non-empty"):
        S.ShapesWorld(0, "train", ())


def test_scenes_valid_and_captions_state_the_facts():
    world = S.ShapesWorld(5, "train")
    for i in range(500):
        scene, text, f = world.item(i)
        objs = scene.objects
        assert len(objs) == sum(n for _, _, n in f.kinds())
        for o in objs:  # inside the border with a margin
            assert S.MARGIN - 1e-9 <= o.cx - o.size / 2 and o.cx + o.size / 2 <= 1 - S.MARGIN + 1e-9
            assert S.MARGIN - 1e-9 <= o.cy - o.size / 2 and o.cy + o.size / 2 <= 1 - S.MARGIN + 1e-9
        for p in range(len(objs)):  # never overlapping: bounding boxes apart by MARGIN
            for q in range(p + 1, len(objs)):
                a, b = objs[p], objs[q]
                gap_x = abs(a.cx - b.cx) - (a.size + b.size) / 2
                gap_y = abs(a.cy - b.cy) - (a.size + b.size) / 2
                assert math.hypot(max(gap_x, 0), max(gap_y, 0)) >= S.MARGIN - 1e-9
        # objects match the facts, kind 1 first
        assert (objs[0].color, objs[0].shape) == (f.color_1, f.shape_1)
        if f.color_2 is not None:
            assert (objs[-1].color, objs[-1].shape) == (f.color_2, f.shape_2)
            assert f.color_1 != f.color_2  # no ambiguous "a red circle and a red square"
        if f.category == S.BINDING or (f.category == S.MISSPELLINGS and f.color_2):
            assert f.shape_1 != f.shape_2
        words = text.split()
        if f.category != S.MISSPELLINGS:
            assert f.color_1 in words and any(w.startswith(f.shape_1) for w in words)
            if f.color_2:
                assert f.color_2 in words
        else:  # exactly one content word is not a vocabulary word, and its facts still describe the scene
            bad = [w for w in words if w not in S._VOCAB and w not in
                   {"a", "an", "and", "photo", "of", "on", "white", "background", "image", "drawing", "next", "to"}]
            assert len(bad) == 1
        if f.category == S.COUNTING:
            assert S.NUMBER_WORDS[f.count_1] in words
        if f.category == S.POSITIONAL:
            a, b = objs
            dx, dy = a.cx - b.cx, a.cy - b.cy
            along, across = {"left": (-dx, dy), "right": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[f.relation]
            assert along > 0 and abs(across) <= 0.45 * along + 1e-9  # clearly satisfied
            phrase = {"left": "left", "right": "right", "above": "above", "below": ("below", "beneath")}[f.relation]
            assert any(p in text for p in ((phrase,) if isinstance(phrase, str) else phrase))


def test_caption_reads_facts_from_the_scene():
    world = S.ShapesWorld(6)
    for i in range(100):
        scene, _, f = world.item(i)
        if f.category == S.COUNTING and f.count_1 == 1:  # one object reads back as a Colors scene
            assert S.facts_of(scene) == S.Facts(S.COLORS_CAT, f.color_1, f.shape_1, 1)
        elif f.category in (S.COLORS_CAT, S.COUNTING, S.BINDING):
            assert S.facts_of(scene) == f
        elif f.category == S.POSITIONAL and f.shape_1 == f.shape_2:
            assert S.facts_of(scene) == f  # the relation read back from the geometry
    text, facts = S.caption(S.Scene((S.Shape("square", "green", 0.5, 0.5, 0.3),)), np.random.default_rng(0))
    assert facts == S.Facts(S.COLORS_CAT, "green", "square") and "green square" in text
    with pytest.raises(UserError):
        S.facts_of(S.Scene((S.Shape("square", "red", 0.2, 0.5, 0.2), S.Shape("circle", "red", 0.7, 0.5, 0.2))))


def test_misspell_is_deterministic_and_changes_one_word():
    text = "a photo of a yellow triangle and a blue square"
    a = S.misspell(text, np.random.default_rng(7))
    assert a == S.misspell(text, np.random.default_rng(7)) and a != text
    diff = [(x, y) for x, y in zip(text.split(), a.split()) if x != y]
    assert len(diff) == 1 and diff[0][1] not in S._VOCAB


def test_facts_round_trip_through_csv(tmp_path):
    facts = [S.ShapesWorld(0).item(i)[2] for i in range(10)]
    df = pd.DataFrame([S.facts_to_row(f) for f in facts])
    df.to_csv(tmp_path / "f.csv", index=False)
    back = pd.read_csv(tmp_path / "f.csv")
    assert [S.row_to_facts(r) for _, r in back.iterrows()] == facts
    assert S.row_to_facts({**S.facts_to_row(facts[2]), "color_2": ""}).color_2 is None
    with pytest.raises(UserError):
        S.row_to_facts({**S.facts_to_row(facts[0]), "category": "Nope"})


def test_held_out_captions_and_make_dataset():
    caps = S.held_out_captions(10, seed=2)
    assert [c for _, _, c in caps] == list(S.CATEGORIES) * 2
    assert caps[3][0] == S.ShapesWorld(2, "heldout").item(3)[1] and caps[3][1].category == caps[3][2]
    recs = S.make_dataset(3, seed=0, size=32)
    assert recs[1]["image"].shape == (32, 32, 3) and recs[1]["caption"] == S.ShapesWorld(0).item(1)[1]
    assert recs[1]["category"] == S.COUNTING


# ----------------------------------------------------------------------------- the scorer


def test_tested_facts_by_category():
    f = S.Facts
    assert SC.tested_facts(f(S.COLORS_CAT, "red", "circle")) == ("color", "shape")
    assert SC.tested_facts(f(S.COUNTING, "red", "circle", 3)) == ("color", "shape", "count")
    assert SC.tested_facts(f(S.POSITIONAL, "red", "circle", 1, "blue", "square", 1, "left")) == (
        "color", "shape", "position")
    assert set(score(np.full((32, 32, 3), 255, np.uint8), f(S.BINDING, "red", "circle", 1, "blue", "square", 1))) \
        == {"color", "shape"}


@pytest.mark.parametrize("size", [32, 64, 128])
def test_scorer_right_on_clean_renders(size):
    world = S.ShapesWorld(11, "heldout")
    passed, total = Counter(), Counter()
    for i in range(300):
        scene, _, facts = world.item(i)
        for k, v in score(S.render(scene, size), facts).items():
            passed[k] += v
            total[k] += 1
    assert set(total) == set(FACT_TYPES) and min(total.values()) >= 60
    for k in FACT_TYPES:
        assert passed[k] / total[k] >= 0.99, (k, passed[k], total[k])


def test_scorer_detects_objects_exactly():
    scene = S.Scene((S.Shape("triangle", "orange", 0.3, 0.3, 0.25), S.Shape("square", "purple", 0.7, 0.3, 0.22),
                     S.Shape("circle", "cyan", 0.5, 0.75, 0.3)))
    blobs = sorted(detect(S.render(scene, 64)), key=lambda b: b.cy * 10 + b.cx)
    assert [(b.color, b.shape) for b in blobs] == [("orange", "triangle"), ("purple", "square"), ("cyan", "circle")]
    for b, o in zip(blobs, sorted(scene.objects, key=lambda o: o.cy * 10 + o.cx)):
        assert b.cx == pytest.approx(o.cx, abs=0.02)
    assert detect(np.full((64, 64, 3), 255, np.uint8)) == []


def test_scorer_rejects_wrong_facts():
    """A scorer that always says True must fail here: every single-fact change is caught, and another scene's
    facts mostly fail."""
    f = S.Facts
    red_circle = S.render(S.Scene((S.Shape("circle", "red", 0.5, 0.5, 0.4),)), 64)
    assert score(red_circle, f(S.COLORS_CAT, "red", "circle")) == {"color": True, "shape": True}
    assert score(red_circle, f(S.COLORS_CAT, "blue", "circle")) == {"color": False, "shape": True}
    assert score(red_circle, f(S.COLORS_CAT, "red", "square")) == {"color": True, "shape": False}
    assert score(red_circle, f(S.COUNTING, "red", "circle", 2))["count"] is False
    pair = S.render(S.Scene((S.Shape("circle", "red", 0.25, 0.5, 0.3), S.Shape("square", "blue", 0.75, 0.5, 0.3))), 64)
    assert score(pair, f(S.BINDING, "red", "circle", 1, "blue", "square", 1)) == {"color": True, "shape": True}
    assert score(pair, f(S.BINDING, "red", "square", 1, "blue", "circle", 1))["shape"] is False  # swapped binding
    pos = f(S.POSITIONAL, "red", "circle", 1, "blue", "square", 1, "left")
    assert score(pair, pos)["position"] is True
    for rel in ("right", "above", "below"):
        assert score(pair, S.Facts(**{**S.facts_to_row(pos), "relation": rel}))["position"] is False

    world = S.ShapesWorld(12, "heldout")
    passed, total, all_ok = Counter(), Counter(), 0
    for i in range(300):
        scene, _, _ = world.item(i)
        other = world.item(i + 5000)[2]
        res = score(S.render(scene, 64), other)
        all_ok += all(res.values())
        for k, v in res.items():
            passed[k] += v
            total[k] += 1
    assert all_ok / 300 < 0.05
    assert passed["color"] / total["color"] < 0.15 and passed["position"] / total["position"] < 0.2
    assert passed["count"] / total["count"] < 0.5 and passed["shape"] / total["shape"] < 0.5


def test_scorer_robust_to_blur_and_noise():
    world, rng = S.ShapesWorld(13, "heldout"), np.random.default_rng(0)
    passed, total = Counter(), Counter()
    for i in range(200):
        scene, _, facts = world.item(i)
        img = ndimage.gaussian_filter(S.render(scene, 64).astype(float), (1.0, 1.0, 0))
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        for k, v in score(img, facts).items():
            passed[k] += v
            total[k] += 1
    for k in FACT_TYPES:
        assert passed[k] / total[k] >= 0.97, (k, passed[k], total[k])


def test_check_counts_per_colour():
    from imagen.shapes_scorer import Blob

    b = lambda c, s, x: Blob(c, s, x, 0.5, 0.05, 0.0, 0.0)  # noqa: E731
    facts = S.Facts(S.COUNTING, "red", "circle", 2)
    assert check([b("red", "circle", 0.2), b("red", "circle", 0.8)], facts)["count"] is True
    assert check([b("red", "circle", 0.2)], facts)["count"] is False
    assert check([b("red", "circle", 0.2), b("red", "circle", 0.5), b("red", "circle", 0.8)], facts)["count"] is False


# ----------------------------------------------------------------------------- `imagen-bench data shapes`


def test_cli_data_shapes_writes_pngs_and_captions(tmp_path, capsys):
    from imagen_bench import main

    out = tmp_path / "shapes"
    assert main(["data", "shapes", "--n", "12", "--size", "32", "--seed", "4", "--split", "heldout",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "captions.csv")))
    assert len(rows) == 12 and list(rows[0]) == ["file", "caption", *S.FACT_COLUMNS]
    world = S.ShapesWorld(4, "heldout")
    for i in (0, 7):
        scene, text, facts = world.item(i)
        assert rows[i]["caption"] == text and S.row_to_facts(rows[i]) == facts
        assert (np.asarray(Image.open(out / rows[i]["file"])) == S.render(scene, 32)).all()
    # an existing folder is refused (exit 2), nothing half-written is left beside it
    assert main(["data", "shapes", "--n", "3", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "shapes", "--n", "3", "--size", "16", "--out", str(out), "--overwrite", "--json"]) == 0
    assert len(list(csv.DictReader(open(out / "captions.csv")))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]
    assert main(["data", "shapes", "--n", "3", "--size", "2", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
