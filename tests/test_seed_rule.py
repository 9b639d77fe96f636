"""One seed rule for every command: a study row's `seed` is the image's noise seed itself, so `sample --seed` with the
row's prompt and its cell's settings makes the same image that `grid run` (or `coco`, `eval shapes`: grid studies)
stored; and it is bench.work.item_seed(spec seed, prompt id, sample index), whatever the cell."""

import json

import numpy as np
from PIL import Image

from bench import store
from bench.grid import parse_spec, run_grid
from bench.work import item_seed


def test_sample_seed_remakes_a_grid_image(tmp_path, monkeypatch, capsys):
    from imagen_bench import main

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\na red circle\ntwo blue squares\n")
    spec = parse_spec(f'name = "s"\nmodel = "tiny"\nsuites = ["{prompts}"]\nseed = 7\nsamples_per_prompt = 2\n'
                      f'[axes]\nsampler = "ddim"\nsteps = 2\nguidance = [1.0, 3.0]\nthreshold = "static"\n')
    run_grid(spec, tmp_path / "study", metrics=False, progress=False, log=lambda *_: None)
    rows = store.read_table(tmp_path / "study", store.SAMPLES)
    for _, r in rows.iterrows():  # the seed rule: the cell does not enter it
        assert r[store.COL_SEED] == item_seed(7, r[store.COL_PROMPT_ID], int(r[store.COL_SAMPLE_INDEX]))
    assert rows.groupby([store.COL_PROMPT_ID, store.COL_SAMPLE_INDEX])[store.COL_SEED].nunique().max() == 1
    row = rows[(rows[store.COL_GUIDANCE] == 3.0) & (rows[store.COL_SAMPLE_INDEX] == 1)].iloc[0]
    out = tmp_path / "again.png"
    capsys.readouterr()
    seed = str(int(row[store.COL_SEED]))
    assert main(["sample", "--preset", "tiny", "--prompt", row[store.COL_PROMPT], "--seed", seed, "--sampler", "ddim",
                 "--steps", "2", "--guidance", "3", "--threshold", "static", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == int(row[store.COL_SEED])
    stored = np.asarray(Image.open(tmp_path / "study" / row[store.COL_IMAGE_PATH]).convert("RGB")).astype(int)
    again = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert stored.shape == again.shape and np.abs(stored - again).max() <= 1  # batched kernels: one level at most
