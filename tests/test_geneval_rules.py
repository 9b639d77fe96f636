"""GenEval's published rules on detections given by hand, case by case for every tag: the thresholds (0.3; 0.9 for
counting), at most 16 objects per class, counts, colours, the position rule on box centres with its 0.1 margin,
exclusions, and the summary (overall = the mean of the tags). The colour classifier on a real open_clip model
against the same zero-shot classification written out by hand."""

import numpy as np
import pytest

from bench.metrics import geneval as G


def det(label, score, box, mask=None):
    return G.Detection(label, score, tuple(float(v) for v in box), mask)


def colors_by_label(mapping):
    """A colour classifier stand-in: each object's colour from a table keyed by its box."""
    return lambda objects, cls: [mapping[o.box] for o in objects]


def test_thresholds_depend_on_the_tag_and_16_objects_at_most():
    ds = [det("cat", 0.35, (0, 0, 10, 10)), det("cat", 0.95, (20, 0, 30, 10)), det("cat", 0.2, (40, 0, 50, 10))]
    assert [d.score for d in G.kept(ds, "two_object")["cat"]] == [0.95, 0.35]  # most confident first, > 0.3
    assert [d.score for d in G.kept(ds, "counting")["cat"]] == [0.95]  # counting: > 0.9
    many = [det("apple", 0.5 + i / 100, (i, 0, i + 5, 5)) for i in range(20)]
    assert len(G.kept(many, "counting")) == 0 and len(G.kept(many, "single_object")["apple"]) == 16
    assert G.kept([det("cat", 0.3, (0, 0, 1, 1))], "single_object") == {}  # strictly above the threshold


def test_overlap_suppression_is_off_as_published_and_available():
    a, b = det("dog", 0.9, (0, 0, 10, 10)), det("dog", 0.8, (1, 1, 10, 10))
    assert len(G.kept([a, b], "two_object")["dog"]) == 2
    assert G.kept([a, b], "two_object", max_overlap=0.5)["dog"] == [a]
    assert G.iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0 and G.iou((0, 0, 9, 9), (10, 0, 19, 9)) == 0.0


def test_counts_and_exclusions():
    three = [det("apple", 0.95, (i * 20, 0, i * 20 + 10, 10)) for i in range(3)]
    meta = {"tag": "counting", "include": [{"class": "apple", "count": 3}], "exclude": [{"class": "apple", "count": 4}]}
    assert G.judge(G.kept(three, "counting"), meta)[0]
    assert not G.judge(G.kept(three[:2], "counting"), meta)[0]
    four = three + [det("apple", 0.95, (70, 0, 80, 10))]
    ok, why = G.judge(G.kept(four, "counting"), meta)
    assert not ok and "expected apple<4, found 4" in why[0]
    low = three[:2] + [det("apple", 0.5, (40, 0, 50, 10))]  # the third below counting's 0.9
    assert not G.judge(G.kept(low, "counting"), meta)[0]


def test_colors_look_only_at_the_count_most_confident():
    red, blue = det("car", 0.9, (0, 0, 10, 10)), det("car", 0.8, (20, 0, 30, 10))
    color_of = colors_by_label({red.box: "red", blue.box: "blue"})
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    assert G.judge(G.kept([red, blue], "colors"), meta, color_of)[0]
    meta_blue = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "blue"}]}
    assert not G.judge(G.kept([red, blue], "colors"), meta_blue, color_of)[0]  # the blue one is second
    attr = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                             {"class": "bus", "count": 1, "color": "blue"}]}
    bus = det("bus", 0.9, (40, 0, 50, 10))
    assert not G.judge(G.kept([red, bus], "color_attr"), attr, colors_by_label({red.box: "red", bus.box: "red"}))[0]
    assert G.judge(G.kept([red, bus], "color_attr"), attr, colors_by_label({red.box: "red", bus.box: "blue"}))[0]


def test_relations_on_box_centres_with_the_margin():
    a, b = (0, 40, 10, 50), (40, 40, 50, 50)  # a left of b, same row
    assert G.relations(a, b) == {"left of"} and G.relations(b, a) == {"right of"}
    assert G.relations((0, 0, 10, 10), (0, 40, 10, 50)) == {"above"}  # image y grows downwards
    # boxes 10 px wide: the margin is 0.1 x (10 + 10) = 2 px off the centres' offset, and what is left must be more
    # than half of the offset: 5 px apart leaves 3 (0.6: left of), 3 px apart leaves 1 (0.33: none), 2 px nothing
    assert G.relations((0, 0, 10, 10), (5, 0, 15, 10)) == {"left of"}
    assert G.relations((0, 0, 10, 10), (3, 0, 13, 10)) == set()
    assert G.relations((0, 0, 10, 10), (2, 0, 12, 10)) == set()
    # a diagonal: both axes carry more than half of the direction
    assert G.relations((0, 0, 10, 10), (40, 40, 50, 50)) == {"left of", "above"}
    assert G.relations((0, 0, 10, 10), (40, 8, 50, 18)) == {"left of"}  # mostly sideways


