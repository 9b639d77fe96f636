"""The generator contract on real libraries: tiny random-weight diffusers pipelines saved with save_pretrained and
loaded through `diffusers:<folder>` (an IF-style pixel cascade, an SD-style latent pipeline), and `images:` sets."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import store
from bench.generators import Request, load_generator
from bench.grid import parse_spec, run_grid
from imagen.config import SamplerConfig
from imagen.errors import UserError

import diffusers_fixtures as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    s1, s2 = F.make_if_cascade(root)
    return {"if1": s1, "if2": s2, "sd": F.make_sd_pipeline(root), "sd-flag": F.make_sd_pipeline(root, "flag-all"),
            "up": F.make_sd_upscaler(root)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def if_gen(pipes):
    return load_generator(f"diffusers:{pipes['if1']}+{pipes['if2']}")


def test_if_cascade_every_axis_lands_in_the_call_or_the_scheduler(if_gen):
    s = SamplerConfig(sampler="ddim", steps=3, guidance=(4.0, 2.0), threshold="dynamic:0.9:1.5", aug_level=(0.3,))
    out, (c1, c2) = F.recorded_calls(if_gen, s)
    assert [im.shape for im in out.images] == [(32, 32, 3)] * 2 and out.flagged == [False, False]
    assert (c1["guidance_scale"], c2["guidance_scale"]) == (4.0, 2.0)
    assert c1["num_inference_steps"] == c2["num_inference_steps"] == 3 and c2["noise_level"] == 300
    for c in (c1, c2):
        sch = c["_scheduler"]
        assert type(sch).__name__ == "DDIMScheduler"
        assert sch.config.thresholding and sch.config.dynamic_thresholding_ratio == 0.9
        assert sch.config.sample_max_value == 1.5 and not sch.config.clip_sample
        assert "prompt_embeds" in c and "prompt" not in c  # T5 encoded once, by the harness
    used = if_gen.describe(s)["stages"]
    assert [u["scheduler"] for u in used] == ["DDIMScheduler"] * 2 and used[1]["call"]["noise_level"] == 300
    # dpmpp-2m: the solver's own settings; static on a scheduler without clip_sample: thresholding capped at 1
    _, (c1, _) = F.recorded_calls(if_gen, SamplerConfig(sampler="dpmpp-2m", steps=2, guidance=(3.0,),
                                                        threshold="static", aug_level=(0.0,)))
    cfg = c1["_scheduler"].config
    assert type(c1["_scheduler"]).__name__ == "DPMSolverMultistepScheduler"
    assert (cfg.algorithm_type, cfg.solver_order, cfg.thresholding, cfg.sample_max_value) == ("dpmsolver++", 2,
                                                                                                True, 1.0)
    _, (c1, _) = F.recorded_calls(if_gen, SamplerConfig(sampler="ddpm", steps=2, guidance=(1.0,), threshold="none",
                                                 aug_level=(0.0,)))
    cfg = c1["_scheduler"].config
    assert not cfg.thresholding and not cfg.clip_sample and cfg.variance_type == "learned_range"


def test_axes_left_out_are_each_stages_own(if_gen, pipes):
    """IF stage I samples at 100 steps, w = 7, dynamic:0.95:1.5; its stage II at 50 steps, w = 4, noise level 250
    and its own cap 1.0: left-out axes keep each stage's own scheduler, config and call defaults."""
    d = if_gen.sampler_defaults
    assert (d.sampler, d.steps, d.guidance, d.threshold, d.aug_level) == (None, None, (7.0, 4.0), None, (0.25,))
    s1, s2 = if_gen.describe(d)["stages"]
    assert (s1["call"]["num_inference_steps"], s2["call"]["num_inference_steps"]) == (100, 50)
    assert s1["scheduler_config"]["sample_max_value"] == 1.5 and s2["scheduler_config"]["sample_max_value"] == 1.0
    assert s2["call"]["noise_level"] == 250
    spec = parse_spec(f'name = "d"\nmodel = "diffusers:{pipes["if1"]}+{pipes["if2"]}"\nsuites = ["shapes:2"]\n')
    assert (spec.sampler, spec.threshold, spec.steps, spec.guidance) == (None, None, None, None)
    from bench.grid import fill_axes, spec_to_toml

    filled = fill_axes(spec, d)
    assert filled.guidance == ((7.0, 4.0),) and filled.sampler is None
    assert parse_spec(spec_to_toml(filled)) == dataclasses.replace(filled, guidance=((7.0, 4.0),))
    # the upscaler keeps its own DDIM scheduler and 75 steps behind an SD base (PNDM, 50)
    up = load_generator(f"diffusers:{pipes['sd']}+{pipes['up']}")
    a, b = up.describe(up.sampler_defaults)["stages"]
    assert (a["scheduler"], b["scheduler"]) == ("PNDMScheduler", "DDIMScheduler")
    assert (a["call"]["num_inference_steps"], b["call"]["num_inference_steps"]) == (50, 75)


