"""GenEval as a grid metric: a tiny random Mask2Former built from its config, saved with save_pretrained and loaded
through the path a downloaded checkpoint takes; a row per tag and GenEval's overall score (the mean of the tags'),
named by the detector and CLIP that made it; a judge that is not there refused in one line before any image."""

import json

import numpy as np
import pytest

from bench import store
from bench.cell_metrics import MetricFns
from bench.grid import parse_spec, run_grid
from imagen.errors import UserError


def _geneval_names(data_dir) -> list[str]:
    return [n.strip() for n in (data_dir / "geneval" / "object_names.txt").read_text().splitlines() if n.strip()]


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory, data_dir):
    return _tiny_mask2former(tmp_path_factory.mktemp("m2f") / "mask2former-tiny", _geneval_names(data_dir))


def _tiny_mask2former(folder, names: list[str]) -> str:
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, \
        SwinConfig

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=backbone, hidden_dim=32, feature_size=32, mask_feature_size=32,
                            num_queries=10, encoder_layers=1, decoder_layers=2, encoder_feedforward_dim=64,
                            dim_feedforward=64, num_attention_heads=2, common_stride=4,
                            id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(cfg).eval().save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}, num_labels=len(names)) \
        .save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))


class _Gen:
    model_id, checkpoint_hash = "fake", "f" * 16

    def generate(self, prompts, seeds, settings):
        return np.stack([np.random.default_rng(s).integers(0, 256, (48, 64, 3), dtype=np.uint8) for s in seeds])


def _spec(detector: str) -> str:
    return (f'name = "g"\nmodel = "tiny"\nsuites = ["geneval:12"]\n[axes]\nsteps = 2\nguidance = 1.0\n[metrics]\n'
            f'geneval = {{ detector = "{detector}", clip = "shapes-clip" }}\n')


