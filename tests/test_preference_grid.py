"""PickScore, HPS v2.1 and ImageReward as grid metrics: each table's tiny scorer (in its authors' file format) loaded
once, a value per image in the scores table, a cell mean per category named by the weights, the spec's tables
typed and read back; a judge that is not here refused in one line before any image."""

import json

import numpy as np
import pytest

import preference_fixtures as pf
from bench import store
from bench.grid import parse_spec, run_grid
from bench.spec import spec_to_toml
from imagen.errors import UserError


class _Gen:
    model_id, checkpoint_hash = "fake", "f" * 16

    def generate(self, prompts, seeds, settings):
        return np.stack([np.random.default_rng(s).integers(0, 256, (48, 48, 3), dtype=np.uint8) for s in seeds])


def _spec(tables: str) -> str:
    return ('name = "p"\nmodel = "tiny"\nsuites = ["drawbench:4"]\nsamples_per_prompt = 2\n[axes]\nsteps = 2\n'
            f'guidance = [1.0, 3.0]\n[metrics]\n{tables}')


@pytest.fixture
def judges(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    ir = pf.make_imagereward(tmp_path / "ir")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", ir["hf_cache"])  # the BERT tokenizer ImageReward loads
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "hps").mkdir()
    return {"pickscore": pf.make_pickscore(tmp_path / "ps"), "hps": pf.make_hps(tmp_path / "hps"), "ir": ir}


def test_three_preference_scores_per_image_and_per_cell(judges, tmp_path, data_dir):
    tables = (f'pickscore = {{ model = "{judges["pickscore"]}" }}\n'
              f'hpsv2 = {{ weights = "{judges["hps"]}", version = "v2.1", architecture = "{pf.HPS_TINY}" }}\n'
              f'imagereward = {{ weights = "{judges["ir"]["weights"]}" }}\n')
    spec = parse_spec(_spec(tables))
    assert parse_spec(spec_to_toml(spec)).metrics.hpsv2 == spec.metrics.hpsv2
    assert spec.metrics.pickscore["processor"] == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    run_grid(spec, tmp_path / "s", generator=_Gen(), progress=False, log=lambda *_: None, data_dir=data_dir)
    scores = store.read_table(tmp_path / "s", store.SCORES)
    names = set(scores[store.COL_METRIC])
    hps_name = next(n for n in names if n.startswith("hpsv2_1_file_"))  # a file other than the published one
    ir_name = next(n for n in names if n.startswith("imagereward_file_"))
    assert names == {"pickscore_pickscore_tiny", hps_name, ir_name} and len(scores) == 3 * 16
    m = store.read_table(tmp_path / "s", store.METRICS)
    overall = m[m[store.COL_CATEGORY].isna()]
    assert set(overall[store.COL_METRIC]) == names and len(overall) == 3 * 2
    for _, row in overall.iterrows():  # the cell's mean of its stored per-image values
        vals = scores[(scores[store.COL_CELL_ID] == row[store.COL_CELL_ID])
                      & (scores[store.COL_METRIC] == row[store.COL_METRIC])][store.COL_VALUE]
        assert row[store.COL_VALUE] == pytest.approx(vals.mean()) and row[store.COL_N] == 8
    from bench.metrics.imagereward import ImageReward

    direct = ImageReward(judges["ir"]["weights"])  # the scorer on its own gives the stored values
    samples = store.read_table(tmp_path / "s", store.SAMPLES).sort_values(store.COL_SAMPLE_ID)
    from bench.generate import load_images

    ir_rows = scores[scores[store.COL_METRIC] == ir_name].set_index(store.COL_SAMPLE_ID)
    images = list(load_images(tmp_path / "s", list(samples[store.COL_IMAGE_PATH])))
    got = direct(images, list(samples[store.COL_PROMPT]))
    np.testing.assert_allclose(ir_rows.loc[samples[store.COL_SAMPLE_ID], store.COL_VALUE], got, rtol=1e-5)
    prov = json.loads(store.read_table(tmp_path / "s", store.STUDY)[store.COL_PROVENANCE].iloc[0])
    assert prov["hpsv2"]["weights_sha256"] and prov["imagereward"]["weights_sha256"] and prov["pickscore"]["weights"]


@pytest.mark.parametrize("table,message", [
    ('pickscore = { model = "nobody/no-pickscore" }', "PickScore's model 'nobody/no-pickscore' is not here"),
    ('hpsv2 = true', "HPS v2.1's weights"),
    ('imagereward = true', "ImageReward's weights"),
])
def test_a_missing_preference_judge_is_one_line_before_any_image(table, message, tmp_path, data_dir, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(UserError, match=message) as err:
        run_grid(parse_spec(_spec(table)), tmp_path / "s", generator=_Gen(), progress=False, log=lambda *_: None,
                 data_dir=data_dir)
    assert "\n" not in str(err.value) and "huggingface-cli download" in str(err.value)
    assert not (tmp_path / "s").exists()


def test_preference_tables_are_checked():
    for table, message in (('hpsv2 = { version = "v3" }', "version"), ('pickscore = { dtype = "int4" }', "dtype"),
                           ('imagereward = { batch_size = 0 }', "batch_size"),
                           ('hpsv2 = { wieghts = "x" }', "unknown")):
        with pytest.raises(UserError, match=message):
            parse_spec(_spec(table))
    assert dict(parse_spec(_spec("imagereward = true")).metrics.imagereward) == {
        "dtype": "auto", "batch_size": 8, "tokenizer": "bert-base-uncased"}


def test_judges_that_are_here_but_wrong_are_refused_before_any_image(judges, tmp_path, data_dir, monkeypatch):
    """The published v2.0 file asked for as v2.1, and a VQAScore model that is not an image-text-to-text model
    (PickScore's CLIP): one line each, before any image."""
    from bench.metrics import hpsv2 as H
    from bench.metrics.hub import file_sha256

    monkeypatch.setitem(H.RELEASES, "v2.0", H.Release("v2.0", "HPS_v2_compressed.pt", file_sha256(judges["hps"]), 0))
    for table, message in (
            (f'hpsv2 = {{ weights = "{judges["hps"]}", version = "v2.1", architecture = "{pf.HPS_TINY}" }}',
             'the published v2.0 file'),
            (f'vqascore = {{ model = "{judges["pickscore"]}" }}', "not an image-text-to-text model")):
        with pytest.raises(UserError, match=message) as err:
            run_grid(parse_spec(_spec(table)), tmp_path / "s", generator=_Gen(), progress=False, log=lambda *_: None,
                     data_dir=data_dir)
        assert "\n" not in str(err.value)
        assert not (tmp_path / "s").exists()
