"""The main job, `imagen-bench quickstart`, and the grid/report commands through the CLI."""

import json
from pathlib import Path

import pandas as pd

from bench.grid import load_spec
from imagen_bench import main
from imagen_bench.grid import QUICKSTART_SPEC, quickstart_model


def test_quickstart_spec_covers_the_figure():
    spec = load_spec(QUICKSTART_SPEC)
    assert len(spec.guidance) >= 4 and set(spec.threshold) == {"none", "static", "dynamic:0.995"}
    assert spec.metrics.fid and spec.metrics.alignment
    # the model where the trade-off shows, scored on its own world (shapes-clip knows only the plain world)
    assert spec.model == "shapes-hard2" and spec.suites == ("shapes-hard:30",) and not spec.metrics.clip_score


def test_quickstart_model_falls_back_to_tiny_with_a_note():
    model, note = quickstart_model(None)
    shipped = (Path(__file__).resolve().parents[1] / "imagen" / "weights" / "shapes-hard2" / "config.json").is_file()
    assert (model, note is None) == (("shapes-hard2", True) if shipped else ("tiny", False))
    assert quickstart_model("small") == ("small", None)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('name = "x"\nmodel = "tiny"\nsuites = ["shapes:2"]\n[axes]\nthreshold = ["dynamic:2"]\n')
    assert main(["grid", "run", str(spec), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imagen-bench: error: axes.threshold") and "\n" not in err
    assert not (tmp_path / "o").exists()
    assert main(["grid", "status", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path)]) == 2
    assert main(["grid", "run", str(spec), "--out", str(tmp_path / "o"), "--shard", "3/2"]) == 2


def test_quickstart_reduced_end_to_end(tmp_path, capsys, monkeypatch):
    """The main job with the real pipeline (the shipped model), FID and alignment, at 2 prompts, 2 steps."""
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    spec = load_spec(QUICKSTART_SPEC)
    cells = len(spec.guidance) * len(spec.threshold) * len(spec.sampler) * len(spec.steps)
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--prompts", "2", "--steps", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] and summary["cells"] == cells and summary["images"] == 2 * cells
    table = pd.read_csv(out / "report" / "summary.csv")
    assert len(table) == cells and table["fid_effnet_lite0_clean"].notna().all()
    assert table["align_overall"].between(0, 1).all() and summary["model"] == "shapes-hard2"
    assert Path(summary["report"]).is_file()
    assert main(["grid", "status", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["complete"] and st["done"] == 2 * cells
    # resuming a finished quickstart does no work
    assert main(["quickstart", "--out", str(out), "--prompts", "2", "--steps", "2", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["generated"] == 0 and again["metric_rows"] == 0
