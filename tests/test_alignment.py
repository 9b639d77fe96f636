"""bench.metrics.alignment (the shapes scorer as a metric) and `imagen-bench eval shapes`."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.metrics import alignment as A
from imagen import shapes as S
from imagen.config import SamplerConfig
from imagen.shapes_scorer import score


def _renders(n, seed=21, size=48):
    world = S.ShapesWorld(seed, "heldout")
    items = [world.item(i) for i in range(n)]
    return np.stack([S.render(sc, size) for sc, _, _ in items]), [f for _, _, f in items]


def test_wilson_matches_reference_values():
    low, high = A.wilson(5, 10)  # textbook value for 5/10
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert A.wilson(0, 20)[0] == 0.0 and A.wilson(20, 20)[1] == 1.0


def test_alignment_on_clean_renders_is_perfect():
    images, facts = _renders(40)
    res = A.alignment(images, facts)
    assert set(res.accuracy) == {"color", "shape", "count", "position", "overall"}
    assert all(a.value == 1.0 for a in res.accuracy.values())
    assert res.accuracy["overall"].n == 40 and res.accuracy["count"].n == 8  # 1 in 5 captions is Counting
    assert res.accuracy["position"].n == 8 and res.accuracy["color"].n == 40
    assert set(res.by_category) == set(S.CATEGORIES)
    assert set(res.by_category["Colors"]) == {"color", "shape", "overall"}  # untested facts absent, not 0


def test_alignment_matches_scorer_row_by_row():
    images, facts = _renders(30)
    shifted = facts[7:] + facts[:7]  # score each image against another image's caption: mostly wrong
    res = A.alignment(images, shifted)
    df = res.per_image
    assert len(df) == 30 and list(df["category"]) == [f.category for f in shifted]
    expected_all = []
    for i in range(30):
        want = score(images[i], shifted[i])
        for t in ("color", "shape", "count", "position"):
            got = df.loc[i, t]
            assert (got is pd.NA) if t not in want else bool(got) == want[t]
        expected_all.append(all(want.values()))
    assert res.accuracy["overall"].value == pytest.approx(np.mean(expected_all))
    assert res.accuracy["overall"].value < 0.3
    # per-category overall = mean over that category's rows
    for cat, acc in res.by_category.items():
        rows = [e for e, f in zip(expected_all, shifted) if f.category == cat]
        assert acc["overall"].value == pytest.approx(np.mean(rows)) and acc["overall"].n == len(rows)


def test_categories_override_facts_json_and_metric_rows():
    images, facts = _renders(10)
    as_json = [json.dumps(S.facts_to_row(f)) for f in facts]
    res = A.alignment(list(images), as_json, categories=["x"] * 5 + ["y"] * 5)
    assert set(res.by_category) == {"x", "y"} and res.by_category["x"]["overall"].n == 5
    rows = A.metric_rows(res)
    names = {(r["metric"], r["category"]) for r in rows}
    assert ("align_overall", "all") in names and ("align_count", "x") in names
    assert {r["metric"] for r in rows} == {"align_color", "align_shape", "align_count", "align_position",
                                            "align_overall"}
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in rows)
    with pytest.raises(ValueError):
        A.alignment(images[:3], facts)


class _RenderingPipeline:
    """A stand-in for imagen.pipeline.Pipeline that 'generates' the true scene of each held-out caption, or a
    blank image when `blank` is set."""

    model_id, checkpoint_hash = "fake", "fake"
    sampler_defaults = SamplerConfig(sampler="ddim", steps=9, threshold="static")

    def __init__(self, seed, blank=False):
        self.lookup = {}
        world = S.ShapesWorld(seed, "heldout")
        for i in range(50):
            scene, text, _ = world.item(i)
            self.lookup[text] = scene
        self.blank = blank
        self.calls = []

    def generate(self, prompts, seeds, sampler, batch_size=8, progress=False):
        self.calls.append((list(seeds), sampler.guidance, sampler.sampler, sampler.steps, sampler.threshold))
        if self.blank:
            return np.full((len(prompts), 32, 32, 3), 255, np.uint8)
        return np.stack([S.render(self.lookup[p], 32) for p in prompts])


def test_evaluate_shapes_aggregates_per_guidance(tmp_path, monkeypatch):
    from bench.work import item_seed
    from imagen_bench.data import evaluate_shapes

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    good = evaluate_shapes(_RenderingPipeline(3), [1, 4], n=10, seed=3, steps=2, threshold="none", sampler=None,
                           batch_size=4)
    assert [r["guidance"] for r in good] == [1.0, 4.0]
    assert good[0]["accuracy"] == {"color": 1.0, "shape": 1.0, "count": 1.0, "position": 1.0, "overall": 1.0}
    blank_pipe = _RenderingPipeline(3, blank=True)
    bad = evaluate_shapes(blank_pipe, [2], n=5, seed=3, steps=2, threshold="none", sampler=None, batch_size=5)
    assert bad[0]["accuracy"]["overall"] == 0.0 and bad[0]["accuracy"]["color"] == 0.0
    # a grid study: the seeds are every study's (spec seed, prompt id, sample index), guidance and the given settings
    # passed through, the rest from the model's defaults
    from bench.suites import load_suite

    seeds = [item_seed(3, p.prompt_id, 0) for p in load_suite("shapes:5", seed=3)]
    assert [(sorted(c[0]),) + c[1:] for c in blank_pipe.calls] == [(sorted(seeds), (2.0,), "ddim", 2, "none")]
    assert (tmp_path / "cache" / "studies").is_dir() and Path(bad[0]["study"]).is_dir()
    used = bad[0]["sampler"]
    assert (used["sampler"], used["steps"], used["threshold"], used["guidance"]) == ("ddim", 2, "none", [2.0])
    only_colors = evaluate_shapes(_RenderingPipeline(3), [1], n=1, seed=3, steps=2, threshold="none", sampler=None,
                                  batch_size=4)
    assert set(only_colors[0]["accuracy"]) == {"color", "shape", "overall"}  # untested: absent, not zero


def test_cli_eval_shapes_tiny_json(capsys, tmp_path, monkeypatch):
    pytest.importorskip("imagen.pipeline")
    from imagen_bench import main

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    rc = main(["eval", "shapes", "--model", "tiny", "--guidance", "1", "3", "--n", "5", "--steps", "1",
               "--threshold", "static", "--batch-size", "5", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)  # stdout is only JSON
    assert out["model"] == "tiny" and [r["guidance"] for r in out["results"]] == [1.0, 3.0]
    for r in out["results"]:
        assert r["n"] == 5
        assert set(r["accuracy"]) == {"color", "shape", "count", "position", "overall"}
        assert all(0.0 <= v <= 1.0 for v in r["accuracy"].values())
        assert set(r["by_category"]) == set(S.CATEGORIES)


def test_cli_eval_shapes_bad_input_is_exit_2(capsys):
    from imagen_bench import main

    assert main(["eval", "shapes", "--model", "tiny", "--n", "0"]) == 2
    assert main(["eval", "shapes", "--model", "tiny", "--threshold", "sometimes"]) == 2
    assert "threshold" in capsys.readouterr().err
