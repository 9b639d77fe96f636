"""Generators: the one contract for "prompts + seeds + settings -> images", and its kinds.

A model spec string names a generator everywhere a model is named (grid spec `model =`, `--model` of `grid run`,
`quickstart`, `coco`, `sample`, `eval shapes`):
  - a shipped name, a checkpoint folder or a preset: our Imagen (`imagen.pipeline`), `ImagenGenerator`;
  - `diffusers:<hub id or folder>[+<stage II>[+<stage III>]][?dtype=..&variant=..&safety_checker=off]`: any
    diffusers text-to-image pipeline or cascade, `DiffusersGenerator`;
  - `images:<folder or CSV>`: images another system already made, `ImageSetGenerator`.
The contract itself is in `bench.generators.base`.
"""

from __future__ import annotations

import os

from imagen.config import SamplerConfig
from imagen.errors import UserError

from bench.generators.base import AXES, Contract, Generated, Request, contract

DIFFUSERS, IMAGES = "diffusers:", "images:"


def kind_of(model: str) -> str:
    """'imagen' | 'diffusers' | 'images', from the spec string alone."""
    if model.startswith(DIFFUSERS):
        return "diffusers"
    if model.startswith(IMAGES):
        return "images"
    return "imagen"


def rank_device(device: str) -> str:
    """`cuda` under torchrun / accelerate -> `cuda:LOCAL_RANK`, so each rank generates on its own GPU
    (imagen.parallel.rank_device, on the device's name)."""
    if device != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    import torch

    from imagen.parallel import rank_device as on_rank

    return str(on_rank(torch.device(device)))


def model_defaults(model: str) -> SamplerConfig | None:
    """The settings a model samples at where a spec gives none, without loading weights where that is possible:
    an Imagen folder's sampler.toml (else SamplerConfig()); None for a diffusers pipeline (known once it is loaded,
    from its own scheduler and call defaults) and for an image set (it has no settings)."""
    if kind_of(model) != "imagen":
        return None
    from imagen.checkpoint import sampler_defaults

    return sampler_defaults(model)


def load_generator(model: str, device: str = "cpu", cache_root=None, precision: str = "fp32",
                   compile: bool = False) -> Contract:
    """The generator a model spec string names, on `device` (a rank's own GPU under torchrun), behind the contract.
    `precision` is for our own cascades (fp32, bf16, auto); a diffusers spec names its dtype (?dtype=)."""
    device = rank_device(device)
    kind = kind_of(model)
    if kind != "imagen" and (precision != "fp32" or compile):
        raise UserError(f"--precision and --compile are for our own models; for {kind}: give the dtype in the "
                        f"spec (diffusers:...?dtype=bfloat16)" if kind == "diffusers" else
                        f"--precision and --compile are for our own models; {kind}: images are read, not generated")
    if kind == "diffusers":
        from bench.generators.diffusers_pipeline import DiffusersGenerator

        return contract(DiffusersGenerator.load(model, device))
    if kind == "images":
        from bench.generators.images import ImageSetGenerator

        return contract(ImageSetGenerator(model[len(IMAGES):], model_id=model))
    from bench.generators.imagen import ImagenGenerator

    return contract(ImagenGenerator.load(model, device, cache_root, precision, compile))


__all__ = ["AXES", "Contract", "Generated", "Request", "contract", "kind_of", "rank_device", "model_defaults",
           "load_generator"]
