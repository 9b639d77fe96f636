"""Grid specs, cells, seeds, shards, status and the metrics stage (with stand-in metric functions)."""

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from bench import store
from bench.cell_metrics import MetricFns, bootstrap_ci, compute_metrics
from bench.grid import (
    expand, format_status, in_shard, item_seed, parse_shard, parse_spec, run_grid, spec_to_toml, status, work_items,
)
from bench.suites import Prompt
from imagen.errors import UserError

SPEC = """
name = "t"
model = "fake"
suites = ["PROMPTS"]
samples_per_prompt = 2
seed = 5
batch_size = 3
[axes]
guidance = [1.0, 4.0]
threshold = ["none", "static", "dynamic:0.9"]
steps = [2]
[metrics]
clip_score = { model = "fake-clip" }
alignment = true
"""


class FakeGenerator:
    """Deterministic stand-in for imagen.pipeline.Pipeline: an 8x8 image from (seed, guidance, threshold)."""

    model_id, checkpoint_hash = "fake", "f" * 64

    def __init__(self):
        self.calls = []

    def generate(self, prompts, seeds, sampler, batch_size=8, progress=False):
        self.calls.append(list(prompts))
        t = int(hashlib.sha256(sampler.threshold.encode()).hexdigest()[:6], 16)
        return np.stack([np.random.default_rng([s, int(sampler.guidance[0] * 10), t]).integers(0, 256, (8, 8, 3))
                         for s in seeds]).astype(np.uint8)


