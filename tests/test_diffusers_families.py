"""Today's diffusers families run the way their authors run them: tiny random-weight SDXL, SD3, FLUX.1-dev and
-schnell, PixArt-Sigma, Sana (DPM-flow and flow-matching configs), Lumina2 and Kandinsky 3, saved with save_pretrained
and loaded through `diffusers:<folder>` as a downloaded checkpoint is.

Samplers map onto the model's own family (flow matching or eps/v) or are refused before any work; latent pipelines
are never clipped; `guidance` is always the paper's w; negative prompt, size and call options reach the call."""

import json
from pathlib import Path

import numpy as np
import pytest

from bench import store
from bench.generators import Request, load_generator
from bench.generators.base import Settings, canonical_call
from bench.generators.diffusers_calls import cond_form, pixel_space
from bench.grid import parse_spec, run_grid, spec_to_toml
from imagen.errors import UserError

import diffusers_families as FAM
from diffusers_fixtures import recorded_calls

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("a red circle", "two blue squares")


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """Builds a family's tiny pipeline once per module, on first use."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = FAM.FAMILIES[name](root)
        return built[name]

    return get


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))


_GENS: dict[str, object] = {}


def gen_of(fam, name: str, query: str = ""):
    key = name + query
    if key not in _GENS:
        _GENS[key] = load_generator(f"diffusers:{fam(name)}{query}")
    return _GENS[key]


def settings(gen, **kw) -> Settings:
    """The model's own settings with some put over them (steps 2 unless given)."""
    kw.setdefault("steps", 2)
    d = gen.sampler_defaults
    return Settings(**{**{k: getattr(d, k) for k in ("sampler", "steps", "guidance", "threshold", "aug_level",
                                                      "distilled_guidance")}, **kw})


# ----------------------------------------------------------------------------- sampler families


@pytest.mark.parametrize("name", ["sd3", "sana-flow-euler", "sana-dpm-flow", "flux-dev", "lumina2"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "EulerDiscreteScheduler"])
def test_a_velocity_model_refuses_an_eps_sampler(fam, name, sampler):
    gen = gen_of(fam, name)
    with pytest.raises(UserError, match="flow-matching") as exc:
        gen.check([settings(gen, sampler=sampler)], [Request("x", 0)])
    assert "\n" not in str(exc.value) and "euler" in str(exc.value)


@pytest.mark.parametrize("name", ["sdxl", "pixart-sigma"])
def test_an_eps_model_refuses_a_flow_scheduler(fam, name):
    gen = gen_of(fam, name)
    with pytest.raises(UserError, match="not compatible"):
        gen.check([settings(gen, sampler="FlowMatchEulerDiscreteScheduler")], [Request("x", 0)])


@pytest.mark.parametrize("name, shift", [("sd3", 3.0), ("sana-dpm-flow", 3.0), ("sana-flow-euler", 3.0),
                                         ("lumina2", 6.0)])
def test_flow_samplers_keep_the_models_shift(fam, name, shift):
    gen = gen_of(fam, name)
    euler = gen.describe(settings(gen, sampler="euler"))["stages"][0]
    assert euler["scheduler"] == "FlowMatchEulerDiscreteScheduler" and euler["scheduler_config"]["shift"] == shift
    unipc = gen.describe(settings(gen, sampler="unipc"))["stages"][0]["scheduler_config"]
    assert unipc["use_flow_sigmas"] and unipc["flow_shift"] == shift and unipc["prediction_type"] == "flow_prediction"
    assert "shift" not in unipc  # only keys the class takes are stored


def test_flux_dpm_keeps_dynamic_shifting_and_its_timesteps_are_what_ran(fam):
    gen = gen_of(fam, "flux-dev")
    s = settings(gen, sampler="dpmpp-2m", steps=3)
    gen.check([s], [Request("x", 0)])
    used = gen.describe(s)["stages"][0]
    assert used["scheduler"] == "DPMSolverMultistepScheduler" and used["scheduler_config"]["use_dynamic_shifting"]
    assert used["scheduler_config"]["use_flow_sigmas"] and "mu" in used
    _, (call,) = recorded_calls(gen, s)
    ran = [round(float(t), 4) for t in call["_scheduler"].timesteps]
    assert ran == used["timesteps"]