def test_position_needs_its_target_matched():
    meta = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                           {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    dog, cat_left, cat_right = det("dog", 0.9, (40, 0, 50, 10)), det("cat", 0.9, (0, 0, 10, 10)), \
        det("cat", 0.9, (80, 0, 90, 10))
    assert G.judge(G.kept([dog, cat_left], "position"), meta)[0]
    ok, why = G.judge(G.kept([dog, cat_right], "position"), meta)
    assert not ok and "left of" in why[0]
    ok, why = G.judge(G.kept([cat_left], "position"), meta)  # no dog: the cat has no target
    assert not ok and any("no target" in w for w in why)


def test_summary_is_the_mean_of_the_tags_not_of_the_images():
    results = [("single_object", True)] * 4 + [("counting", False)] * 1 + [("counting", True)] * 1
    s = G.summary(results)
    assert s["single_object"] == 1.0 and s["counting"] == 0.5 and s["overall"] == pytest.approx(0.75)


def test_clip_colors_equal_the_zero_shot_classification_by_hand():
    from bench.metrics.clip_score import load_clip

    clip = load_clip("shapes-clip")
    colors = G.ClipColors(clip.model, clip.preprocess, clip.tokenizer)
    image = np.full((64, 64, 3), 255, np.uint8)
    image[8:28, 8:28] = (220, 30, 30)
    image[36:56, 36:56] = (30, 60, 220)
    mask = np.zeros((64, 64), bool)
    mask[36:56, 36:56] = True
    objects = [det("square", 0.9, (8, 8, 28, 28)), det("square", 0.9, (30, 30, 60, 60), mask)]
    got = colors(image, objects, "square")
    # by hand: every template's text embedding, normalised, averaged per colour; the crop (masked grey) embedded
    import torch
    from PIL import Image

    with torch.no_grad():
        weights = []
        for c in G.COLORS:
            e = clip.model.encode_text(clip.tokenizer([t.format(c=c, cls="square") for t in G.COLOR_TEMPLATES]))
            e = (e / e.norm(dim=-1, keepdim=True)).mean(0)
            weights.append((e / e.norm()).numpy())
        w = np.stack(weights, 1)
        pil = Image.fromarray(image)
        grey = Image.new("RGB", (64, 64), (0x99, 0x99, 0x99))
        crops = [pil.crop((8, 8, 28, 28)), Image.composite(pil, grey, Image.fromarray(mask.astype(np.uint8) * 255))
                 .crop((30, 30, 60, 60))]
        f = clip.model.encode_image(torch.stack([clip.preprocess(c) for c in crops])).numpy()
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    assert got == [G.COLORS[i] for i in (f @ w).argmax(1)]
    assert colors(image, [], "square") == []


# ----------------------------------------------------------------------------- end to end on rendered scenes


def _scene(*objects):
    from imagen.shapes import Scene, Shape

    return Scene(tuple(Shape(s, c, x, y, 0.16) for s, c, x, y in objects))


CASES = [  # (GenEval-style metadata over the shapes world, a scene that satisfies it, scenes that break one fact)
    ({"tag": "single_object", "include": [{"class": "circle", "count": 1}]},
     [("circle", "red", 0.5, 0.5)], [[("square", "red", 0.5, 0.5)]]),
    ({"tag": "two_object", "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}]},
     [("circle", "red", 0.3, 0.5), ("square", "blue", 0.7, 0.5)], [[("circle", "red", 0.3, 0.5)]]),
    ({"tag": "counting", "include": [{"class": "triangle", "count": 3}],
      "exclude": [{"class": "triangle", "count": 4}]},
     [("triangle", "green", 0.2, 0.3), ("triangle", "green", 0.5, 0.7), ("triangle", "green", 0.8, 0.3)],
     [[("triangle", "green", 0.2, 0.3), ("triangle", "green", 0.8, 0.3)],
      [("triangle", "green", 0.2, 0.2), ("triangle", "green", 0.8, 0.2), ("triangle", "green", 0.2, 0.8),
       ("triangle", "green", 0.8, 0.8)]]),
    ({"tag": "colors", "include": [{"class": "square", "count": 1, "color": "blue"}]},
     [("square", "blue", 0.5, 0.5)], [[("square", "red", 0.5, 0.5)]]),
    ({"tag": "position", "include": [{"class": "square", "count": 1},
                                     {"class": "circle", "count": 1, "position": ["left of", 0]}]},
     [("circle", "red", 0.2, 0.5), ("square", "blue", 0.8, 0.5)],
     [[("circle", "red", 0.8, 0.5), ("square", "blue", 0.2, 0.5)], [("circle", "red", 0.2, 0.5)]]),
    ({"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                       {"class": "triangle", "count": 1, "color": "yellow"}]},
     [("circle", "red", 0.3, 0.5), ("triangle", "yellow", 0.7, 0.5)],
     [[("circle", "yellow", 0.3, 0.5), ("triangle", "red", 0.7, 0.5)]]),
]


@pytest.mark.parametrize("meta, good, bad", CASES, ids=[c[0]["tag"] for c in CASES])
def test_rules_on_rendered_scenes_whose_truth_is_known(meta, good, bad):
    from imagen.shapes import render

    det = G.ShapesDetector()
    assert G.score_image(render(_scene(*good), 128), meta, det, det.colors)[0]
    for objects in bad:
        ok, why = G.score_image(render(_scene(*objects), 128), meta, det, det.colors)
        assert not ok and why
