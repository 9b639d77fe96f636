"""Reports: summary tables equal the stored metrics, plots and contact sheets exist, HTML is escaped and inline."""

import base64
import re

import numpy as np
import pandas as pd
import pytest

from bench import store
from bench.cell_metrics import MetricFns
from bench.grid import parse_spec, run_grid
from reports.build import build_report, summary_table

SPEC = """
name = "report <test>"
model = "fake"
suites = ["PROMPTS"]
samples_per_prompt = 1
seed = 0
[axes]
guidance = [1.0, 3.0, 6.0]
threshold = ["dynamic:0.95", "none"]
[metrics]
clip_score = { model = "fake" }
"""


class Gen:
    model_id, checkpoint_hash = "fake", "0" * 64

    def generate(self, prompts, seeds, sampler, batch_size=8, progress=False):
        g = sampler.guidance[0]
        return np.stack([np.full((6, 6, 3), int(20 * g + (s % 7)), np.uint8) for s in seeds])


def clip(images, prompts, model):
    return "clip_score_fake", images.reshape(len(images), -1).mean(1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rep")
    csv = tmp / "p.csv"
    csv.write_text('prompt,category\n"<script>alert(1)</script> & co",X\na cat,Y\na dog,Y\n', encoding="utf-8")
    out = tmp / "study"
    run_grid(parse_spec(SPEC.replace("PROMPTS", str(csv))), out, generator=Gen(), metric_fns=MetricFns(clip=clip),
             progress=False, log=lambda m: None)
    return out


def test_summary_matches_stored_metrics(study):
    samples = store.read_table(study, store.SAMPLES)
    metrics = store.read_table(study, store.METRICS)
    table = summary_table(samples, metrics)
    assert len(table) == 6 and list(table[store.COL_THRESHOLD]) == ["none"] * 3 + ["dynamic:0.95"] * 3
    assert list(table[store.COL_GUIDANCE]) == [1.0, 3.0, 6.0] * 2
    for _, row in table.iterrows():  # independent: mean pixel value of the cell's images
        paths = samples[samples[store.COL_CELL_ID] == row[store.COL_CELL_ID]][store.COL_IMAGE_PATH]
        from PIL import Image

        expected = np.mean([np.asarray(Image.open(study / p)).mean() for p in paths])
        assert row["clip_score_fake"] == pytest.approx(expected)
        assert row["clip_score_fake_ci_low"] <= row["clip_score_fake"] <= row["clip_score_fake_ci_high"]
        assert row["images"] == 3


def test_report_files_and_html(study):
    index = build_report(study)
    folder = index.parent
    for name in ("summary.csv", "summary.parquet", "pareto.png", "categories.png"):
        assert (folder / name).stat().st_size > 0, name
    csv = pd.read_csv(folder / "summary.csv")
    assert len(csv) == 6 and pd.read_parquet(folder / "summary.parquet")["cell_id"].tolist() == csv["cell_id"].tolist()
    assert len(list(folder.glob("sheet-*.png"))) == 6
    html = index.read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert "report &lt;test&gt;" in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 2 + 6  # pareto, categories, one sheet per cell: all inline
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'src="(?!data:)', html)  # self-contained


def test_report_of_a_non_study_is_a_user_error(tmp_path):
    from imagen.errors import UserError

    with pytest.raises(UserError, match="not a study"):
        build_report(tmp_path)