def test_stage_two_gets_stage_ones_image_and_text(if_gen):
    s = SamplerConfig(sampler="ddim", steps=2, guidance=(3.0, 2.0), threshold="static", aug_level=(0.0,))
    _, (c1, c2) = F.recorded_calls(if_gen, s)
    assert c1["output_type"] == "pt" and c2["output_type"] == "np"
    assert tuple(c2["image"].shape) == (2, 3, 16, 16) and float(c2["image"].abs().max()) <= 1.0
    assert torch.equal(c1["prompt_embeds"], c2["prompt_embeds"])
    stage1 = if_gen.impl.pipes[0]
    alone = stage1(prompt_embeds=c1["prompt_embeds"], negative_prompt_embeds=c1["negative_prompt_embeds"],
                   num_inference_steps=2, guidance_scale=3.0, output_type="pt",
                   generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    assert torch.equal(alone, c2["image"])  # exactly stage I's output, with the image's own seed


@pytest.mark.parametrize("settings, message", [
    (dict(threshold="static"), "latent-space pipeline"),
    (dict(aug_level=(0.1,)), "no super-resolution stage"),
    (dict(guidance=(0.5,)), "weights below 1"),
    (dict(guidance=(3.0, 2.0)), "one value or one per stage"),
    (dict(sampler="NoSuchScheduler"), "neither a sampler .* nor a diffusers scheduler"),
])
def test_axes_a_pipeline_cannot_honour_are_refused(pipes, settings, message):
    gen = load_generator(f"diffusers:{pipes['sd']}")
    base = dict(sampler="ddim", steps=2, guidance=(3.0,), threshold="none", aug_level=(0.0,))
    with pytest.raises(UserError, match=message):
        gen.check([SamplerConfig(**{**base, **settings})], [])


def test_a_sampler_that_would_drop_the_models_own_thresholding_is_refused(if_gen):
    """IF's own scheduler thresholds; EulerDiscreteScheduler cannot. With the threshold axis left out that would run
    without it, silently: refused, and given threshold = none it runs."""
    s = SamplerConfig(sampler="euler", steps=2, guidance=(4.0, 2.0), threshold=None, aug_level=(0.3,))
    with pytest.raises(UserError, match="has no clip_sample, thresholding"):
        if_gen.check([s], [Request("x", 0)])
    if_gen.check([SamplerConfig(sampler="euler", steps=2, guidance=(4.0, 2.0), threshold="none", aug_level=(0.3,))],
                 [Request("x", 0)])


def test_thresholding_a_scheduler_without_it_is_refused(if_gen):
    s = SamplerConfig(sampler="EulerDiscreteScheduler", steps=2, guidance=(3.0,), threshold="dynamic:0.9")
    with pytest.raises(UserError, match="EulerDiscreteScheduler has no thresholding"):
        if_gen.check([s], [])
    if_gen.check([SamplerConfig(sampler="EulerDiscreteScheduler", steps=2, guidance=(3.0,), threshold="none",
                                aug_level=(0.2,))], [])


@pytest.mark.parametrize("which", ["sd", "if"])
def test_an_image_does_not_depend_on_its_batch(pipes, if_gen, which):
    gen = if_gen if which == "if" else load_generator(f"diffusers:{pipes['sd']}")
    s = gen.sampler_defaults.given(steps=2, guidance=(3.0,), threshold="none" if which == "sd" else "static")
    prompts, seeds = ["a red circle", "two blue squares", "a green triangle"], [11, 22, 33]
    together = gen.generate([Request(p, x) for p, x in zip(prompts, seeds)], s, batch_size=3).images
    alone = gen.generate([Request(prompts[1], seeds[1])], s, batch_size=1).images[0]
    reordered = gen.generate([Request(p, x) for p, x in zip(prompts[::-1], seeds[::-1])], s, batch_size=2).images
    # the noise is per image; float32 kernels batched differently may move a pixel by one level at most
    assert np.abs(together[1].astype(int) - alone).max() <= 1
    assert np.abs(together[0].astype(int) - reordered[2]).max() <= 1
    other = gen.generate([Request(prompts[1], 99)], s).images[0]
    assert np.abs(other.astype(int) - alone).max() > 10  # a different seed is a different image


def test_upscaler_stage_takes_the_aug_level_as_its_noise_level(pipes):
    gen = load_generator(f"diffusers:{pipes['sd']}+{pipes['up']}")
    assert gen.n_stages == 2 and gen.sampler_defaults.aug_level == (0.02,)
    s = SamplerConfig(sampler="ddim", steps=2, guidance=(2.0, 3.0), threshold="none", aug_level=(0.1,))
    assert gen.describe(s)["stages"][1]["call"] == {"num_inference_steps": 2, "guidance_scale": 3.0,
                                                     "noise_level": 100}
    with pytest.raises(UserError, match="above its maximum 350"):
        gen.check([SamplerConfig(sampler="ddim", steps=2, guidance=(2.0,), threshold="none", aug_level=(0.5,))], [])


def test_safety_checker_of_an_earlier_stage_judges_a_cascades_final_images(pipes):
    """SD (with a checker) + the x4 upscaler (none): the base's checker runs on the upscaled images."""
    gen = load_generator(f"diffusers:{pipes['sd-flag']}+{pipes['up']}")
    s = SamplerConfig(sampler="ddim", steps=2, guidance=(2.0, 2.0), threshold="none", aug_level=(0.02,))
    assert gen.describe(s)["safety_checker_stage"] == "1 (StableDiffusionPipeline)"
    made = gen.generate([Request("a red circle", 1), Request("a cat", 2)], s)
    assert made.flagged == [True, True] and all(im.max() == 0 for im in made.images)
    assert [im.shape for im in made.images] == [(128, 128, 3)] * 2  # 32 px base, x4
    clean = load_generator(f"diffusers:{pipes['sd']}+{pipes['up']}")
    assert clean.describe(s)["safety_checker"] is False


def test_rank_device_and_a_minimal_generator(monkeypatch):
    from bench.generators import contract, rank_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # a 4-GPU node, seen from this CPU machine
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    assert rank_device("cuda") == "cuda:3" and rank_device("cpu") == "cpu" and rank_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="LOCAL_RANK 3 but only 2 CUDA"):  # one rank per GPU, never two on one
        rank_device("cuda")
    monkeypatch.delenv("LOCAL_RANK")
    assert rank_device("cuda") == "cuda"

    class Mine:  # a user's own: generate(prompts, seeds, settings, keys=None), no batch_size
        model_id, checkpoint_hash = "mine", "m" * 64

        def generate(self, prompts, seeds, settings, keys=None):
            return [np.full((4, 4, 3), k[1], np.uint8) for k in keys]

    out = contract(Mine()).generate([Request("a", 1, "p", 3)], None, batch_size=4)
    assert out.images[0][0, 0, 0] == 3 and out.flagged == [False]


