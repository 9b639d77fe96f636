"""The hard shapes world (imagen.shapes_hard) and its scorer: scenes, captions, facts, and the scorer's accuracy."""

import collections
import dataclasses
import json

import numpy as np
import pytest

from imagen.errors import UserError
from imagen.shapes_hard import (CATEGORIES, INSIDE, LARGEST, MAX_OBJECTS, POSITIONAL, HardWorld, facts_to_row,
                                held_out_captions, render, row_to_facts)
from imagen import shapes_hard_scorer as scorer
from imagen.shapes_hard_scorer import FACT_TYPES, detect, score
from imagen.worlds import WORLDS, get_world, model_world, score_facts_json


def _accuracy(size: int, n: int, split: str = "train"):
    world = HardWorld(0, split)
    tot, ok, bad = collections.Counter(), collections.Counter(), []
    for i in range(n):
        scene, cap, facts = world.item(i)
        for k, v in score(render(scene, size), facts).items():
            tot[k] += 1
            ok[k] += v
            if not v:
                bad.append((i, k, cap))
    return tot, ok, bad


@pytest.mark.parametrize("size,n", [(64, 300), (128, 100)])
def test_scorer_is_right_on_clean_renders_for_every_fact_type(size, n):
    tot, ok, bad = _accuracy(size, n)
    assert set(tot) == set(FACT_TYPES)  # every fact type is tested by some caption
    for k in FACT_TYPES:
        assert ok[k] / tot[k] >= 0.99, (k, ok[k], tot[k], bad[:5])


def test_scorer_catches_each_kind_of_mistake():
    world = HardWorld(0, "train")
    checked = collections.Counter()
    for i in range(60):
        scene, _, facts = world.item(i)
        objs = list(scene.objects)
        first = objs[0]
        # a wrong colour for the first named object: its colour is gone (distractors never use it)
        spare = next(c for c in ("red", "green", "blue", "yellow", "purple", "orange", "cyan")
                     if all(o.color != c for o in objs))
        recoloured = [dataclasses.replace(o, color=spare) if o.color == first.color else o for o in objs]
        r = score(render(dataclasses.replace(scene, objects=tuple(recoloured)), 64), facts)
        assert r["color"] is False
        checked["color"] += 1
        if facts.style_2 == "outlined" or facts.style_1 == "outlined":
            solid = [dataclasses.replace(o, style="solid") if o.style == "outlined" else o for o in objs]
            if facts.category != INSIDE:  # an inside object on a solid container merges with it
                assert score(render(dataclasses.replace(scene, objects=tuple(solid)), 64), facts)["style"] is False
                checked["style"] += 1
        if facts.category == LARGEST:
            shrunk = [dataclasses.replace(objs[0], size=0.06, size_class="small")] + objs[1:]
            assert score(render(dataclasses.replace(scene, objects=tuple(shrunk)), 64), facts)["size"] is False
            checked["size"] += 1
        if facts.category == POSITIONAL and facts.relation in ("left", "right", "above", "below"):
            a, b = objs[0], objs[1]
            swapped = [dataclasses.replace(a, cx=b.cx, cy=b.cy), dataclasses.replace(b, cx=a.cx, cy=a.cy)] + objs[2:]
            assert score(render(dataclasses.replace(scene, objects=tuple(swapped)), 64), facts)["position"] is False
            checked["position"] += 1
        if facts.category == INSIDE:
            moved = [dataclasses.replace(objs[0], cx=0.08, cy=0.08)] + objs[1:]  # out of the container (may overlap
            r = score(render(dataclasses.replace(scene, objects=tuple(moved)), 64), facts)  # a distractor: no matter)
            assert r["position"] is False
            checked["inside"] += 1
        if facts.count_1 is not None:
            fewer = [o for o in objs if o is not first]
            assert score(render(dataclasses.replace(scene, objects=tuple(fewer)), 64), facts)["count"] is False
            checked["count"] += 1
    assert all(checked[k] >= 3 for k in ("color", "style", "size", "position", "inside", "count")), checked


def test_scenes_captions_and_facts():
    world = HardWorld(0, "train")
    cats = collections.Counter()
    for i in range(100):
        scene, cap, facts = world.item(i)
        cats[facts.category] += 1
        assert 1 <= len(scene.objects) <= MAX_OBJECTS
        named = {c for c, *_ in facts.named()}
        # every named colour and shape word is in the caption; distractors never use a named colour
        for c, s, size, style in facts.named():
            assert c in cap and s in cap
            if size in ("small", "large"):
                assert size in cap
            if style:
                assert style in cap
        n_named = facts.count_1 or len(facts.named())
        assert sum(o.color in named for o in scene.objects) == n_named or facts.category == LARGEST
        assert world.item(i)[1] == cap  # deterministic
        assert row_to_facts(json.loads(json.dumps(facts_to_row(facts)))) == facts
        assert set(scorer.tested_facts(facts)) <= set(FACT_TYPES)
    assert set(cats) == set(CATEGORIES) and all(v == 20 for v in cats.values())
    train = {HardWorld(0, "train").item(i)[1] + str(HardWorld(0, "train").item(i)[0]) for i in range(30)}
    held = {HardWorld(0, "heldout").item(i)[1] + str(HardWorld(0, "heldout").item(i)[0]) for i in range(30)}
    assert not train & held
    backgrounds = {HardWorld(0, "train").item(i)[0].background.kind for i in range(40)}
    assert backgrounds == {"plain", "gradient", "clutter"}


def test_busy_backgrounds_are_not_objects():
    world = HardWorld(0, "train")
    for i in range(40):
        scene, _, _ = world.item(i)
        blobs, _ = detect(render(dataclasses.replace(scene, objects=()), 64))
        assert blobs == [], scene.background


def test_world_registry_and_stored_facts(tmp_path):
    assert WORLDS == ("shapes", "shapes-hard")
    w = get_world("shapes-hard")
    caps = w.held_out_captions(10, 0)
    assert [c for c, _, _ in caps] == [c for c, _, _ in held_out_captions(10, 0)]
    scene, _, facts = w.dataset(0, "heldout").item(3)
    result = score_facts_json(render(scene, 64), json.dumps(facts_to_row(facts)))
    assert result and all(result.values())
    with pytest.raises(UserError, match="unknown world"):
        get_world("shapes-harder")
    assert model_world(tmp_path) == "shapes"
    (tmp_path / "world.txt").write_text("shapes-hard\n")
    assert model_world(tmp_path) == "shapes-hard"
    (tmp_path / "world.txt").write_text("cubes\n")
    with pytest.raises(UserError, match="unknown world 'cubes'"):
        model_world(tmp_path)
    with pytest.raises(UserError, match="unknown shapes-hard categories"):
        HardWorld(0, "train", ("Colors",))


def test_the_suite_and_alignment_read_the_hard_world():
    from bench.metrics.alignment import alignment
    from bench.suites import load_suite, world_suite

    prompts = load_suite("shapes-hard:10")
    assert len(prompts) == 10 and {p.suite for p in prompts} == {"shapes-hard"}
    assert all(json.loads(p.facts)["world"] == "shapes-hard" for p in prompts)
    data = HardWorld(0, "heldout")
    images = np.stack([render(data.item(i)[0], 64) for i in range(10)])
    res = alignment(images, [p.facts for p in prompts])
    assert res.accuracy["overall"].value == 1.0
    assert world_suite(["shapes-hard:10", "drawbench"]) == ("shapes-hard", 10)
    with pytest.raises(UserError, match="one shapes world"):
        world_suite(["shapes:4", "shapes-hard:4"])
