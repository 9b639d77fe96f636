"""Prompt suites: DrawBench, COCO, shapes, CSV files, seeded subsets, and clear errors for bad files."""

import csv
import hashlib
import json
from collections import Counter

import numpy as np

import pytest

from bench.suites import load_suite, load_suites, parse_name, prompt_id, read_prompt_csv
from imagen.errors import UserError


def test_drawbench_has_200_prompts_in_11_categories(data_dir):
    prompts = load_suite("drawbench", data_dir)
    with open(data_dir / "drawbench" / "prompts.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [p.text for p in prompts] == [r["prompt"] for r in rows]  # independent read, same order
    assert len({p.category for p in prompts}) == 11
    assert Counter(p.category for p in prompts)["Reddit"] == 38


def test_subset_is_seeded_stratified_and_stable(data_dir):
    a = load_suite("drawbench:22", data_dir, seed=0)
    assert len(a) == 22 and set(Counter(p.category for p in a).values()) == {2}  # 2 per category
    assert a == load_suite("drawbench:22", data_dir, seed=0)
    assert [p.prompt_id for p in a] != [p.prompt_id for p in load_suite("drawbench:22", data_dir, seed=1)]
    full = [p.prompt_id for p in load_suite("drawbench", data_dir)]
    assert [full.index(p.prompt_id) for p in a] == sorted(full.index(p.prompt_id) for p in a)  # file order


def test_prompt_id_is_suite_plus_text_hash():
    assert prompt_id("drawbench", "A red car.") == "drawbench-" + hashlib.sha256(b"A red car.").hexdigest()[:12]
    assert parse_name("drawbench:22") == ("drawbench", 22) and parse_name("x.csv") == ("x.csv", None)
    with pytest.raises(UserError, match="positive"):
        parse_name("drawbench:0")


def test_coco_and_shapes(data_dir):
    coco = load_suite("coco:7", data_dir, seed=3)
    assert len(coco) == 7 and all(p.suite == "coco" and p.text for p in coco)
    shapes = load_suite("shapes:10", seed=0)
    assert len(shapes) == 10
    from imagen.shapes import held_out_captions

    expected = held_out_captions(10, 0)
    assert [p.text for p in shapes] == [t for t, _, _ in expected]
    facts = json.loads(shapes[0].facts)
    assert facts["color_1"] == expected[0][1].color_1 and shapes[0].category == expected[0][2]


def test_csv_suite_with_and_without_category(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text('prompt,category\n"a cat, sitting",animals\na dog,\n\nthe sea,water\n', encoding="utf-8")
    prompts = load_suite(str(f))
    assert [(p.text, p.category, p.suite) for p in prompts] == [
        ("a cat, sitting", "animals", "mine"), ("a dog", None, "mine"), ("the sea", "water", "mine")]
    g = tmp_path / "plain.csv"
    g.write_text("prompt\none\ntwo\nthree\n", encoding="utf-8")
    assert len(load_suite(f"{g}:2")) == 2
    assert len(load_suites([str(f), str(f), str(g)])) == 6  # deduplicated by prompt id


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"text,category\nhello,x\n", "no 'prompt' column"),
    (b"prompt,category\nok,a\nbad,a,extra\n", ":3: expected 2 fields"),
    (b"prompt,category\nok,a\n ,b\n", ":3: empty prompt"),
    (b"prompt\nok\n\xff\xfe bad\n", ":3: not UTF-8"),
    (b"prompt\n", "no prompts"),
])
def test_malformed_csv_names_the_line(tmp_path, content, message):
    f = tmp_path / "bad.csv"
    f.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_prompt_csv(f, "bad")


def test_suite_errors(tmp_path, data_dir, monkeypatch):
    with pytest.raises(UserError, match="unknown suite 'nosuch'"):
        load_suite("nosuch")
    with pytest.raises(UserError, match="only 200"):
        load_suite("drawbench:500", data_dir)
    with pytest.raises(UserError, match="not found"):
        load_suite("drawbench", tmp_path)
    monkeypatch.delenv("IMAGEN_BENCH_DATA")
    with pytest.raises(UserError, match="data folder"):
        load_suite("drawbench", data_dir=None)


def test_prompt_files_as_people_publish_them(tmp_path):
    """PartiPrompts-style TSV (Prompt, Category, Challenge, Note), headers in any case, a sniffed delimiter, and
    the extra columns kept as metadata in the sample rows."""
    from bench import store
    from bench.grid import parse_spec, run_grid

    parti = tmp_path / "parti.tsv"
    parti.write_text("Prompt\tCategory\tChallenge\tNote\nbond, james bond\tPeople\tBasic\t\n"
                     "a red, round apple\tProduce & Plants\tColors\tfrom a paper\n", encoding="utf-8")
    prompts = load_suite(str(parti))
    assert [(p.text, p.category, p.suite) for p in prompts] == [("bond, james bond", "People", "parti"),
                                                                 ("a red, round apple", "Produce & Plants", "parti")]
    assert json.loads(prompts[1].meta) == {"Challenge": "Colors", "Note": "from a paper"}
    quoted = tmp_path / "PartiPrompts.tsv"  # as the file itself has it: a prompt that starts with a quote
    quoted.write_text('Prompt\tCategory\tChallenge\tNote\n"G I G G L E" painted in thick colorful lettering as '
                      'graffiti on a faded red brick wall\tArts\tWriting & Symbols\t\n', encoding="utf-8")
    assert load_suite(str(quoted))[0].text.startswith('"G I G G L E" painted')
    single = tmp_path / "prompts"  # one column, no extension: read whole, commas and all
    single.write_text("prompt\na cat, sitting\n", encoding="utf-8")
    assert [p.text for p in load_suite(str(single))] == ["a cat, sitting"]
    semi = tmp_path / "prompts.dat"
    semi.write_text("PROMPT;Category\na cat;animals\n", encoding="utf-8")
    assert [(p.text, p.category) for p in load_suite(str(semi))] == [("a cat", "animals")]
    twice = tmp_path / "twice.csv"
    twice.write_text("prompt,Prompt\na,b\n", encoding="utf-8")
    with pytest.raises(UserError, match="names the prompt or category column twice"):
        load_suite(str(twice))

    class Gen:
        model_id, checkpoint_hash = "g", "0" * 64

        def generate(self, prompts, seeds, settings):
            return np.zeros((len(prompts), 4, 4, 3), np.uint8)

    spec = parse_spec(f'name = "p"\nmodel = "tiny"\nsuites = ["{parti}"]\n[axes]\nsteps = [1]\n')
    run_grid(spec, tmp_path / "study", generator=Gen(), metrics=False, progress=False, log=lambda m: None)
    rows = store.read_table(tmp_path / "study", store.SAMPLES).sort_values(store.COL_PROMPT)
    assert json.loads(rows[store.COL_META].iloc[0]) == {"Challenge": "Colors", "Note": "from a paper"}
