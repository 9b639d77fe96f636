"""A model's own sampler settings (sampler.toml in its folder): parsed strictly, used where a command gives none,
and replaced by whatever the command line or a grid spec gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagen.checkpoint import SAMPLER_FILE, WEIGHTS_DIR, build_untrained, parse_sampler_defaults, sampler_defaults, save_cascade
from imagen.config import SamplerConfig, preset
from imagen.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """An untrained tiny cascade saved as a checkpoint folder, with a sampler.toml of its own."""
    folder = tmp_path_factory.mktemp("tiny-ckpt")
    save_cascade(build_untrained(preset("tiny")), folder)
    (folder / SAMPLER_FILE).write_text('sampler = "ddim"\nsteps = 2\nthreshold = "static"\nguidance = 3\n')
    return folder


def test_parse_sets_only_the_fields_given():
    cfg = parse_sampler_defaults('threshold = "static"\nguidance = [4, 1.5]\n', "x.toml")
    assert cfg == SamplerConfig(threshold="static", guidance=(4.0, 1.5))
    assert parse_sampler_defaults("", "x.toml") == SamplerConfig()
    assert parse_sampler_defaults('threshold = " dynamic:0.9 "\naug_level = 0.2', "x.toml").threshold == "dynamic:0.9"


@pytest.mark.parametrize("text, words", [
    ("threshold = ", "not valid TOML"),
    ('thresholds = "static"', "unknown key"),
    ('threshold = "sometimes"', "threshold"),
    ('threshold = 0.9', "threshold must be a string"),
    ('sampler = "euler"', "unknown sampler"),
    ("steps = 0", "steps must be a positive integer"),
    ("steps = 2.5", "steps must be a positive integer"),
    ("guidance = -1", "guidance values must be >= 0"),
    ('guidance = "high"', "guidance must be a number"),
    ("guidance = []", "guidance must be a number"),
    ("aug_level = 1.5", "aug_level values must be in [0, 1]"),
])
def test_parse_refuses_a_bad_file_in_one_line_naming_it(text, words):
    with pytest.raises(UserError) as err:
        parse_sampler_defaults(text, "runs/x/sampler.toml")
    msg = str(err.value)
    assert words in msg and msg.startswith("runs/x/sampler.toml:") and "\n" not in msg


def test_defaults_come_from_the_folder_else_the_global_ones(tiny_folder, tmp_path):
    assert sampler_defaults(tiny_folder) == SamplerConfig(sampler="ddim", steps=2, threshold="static", guidance=(3.0,))
    assert sampler_defaults("tiny") == SamplerConfig()  # a preset
    bare = tmp_path / "bare"
    save_cascade(build_untrained(preset("tiny")), bare)
    assert sampler_defaults(bare) == SamplerConfig()  # a folder without the file
    assert SamplerConfig(threshold="static").given(threshold=None, steps=7) == SamplerConfig(threshold="static",
                                                                                            steps=7)


def test_shipped_shapes_model_carries_the_recipe_sampler_settings():
    shipped = WEIGHTS_DIR / "shapes" / SAMPLER_FILE
    recipe = REPO / "configs" / "shapes_sampler.toml"
    assert shipped.read_text() == recipe.read_text()  # scripts/ship_model.py copies it; keep them the same
    cfg = sampler_defaults("shapes")
    assert cfg == parse_sampler_defaults(recipe.read_text(), str(recipe))
    assert cfg.threshold != SamplerConfig().threshold  # the reason the file exists: see configs/shapes_sampler.toml
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"weights/*/*.toml"' in pyproject  # shipped in the wheel, not only in an editable install


def test_cli_sample_uses_the_model_settings_unless_given(tiny_folder, tmp_path, capsys, monkeypatch):
    from bench.cli import main

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    args = ["sample", "--checkpoint", str(tiny_folder), "--prompt", "a red circle", "--json"]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    used = json.loads(capsys.readouterr().out)["sampler"]
    assert (used["sampler"], used["steps"], used["threshold"], used["guidance"]) == ("ddim", 2, "static", [3.0])
    assert main(args + ["--out", str(tmp_path / "b.png"), "--threshold", "none", "--guidance", "1"]) == 0
    used = json.loads(capsys.readouterr().out)["sampler"]
    assert (used["sampler"], used["steps"], used["threshold"], used["guidance"]) == ("ddim", 2, "none", [1.0])


def test_cli_eval_shapes_reports_the_settings_it_used(tiny_folder, tmp_path, capsys, monkeypatch):
    from bench.cli import main

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "shapes", "--model", str(tiny_folder), "--guidance", "1", "--n", "2", "--steps", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["defaults"]["threshold"] == "static" and out["defaults"]["guidance"] == [3.0]
    assert out["results"][0]["sampler"] == {"sampler": "ddim", "steps": 1, "threshold": "static"}


def test_a_bad_sampler_file_is_one_line_and_exit_2(tmp_path, capsys):
    from bench.cli import main

    folder = tmp_path / "bad"
    save_cascade(build_untrained(preset("tiny")), folder)
    (folder / SAMPLER_FILE).write_text('threshold = "sometimes"\n')
    out = tmp_path / "a.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", "a red circle", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and SAMPLER_FILE in err[0] and "threshold" in err[0]
    assert not out.exists()


def test_grid_axes_left_out_take_the_model_settings(tiny_folder):
    from bench.grid import parse_spec

    base = f'name = "g"\nmodel = "{tiny_folder}"\nsuites = ["shapes:2"]\n'
    spec = parse_spec(base)
    assert (spec.threshold, spec.sampler, spec.steps, spec.guidance) == (("static",), ("ddim",), (2,), ((3.0,),))
    spec = parse_spec(base + '[axes]\nthreshold = ["none", "static"]\nguidance = [1, 5]\n')
    assert spec.threshold == ("none", "static") and spec.guidance == ((1.0,), (5.0,)) and spec.steps == (2,)
    preset_spec = parse_spec('name = "g"\nmodel = "tiny"\nsuites = ["shapes:2"]\n')
    d = SamplerConfig()
    assert preset_spec.threshold == (d.threshold,) and preset_spec.steps == (d.steps,)
