"""The shipped `shapes` cascade: it loads, matches its recipe, stays small, and draws what its captions say."""

import functools
import json
import tomllib
from pathlib import Path

import pytest

from imagen.checkpoint import load_cascade, read_config, resolve, shipped_models
from imagen.config import to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_shapes_is_shipped_small_and_is_the_recipe():
    assert "shapes" in shipped_models()
    folder = resolve("shapes")
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 12e6, f"shipped shapes model is {size / 1e6:.1f} MB"
    cfg = read_config(folder)
    recipe = tomllib.loads((ROOT / "configs" / "shapes_model.toml").read_text())
    shipped = to_dict(cfg)
    assert shipped["text"] == recipe["text"]
    for st, want in zip(shipped["stages"], recipe["stages"]):
        assert {k: st[k] for k in want if k != "unet"} == {k: v for k, v in want.items() if k != "unet"}
        assert {k: st["unet"][k] for k in want["unet"]} == want["unet"]
    assert [s.name for s in cfg.stages] == ["base", "sr64"] and cfg.stages[1].resolution == 4 * cfg.stages[0].resolution
    cascade = load_cascade("shapes")
    assert sum(p.numel() for p in cascade.parameters()) > 1e6


@functools.cache
def _accuracy(sampler, n: int):
    """Scorer accuracy of the shipped model on n held-out captions (seeds 0..n-1) with a whole SamplerConfig, so
    per-stage guidance and SR augmentation in the model's sampler.toml are used as they are."""
    from bench.metrics.alignment import accuracy_dict, alignment
    from imagen import shapes
    from imagen.pipeline import Pipeline

    pipe = Pipeline.load("shapes")
    caps = shapes.held_out_captions(n, seed=0)
    images = pipe.generate([c[0] for c in caps], list(range(n)), sampler, batch_size=16)
    return accuracy_dict(alignment(list(images), [c[1] for c in caps], [c[2] for c in caps]).accuracy)


def test_shapes_model_draws_the_caption_colours_and_shapes():
    """A quick look at what the model makes: 24 held-out captions, 20 DDIM steps, guidance 5."""
    from imagen.config import SamplerConfig

    acc = _accuracy(SamplerConfig(sampler="ddim", steps=20, guidance=(5.0,), threshold="dynamic:0.995"), 24)
    assert acc["color"] >= 0.6 and acc["shape"] >= 0.6, acc


@pytest.mark.slow
def test_shapes_model_meets_the_fact_targets_at_its_default_settings():
    """The issue's colour, shape, count and position targets at the model's own sampler settings (its sampler.toml:
    w = 3, static thresholding, DDPM 50), on 64 held-out captions."""
    from imagen.checkpoint import sampler_defaults

    guided = _accuracy(sampler_defaults("shapes"), 64)
    print(json.dumps({"guided": guided}))
    assert guided["color"] >= 0.85 and guided["shape"] >= 0.85, guided
    assert guided["count"] >= 0.70 and guided["position"] >= 0.70, guided


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="w = 1 is already 0.95-0.97 overall on 200 captions, so no guidance weight "
                   "can beat it by 0.10 (w = 3 adds 0.015 on the default eval set, 0.025 on seed 1000's captions): "
                   "see docs/reference-models.md, 'The shipped reference model'. Remove this mark when it passes.")
def test_shapes_model_guidance_beats_no_guidance_by_a_tenth():
    """Guidance at the model's default weight beating no guidance (w = 1) by 0.10 overall."""
    from imagen.checkpoint import sampler_defaults

    d = sampler_defaults("shapes")
    guided = _accuracy(d, 64)
    plain = _accuracy(d.given(guidance=(1.0,)), 64)  # the same settings without guidance
    print(json.dumps({"guided": guided, "plain": plain}))
    assert guided["overall"] >= plain["overall"] + 0.10, (guided, plain)