def test_checkpoint_hash_covers_what_is_loaded_not_other_variants(pipes, tmp_path):
    """A full `huggingface-cli download` also fetches other variants and READMEs: the hash is of what loads."""
    import shutil

    from bench.generators.diffusers_pipeline import folder_hash
    from bench.filehash import HashMemo

    copy = tmp_path / "copy"
    shutil.copytree(pipes["sd"], copy)
    memo = HashMemo(tmp_path / "memo.json")
    before = folder_hash(copy, memo)
    (copy / "README.md").write_text("a model card")
    (copy / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"other variant")
    assert folder_hash(copy, memo) == before
    assert folder_hash(copy, memo, "fp16") != before  # that variant is what loads then
    (copy / "unet" / "config.json").write_text((copy / "unet" / "config.json").read_text() + " ")
    assert folder_hash(copy, memo) != before


def test_missing_hub_model_is_one_line_saying_what_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"huggingface-cli download nobody-here/no-such-pipeline") as exc:
        load_generator("diffusers:nobody-here/no-such-pipeline")
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="unknown option"):
        load_generator("diffusers:x?colour=red")


# ----------------------------------------------------------------------------- grids on other models


def _csv(tmp_path, n=3):
    f = tmp_path / "prompts.csv"
    rows = ["a red circle", "two blue squares", "a green triangle", "a yellow square"][:n]
    f.write_text("prompt,category\n" + "".join(f"{p},C{i % 2}\n" for i, p in enumerate(rows)), encoding="utf-8")
    return f


