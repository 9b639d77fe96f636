"""`imagen-bench sample`: text prompts -> PNG files, with every sampling setting on the command line."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DESCRIPTION = """Generate images from text prompts and write them as PNG files.

The model is a preset (untrained, deterministic weights from seed 0: useful to check the plumbing), a checkpoint
folder written by `imagen-bench train`, a shipped model name, or any diffusers pipeline or cascade
(--model diffusers:<hub id or folder>[+stage II], see docs/models.md). Each prompt
gets the same --seed, so any image can be reproduced alone. With one prompt the image goes to --out; with
several, prompt k goes to OUT-k.png (a.png -> a-0.png, a-1.png, ...).

A sampling setting left off the command line is the model's own: a checkpoint folder (or shipped model) may hold
sampler.toml with the settings it is meant to be sampled at, a diffusers pipeline samples with each stage's own
scheduler, steps and weight; otherwise the global defaults (DDPM, 50 steps, guidance 5, dynamic:0.995) apply.
--json prints the settings used and, for a diffusers model, each stage's scheduler and call."""

EPILOG = """examples:
  imagen-bench sample --preset tiny --prompt "a red circle" --out circle.png
  imagen-bench sample --preset tiny --prompt "a red circle" --prompt "two blue squares" --guidance 3 1 \\
      --threshold dynamic:0.995 --sampler dpmpp-2m --steps 25 --seed 7 --out shapes.png   # shapes-0.png, shapes-1.png
  imagen-bench sample --checkpoint runs/shapes --prompt "a green triangle" --aug-level 0.1 --out tri.png
  imagen-bench sample --model shapes --prompt "a red circle" --threshold static --sampler ddim --out c.png --json
  imagen-bench sample --model "diffusers:DeepFloyd/IF-I-XL-v1.0+DeepFloyd/IF-II-L-v1.0?dtype=float16" \
      --prompt "a corgi in a field" --guidance 7 4 --device cuda --out corgi.png
  imagen-bench sample --model "diffusers:black-forest-labs/FLUX.1-dev?dtype=bfloat16" --prompt "a corgi" \
      --guidance 1 --distilled-guidance 3.5 --height 512 --width 512 --sampler euler --steps 28 \
      --call max_sequence_length=512 --device cuda --out corgi.png
  imagen-bench sample --model diffusers:stabilityai/stable-diffusion-3.5-medium --prompt "a corgi" \
      --guidance 4.5 --negative-prompt "blurry" --sampler dpmpp-2m --device cuda --out corgi.png
"""


# a sampling flag left out takes the model's own setting (sampler.toml in its folder, a diffusers pipeline's own),
# else the global default
_DEFAULT = " (default: the model's own setting, else {})"


def output_paths(out: Path, n: int) -> list[Path]:
    """One prompt: [out]; several: out-0.png, out-1.png, ... next to out."""
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}{out.suffix or '.png'}") for k in range(n)]


def _write_png(path: Path, image) -> None:
    from PIL import Image

    from imagen.fileio import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(image, mode="RGB").save(tmp, format="PNG"))


def _model_source(args: argparse.Namespace) -> str:
    """What to load, with each flag held to its own kind (so --preset shapes is not the trained model)."""
    from imagen.checkpoint import shipped_models
    from imagen.config import PRESETS
    from imagen.errors import UserError

    if args.checkpoint is not None:
        if not Path(args.checkpoint).expanduser().is_dir():
            raise UserError(f"--checkpoint {args.checkpoint}: no such folder; give a folder written by "
                            f"`imagen-bench train` (config.json + <stage>.safetensors)")
        return args.checkpoint
    if args.model is not None:
        if args.model.startswith("diffusers:"):
            return args.model
        if args.model.startswith("images:"):
            raise UserError(f"--model {args.model!r}: a precomputed image set has nothing to sample; give a model")
        if args.model not in shipped_models():
            raise UserError(f"--model {args.model!r} is not a shipped model; shipped: "
                            f"{', '.join(shipped_models()) or '(none)'} (a folder goes to --checkpoint)")
        return args.model
    if args.preset is not None and args.preset not in PRESETS:
        raise UserError(f"--preset {args.preset!r} is not a preset; presets: {', '.join(PRESETS)} (a trained model "
                        f"goes to --model or --checkpoint)")
    return args.preset or "tiny"


def _call_flags(args: argparse.Namespace) -> dict:
    """--call KEY=VALUE ... -> {key: value}; a value is read as a TOML value (512, 0.7, true, [1, 2], "text") and
    otherwise kept as text."""
    from imagen.config import toml_value

    from bench.spec import _call_table
    from imagen.errors import UserError

    out = {}
    for item in args.call or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UserError(f"--call {item!r}: use NAME=VALUE, e.g. --call max_sequence_length=256")
        out[key.strip()] = toml_value(value)
    return _call_table(out, "--call")


def _with_size(model: str, args: argparse.Namespace) -> str:
    """A diffusers spec with --height/--width as its size options."""
    from imagen.errors import UserError

    if args.height is None and args.width is None:
        return model
    if args.height is None or args.width is None:
        raise UserError("--height and --width go together, e.g. --height 512 --width 512")
    if not model.startswith("diffusers:"):
        raise UserError("--height/--width are for diffusers: models; ours sample at the resolution they were "
                        "trained for")
    if any(k in model.partition("?")[2] for k in ("height=", "width=")):
        raise UserError(f"--model {model!r} sets its size already; give it once (in the spec or with --height/--width)")
    return f"{model}{'&' if '?' in model else '?'}height={args.height}&width={args.width}"