@pytest.fixture
def prompts_csv(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("prompt,category\na red circle,A\na blue square,A\ntwo cats,B\n", encoding="utf-8")
    return f


def spec_for(csv_path, text=SPEC):
    return parse_spec(text.replace("PROMPTS", str(csv_path)))


@pytest.mark.parametrize("edit, message", [
    (("seed = 5", "seed = 5\ncolour = 1"), r"unknown key\(s\) \['colour'\]"),
    (("guidance = [1.0, 4.0]", "guidance = [-1.0]"), "axes.guidance: -1.0 must be >= 0"),
    (('"dynamic:0.9"', '"dynamic:2"'), "axes.threshold: 'dynamic:2'"),
    (("steps = [2]", "steps = []"), "axes.steps: the axis is empty"),
    (("steps = [2]", "steps = [2]\nsize = [3]"), "axes.*size"),
    (('clip_score = { model = "fake-clip" }', "clip_score = { modle = 1 }"), "metrics.clip_score: unknown"),
    (('steps = [2]', 'sampler = ["euler"]'), "axes.sampler: unknown sampler 'euler'"),
    (('threshold = ["none", "static", "dynamic:0.9"]', 'threshold = ["soft"]'), "unknown thresholding 'soft'"),
    (('name = "t"', ''), "missing key 'name'"),
    (("seed = 5", "seed = -1"), "seed must be an integer >= 0"),
])
def test_spec_errors_name_the_key(edit, message):
    with pytest.raises(UserError, match=message):
        parse_spec(SPEC.replace(*edit))


def test_spec_roundtrip_and_values(prompts_csv):
    spec = spec_for(prompts_csv)
    assert spec.guidance == ((1.0,), (4.0,)) and spec.threshold == ("none", "static", "dynamic:0.9")
    assert parse_spec(spec_to_toml(spec)) == spec
    per_stage = parse_spec(SPEC.replace("guidance = [1.0, 4.0]", "guidance = [[5, 3], 2]"))
    assert per_stage.guidance == ((5.0, 3.0), (2.0,))
    assert parse_spec(spec_to_toml(per_stage)) == per_stage


def test_cells_have_stable_distinct_ids(prompts_csv):
    spec = spec_for(prompts_csv)
    cells = expand(spec, "h1")
    assert len(cells) == 6 and len({c.id for c in cells}) == 6
    assert [c.id for c in cells] == [c.id for c in expand(spec, "h1")]
    assert cells[0].id != expand(spec, "h2")[0].id  # the model hash is part of the id
    canon = json.dumps({"aug_level": [0.0], "guidance": [1.0], "model_hash": "h1", "sampler": "ddpm", "steps": 2,
                        "threshold": "none"}, separators=(",", ":"), sort_keys=True)
    assert cells[0].id == hashlib.sha256(canon.encode()).hexdigest()[:12]
    assert cells[0].sampler_config().guidance == (1.0,) and cells[-1].threshold == "dynamic:0.9"


def test_seed_depends_on_prompt_and_index_not_cell(prompts_csv):
    spec = spec_for(prompts_csv)
    prompts = [Prompt("s", "s-1", "a"), Prompt("s", "s-2", "b")]
    items = work_items(expand(spec, "h"), prompts, 2, 5)
    assert len(items) == 6 * 2 * 2 and len({it.sample_id for it in items}) == len(items)
    by_key = {}
    for it in items:
        by_key.setdefault((it.prompt.prompt_id, it.sample_index), set()).add(it.seed)
    assert all(len(s) == 1 for s in by_key.values()) and len({s.pop() for s in by_key.values()}) == 4
    assert item_seed(5, "s-1", 0) == int(hashlib.sha256(b"5/s-1/0").hexdigest()[:8], 16) & 0x7FFFFFFF


def test_shards_partition_the_items(prompts_csv, monkeypatch):
    items = work_items(expand(spec_for(prompts_csv), "h"), [Prompt("s", f"s-{i}", str(i)) for i in range(10)], 2, 0)
    parts = [[it.sample_id for it in items if in_shard(it, (i, 3))] for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(it.sample_id for it in items) and all(parts)
    assert parse_shard("1/2") == (1, 2)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard(None) == (2, 4)
    for bad in ("2/2", "x", "1/0"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


def test_bootstrap_interval_matches_numpy():
    v = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    low, high = bootstrap_ci(v, n_boot=500, seed=3)
    idx = np.random.default_rng(3).integers(0, 8, size=(500, 8))
    assert (low, high) == (np.percentile(v[idx].mean(1), 2.5), np.percentile(v[idx].mean(1), 97.5))
    assert low < v.mean() < high
    assert bootstrap_ci([1.0]) == (None, None)


def test_bootstrap_is_clustered_by_prompt():
    """Four samples of a prompt that agree are one observation, not four: the clustered interval is the interval
    of the 10 prompt means (the same draws), and wider than the naive one over 40 'independent' images."""
    means = np.random.default_rng(0).random(10)
    v, prompts = np.repeat(means, 4), np.repeat([f"p{i}" for i in range(10)], 4)
    clustered = bootstrap_ci(v, n_boot=400, seed=1, clusters=prompts)
    assert clustered == pytest.approx(bootstrap_ci(means, n_boot=400, seed=1), abs=1e-12)
    naive = bootstrap_ci(v, n_boot=400, seed=1)
    assert clustered[1] - clustered[0] > 1.5 * (naive[1] - naive[0])
    assert bootstrap_ci([0.0, 1.0], clusters=["a", "a"]) == (None, None)  # one prompt: no interval


def _metric_fns(calls):
    def clip(images, prompts, model):
        calls.append("clip")
        return "clip_score_fake", images.reshape(len(images), -1).mean(1) / 255.0

    def align(image, facts):
        calls.append("align")
        return {"color": bool(image[0, 0, 0] > 127), "shape": True}

    return MetricFns(clip=clip, alignment=align)


def test_run_grid_metrics_per_cell_and_category_without_recompute(tmp_path, prompts_csv):
    spec = spec_for(prompts_csv)
    calls, gen = [], FakeGenerator()
    out = tmp_path / "study"
    summary = run_grid(spec, out, generator=gen, metric_fns=_metric_fns(calls), progress=False, log=lambda m: None)
    assert summary["complete"] and summary["images"] == 6 * 3 * 2 and summary["generated"] == 36
    samples = store.read_table(out, store.SAMPLES)
    metrics = store.read_table(out, store.METRICS)
    # CLIP: overall + categories A and B per cell; value = mean of the per-image scores of that cell
    clip = metrics[metrics[store.COL_METRIC] == "clip_score_fake"]
    assert len(clip) == 6 * 3
    cell = samples[store.COL_CELL_ID].iloc[0]
    rows = samples[samples[store.COL_CELL_ID] == cell]
    from PIL import Image

    per_image = [np.asarray(Image.open(out / p)).mean() / 255.0 for p in rows[store.COL_IMAGE_PATH]]
    overall = clip[(clip[store.COL_CELL_ID] == cell) & clip[store.COL_CATEGORY].isna()].iloc[0]
    assert overall[store.COL_VALUE] == pytest.approx(np.mean(per_image)) and overall[store.COL_N] == 6
    assert overall[store.COL_LOW] <= overall[store.COL_VALUE] <= overall[store.COL_HIGH]
    # no facts in a CSV suite: no alignment rows
    assert not metrics[store.COL_METRIC].str.startswith("align").any()
    # a rerun generates nothing and recomputes nothing
    n_calls = len(calls)
    again = run_grid(spec, out, generator=gen, metric_fns=_metric_fns(calls), progress=False, log=lambda m: None)
    assert again["generated"] == 0 and again["metric_rows"] == 0 and len(calls) == n_calls
    st = status(out)
    assert st["complete"] and st["done"] == st["planned"] == 36 and len(st["cells"]) == 6
    assert "36/36 images" in format_status(st)
    studies = store.read_table(out, store.STUDY)
    assert len(studies) == 2 and parse_spec(studies[store.COL_SPEC].iloc[0]) == spec
    assert "torch" in json.loads(studies[store.COL_VERSIONS].iloc[0])


def test_alignment_per_category_and_fact_for_shapes(tmp_path):
    spec = parse_spec(SPEC.replace('"PROMPTS"', '"shapes:5"').replace("clip_score", "#"))
    calls = []
    out = tmp_path / "s"
    run_grid(replace(spec, threshold=("none",), guidance=((1.0,),)), out, generator=FakeGenerator(),
             metric_fns=_metric_fns(calls), progress=False, log=lambda m: None)
    m = store.read_table(out, store.METRICS)
    samples = store.read_table(out, store.SAMPLES)
    from PIL import Image

    red = [bool(np.asarray(Image.open(out / p))[0, 0, 0] > 127) for p in samples[store.COL_IMAGE_PATH]]
    overall = m[(m[store.COL_METRIC] == "align_overall") & m[store.COL_CATEGORY].isna()].iloc[0]
    assert overall[store.COL_VALUE] == pytest.approx(np.mean(red)) and overall[store.COL_N] == 10
    assert m[(m[store.COL_METRIC] == "align_shape")][store.COL_VALUE].iloc[0] == 1.0
    cats = set(m[(m[store.COL_METRIC] == "align_overall") & m[store.COL_CATEGORY].notna()][store.COL_CATEGORY])
    assert cats == set(samples[store.COL_CATEGORY])


def test_bad_input_fails_before_any_work(tmp_path):
    spec = parse_spec(SPEC.replace('"PROMPTS"', '"nosuch"'))
    out = tmp_path / "never"
    with pytest.raises(UserError, match="unknown suite"):
        run_grid(spec, out, generator=FakeGenerator(), progress=False, log=lambda m: None)
    assert not out.exists()


def test_grid_alignment_metric_names_are_the_metric_modules():
    from bench.cell_metrics import ALIGN_PREFIX, ALIGNMENT
    from bench.metrics import alignment

    assert ALIGNMENT == alignment.ALIGN_OVERALL
    assert {ALIGN_PREFIX + f for f in ("color", "shape", "count", "position")} == {
        alignment.ALIGN_COLOR, alignment.ALIGN_SHAPE, alignment.ALIGN_COUNT, alignment.ALIGN_POSITION}


def test_last_written_part_wins_whatever_its_random_name(tmp_path, monkeypatch):
    """Readers keep the last row per key: 'last' must mean last written, not the largest random part name."""
    import uuid

    from reports.build import overall_metrics

    names = iter(["f" * 32, "0" * 32])  # the newer part gets the smaller random name
    monkeypatch.setattr(store.uuid, "uuid4", lambda: uuid.UUID(next(names)))
    row = {store.COL_CELL_ID: "c", store.COL_METRIC: "clip_score_x", store.COL_CATEGORY: None, store.COL_N: 4}
    store.write_part(tmp_path, store.METRICS, [{**row, store.COL_VALUE: 1.0}], prefix="s0of1")
    store.write_part(tmp_path, store.METRICS, [{**row, store.COL_VALUE: 2.0}], prefix="s0of1")
    assert overall_metrics(store.read_table(tmp_path, store.METRICS))[store.COL_VALUE].tolist() == [2.0]
    names = iter(["f" * 32, "0" * 32])  # and across writers: a later run's plan of a cell is the one status shows
    for prefix, plan in (("s1of2", {"old": {"items": 1}, "both": {"items": 1}}),
                         ("s0of1", {"new": {"items": 2}, "both": {"items": 3}})):
        store.write_part(tmp_path, store.STUDY, [{store.COL_NAME: prefix, store.COL_PLAN: json.dumps(plan)}],
                         prefix=prefix)
    (tmp_path / "tables" / store.SAMPLES).mkdir()
    cells = {c["cell_id"]: c["planned"] for c in status(tmp_path)["cells"]}
    assert cells == {"old": 1, "both": 3, "new": 2}  # every run's cells; the later plan wins for a cell in both


@pytest.mark.parametrize("edit, message", [
    (("guidance = [1.0, 4.0]", "guidance = [1.0, [4.0, 2.0, 1.0]]"), r"axes.guidance: \[4.0, 2.0, 1.0\] has 3 values"),
    (("steps = [2]", "steps = [2]\naug_level = [[0.1, 0.2]]"), r"axes.aug_level: \[0.1, 0.2\] has 2 values"),
    (("alignment = true", "alignment = true\nfid = true"), "metrics.fid.reference = \"shapes\" needs the shapes suite"),
    (("alignment = true", "alignment = true\nfid = { reference = \"/no/such/ref\" }"), "metrics.fid.reference: /no/"),
])
def test_model_and_metric_mismatches_fail_before_any_work(tmp_path, prompts_csv, edit, message):
    """Errors the spec alone cannot see (the model's stage count, FID's inputs) still come before any work."""
    from types import SimpleNamespace

    gen = FakeGenerator()
    gen.cascade = SimpleNamespace(cfg=SimpleNamespace(stages=("base", "sr")))  # a two-stage cascade
    out = tmp_path / "never"
    with pytest.raises(UserError, match=message):
        run_grid(spec_for(prompts_csv, SPEC.replace(*edit)), out, generator=gen, progress=False, log=lambda m: None)
    assert not out.exists() and not gen.calls


def test_shards_finishing_together_compute_metrics_once(tmp_path, prompts_csv):
    """Two shards that both see the grid complete run the metrics stage one after the other: rows written once."""
    import threading
    import time

    spec = replace(spec_for(prompts_csv), threshold=("none",), guidance=((1.0,),))
    out = tmp_path / "study"
    run_grid(spec, out, generator=FakeGenerator(), metrics=False, progress=False, log=lambda m: None)
    calls = []

    def slow_clip(images, prompts, model):
        calls.append(model)
        time.sleep(0.5)  # both shards are inside the metrics stage at once
        return "clip_score_fake", images.reshape(len(images), -1).mean(1) / 255.0

    fns = MetricFns(clip=slow_clip, alignment=lambda image, facts: {})
    threads = [threading.Thread(target=compute_metrics, args=(out, spec),
                                kwargs=dict(metric_fns=fns, progress=False, prefix=f"s{i}of2", log=lambda m: None))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    metrics = store.read_table(out, store.METRICS)
    assert len(calls) == 1 and len(metrics) == 3  # one cell: overall + categories A and B, once


def test_fid_is_recomputed_when_the_reference_folder_changes(tmp_path, prompts_csv):
    """The FID's inputs hash covers the reference's content, not just its path."""
    from PIL import Image

    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(ref / f"{i}.png")
    spec = replace(spec_for(prompts_csv, SPEC.replace("alignment = true", f'fid = {{ reference = "{ref}" }}')),
                   threshold=("none",), guidance=((1.0,),))
    calls = []

    def fid(images, fid_spec, reference):
        calls.append(len(list((ref).glob("*.png"))))
        return "fid_fake", float(calls[-1])

    fns = replace(_metric_fns([]), fid=fid)
    out = tmp_path / "study"
    run_grid(spec, out, generator=FakeGenerator(), metric_fns=fns, progress=False, log=lambda m: None)
    run_grid(spec, out, generator=FakeGenerator(), metric_fns=fns, progress=False, log=lambda m: None)
    assert calls == [3]  # unchanged reference: not recomputed
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(ref / "3.png")
    run_grid(spec, out, generator=FakeGenerator(), metric_fns=fns, progress=False, log=lambda m: None)
    assert calls == [3, 4]


def test_a_study_is_exactly_its_spec(tmp_path, prompts_csv):
    """Another seed, prompt set or model into the same folder is refused (nothing written) unless --extend; the
    metrics of a cell use exactly the spec's work items, never other samples stored beside them."""
    spec = replace(spec_for(prompts_csv), threshold=("none",), guidance=((1.0,),))
    out = tmp_path / "study"
    calls = []
    run_grid(spec, out, generator=FakeGenerator(), metric_fns=_metric_fns(calls), progress=False, log=lambda m: None)
    parts = {t: len(store.part_files(out, t)) for t in store.TABLES}
    other_csv = tmp_path / "other.csv"
    other_csv.write_text("prompt\na green frog\n", encoding="utf-8")
    other_model = FakeGenerator()
    other_model.checkpoint_hash = "e" * 64
    for change, what in ((dict(seed=6), "seed"), (dict(suites=(str(other_csv),)), "prompt set"),
                         ({}, "model")):
        with pytest.raises(UserError, match=f"another {what}.*give another --out"):
            run_grid(replace(spec, **change), out, generator=other_model if what == "model" else FakeGenerator(),
                     progress=False, log=lambda m: None)
        assert {t: len(store.part_files(out, t)) for t in store.TABLES} == parts  # nothing written
    with pytest.raises(UserError, match="another seed"):  # a seed cannot be extended: images are keyed without it
        run_grid(replace(spec, seed=6), out, generator=FakeGenerator(), extend=True, progress=False,
                 log=lambda m: None)
    # extending on purpose with other prompts: added, and each spec's metrics use only its own work items
    calls.clear()
    run_grid(replace(spec, suites=(str(other_csv),)), out, generator=FakeGenerator(), metric_fns=_metric_fns(calls),
             extend=True, progress=False, log=lambda m: None)
    samples = store.read_table(out, store.SAMPLES)
    assert len(samples) == 8  # 3 prompts x 2 samples, then 1 prompt x 2 samples, in the same cell
    metrics = store.read_table(out, store.METRICS)
    clip = metrics[(metrics[store.COL_METRIC] == "clip_score_fake") & metrics[store.COL_CATEGORY].isna()]
    assert list(clip[store.COL_N]) == [6, 2]  # never 8: the first spec's images are not this spec's
    from reports.build import latest_spec_metrics

    def shown():  # the CLIP rows the report would use: those of the spec that ran last
        m = latest_spec_metrics(store.read_table(out, store.METRICS), store.read_table(out, store.STUDY))
        return list(m[(m[store.COL_METRIC] == "clip_score_fake") & m[store.COL_CATEGORY].isna()][store.COL_N])

    assert shown() == [2]
    for suites, n in (((str(prompts_csv),), [6]), ((str(other_csv),), [2])):  # both specs resume as before
        again = run_grid(replace(spec, suites=suites), out, generator=FakeGenerator(), metric_fns=_metric_fns(calls),
                         progress=False, log=lambda m: None)
        assert again["generated"] == 0 and again["metric_rows"] == 0 and shown() == n


def test_cli_refuses_another_seed_in_one_line(tmp_path, prompts_csv, capsys):
    from imagen_bench import main

    spec = tmp_path / "s.toml"
    text = SPEC.replace("PROMPTS", str(prompts_csv)).replace('model = "fake"', 'model = "tiny"').replace(
        "[metrics]\nclip_score = { model = \"fake-clip\" }\nalignment = true", "")
    spec.write_text(text.replace('guidance = [1.0, 4.0]', 'guidance = [1.0]').replace(
        'threshold = ["none", "static", "dynamic:0.9"]', 'threshold = ["none"]').replace("steps = [2]", "steps = [1]"))
    out = tmp_path / "study"
    assert main(["grid", "run", str(spec), "--out", str(out), "--json"]) == 0
    spec.write_text(spec.read_text().replace("seed = 5", "seed = 6"))
    capsys.readouterr()
    assert main(["grid", "run", str(spec), "--out", str(out), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another seed (5, now 6)" in err and "another --out" in err
    assert main(["grid", "run", str(spec), "--out", str(tmp_path / "elsewhere"), "--json"]) == 0


def test_a_study_written_by_the_earlier_version_is_refused_before_any_work(tmp_path, prompts_csv):
    """Study rows of imagen-bench 0.1 (result schema 1: no seed or prompts_hash columns) are not read half-understood:
    the rerun is refused in one line that says how to run the spec again, and nothing is written."""
    import pyarrow.parquet as pq

    spec = replace(spec_for(prompts_csv), threshold=("none",), guidance=((1.0,),))
    out = tmp_path / "old"
    run_grid(spec, out, generator=FakeGenerator(), metrics=False, progress=False, log=lambda m: None)
    for part in store.part_files(out, store.STUDY):  # as the older code wrote them
        t = pq.read_table(part).drop_columns([store.COL_SEED, store.COL_PROMPTS_HASH])
        pq.write_table(t.replace_schema_metadata({b"imagen_bench_schema": b"1"}), part)
    before = sorted(p.name for p in (out / "tables").rglob("*.parquet"))
    with pytest.raises(UserError, match="result schema 1.*run its spec again into a new folder"):
        run_grid(spec, out, generator=FakeGenerator(), metrics=False, progress=False, log=lambda m: None)
    assert sorted(p.name for p in (out / "tables").rglob("*.parquet")) == before

def test_metric_tables_are_typed_frozen_and_read_like_their_toml():
    import dataclasses

    from bench.work import ClipTable, FeatureTable

    spec = parse_spec('name = "t"\nmodel = "tiny"\nsuites = ["shapes:4"]\n[metrics]\nfid = true\n'
                      'kid = { subset_size = 3 }\nclip_score = { model = "shapes-clip" }\n')
    m = spec.metrics
    assert isinstance(m.fid, FeatureTable) and isinstance(m.kid, FeatureTable) and isinstance(m.clip_score, ClipTable)
    assert m.fid == {"extractor": "effnet-lite0", "reference": "shapes", "protocol": "clean"}  # no unset keys
    assert m.kid["subset_size"] == 3 and m.fid.get("subset_size") is None and "pretrained" not in m.clip_score
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.fid.reference = "elsewhere"
    assert parse_spec(spec_to_toml(spec)).metrics == m