SPEC = """
name = "other model"
model = "MODEL"
suites = ["PROMPTS"]
samples_per_prompt = 2
seed = 3
batch_size = BATCH
AXES
[metrics]
clip_score = { model = "shapes-clip" }
"""


def _spec(model, prompts, axes="[axes]\nguidance = [1.0, 4.0]\nthreshold = [\"none\"]\nsteps = [2]", batch=4):
    return parse_spec(SPEC.replace("MODEL", model).replace("PROMPTS", str(prompts)).replace("AXES", axes)
                      .replace("BATCH", str(batch)))


def test_safety_checker_flags_are_kept_and_left_out_of_metrics(pipes, tmp_path):
    prompts = _csv(tmp_path, 2)
    out = tmp_path / "flagged"
    logs = []
    run_grid(_spec(f"diffusers:{pipes['sd-flag']}", prompts), out, progress=False, log=logs.append)
    samples = store.read_table(out, store.SAMPLES)
    assert len(samples) == 8 and samples[store.COL_FLAGGED].all()
    metrics = store.read_table(out, store.METRICS)  # every image blacked out: no score from black images ...
    assert set(metrics[store.COL_METRIC]) == {"flagged_share"} and (metrics[store.COL_VALUE] == 1.0).all()
    assert (metrics[store.COL_N_FLAGGED] == 4).all()  # ... but the share is stored, per cell
    assert any("safety checker" in m for m in logs)
    from drawbench.pairs import load_system_samples
    from reports.build import build_report

    with pytest.raises(UserError, match="blacked out by the model's safety checker"):  # never shown to raters
        load_system_samples(out, samples[store.COL_CELL_ID].iloc[0])
    html = Path(build_report(out)).read_text()
    assert "flagged" in html
    from bench.metrics import fid as FID

    with pytest.raises(UserError, match="FID needs at least 2 images, got 0"):  # `fid STUDY` skips them too
        FID.stats_from_study(out)
    gen_info = json.loads(samples[store.COL_GENERATION].iloc[0])
    assert gen_info["safety_checker"] is True and gen_info["stages"][0]["pipeline"] == "StableDiffusionPipeline"
    off = load_generator(f"diffusers:{pipes['sd-flag']}?safety_checker=off")
    made = off.generate([Request("a red circle", 1)], off.sampler_defaults.given(steps=2))
    assert made.flagged == [False] and made.images[0].max() > 0
    assert off.checkpoint_hash != load_generator(f"diffusers:{pipes['sd-flag']}").checkpoint_hash