def test_the_detector_loads_like_a_downloaded_checkpoint(detector_folder):
    from bench.metrics.detectors import Mask2FormerDetector

    det = Mask2FormerDetector(detector_folder)
    found = det(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    assert found and det.name == "mask2former_tiny"
    for d in found:
        assert d.mask.shape == (48, 64) and d.mask.any() and 0 <= d.score <= 1
        x0, y0, x1, y1 = d.box
        ys, xs = np.nonzero(d.mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert d.label in det.labels.values()


def test_cocos_class_names_are_read_in_genevals_spelling(tmp_path, data_dir):
    """The published checkpoint's id2label has COCO's "mouse", "remote", "keyboard"; GenEval's prompts ask for a
    "computer mouse", a "tv remote", a "computer keyboard" (its object list maps mmdet's class index to them)."""
    from bench.metrics.detectors import GENEVAL_NAMES, Mask2FormerDetector

    genevals = _geneval_names(data_dir)
    coco = [{v: k for k, v in GENEVAL_NAMES.items()}.get(n, n) for n in genevals]
    assert coco != genevals and {"mouse", "remote", "keyboard"} <= set(coco)
    det = Mask2FormerDetector(_tiny_mask2former(tmp_path / "coco-names", coco))
    assert [det.labels[i] for i in range(len(coco))] == genevals


def test_a_grid_scores_geneval_per_tag_and_overall_as_the_mean_of_tags(detector_folder, tmp_path, data_dir):
    from bench.spec import spec_to_toml

    spec = parse_spec(_spec(detector_folder))
    assert parse_spec(spec_to_toml(spec)).metrics.geneval == spec.metrics.geneval
    # the rules' own verdicts are tested in test_geneval_rules.py; here the stage's bookkeeping, with known answers
    fns = MetricFns(geneval=lambda images, metas, table: ("geneval_x", [m["tag"] == "position" for m in metas]))
    run_grid(spec, tmp_path / "s", generator=_Gen(), metric_fns=fns, progress=False, log=lambda *_: None,
             data_dir=data_dir)
    m = store.read_table(tmp_path / "s", store.METRICS)
    rows = m[m[store.COL_METRIC] == "geneval_x"]
    per_tag = dict(zip(rows[store.COL_CATEGORY].dropna(), rows[rows[store.COL_CATEGORY].notna()][store.COL_VALUE]))
    assert per_tag == {"single_object": 0.0, "two_object": 0.0, "counting": 0.0, "colors": 0.0, "position": 1.0,
                       "color_attr": 0.0}
    overall = rows[rows[store.COL_CATEGORY].isna()].iloc[0]
    assert overall[store.COL_VALUE] == pytest.approx(1 / 6) and overall[store.COL_N] == 12


def test_the_default_scorer_runs_the_detector_and_names_it(detector_folder, tmp_path, data_dir):
    run_grid(parse_spec(_spec(detector_folder)), tmp_path / "s", generator=_Gen(), progress=False,
             log=lambda *_: None, data_dir=data_dir)
    m = store.read_table(tmp_path / "s", store.METRICS)
    names = set(m[store.COL_METRIC])
    assert "geneval_mask2former_tiny_shapes_clip" in names
    rows = m[m[store.COL_METRIC] == "geneval_mask2former_tiny_shapes_clip"]
    assert rows[rows[store.COL_CATEGORY].isna()][store.COL_VALUE].between(0, 1).all()
    provenance = json.loads(store.read_table(tmp_path / "s", store.STUDY)[store.COL_PROVENANCE].iloc[-1])
    assert provenance["geneval"]["detector"] == detector_folder


def test_a_missing_detector_is_one_line_before_any_image(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match="huggingface-cli download facebook/mask2former-swin-small-coco-instance") as e:
        run_grid(parse_spec(_spec("facebook/mask2former-swin-small-coco-instance")), tmp_path / "s",
                 generator=_Gen(), progress=False, log=lambda *_: None, data_dir=data_dir)
    assert "\n" not in str(e.value) and not (tmp_path / "s").exists()


def test_the_defaults_are_the_published_judges():
    g = parse_spec('name = "g"\nmodel = "tiny"\nsuites = ["geneval:6"]\n[metrics]\ngeneval = true\n').metrics.geneval
    assert dict(g) == {"detector": "facebook/mask2former-swin-small-coco-instance", "clip": "ViT-L-14",
                       "pretrained": "openai"}
    with pytest.raises(UserError, match="metrics.geneval"):
        parse_spec('name = "g"\nmodel = "tiny"\nsuites = ["geneval:6"]\n[metrics]\ngeneval = { detector = 3 }\n')


def test_the_papers_table_has_a_column_per_score_and_the_protocol_below(detector_folder, tmp_path, data_dir,
                                                                         capsys):
    from imagen_bench import main
    from reports.table import collect, render

    spec = parse_spec(_spec(detector_folder) + "clip_score = true\n")
    fns = MetricFns(geneval=lambda images, metas, table: ("geneval_x", [m["tag"] == "position" for m in metas]))
    run_grid(spec, tmp_path / "a", generator=_Gen(), metric_fns=fns, progress=False, log=lambda *_: None,
             data_dir=data_dir)
    rows, columns, notes = collect([tmp_path / "a"])
    assert len(rows) == 1 and columns[0] == "clip_score_shapes_clip"
    assert "geneval_x" in columns and "geneval_x[position]" in columns and len(columns) == 1 + 1 + 6
    value, low, high = rows[0]["values"]["clip_score_shapes_clip"]
    assert low <= value <= high
    assert rows[0]["values"]["geneval_x"] == (pytest.approx(1 / 6), None, None)  # GenEval's overall: no interval
    assert any("geneval, 1 image(s) per prompt (its protocol makes 4)" in n for n in notes)
    assert any("seed 0" in n for n in notes) and any("geneval" in n and "detector" in n for n in notes)
    md = render([tmp_path / "a"], "md")
    assert md.startswith("| model / setting | clip_score_shapes_clip |") and f"{value:.4g} [" in md
    assert "\\begin{tabular}" in render([tmp_path / "a"], "latex")
    csv_text = render([tmp_path / "a"], "csv")
    assert csv_text.splitlines()[0].startswith("study,cell,label,clip_score_shapes_clip,clip_score_shapes_clip_ci_low,"
                                               "clip_score_shapes_clip_ci_high,geneval_x,")
    capsys.readouterr()
    assert main(["table", str(tmp_path / "a"), "--format", "csv"]) == 0
    assert capsys.readouterr().out == csv_text
    assert main(["table", str(tmp_path / "nothing")]) == 2