@pytest.mark.parametrize("name, sampler", [("lumina2", "dpmpp-2m"), ("flux-schnell", "dpmpp-2m")])
def test_a_scheduler_the_pipeline_cannot_drive_is_refused_before_any_image(fam, name, sampler, tmp_path):
    """Lumina2 hands custom sigmas that DPM-Solver does not take; FLUX.1-schnell hands mu to a DPM-Solver without
    dynamic shifting. Today these crash at the first batch of the cell, after other cells' images are stored."""
    gen = gen_of(fam, name)
    with pytest.raises(UserError, match="cannot run DPMSolverMultistepScheduler") as exc:
        gen.check([settings(gen, sampler="euler"), settings(gen, sampler=sampler)], [Request("x", 0)])
    assert "\n" not in str(exc.value)
    spec = parse_spec(f'name = "t"\nmodel = "diffusers:{fam(name)}"\nsuites = ["shapes:2"]\n'
                      f'[axes]\nsampler = ["euler", "{sampler}"]\nsteps = 2\n')
    with pytest.raises(UserError):
        run_grid(spec, tmp_path / "study", progress=False, log=lambda *_: None)
    assert not (tmp_path / "study").exists()


def test_a_scheduler_whose_step_the_pipeline_cannot_call_is_refused_before_any_image(fam):
    """Kandinsky 3 calls step(..., generator=...), which UniPC's step does not take: found by the probe's first step,
    not half way through a grid."""
    gen = gen_of(fam, "kandinsky3")
    with pytest.raises(UserError, match="unexpected keyword argument 'generator'"):
        gen.check([settings(gen, sampler="ddim"), settings(gen, sampler="unipc")], [Request("x", 0)])


def test_unipc_runs_on_lumina2_with_its_custom_sigmas(fam):
    gen = gen_of(fam, "lumina2")
    out = gen.generate([Request("a red circle", 1)], settings(gen, sampler="unipc"))
    assert out.images[0].std() > 0


# ----------------------------------------------------------------------------- latents are never clipped


def test_kandinsky3_decodes_with_movq_and_is_latent(fam):
    gen = gen_of(fam, "kandinsky3")
    assert not pixel_space(gen.impl.pipes[0]) and not hasattr(gen.impl.pipes[0], "vae")
    with pytest.raises(UserError, match="latent-space"):
        gen.check([settings(gen, threshold="static")], [Request("x", 0)])