def test_grid_report_and_rating_session_on_a_diffusers_model_and_an_image_set(pipes, tmp_path):
    from drawbench.pairs import load_session
    from reports.build import build_report

    prompts = _csv(tmp_path)
    a = tmp_path / "sd"
    summary = run_grid(_spec(f"diffusers:{pipes['sd']}", prompts), a, progress=False, log=lambda m: None)
    assert summary["complete"] and summary["images"] == 12
    samples = store.read_table(a, store.SAMPLES)
    assert set(samples[store.COL_GUIDANCE]) == {1.0, 4.0} and samples[store.COL_SAMPLER].isna().all()
    used = json.loads(samples[store.COL_GENERATION].iloc[0])  # the sampler left out: the pipeline's own, recorded
    assert used["stages"][0]["scheduler"] == "PNDMScheduler" and used["stages"][0]["call"]["num_inference_steps"] == 2
    metrics = store.read_table(a, store.METRICS)
    assert set(metrics[store.COL_METRIC]) == {"clip_score_shapes_clip"}
    # the images of one cell, exported as a CSV set, benchmark as a model of their own
    cell = samples[samples[store.COL_GUIDANCE] == 4.0]
    lines = ["prompt,sample_index,file"] + [f"{r.prompt},{r.sample_index},{a / r.image_path}" for r in
                                            cell.itertuples()]
    (tmp_path / "set.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    b = tmp_path / "set"
    run_grid(_spec(f"images:{tmp_path / 'set.csv'}", prompts, axes=""), b, progress=False, log=lambda m: None)
    sb = store.read_table(b, store.SAMPLES)
    assert len(sb) == 6 and sb[store.COL_SEED].isna().all() and sb[store.COL_GUIDANCE].isna().all()
    by_key = {(r.prompt, r.sample_index): r.sha256 for r in cell.itertuples()}
    assert all(by_key[(r.prompt, r.sample_index)] == r.sha256 for r in sb.itertuples())  # the same pixels
    mb = store.read_table(b, store.METRICS)
    ma = metrics[metrics[store.COL_CELL_ID] == cell[store.COL_CELL_ID].iloc[0]]
    assert np.isclose(mb[mb[store.COL_CATEGORY].isna()][store.COL_VALUE].iloc[0],
                      ma[ma[store.COL_CATEGORY].isna()][store.COL_VALUE].iloc[0])
    for study in (a, b):
        assert Path(build_report(study)).is_file()
    cli = [sys.executable, "-m", "imagen_bench", "drawbench", "pairs", "--study", f"{a}:{cell[store.COL_CELL_ID].iloc[0]}",
           "--study", str(b), "--names", "sd", "set", "--per-set", "2", "--open", "--out", str(tmp_path / "session")]
    r = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "DRAWBENCH_ORGANISER_PASSWORD": "pw"})
    assert r.returncode == 0, r.stderr
    session = load_session(tmp_path / "session")
    assert len(session.comparisons) == 3  # one per prompt: the same images on both sides, blinded


def test_image_set_layouts_missing_prompts_and_axes(tmp_path):
    prompts = _csv(tmp_path)
    root = tmp_path / "folders"
    for k, p in enumerate(["a red circle", "two blue squares"]):
        for i in range(2):
            (root / p).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 40 * k + i, np.uint8)).save(root / p / f"{i}.png")
    with pytest.raises(UserError, match=r"no image for 2 of the 6 \(prompt, sample\) pairs.*'a green triangle' "
                                        r"sample 0; 'a green triangle' sample 1"):
        run_grid(_spec(f"images:{root}", prompts, axes=""), tmp_path / "never", progress=False, log=lambda m: None)
    assert not (tmp_path / "never").exists()
    with pytest.raises(UserError, match="takes no \\[axes\\]"):
        _spec(f"images:{root}", prompts)
    gen = load_generator(f"images:{root}")
    before = gen.checkpoint_hash
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a red circle" / "1.png")
    assert load_generator(f"images:{root}").checkpoint_hash != before  # the set's content is its identity


