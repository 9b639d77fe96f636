"""One contract, every generator kind (as diffusers' PipelineTesterMixin runs one set of checks over every pipeline):
our Imagen, each tiny diffusers family, and a precomputed `images:` set.

  - an image does not depend on the batch it is made in;
  - every refusal happens in check(), before any image: a grid that asks for something impossible writes nothing;
  - describe() is exactly what ran (the call's arguments and the scheduler's config);
  - with the model's own settings, a diffusers pipeline gives what a direct diffusers call with the same seeds gives.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.generators import Request, load_generator
from bench.generators.base import Settings, as_settings
from bench.grid import parse_spec, run_grid
from bench.generators.diffusers_pipeline import _jsonable
from bench.generators.schedulers import used_config
from imagen.errors import UserError

import diffusers_families as FAM

FAMILIES = sorted(FAM.FAMILIES)
KINDS = ["imagen"] + FAMILIES + ["images"]
PROMPTS = ("a red circle", "two blue squares", "a green triangle")
SEEDS = (3, 4, 5)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("contract")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))


_MODELS: dict[str, str] = {}


def model_of(kind: str, root: Path) -> str:
    if kind not in _MODELS:
        if kind == "imagen":
            _MODELS[kind] = "tiny"
        elif kind == "images":
            folder = root / "image-set"
            for k, p in enumerate(PROMPTS):
                (folder / p).mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng(k)
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / p / "0.png")
            _MODELS[kind] = f"images:{folder}"
        else:
            _MODELS[kind] = f"diffusers:{FAM.FAMILIES[kind](root / kind)}"
    return _MODELS[kind]


def own_settings(gen):
    """The generator's own settings at 2 steps (None for an image set)."""
    if gen.sampler_defaults is None:
        return None
    return as_settings(gen.sampler_defaults).given(steps=2)


def requests():
    return [Request(p, s, None, 0) for p, s in zip(PROMPTS, SEEDS)]


@pytest.mark.parametrize("kind", KINDS)
def test_an_image_does_not_depend_on_its_batch(kind, root):
    gen = load_generator(model_of(kind, root))
    s = own_settings(gen)
    gen.check([s], requests())
    together = gen.generate(requests(), s, batch_size=3).images
    alone = [gen.generate([r], s, batch_size=1).images[0] for r in requests()]
    for a, b in zip(together, alone):
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_refusal_comes_before_any_image(kind, root, tmp_path):
    """A grid with one good cell and one the model cannot honour writes nothing at all."""
    model = model_of(kind, root)
    bad = {"imagen": 'guidance = [1.0, [1.0, 2.0, 3.0, 4.0]]', "images": 'steps = 2',
           "flux-schnell": 'distilled_guidance = [3.5]'}.get(kind, 'guidance = [1.0, 0.5]')
    head = f'name = "t"\nmodel = "{model}"\nsuites = ["shapes:2"]\n[axes]\n'
    with pytest.raises(UserError):
        spec = parse_spec(head + (f"steps = 2\n{bad}\n" if kind != "images" else f"{bad}\n"))
        run_grid(spec, tmp_path / "study", progress=False, log=lambda *_: None)
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("kind", FAMILIES)
def test_describe_is_exactly_what_ran(kind, root):
    gen = load_generator(model_of(kind, root))
    # a swapped scheduler of the model's own family (Kandinsky 3 hands step() a generator UniPC does not take)
    s = own_settings(gen).given(sampler="ddim" if kind == "kandinsky3" else "unipc")
    gen.check([s], requests())
    said = gen.describe(s)["stages"][0]
    seen = []
    pipe = gen.impl.pipes[0]
    cls = type(pipe)

    def spy(self, *a, **kw):
        seen.append((kw, self.scheduler))
        return cls.__call__(self, *a, **kw)

    pipe.__class__ = type(cls.__name__, (cls,), {"__call__": spy})
    try:
        gen.generate(requests()[:1], s)
    finally:
        pipe.__class__ = cls
    kw, scheduler = seen[0]
    ran = {k: v for k, v in kw.items() if k not in ("prompt", "generator", "output_type", "prompt_embeds",
                                                   "negative_prompt_embeds")}
    assert ran == said["call"]
    assert type(scheduler).__name__ == said["scheduler"]
    assert {k: _jsonable(v) for k, v in used_config(scheduler).items()} == said["scheduler_config"]
    assert [round(float(t), 4) for t in scheduler.timesteps] == said["timesteps"]


@pytest.mark.parametrize("kind", FAMILIES)
def test_defaults_reproduce_a_direct_diffusers_call(kind, root):
    """With the model's own settings the harness is the pipeline called by hand with the same seeds."""
    from diffusers import DiffusionPipeline

    model = model_of(kind, root)
    gen = load_generator(model)
    s = own_settings(gen)
    ours = gen.generate(requests()[:2], s).images
    pipe = DiffusionPipeline.from_pretrained(model[len("diffusers:"):])
    pipe.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": 2, "output_type": "np",
          "generator": [torch.Generator("cpu").manual_seed(sd) for sd in SEEDS[:2]]}
    size = gen.impl.size
    if size is not None:  # Sana's own size: its call default (1024) would sample at 512 and resize
        kw.update(height=size[0], width=size[1])
    if "clean_caption" in gen.impl.call_defaults[0]:
        kw["clean_caption"] = False
    direct = pipe(prompt=list(PROMPTS[:2]), **kw).images
    direct = (np.clip(direct, 0, 1) * 255).round().astype(np.uint8)
    for a, b in zip(ours, direct):
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_a_user_generator_without_options_refuses_them():
    class Mine:
        model_id, checkpoint_hash = "mine", "0"

        def generate(self, prompts, seeds, settings):
            return np.zeros((len(prompts), 8, 8, 3), np.uint8)

    from bench.generators import contract

    c = contract(Mine())
    with pytest.raises(UserError, match="negative_prompt"):
        c.check([Settings(negative_prompt="x")], requests())
    with pytest.raises(UserError, match="distilled_guidance"):
        c.check([Settings(distilled_guidance=3.5)], requests())
    c.check([Settings()], requests())