def run(args: argparse.Namespace) -> int:
    from bench.generators import Request, load_generator
    from bench.generators.base import as_settings, canonical_call
    from imagen.config import to_dict
    from imagen.errors import UserError
    from imagen.pipeline import resolve_device
    from imagen_bench import sampler_flags

    flags = sampler_flags(args)  # check every input before loading anything
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {args.out!r}")
    resolve_device(args.device)
    options = {"distilled_guidance": args.distilled_guidance, "negative_prompt": args.negative_prompt,
               "call": canonical_call(_call_flags(args))}
    if args.distilled_guidance is not None and not (math.isfinite(args.distilled_guidance)
                                                    and args.distilled_guidance >= 0):
        raise UserError(f"--distilled-guidance must be a finite number >= 0, got {args.distilled_guidance}")
    model = _with_size(_model_source(args), args)

    gen = load_generator(model, device=args.device, cache_root=args.cache_dir, precision=args.precision,
                         compile=args.compile)
    sampler = as_settings(gen.sampler_defaults).given(**flags, **options)
    requests = [Request(p, args.seed) for p in args.prompt]
    gen.check([sampler], requests)  # per-stage lists, axes the model cannot honour: one line, before any work
    made = gen.generate(requests, sampler, batch_size=args.batch_size)
    paths = output_paths(out, len(args.prompt))
    for path, image in zip(paths, made.images):
        _write_png(path, image)
    h, w = made.images[0].shape[:2]
    res = h if h == w else [h, w]
    if args.json:
        print(json.dumps({"model": gen.model_id, "checkpoint_hash": gen.checkpoint_hash, "resolution": res,
                          "sampler": to_dict(sampler), "generation": gen.describe(sampler), "seed": args.seed,
                          "images": [{"prompt": p, "path": str(path), "flagged": f}
                                     for p, path, f in zip(args.prompt, paths, made.flagged)]}, default=str))
    else:
        for p, path, f in zip(args.prompt, paths, made.flagged):
            print(f"wrote {path} ({w}x{h}) for {p!r}" + (" - BLACKED OUT by the safety checker" if f else ""))
    return 0


def register(subparsers) -> None:
    from imagen.config import SamplerConfig
    from imagen_bench import HelpFormatter

    d = SamplerConfig()

    p = subparsers.add_parser("sample", help="generate images from prompts (PNG)", description=DESCRIPTION,
                              epilog=EPILOG, formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="an untrained preset (tiny, small, paper); the default when no model is given")
    src.add_argument("--checkpoint", metavar="PATH", help="a checkpoint folder (config.json + <stage>.safetensors)")
    src.add_argument("--model", metavar="NAME",
                     help="a shipped model name (imagen/weights/NAME), or diffusers:<hub id or folder>[+stage II]")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="a text prompt; repeat for several images")
    p.add_argument("--guidance", type=float, nargs="+", default=None, metavar="W",
                   help="classifier-free guidance weight w of eps_u + w (eps_c - eps_u), one value or one per stage "
                        "(1 = the conditional model; on every kind of model, whatever its own argument is called)"
                        f"{_DEFAULT.format(d.guidance[0])}")
    p.add_argument("--distilled-guidance", type=float, default=None, metavar="G",
                   help="embedded guidance of a guidance-distilled diffusers model (FLUX.1-dev's guidance_scale, "
                        "default 3.5); not classifier-free guidance, which is --guidance (default: the model's own)")
    p.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="what classifier-free guidance steers away from (diffusers models; default: the model's own, "
                        "usually the empty prompt)")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (diffusers models; default: the "
                                                            "model's own size)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (with --height)")
    p.add_argument("--call", action="append", default=None, metavar="NAME=VALUE",
                   help="any other argument of the diffusers pipeline's call, e.g. max_sequence_length=256 or "
                        "guidance_rescale=0.7; repeat for several")
    p.add_argument("--threshold", default=None,
                   help=f"x0 thresholding: none, static, dynamic:P with P in (0, 1], or dynamic:P:M with the scale "
                        f"capped at M{_DEFAULT.format(d.threshold)}")
    p.add_argument("--sampler", default=None,
                   help=f"ddpm (ancestral), ddim (eta=0), dpmpp-2m; for diffusers: models also euler, unipc or a "
                        f"scheduler class name, each mapped onto the model's own family (flow matching or eps/v)"
                        f"{_DEFAULT.format(d.sampler)}")
    p.add_argument("--steps", type=int, default=None, help=f"denoiser calls per stage{_DEFAULT.format(d.steps)}")
    p.add_argument("--seed", type=int, default=0, help="noise seed (the same for every prompt)")
    p.add_argument("--aug-level", type=float, nargs="+", default=None, metavar="L",
                   help="noise-conditioning augmentation level for the SR stages, in [0, 1], one or one per SR stage"
                        f"{_DEFAULT.format(d.aug_level[0])}")
    p.add_argument("--out", required=True, metavar="FILE.png", help="output PNG (several prompts: FILE-k.png)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="our models: bf16 stores the U-Nets in bf16 and runs them under bf16 autocast (half the "
                        "memory; fast on GPUs and on CPUs with native bf16, AVX512_BF16 or AMX; emulated and "
                        "slow elsewhere); auto = bf16 on a GPU")
    p.add_argument("--compile", action="store_true",
                   help="our models: torch.compile each U-Net (CUDA graphs on a GPU); pays off over many batches "
                        "of one shape")
    p.add_argument("--cache-dir", default=None,
                   help="text embedding cache (default: $IMAGEN_BENCH_CACHE/text or ~/.cache/imagen-bench/text)")
    p.add_argument("--json", action="store_true",
                   help="print only JSON on stdout: model, hash, resolution, the sampler settings used, seed, files")
    p.set_defaults(func=run)