def test_two_ranks_equal_one_process(pipes, tmp_path):
    """torchrun-style env ranks: each rank its own part files, the union complete, disjoint, and equal row for row
    (image sha256 included) to one process; the metrics run once, by the last rank."""
    prompts = _csv(tmp_path, 4)
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("MODEL", f"diffusers:{pipes['sd']}").replace("PROMPTS", str(prompts))
                    .replace("AXES", "[axes]\nguidance = [1.0, 3.0]\nthreshold = [\"none\"]\nsteps = [2]")
                    .replace("BATCH", "1"), encoding="utf-8")
    cmd = [sys.executable, "-m", "imagen_bench", "grid", "run", str(spec), "--json"]
    env = {**os.environ, "IMAGEN_BENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen(cmd + ["--out", str(tmp_path / "two")], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}) for r in (0, 1)]
    one = subprocess.run(cmd + ["--out", str(tmp_path / "one")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    results = [p.communicate(timeout=600) for p in ranks]
    assert all(p.returncode == 0 for p in ranks), results
    parts = store.part_files(tmp_path / "two", store.SAMPLES)
    assert {p.name.split("-")[0] for p in parts} == {"s0of2", "s1of2"}
    two = store.read_table(tmp_path / "two", store.SAMPLES).sort_values(store.COL_SAMPLE_ID)
    ref = store.read_table(tmp_path / "one", store.SAMPLES).sort_values(store.COL_SAMPLE_ID)
    assert len(two) == len(ref) == 16 and two[store.COL_SAMPLE_ID].is_unique
    cols = [store.COL_SAMPLE_ID, store.COL_SHA256, store.COL_SEED, store.COL_CHECKPOINT_HASH, store.COL_GENERATION]
    assert two[cols].reset_index(drop=True).equals(ref[cols].reset_index(drop=True))
    m = store.read_table(tmp_path / "two", store.METRICS)
    assert len(m) and not m.duplicated([store.COL_CELL_ID, store.COL_METRIC, store.COL_CATEGORY]).any()


def test_a_hub_id_loads_from_the_hugging_face_cache(pipes, tmp_path):
    """`diffusers:<hub id>` with the weights in the Hugging Face cache (laid out as huggingface_hub writes it:
    blobs named by content hash, a snapshot of links, refs/main), HF_HUB_OFFLINE=1: found and run, through the
    CLI; its checkpoint hash is read from the blob names."""
    import hashlib

    repo = tmp_path / "hub" / "models--tester--tiny-sd"
    commit = "a" * 40
    for f in Path(pipes["sd"]).rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / commit / f.relative_to(pipes["sd"])
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "IMAGEN_BENCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "imagen_bench", "sample", "--model", "diffusers:tester/tiny-sd", "--prompt", "a red circle",
           "--steps", "2", "--out", str(tmp_path / "a.png"), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == "diffusers:tester/tiny-sd" and out["resolution"] == 32 and len(out["checkpoint_hash"]) == 64
    assert out["generation"]["stages"][0]["call"]["num_inference_steps"] == 2
    missing = subprocess.run(cmd[:5] + ["diffusers:tester/not-there"] + cmd[6:], capture_output=True, text=True,
                             cwd=ROOT, env=env)
    assert missing.returncode == 2 and "huggingface-cli download tester/not-there" in missing.stderr
    assert missing.stderr.strip().count("\n") == 0 and not (tmp_path / "b.png").exists()


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_image_set_files_are_in_natural_order(tmp_path):
    for k in (1, 2, 10):
        _png(tmp_path / "set" / "a red circle" / f"{k}.png", k)
    _png(tmp_path / "set" / "a red circle" / "01.png", 100)  # the same number: after 1.png, by name
    from bench.generators.images import ImageSetGenerator

    g = ImageSetGenerator(tmp_path / "set")
    shown = [int(g.generate(["a red circle"], [0], None, keys=[(None, i)]).images[0][0, 0, 0]) for i in range(4)]
    assert shown == [100, 1, 2, 10]  # 10.png is sample 3, not sample 1; "01" sorts before "1" by name


def test_every_unreadable_image_is_named_before_any_work(tmp_path):
    _png(tmp_path / "set" / "a red circle" / "0.png", 1)
    for name in ("1.png", "2.png"):
        (tmp_path / "set" / "a red circle" / name).write_bytes(b"not an image")
    from bench.generators.images import ImageSetGenerator

    with pytest.raises(UserError, match="2 of 3 images cannot be read") as exc:
        ImageSetGenerator(tmp_path / "set")
    assert "1.png" in str(exc.value) and "2.png" in str(exc.value) and "\n" not in str(exc.value)


def test_folders_that_match_no_prompt_are_named(tmp_path):
    _png(tmp_path / "set" / "a red circle" / "0.png", 1)
    _png(tmp_path / "set" / "a red circel" / "0.png", 2)
    from bench.generators.images import ImageSetGenerator

    g = ImageSetGenerator(tmp_path / "set")
    with pytest.raises(UserError, match="match no prompt of the suites: 'a red circel'"):
        g.check([None], [Request("a red circle", 0), Request("two blue squares", 0)])


def test_if_cascade_takes_a_negative_prompt(if_gen):
    """IF encodes the prompt once for both stages; its encode_prompt wants the negative prompt as a list."""
    from bench.generators.base import Settings

    base = dict(sampler="ddpm", steps=2, guidance=(4.0, 2.0), threshold=None, aug_level=(0.3,))
    plain = if_gen.generate([Request("a red circle", 1)], Settings(**base)).images[0]
    s = Settings(**base, negative_prompt="blurry")
    if_gen.check([s], [Request("a red circle", 1)])
    neg = if_gen.generate([Request("a red circle", 1)], s).images[0]
    assert not np.array_equal(plain, neg)
    assert [st["call"]["negative_prompt"] for st in if_gen.describe(s)["stages"]] == ["blurry", "blurry"]