@pytest.mark.parametrize("name", ["pixart-sigma", "kandinsky3", "sdxl"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_no_clipping_unless_the_models_config_asks(fam, name, sampler):
    """PixArt-Sigma's config has no clip_sample key: DDIMScheduler's class default (True) must not switch it on."""
    gen = gen_of(fam, name)
    s = settings(gen, sampler=sampler)
    cfg = gen.describe(s)["stages"][0]["scheduler_config"]
    assert cfg["clip_sample"] is False and cfg["thresholding"] is False
    _, (call,) = recorded_calls(gen, s)
    assert call["_scheduler"].config.clip_sample is False


# ----------------------------------------------------------------------------- one meaning of guidance


def test_flux_schnell_guidance_is_true_cfg_and_has_no_distilled_axis(fam):
    gen = gen_of(fam, "flux-schnell")
    assert gen.sampler_defaults.guidance == (1.0,) and gen.sampler_defaults.distilled_guidance is None
    one, (c1,) = recorded_calls(gen, settings(gen, guidance=(1.0,)))
    four, (c4,) = recorded_calls(gen, settings(gen, guidance=(4.0,)))
    assert c4["true_cfg_scale"] == 4.0 and c4["negative_prompt"] == ["", ""] and "guidance_scale" not in c4
    assert c1["true_cfg_scale"] == 1.0 and "negative_prompt" not in c1
    assert not np.array_equal(one.images[0], four.images[0])  # two settings, two different images
    with pytest.raises(UserError, match="no embedded guidance"):
        gen.check([settings(gen, distilled_guidance=3.5)], [Request("x", 0)])


def test_flux_dev_distilled_guidance_is_its_own_axis(fam, tmp_path):
    spec = parse_spec(f'name = "t"\nmodel = "diffusers:{fam("flux-dev")}"\nsuites = ["shapes:1"]\n'
                      f'[axes]\nsteps = 2\ndistilled_guidance = [2.0, 5.0]\nguidance = [1.0, 3.0]\n')
    run_grid(spec, tmp_path / "s", progress=False, log=lambda *_: None, metrics=False)
    rows = store.read_table(tmp_path / "s", store.SAMPLES)
    assert sorted(set(zip(rows[store.COL_GUIDANCE], rows[store.COL_DISTILLED_GUIDANCE]))) == \
        [(1.0, 2.0), (1.0, 5.0), (3.0, 2.0), (3.0, 5.0)]
    for _, r in rows.iterrows():
        call = json.loads(r[store.COL_GENERATION])["stages"][0]["call"]
        assert call["guidance_scale"] == r[store.COL_DISTILLED_GUIDANCE]
        assert call["true_cfg_scale"] == r[store.COL_GUIDANCE]
    left_out = parse_spec(f'name = "t"\nmodel = "diffusers:{fam("flux-dev")}"\nsuites = ["shapes:1"]\n[axes]\n'
                          f'steps = 2\n')
    from bench.grid import fill_axes

    assert fill_axes(left_out, gen_of(fam, "flux-dev").sampler_defaults).distilled_guidance == (3.5,)


def test_kandinsky3_guidance_is_converted_from_its_own_form(fam):
    assert cond_form(type(gen_of(fam, "kandinsky3").impl.pipes[0]))
    gen = gen_of(fam, "kandinsky3")
    assert gen.sampler_defaults.guidance == (4.0,)  # its guidance_scale 3.0 is w = 4 in the paper's form
    _, (call,) = recorded_calls(gen, settings(gen, guidance=(5.0,)))
    assert call["guidance_scale"] == 4.0
    with pytest.raises(UserError, match="w = 1 or w > 2"):
        gen.check([settings(gen, guidance=(1.5,))], [Request("x", 0)])


def test_where_the_other_form_starts_guiding_is_read_from_the_source():
    from diffusers import Kandinsky3Pipeline

    from bench.generators.diffusers_calls import cfg_threshold

    assert cfg_threshold(Kandinsky3Pipeline) == 1.0
    krea = getattr(__import__("diffusers"), "Krea2Pipeline", None)
    if krea is not None:  # guides for s > 0: w in (1, 2] is honoured there
        assert cond_form(krea) and cfg_threshold(krea) == 0.0


def test_the_other_cfg_form_is_read_from_the_source():
    from diffusers import (Cosmos2TextToImagePipeline, FluxPipeline, Kandinsky3Pipeline, PixArtSigmaPipeline,
                           StableDiffusion3Pipeline, StableDiffusionXLPipeline)

    assert cond_form(Kandinsky3Pipeline) and cond_form(Cosmos2TextToImagePipeline)
    assert not any(cond_form(c) for c in (StableDiffusionXLPipeline, StableDiffusion3Pipeline, PixArtSigmaPipeline,
                                          FluxPipeline))


def test_guidance_below_one_says_why_on_every_kind(fam):
    for name in ("flux-dev", "sd3"):
        gen = gen_of(fam, name)
        with pytest.raises(UserError, match="below 1"):
            gen.check([settings(gen, guidance=(0.5,))], [Request("x", 0)])


# ----------------------------------------------------------------------------- call options


def test_negative_prompt_reaches_the_call_and_changes_the_image(fam):
    gen = gen_of(fam, "sd3")
    plain, _ = recorded_calls(gen, settings(gen, guidance=(4.0,)))
    neg, (call,) = recorded_calls(gen, settings(gen, guidance=(4.0,), negative_prompt="blurry, watermark"))
    assert call["negative_prompt"] == ["blurry, watermark"] * 2
    assert not np.array_equal(plain.images[0], neg.images[0])


@pytest.mark.parametrize("name", ["kandinsky3", "sdxl", "pixart-sigma"])
def test_a_negative_prompt_goes_in_one_per_prompt(fam, name):
    """Kandinsky 3 (and SD 1.x, IF) refuse a negative prompt of another type than the prompt: a string beside a list."""
    gen = gen_of(fam, name)
    s = settings(gen, guidance=(5.0,), negative_prompt="blurry")
    gen.check([s], [Request("x", 0)])
    out, (call,) = recorded_calls(gen, s)
    assert call["negative_prompt"] == ["blurry", "blurry"] and len(out.images) == 2
    assert gen.describe(s)["stages"][0]["call"]["negative_prompt"] == "blurry"


def test_caption_cleaning_is_stated_and_can_be_set(fam):
    gen = gen_of(fam, "pixart-sigma")
    import importlib.util

    have = all(importlib.util.find_spec(m) for m in ("bs4", "ftfy"))
    assert gen.describe(settings(gen))["stages"][0]["call"]["clean_caption"] is have
    s = settings(gen, call=canonical_call({"clean_caption": False}))
    _, (call,) = recorded_calls(gen, s)
    assert call["clean_caption"] is False


def test_call_options_reach_the_call_and_unknown_ones_are_refused(fam):
    gen = gen_of(fam, "flux-dev")
    _, (call,) = recorded_calls(gen, settings(gen, call=canonical_call({"max_sequence_length": 64})))
    assert call["max_sequence_length"] == 64
    with pytest.raises(UserError, match="takes no such argument"):
        gen.check([settings(gen, call=canonical_call({"no_such_arg": 1}))], [Request("x", 0)])
    with pytest.raises(UserError, match="max_sequence_length"):  # the pipeline's own check, before any work
        gen.check([settings(gen, call=canonical_call({"max_sequence_length": 100000}))], [Request("x", 0)])


def test_sana_samples_at_its_own_size_and_a_size_it_would_resample_is_refused(fam):
    gen = gen_of(fam, "sana-dpm-flow")
    native = gen.impl.size
    out = gen.generate([Request("a red circle", 1)], settings(gen))
    assert native is not None and out.images[0].shape[:2] == native != (1024, 1024)
    odd = gen_of(fam, "sana-dpm-flow", f"?height={native[0] + 32}&width={native[1]}")
    with pytest.raises(UserError, match="bin"):
        odd.check([settings(odd)], [Request("x", 0)])


def test_size_option_is_honoured_and_is_another_model(fam):
    small = gen_of(fam, "sdxl", "?height=48&width=64")
    out = small.generate([Request("a red circle", 1)], settings(small))
    assert out.images[0].shape == (48, 64, 3)
    assert small.checkpoint_hash != gen_of(fam, "sdxl").checkpoint_hash


def test_offload_needs_a_gpu_and_bad_options_are_one_line(fam):
    for query, words in (("?offload=model", "--device cuda"), ("?offload=disk", "offload="),
                         ("?height=64", "both height and width"), ("?height=x&width=64", "whole number")):
        with pytest.raises(UserError, match=words):
            load_generator(f"diffusers:{fam('sdxl')}{query}")


def test_offload_calls_diffusers_own_methods(fam, monkeypatch):
    from diffusers import DiffusionPipeline

    called = []
    monkeypatch.setattr(DiffusionPipeline, "enable_model_cpu_offload", lambda self, device=None, **k:
                        called.append(("model", device)), raising=True)
    from bench.generators.diffusers_pipeline import DiffusersGenerator

    g = DiffusersGenerator.load(f"diffusers:{fam('sdxl')}?offload=model", device="cuda:0")
    assert called == [("model", "cuda:0")] and g.describe(settings(g))["offload"] == "model"


# ----------------------------------------------------------------------------- the spec and the study


def test_spec_keys_round_trip_and_make_another_study(fam, tmp_path):
    text = (f'name = "t"\nmodel = "diffusers:{fam("sd3")}"\nsuites = ["shapes:1"]\nnegative_prompt = "blurry"\n'
            f'[axes]\nsteps = 2\nguidance = 3.0\nsampler = "euler"\n[call]\nmax_sequence_length = 32\n')
    spec = parse_spec(text)
    assert parse_spec(spec_to_toml(spec)) == spec
    run_grid(spec, tmp_path / "s", progress=False, log=lambda *_: None, metrics=False)
    gen = json.loads(store.read_table(tmp_path / "s", store.SAMPLES)[store.COL_GENERATION].iloc[0])
    assert gen["stages"][0]["call"]["negative_prompt"] == "blurry"
    assert gen["stages"][0]["call"]["max_sequence_length"] == 32
    other = parse_spec(text.replace('"blurry"', '"noisy"'))
    with pytest.raises(UserError, match="negative prompt"):
        run_grid(other, tmp_path / "s", progress=False, log=lambda *_: None, metrics=False)


def test_spec_text_round_trips_any_unicode():
    text = ('name = "t"\nmodel = "diffusers:./x"\nsuites = ["shapes:1"]\n'
            'negative_prompt = "blurry \U0001F600 \\u007f"\n'
            '[call]\nmax_sequence_length = 3\nwords = ["a\U0001F600", "b"]\n')
    spec = parse_spec(text)
    assert parse_spec(spec_to_toml(spec)) == spec and "\U0001F600" in spec.negative_prompt


@pytest.mark.parametrize("line, words", [
    ('[call]\nd = [1979-05-27]', "a list of them"), ('[axes]\ndistilled_guidance = [[3.5, 9.0]]', "list inside"),
    ('[call]\n"weird key" = 1', "not an argument name"),
    ('[call]\nprompt = "x"', "set by the harness"), ('[call]\nheight = 64', "set by the harness"),
    ('negative_prompt = 3', "must be a string"), ('[axes]\nsampler = "heun"', "unknown sampler"),
])
def test_spec_mistakes_are_one_line(line, words):
    head = 'name = "t"\nmodel = "diffusers:./x"\nsuites = ["shapes:1"]\n'
    text = line + "\n" + head if line.startswith("negative") else head + line + "\n"
    with pytest.raises(UserError, match=words):
        parse_spec(text)


def test_options_on_a_model_that_cannot_take_them_are_refused(tmp_path):
    spec = parse_spec('name = "t"\nmodel = "tiny"\nsuites = ["shapes:1"]\nnegative_prompt = "x"\n[axes]\nsteps = 2\n')
    with pytest.raises(UserError, match="negative_prompt: model 'tiny'"):
        run_grid(spec, tmp_path / "s", progress=False, log=lambda *_: None)
    assert not (tmp_path / "s").exists()


def test_cli_sample_refuses_a_wrong_family_sampler_in_one_line(fam, tmp_path, capsys):
    from imagen_bench import main

    a = tmp_path / "a.png"
    models = {k: fam(k) for k in ("sd3", "flux-dev")}
    capsys.readouterr()  # building the fixtures printed save_pretrained's bars
    assert main(["sample", "--model", f"diffusers:{models['sd3']}", "--prompt", "a red circle", "--sampler", "ddim",
                 "--steps", "2", "--out", str(a)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flow-matching" in err[0] and not a.exists()
    b = tmp_path / "b.png"
    assert main(["sample", "--model", f"diffusers:{fam('flux-dev')}", "--prompt", "a red circle", "--sampler", "euler",
                 "--steps", "2", "--guidance", "2", "--distilled-guidance", "4", "--height", "32", "--width", "48",
                 "--call", "max_sequence_length=48", "--negative-prompt", "dull", "--json", "--out", str(b)]) == 0
    call = json.loads(capsys.readouterr().out)["generation"]["stages"][0]["call"]
    assert call == {"num_inference_steps": 2, "true_cfg_scale": 2.0, "guidance_scale": 4.0,
                    "negative_prompt": "dull", "height": 32, "width": 48, "max_sequence_length": 48}
    from PIL import Image

    assert Image.open(b).size == (48, 32)
