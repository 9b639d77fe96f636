"""Per-stage thresholding and sampler settings, SR from given low-res images, ablations, the random-init encoder."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from imagen.config import SamplerConfig, normalize_sampler, normalize_threshold, stage_values, threshold_parts
from imagen.errors import UserError
from imagen.sampling import check_sampler


def test_per_stage_threshold_and_sampler_spellings():
    assert normalize_threshold("Static,dynamic:.99") == "static,dynamic:0.99"
    assert normalize_threshold(["none", "dynamic:0.95:1.5"]) == "none,dynamic:0.95:1.5"
    assert normalize_threshold("static,static") == "static"  # the same setting on every stage is one setting
    assert normalize_threshold("dynamic") == "dynamic:0.995"
    with pytest.raises(UserError, match="fraction P"):
        normalize_threshold("static,dynamic:1.5")
    with pytest.raises(UserError, match="cap M"):
        normalize_threshold("dynamic:0.9:0.5")  # IF's cap s = min(max(s, 1), M) needs M >= 1
    assert threshold_parts("dynamic:0.95:1.5") == ("dynamic", 0.95, 1.5)
    assert stage_values("static", 2, "threshold") == ("static", "static")
    assert stage_values("none,static", 2, "threshold") == ("none", "static")
    with pytest.raises(UserError, match="one per stage \\(2\\)"):
        stage_values("none,static,static", 2, "threshold")
    assert normalize_sampler(["ddim", "ddpm"]) == "ddim,ddpm" and normalize_sampler("ddim,ddim") == "ddim"
    assert check_sampler("ddim, dpmpp-2m") == "ddim,dpmpp-2m"
    with pytest.raises(UserError, match="unknown sampler 'euler'"):
        check_sampler("ddim,euler")


def test_dynamic_cap_clamps_the_scale():
    from imagen.sampling import dynamic_threshold

    x = torch.full((1, 3, 4, 4), 3.0)
    x[0, 0, 0, :2] = 0.75  # s = the 0.9 quantile of |x| = 3
    free, capped = dynamic_threshold(x, 0.9, None), dynamic_threshold(x, 0.9, 1.5)
    assert torch.allclose(free[0, 0, 0, :2], torch.tensor(0.25))  # 0.75 / 3
    assert torch.allclose(capped[0, 0, 0, :2], torch.tensor(0.5))  # s capped at 1.5: 0.75 / 1.5
    assert torch.allclose(capped[0, 1], torch.ones(4, 4))  # 3 clipped to 1.5, / 1.5
    y = torch.full((1, 3, 4, 4), 0.5)  # s = max(0.5, 1) = 1: nothing changes
    assert torch.allclose(dynamic_threshold(y, 0.9, 1.5), y)
    with pytest.raises(UserError, match="one setting per stage"):
        threshold_parts("static,none")


@pytest.fixture(scope="module")
def tiny():
    from imagen.pipeline import Pipeline

    return Pipeline.load("shapes")  # trained: thresholding changes its samples (an untrained one saturates)


def _gen(pipe, **settings):
    cfg = SamplerConfig(sampler="ddim", steps=4, guidance=(8.0,), aug_level=(0.0,)).given(**settings)
    return pipe.generate(["a red circle", "two blue squares"], [1, 2], cfg)


def test_the_cascade_takes_a_threshold_and_a_sampler_per_stage(tiny):
    both_static = _gen(tiny, threshold="static")
    assert np.array_equal(_gen(tiny, threshold="static,static"), both_static)
    mixed = _gen(tiny, threshold="none,static")
    assert not np.array_equal(mixed, both_static) and not np.array_equal(mixed, _gen(tiny, threshold="none"))
    # the SR stage's setting is the second one: the same base (none) under another SR setting differs
    assert not np.array_equal(mixed, _gen(tiny, threshold="none,dynamic:0.9"))
    assert not np.array_equal(_gen(tiny, threshold="static", sampler="ddim,ddpm"), both_static)
    with pytest.raises(UserError, match="one per stage"):
        _gen(tiny, threshold="none,static,static")


def test_sr_stages_upsample_given_lowres_images(tiny):
    from imagen.shapes import ShapesWorld, render

    world = ShapesWorld(0, "heldout")
    low = np.stack([render(world.item(i)[0], 16) for i in range(2)])
    cfg = SamplerConfig(sampler="ddim", steps=2, guidance=(1.0,), threshold="static")
    a = tiny.generate(["a", "b"], [1, 2], cfg, lowres=low)
    assert a.shape == (2, 64, 64, 3)
    assert not np.array_equal(a, tiny.generate(["a", "b"], [1, 2], cfg))  # the base's samples are not used
    alone = tiny.generate(["a"], [1], cfg, lowres=low[:1])
    # the same image alone as in a batch of two, to one grey level: on AVX-512 CPUs with 2 threads, batched float32
    # convolution kernels move about 1 pixel in 10,000 by one level (exact with one thread)
    assert np.abs(a[:1].astype(int) - alone.astype(int)).max() <= 1
    with pytest.raises(UserError, match="lowres images must be"):
        tiny.generate(["a"], [1], cfg, lowres=np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(UserError, match="one low-res image per prompt"):
        tiny.generate(["a", "b"], [1, 2], cfg, lowres=low[:1])


def test_sampler_toml_takes_per_stage_lists(tmp_path):
    import shutil

    from imagen.checkpoint import WEIGHTS_DIR, sampler_defaults

    folder = tmp_path / "m"
    shutil.copytree(WEIGHTS_DIR / "shapes", folder)
    (folder / "sampler.toml").write_text('threshold = ["static", "dynamic:0.99"]\nsampler = ["ddim", "ddpm"]\n')
    d = sampler_defaults(folder)
    assert d.threshold == "static,dynamic:0.99" and d.sampler == "ddim,ddpm"
    for bad in ('threshold = ["static", "none", "none"]\n', 'threshold = ["static", "static", "static"]\n'):
        (folder / "sampler.toml").write_text(bad)  # equal values collapse, but their count must fit too
        with pytest.raises(UserError, match="threshold has 3 values but this model needs one value or 2"):
            sampler_defaults(folder)


def test_ablations_change_only_what_they_name():
    from imagen.train import ablate, load_config

    base = load_config("configs/hard_base.toml")
    sr = load_config("configs/hard_sr.toml")
    r = ablate(base, "random-text")
    assert r.model.text.kind == "minilm-random" and r.model.stages == base.model.stages and r.train == base.train
    p = ablate(base, "pooled-text")
    assert all(not any(s.unet.cross_attn) for s in p.model.stages) and p.model.text == base.model.text
    assert [dataclasses.replace(s, unet=dataclasses.replace(s.unet, cross_attn=b.unet.cross_attn))
            for s, b in zip(p.model.stages, base.model.stages)] == list(base.model.stages)
    n = ablate(sr, "no-aug")
    assert [s.noise_aug_max for s in n.model.stages] == [sr.model.stages[0].noise_aug_max, 0.0]
    with pytest.raises(UserError, match="SR stages only"):
        ablate(base, "no-aug")
    with pytest.raises(UserError, match="unknown ablation"):
        ablate(base, "no-text")


def test_random_init_minilm_has_the_architecture_but_not_the_weights():
    from imagen.config import TextEncoderConfig
    from imagen.text import load_text_encoder

    cfg = TextEncoderConfig(max_length=16)
    pre = load_text_encoder(cfg)
    rnd = load_text_encoder(dataclasses.replace(cfg, kind="minilm-random"))
    rnd2 = load_text_encoder(dataclasses.replace(cfg, kind="minilm-random"))
    a, ma = pre.encode(["a red circle"])
    b, mb = rnd.encode(["a red circle"])
    assert a.shape == b.shape and torch.equal(ma, mb)
    assert not torch.allclose(a, b, atol=1e-2)
    assert torch.equal(b, rnd2.encode(["a red circle"])[0])  # seeded: the same random encoder every time
    assert rnd.id != pre.id and rnd.id.startswith("minilm-random")
    assert sum(p.numel() for p in pre.model.parameters()) == sum(p.numel() for p in rnd.model.parameters())


def test_training_on_the_hard_world_records_it(tmp_path, capsys):
    from imagen_bench import main

    out = tmp_path / "run"
    args = ["train", "configs/tiny_test.toml", "--out", str(out), "--steps", "2", "--set", "data.kind=shapes-hard",
            "--set", "data.n=8", "--json"]
    assert main(args) == 0
    assert (out / "world.txt").read_text().strip() == "shapes-hard"
    capsys.readouterr()
    assert main(["train", "configs/tiny_test.toml", "--out", str(out), "--steps", "2", "--resume", "--json"]) == 2
    assert "holds a model of the 'shapes-hard' world" in capsys.readouterr().err
    # --ablation trains into OUT-ABLATION by default and says so in its result
    assert main(["train", "configs/tiny_test.toml", "--steps", "1", "--set", f"out={tmp_path / 'abl'}",
                 "--set", "data.n=8", "--ablation", "pooled-text", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"].endswith("abl-pooled-text")
    # folder data into a world's model folder, or a world into a plain model's folder: refused
    (tmp_path / "plain").mkdir()
    assert main(["train", "configs/tiny_test.toml", "--out", str(tmp_path / "plain"), "--steps", "1",
                 "--set", "data.n=8", "--json"]) == 0
    capsys.readouterr()
    assert main(["train", "configs/tiny_test.toml", "--out", str(tmp_path / "plain"), "--steps", "1", "--resume",
                 "--set", "data.kind=shapes-hard", "--set", "data.n=8", "--json"]) == 2
    assert "holds a model of the 'shapes' world" in capsys.readouterr().err
    cfg = json.loads((tmp_path / "abl-pooled-text" / "config.json").read_text())
    assert not any(any(s["unet"]["cross_attn"]) for s in cfg["stages"])


def test_grid_axes_take_per_stage_thresholds_and_samplers(tmp_path):
    from bench.generators import contract, load_generator
    from bench.grid import parse_spec
    from reports.build import _threshold_rank

    spec = parse_spec('name = "x"\nmodel = "shapes"\nsuites = ["shapes:2"]\n[axes]\n'
                      'threshold = [["static", "dynamic:.99"], "none"]\nsampler = [["ddim", "ddpm"]]\n')
    assert spec.threshold == ("static,dynamic:0.99", "none") and spec.sampler == ("ddim,ddpm",)
    with pytest.raises(UserError, match="axes.sampler: unknown sampler 'euler'"):
        parse_spec('name = "x"\nmodel = "shapes"\nsuites = ["shapes:2"]\n[axes]\nsampler = [["ddim", "euler"]]\n')
    gen = contract(load_generator("shapes"))
    with pytest.raises(UserError, match="axes.threshold: 'none,none,static' has 3 values but model 'shapes' needs"):
        gen.check([SamplerConfig(threshold="none,none,static")], [])
    # reports order per-stage settings by the base stage's, after the single settings of the same kind
    assert _threshold_rank("none") < _threshold_rank("none,static") < _threshold_rank("static")
