"""A model's own sampler settings (sampler.toml in its folder): parsed strictly, used where a command gives none,
and replaced by whatever the command line or a grid spec gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagen.checkpoint import (SAMPLER_FILE, WEIGHTS_DIR, build_untrained, parse_sampler_defaults, sampler_defaults,
                               save_cascade)
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
    # one spelling for one setting, as grid specs write it
    assert parse_sampler_defaults('threshold = " Dynamic:.9 "\naug_level = 0.2', "x.toml").threshold == "dynamic:0.9"


@pytest.mark.parametrize("text, words", [
    ("threshold = ", "not valid TOML"),
    ('thresholds = "static"', "unknown key"),
    ('threshold = "sometimes"', "threshold"),
    ('threshold = 0.9', "is not a string"),
    ('sampler = "euler"', "unknown sampler"),
    ("steps = 0", "steps must be a positive integer"),
    ("steps = 2.5", "steps must be a positive integer"),
    ("guidance = -1", "guidance values must be >= 0"),
    ('guidance = "high"', "guidance must be a finite number"),
    ("guidance = []", "guidance must be a finite number"),
    ("guidance = nan", "guidance must be a finite number"),
    ("guidance = inf", "guidance must be a finite number"),
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
    from imagen_bench import main

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    args = ["sample", "--checkpoint", str(tiny_folder), "--prompt", "a red circle", "--json"]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    used = json.loads(capsys.readouterr().out)["sampler"]
    assert (used["sampler"], used["steps"], used["threshold"], used["guidance"]) == ("ddim", 2, "static", [3.0])
    assert main(args + ["--out", str(tmp_path / "b.png"), "--threshold", "none", "--guidance", "1"]) == 0
    used = json.loads(capsys.readouterr().out)["sampler"]
    assert (used["sampler"], used["steps"], used["threshold"], used["guidance"]) == ("ddim", 2, "none", [1.0])


def test_cli_eval_shapes_reports_the_settings_it_used(tiny_folder, tmp_path, capsys, monkeypatch):
    from imagen_bench import main

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "shapes", "--model", str(tiny_folder), "--guidance", "1", "--n", "2", "--steps", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["defaults"]["threshold"] == "static" and out["defaults"]["guidance"] == [3.0]
    used = out["results"][0]["sampler"]
    assert (used["sampler"], used["steps"], used["threshold"], used["guidance"]) == ("ddim", 1, "static", [1.0])


def test_a_bad_sampler_file_is_one_line_and_exit_2(tmp_path, capsys):
    from imagen_bench import main

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


@pytest.mark.parametrize("line, words", [
    ("guidance = [3, 1, 1]", "guidance has 3 values but this model needs one value or 2"),
    ("aug_level = [0.1, 0.2]", "aug_level has 2 values but this model needs one value or 1"),
])
def test_per_stage_lists_must_fit_the_model(tmp_path, line, words):
    folder = tmp_path / "m"
    save_cascade(build_untrained(preset("tiny")), folder)  # two stages: base + one SR stage
    (folder / SAMPLER_FILE).write_text(line + "\n")
    with pytest.raises(UserError, match=words.replace("[", r"\[")):
        sampler_defaults(folder)
    (folder / SAMPLER_FILE).write_text(line.replace("[3, 1, 1]", "[3, 1]").replace("[0.1, 0.2]", "[0.1]") + "\n")
    sampler_defaults(folder)


@pytest.mark.parametrize("args", [["--guidance", "nan"], ["--guidance", "inf"], ["--guidance", "-1"]])
def test_cli_refuses_a_guidance_that_is_not_a_finite_weight(args, tmp_path, capsys):
    from imagen_bench import main

    out = tmp_path / "a.png"
    assert main(["sample", "--preset", "tiny", "--prompt", "x", "--out", str(out), *args]) == 2
    assert "--guidance" in capsys.readouterr().err and not out.exists()
    assert main(["eval", "shapes", "--model", "tiny", "--n", "1", *args]) == 2
    assert "--guidance" in capsys.readouterr().err


def test_grid_model_override_takes_that_model_settings(tiny_folder, tmp_path, capsys, monkeypatch):
    """`grid run SPEC --model X` and `quickstart --model X`: the axes the spec leaves out are X's, not those of the
    spec's own model."""
    from bench.grid import load_spec, parse_spec

    text = 'name = "g"\nmodel = "tiny"\nsuites = ["shapes:2"]\n'
    spec = parse_spec(text, model=str(tiny_folder))
    assert spec.model == str(tiny_folder) and spec.threshold == ("static",) and spec.steps == (2,)
    other = tmp_path / "spec.toml"
    other.write_text(f'name = "g"\nmodel = "{tiny_folder}"\nsuites = ["shapes:2"]\n')
    spec = load_spec(other, model="tiny")
    assert spec.model == "tiny" and spec.threshold == (SamplerConfig().threshold,)
    # through the command: the stored spec of the study names the override's settings
    from bench import store
    from imagen_bench import main

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tiny.toml").write_text('name = "g"\nmodel = "tiny"\nsuites = ["shapes:2"]\nbatch_size = 2\n'
                                        '[axes]\nsteps = [1]\n')
    study = tmp_path / "study"
    assert main(["grid", "run", str(tmp_path / "tiny.toml"), "--model", str(tiny_folder), "--out", str(study),
                 "--no-metrics", "--json"]) == 0
    rows = store.read_table(study, store.STUDY)
    stored = parse_spec(rows[store.COL_SPEC].iloc[-1])
    assert stored.threshold == ("static",) and stored.sampler == ("ddim",) and stored.guidance == ((3.0,),)


