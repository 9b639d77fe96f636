"""The published benchmark suites by name (GenEval, T2I-CompBench and its categories, PartiPrompts, DPG-Bench), read
from their authors' files in the shared data folder: every prompt, its skill category, its metadata in the sample
rows, the `:N` subset rule, and the report's word when a study is not at the protocol's images per prompt."""

import json
from collections import Counter

import numpy as np
import pytest

from bench import store
from bench.grid import parse_spec, run_grid
from bench.published import COMPBENCH_CATEGORIES, protocol_images
from bench.suites import load_suite, load_suites
from imagen.errors import UserError


@pytest.mark.parametrize("name, n, categories", [
    ("geneval", 553, {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                      "color_attr": 100}),
    ("t2i-compbench", 2400, {c: 300 for c in COMPBENCH_CATEGORIES}),
    ("t2i-compbench-3d_spatial", 300, {"3d_spatial": 300}),
    ("partiprompts", 1632, None),
    ("dpg-bench", 1065, None),
])
def test_every_prompt_with_its_category(data_dir, name, n, categories):
    prompts = load_suite(name, data_dir)
    assert len(prompts) == n and len({p.prompt_id for p in prompts}) == n
    if categories is not None:
        assert Counter(p.category for p in prompts) == categories
    if name == "partiprompts":
        assert len({p.category for p in prompts}) == 12
        assert {"Challenge", "Note"} <= set(json.loads(prompts[0].meta))
    if name == "dpg-bench":
        assert all("item_id" in json.loads(p.meta) for p in prompts)


def test_geneval_metadata_is_what_the_scorer_needs(data_dir):
    prompts = load_suite("geneval", data_dir)
    two = next(p for p in prompts if p.category == "position")
    meta = json.loads(two.meta)
    assert meta["tag"] == "position" and len(meta["include"]) == 2 and meta["include"][1]["position"][0]
    assert any("exclude" in json.loads(p.meta) for p in prompts)


def test_a_category_suite_has_the_same_ids_as_the_whole(data_dir):
    whole = {p.prompt_id for p in load_suite("t2i-compbench", data_dir)}
    color = load_suite("t2i-compbench-color", data_dir)
    assert {p.prompt_id for p in color} <= whole and {p.suite for p in color} == {"t2i-compbench"}


def test_subsets_are_stratified_over_the_skills(data_dir):
    sub = load_suite("geneval:12", data_dir, seed=3)
    assert Counter(p.category for p in sub) == {t: 2 for t in ("single_object", "two_object", "counting", "colors",
                                                               "position", "color_attr")}
    assert [p.prompt_id for p in sub] == [p.prompt_id for p in load_suite("geneval:12", data_dir, seed=3)]
    assert len(load_suites(["t2i-compbench:16", "partiprompts:5"], data_dir)) == 21


def test_unknown_category_and_missing_data_are_one_line(tmp_path, data_dir):
    with pytest.raises(UserError, match="T2I-CompBench has the categories"):
        load_suite("t2i-compbench-colour", data_dir)
    with pytest.raises(UserError, match="geneval"):
        load_suite("geneval", tmp_path)


class _Gen:
    model_id, checkpoint_hash = "fake", "f" * 16

    def generate(self, prompts, seeds, settings):
        return np.stack([np.full((8, 8, 3), s % 251, np.uint8) for s in seeds])


def test_rows_carry_the_skill_and_metadata_and_the_report_names_the_protocol(tmp_path, data_dir):
    from reports.build import build_report, protocol_notes

    assert (protocol_images("geneval"), protocol_images("t2i-compbench-color"), protocol_images("partiprompts")) \
        == (4, 10, None)
    spec = parse_spec('name = "b"\nmodel = "tiny"\nsuites = ["geneval:6", "partiprompts:3"]\nsamples_per_prompt = 2\n'
                      '[axes]\nsteps = 2\nguidance = 1.0\n')
    run_grid(spec, tmp_path / "s", generator=_Gen(), metrics=False, progress=False, log=lambda *_: None,
             data_dir=data_dir)
    rows = store.read_table(tmp_path / "s", store.SAMPLES)
    geneval = rows[rows[store.COL_SUITE] == "geneval"]
    assert len(geneval) == 12 and set(geneval[store.COL_CATEGORY]) == {"single_object", "two_object", "counting",
                                                                       "colors", "position", "color_attr"}
    assert all("include" in json.loads(m) for m in geneval[store.COL_META])
    notes = protocol_notes(rows)
    assert len(notes) == 1 and "geneval: 2 image(s) per prompt where its protocol makes 4" in notes[0]
    html = build_report(tmp_path / "s").read_text()
    assert "Not the published protocol" in html and "samples_per_prompt = 4" in html
