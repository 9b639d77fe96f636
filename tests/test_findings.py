"""The second reference model `shapes-hard`, `eval shapes` on its own world, and `imagen-bench findings` end to end
on a tiny budget (the full run is `imagen-bench findings`, its output committed as docs/findings.md)."""

import functools
import json
import tomllib
from pathlib import Path

import pytest

from imagen.checkpoint import model_world_of, read_config, resolve, sampler_defaults, shipped_models
from imagen.config import to_dict
from imagen_bench import main

ROOT = Path(__file__).resolve().parents[1]


def test_shapes_hard2_is_shipped_small_with_its_recipe_and_the_first_models_sr_stage():
    assert "shapes-hard2" in shipped_models()
    folder = resolve("shapes-hard2")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 12e6
    assert model_world_of("shapes-hard2") == "shapes-hard"
    recipe = tomllib.loads((ROOT / "configs" / "hard2_model.toml").read_text())
    shipped = to_dict(read_config(folder))
    assert shipped["text"] == recipe["text"]
    for st, want in zip(shipped["stages"], recipe["stages"]):
        assert {k: st["unet"][k] for k in want["unet"]} == want["unet"]
    assert shipped["stages"][0]["unet"]["position_input"] and shipped["stages"][0]["unet"]["attn_position"]
    # scripts/train_hard2.sh completes the cascade with shapes-hard's SR stage: the same tensors
    from safetensors.torch import load_file

    mine, theirs = load_file(folder / "sr64.safetensors"), load_file(resolve("shapes-hard") / "sr64.safetensors")
    assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)
    d = sampler_defaults("shapes-hard2")
    assert (d.sampler, d.steps, d.guidance, d.threshold) == ("ddim", 20, (3.0,), "static")
    assert (folder / "sampler.toml").read_text() == (ROOT / "configs" / "hard2_sampler.toml").read_text()


def test_shapes_hard_is_shipped_small_with_its_world_and_recipe():
    assert "shapes-hard" in shipped_models()
    folder = resolve("shapes-hard")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 12e6
    assert model_world_of("shapes-hard") == "shapes-hard" and model_world_of("shapes") == "shapes"
    recipe = tomllib.loads((ROOT / "configs" / "hard_model.toml").read_text())
    shipped = to_dict(read_config(folder))
    assert shipped["text"] == recipe["text"]
    for st, want in zip(shipped["stages"], recipe["stages"]):
        assert {k: st["unet"][k] for k in want["unet"]} == want["unet"]
    assert sampler_defaults("shapes-hard").guidance  # the shipped sampler.toml parses and fits the model
    text = (ROOT / "configs" / "hard_sampler.toml").read_text()
    assert (folder / "sampler.toml").read_text() == text