def test_sample_model_flags_take_only_their_own_kind(tiny_folder, tmp_path, capsys):
    """--preset shapes is not the trained model, --checkpoint tiny is not the preset, --model DIR is not a folder."""
    from imagen_bench import main

    out = tmp_path / "a.png"
    for args, words in ((["--preset", "shapes"], "--preset 'shapes' is not a preset"),
                        (["--checkpoint", "tiny"], "--checkpoint tiny: no such folder"),
                        (["--model", str(tiny_folder)], "is not a shipped model")):
        assert main(["sample", *args, "--prompt", "x", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert not out.exists()


def test_coco_cli_takes_the_model_settings(tiny_folder, tmp_path, capsys, monkeypatch):
    """`imagen-bench coco` without sampling flags samples at the folder's sampler.toml (recorded in its manifest),
    and a bad flag is refused before any work."""
    import warnings

    from fixtures_coco import build_coco_fixture
    from imagen_bench import main

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    fx = build_coco_fixture(tmp_path / "coco")
    out = tmp_path / "run"
    base = ["coco", "--model", str(tiny_folder), "--captions", str(fx.annotations), "--images", str(fx.images_dir),
            "--n", "2", "--out", str(out), "--batch-size", "2"]
    assert main(base + ["--threshold", "sometimes"]) == 2
    assert "--threshold" in capsys.readouterr().err and not out.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(base + ["--json"]) == 0
    sampler = json.loads((out / "manifest.json").read_text())["sampler"]
    assert (sampler["sampler"], sampler["steps"], sampler["threshold"], sampler["guidance"]) == ("ddim", 2, "static",
                                                                                              [3.0])
    file = tmp_path / "file"
    file.write_text("")
    assert main(base[:-4] + ["--out", str(file), "--batch-size", "2"]) == 2  # --out is a file: one line, exit 2
    assert "is a file" in capsys.readouterr().err


def test_help_shows_no_empty_default(capsys):
    from imagen_bench import main

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: the model's own setting, else 5.0)" in " ".join(text.split())


def test_grid_resume_with_another_spec_says_so(tiny_folder, tmp_path, monkeypatch):
    from bench.grid import parse_spec, run_grid

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    text = 'name = "g"\nmodel = "tiny"\nsuites = ["shapes:2"]\nbatch_size = 2\n[axes]\nsteps = [1]\n'
    lines = []
    run_grid(parse_spec(text), tmp_path / "s", metrics=False, progress=False, log=lines.append)
    run_grid(parse_spec(text), tmp_path / "s", metrics=False, progress=False, log=lines.append)
    assert not any("another spec" in line for line in lines)
    run_grid(parse_spec(text + 'threshold = ["static"]\n'), tmp_path / "s", metrics=False, progress=False,
             log=lines.append)
    assert any("another spec" in line for line in lines)


def test_ship_model_refuses_settings_that_do_not_fit(tiny_folder, tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text("guidance = [3, 1, 1]\n")
    name = f"test-refused-{tmp_path.name}"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "ship_model.py"), str(tiny_folder), name, str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "guidance has 3 values" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (WEIGHTS_DIR / name).exists() and not list(WEIGHTS_DIR.glob(f".{name}*"))  # nor its temporary folder