def test_eval_shapes_scores_a_model_on_its_own_world(capsys):
    assert main(["eval", "shapes", "--model", "shapes-hard", "--guidance", "1", "--n", "5", "--steps", "2",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["world"] == "shapes-hard"
    acc = report["results"][0]["accuracy"]
    assert {"color", "shape", "overall"} <= set(acc) and set(acc) <= {"color", "shape", "count", "size", "style",
                                                                       "position", "overall"}
    cats = set(report["results"][0]["by_category"])
    assert cats <= {"Attributes", "Counting", "Positional", "Inside", "Largest"} and len(cats) == 5
    assert main(["eval", "shapes", "--model", "shapes", "--world", "shapes-hard", "--guidance", "1", "--n", "2",
                 "--steps", "1", "--json"]) == 0  # another world on request
    assert json.loads(capsys.readouterr().out)["world"] == "shapes-hard"


def test_findings_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    out, cache = tmp_path / "docs", tmp_path / "cache"
    args = ["findings", "--n", "4", "--steps", "2", "--guidance", "1", "5", "--percentiles", "0.9",
            "--aug-levels", "0", "0.3", "--base-steps", "2", "--sr-steps", "2", "--train-n", "16",
            "--batch-size", "4", "--out", str(out), "--cache", str(cache), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    md = (out / "findings.md").read_text()
    for k in ("## 1.", "## 2.", "## 3.", "## 4.", "## Summary", "CPU minutes"):
        assert k in md
    for fig in ("guidance", "percentile", "sr_aug", "text"):
        assert (out / "findings" / f"{fig}.png").stat().st_size > 1000
    data = json.loads((out / "findings.json").read_text())
    assert set(data["verdicts"]) == {"1", "2", "3", "4"}
    for v in data["verdicts"].values():
        assert any(w in v for w in ("holds", "does not hold", "inconclusive at this n"))
    assert len(data["guidance"]["rows"]) == 6  # 2 weights x none/static/dynamic
    assert {c["sr"] for c in data["sr_aug"]["curves"]} == {"with augmentation", "without augmentation"}
    assert len(data["text"]["results"]) >= 3
    assert summary["total"]["cpu_minutes"] >= 0
    # a second run reuses every trained model and grid cell
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("reusing") == 5 and "training" not in err.replace("reusing", "")
    # measuring some findings keeps the others from OUT/findings.json, each labelled with the run that measured it
    assert main(args + ["--only", "4"]) == 0
    capsys.readouterr()
    md = (out / "findings.md").read_text()
    assert md.count("*Kept from an earlier run") == 3 and "the others are kept from earlier runs" in md
    summary_rows = md.split("## Summary")[1].strip().splitlines()[2:]
    assert [r.endswith("(kept from an earlier run) |") for r in summary_rows] == [True, True, True, False]
    assert main(["findings", "--rewrite", "--out", str(out)]) == 0  # the write-up again keeps the labels
    capsys.readouterr()
    assert (out / "findings.md").read_text().count("*Kept from an earlier run") == 3
    # finding 2 reads finding 1's cells: measuring finding 1 again drops the finding 2 of the earlier run
    assert main(args + ["--only", "1"]) == 0
    capsys.readouterr()
    data = json.loads((out / "findings.json").read_text())
    assert set(data["verdicts"]) == {"1", "3", "4"} and "dynamic" not in data
    assert data["provenance"]["guidance"]["config"]["findings"] == [1]
    assert data["provenance"]["text"]["config"]["findings"] == [4]
    # a cache entry of another recipe is refused, naming the folder
    (cache / "base-recipe-2" / "recipe.json").write_text(json.dumps({"key": "other"}))
    assert main(args) == 2
    assert "another recipe" in capsys.readouterr().err


def _row(t, w, acc, n=50, fid=100.0):
    return {"threshold": t, "guidance": w, "align_overall": acc, "align_overall_n": n, "fid_x": fid}


def test_verdicts_follow_the_intervals():
    from findings.report import FAILS, HOLDS, OPEN, dynamic_verdict, guidance_verdict, text_verdicts

    def part(rows):
        return {"rows": rows, "fid_metric": "fid_x"}

    # alignment 0.1 -> 0.6 beyond the intervals, FID worse there than at w = 1: the trade-off holds
    assert guidance_verdict(part([_row("static", 1, 0.1, fid=10), _row("static", 5, 0.6, fid=20)]))[0] == HOLDS
    # the same gain with FID better at the larger weight: no trade-off seen
    assert guidance_verdict(part([_row("static", 1, 0.1, fid=20), _row("static", 5, 0.6, fid=10)]))[0] == OPEN
    # guidance only hurts: does not hold; a small difference: inconclusive; one curve failing fails the finding
    assert guidance_verdict(part([_row("none", 1, 0.6), _row("none", 5, 0.1)]))[0] == FAILS
    assert guidance_verdict(part([_row("none", 1, 0.30), _row("none", 5, 0.36)]))[0] == OPEN
    assert guidance_verdict(part([_row("static", 1, 0.1, fid=10), _row("static", 5, 0.6, fid=20),
                                  _row("none", 1, 0.6), _row("none", 5, 0.1)]))[0] == FAILS
    assert guidance_verdict(part([_row("none", 5, 0.6)]))[0] == OPEN  # no curve of two weights
    assert guidance_verdict(part([_row("static", 1, 0.1, n=0), _row("static", 5, 0.6, n=0)]))[0] == OPEN
    p1 = part([_row(t, w, a) for t, w, a in (("none", 5, 0.1), ("static", 5, 0.1), ("dynamic:0.995", 5, 0.7))])
    p2 = {**part([_row("dynamic:0.9", 5, 0.2)]), "large_guidance": [5.0]}
    beat, p_matters, _ = dynamic_verdict(p1, p2)
    assert beat == HOLDS and p_matters == HOLDS
    p1["rows"][2]["align_overall"] = 0.12
    assert dynamic_verdict(p1, p2)[:2] == (OPEN, OPEN)

    def res(base, acc):
        return {"base": base, "guidance": 3.0, "fid": 1.0, "alignment": {"overall": {"value": acc, "low": acc - 0.05,
                                                                                       "high": acc + 0.05}}}

    enc, xattn, _, _ = text_verdicts({"results": [res("pretrained MiniLM, cross-attention", 0.5),
                                                  res("random-init MiniLM, cross-attention", 0.2),
                                                  res("pretrained MiniLM, pooled vector only", 0.48)]})
    assert (enc, xattn) == (HOLDS, OPEN)


def test_findings_refuses_bad_input_in_one_line(tmp_path, capsys):
    for bad in (["--only", "5"], ["--n", "1"], ["--percentiles", "1.5"], ["--base-config", "nope.toml"],
                ["--aug-levels", "1.5"], ["--sampler", "euler"], ["--base-config", "configs/shapes_base.toml"]):
        assert main(["findings", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")] + bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("imagen-bench: error:") and "\n" not in err
    assert not (tmp_path / "o").exists()


@functools.cache
def _accuracy(sampler, n: int, model: str = "shapes-hard"):
    from bench.metrics.alignment import accuracy_dict, alignment
    from imagen.pipeline import Pipeline
    from imagen.worlds import get_world

    pipe = Pipeline.load(model)
    caps = get_world("shapes-hard").held_out_captions(n, 0)
    images = pipe.generate([c[0] for c in caps], list(range(n)), sampler, batch_size=25)
    return accuracy_dict(alignment(list(images), [c[1] for c in caps], [c[2] for c in caps]).accuracy)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="at the CPU budget (base 1,400 steps, SR 1,000) no fact type reaches 0.70 at "
                   "the default settings (colour 0.56 is the best on the eval captions): docs/reference-models.md, "
                   "'The second reference model'. Remove this mark when it passes.")
def test_shapes_hard_meets_every_fact_target_at_its_default_settings():
    """Every fact type >= 0.70 at the model's own settings (its sampler.toml), on 100 held-out captions."""
    guided = _accuracy(sampler_defaults("shapes-hard"), 100)
    print(json.dumps({"guided": guided}))
    assert all(v >= 0.70 for k, v in guided.items() if k != "overall"), guided


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the shipped default is w = 1 (chosen on seed 1000's captions, where w = 3 "
                   "lost by 0.05), so its settings cannot beat w = 1; w = 3 beat it by 0.10 on the eval captions, "
                   "within the intervals: docs/reference-models.md, 'The second reference model'. Remove this mark "
                   "when it passes.")
def test_shapes_hard_guidance_beats_no_guidance_by_a_tenth():
    """Overall alignment at the model's default settings beats the same settings at w = 1 by 0.10."""
    d = sampler_defaults("shapes-hard")
    guided, plain = _accuracy(d, 100), _accuracy(d.given(guidance=(1.0,)), 100)
    print(json.dumps({"guided": guided, "plain": plain}))
    assert guided["overall"] >= plain["overall"] + 0.10, (guided, plain)


@pytest.mark.slow
def test_shapes_hard2_at_its_settings_beats_shapes_hard_at_its_own():
    """The shipped second recipe at its sampler.toml against the first model at its own, on the same 100 held-out
    captions (seed 0) and image seeds 0..99: overall alignment (measured 0.42 against 0.11). The image seeds alone
    move overall by up to 0.2 here: the eval grid's seeds on the same captions give shapes-hard2 0.21, seeds
    500..599 and 1000..1099 give 0.34 and 0.32 (the images are the grid's exactly, seed for seed)."""
    new = _accuracy(sampler_defaults("shapes-hard2"), 100, "shapes-hard2")
    old = _accuracy(sampler_defaults("shapes-hard"), 100)
    print(json.dumps({"shapes-hard2": new, "shapes-hard": old}))
    assert new["overall"] >= old["overall"] + 0.10, (new, old)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 25's targets for the 60-minute CPU recipe: overall >= 0.40 and every "
                   "fact type >= 0.60 at the default settings; on these 100 captions with image seeds 0..99 "
                   "shapes-hard2 gets overall 0.42 but shape 0.54, count 0.40 and position 0.575 (0.27 overall on the "
                   "eval grid's 183 captions; docs/training.md, 'The 60-minute run'). Remove this mark when it "
                   "passes.")
def test_shapes_hard2_meets_the_issue_25_targets_at_its_default_settings():
    guided = _accuracy(sampler_defaults("shapes-hard2"), 100, "shapes-hard2")
    print(json.dumps({"guided": guided}))
    assert guided["overall"] >= 0.40 and all(v >= 0.60 for k, v in guided.items() if k != "overall"), guided
