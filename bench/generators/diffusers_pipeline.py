"""Any diffusers text-to-image pipeline behind the generator contract (`diffusers:<hub id or folder>`).

`diffusers:A` is one pipeline (SDXL, SD3, FLUX.1, PixArt, Sana, Lumina2, Kandinsky 3, DeepFloyd IF stage I alone,
...); `diffusers:A+B[+C]` is a cascade run stage after stage, as DeepFloyd IF is meant to be used: stage I (IFPipeline)
-> stage II (IFSuperResolutionPipeline), optionally -> the x4 upscaler (StableDiffusionUpscalePipeline). Options
follow a `?`: `dtype=float16|bfloat16|float32`, `variant=fp16`, `safety_checker=off`, `height=H&width=W` (a single
pipeline's image size; default: the model's own), `offload=model|sequential` (diffusers' CPU offload, on a GPU).

How the grid's axes land (nothing is ignored: an axis a pipeline cannot honour is a UserError before any work):
  guidance   the paper's classifier-free guidance weight w, one per stage, in the pipeline's own spelling
             (diffusers_calls: guidance_scale, w - 1 for the eps_c + s(eps_c - eps_u) form, true_cfg_scale with an
             empty negative prompt where guidance_scale is embedded guidance, a ClassifierFreeGuidance guider)
  distilled_guidance  the embedded guidance value of a guidance-distilled denoiser (FLUX.1-dev's guidance_scale)
  sampler    a scheduler of the model's own family (schedulers: flow matching or epsilon/v), made with
             `from_config` from each stage's own scheduler config with the model's shift kept
  steps      `num_inference_steps` of every stage
  threshold  pixel-space stages only: none (thresholding and clip_sample off), static (clip_sample to [-1, 1]; or
             thresholding with sample_max_value 1 where the scheduler has no clip_sample), dynamic:P[:M]
             (thresholding, dynamic_thresholding_ratio P, sample_max_value M, no cap when M is left out, as in the
             paper). A latent-space pipeline takes only none, and its latents are never clipped unless its own
             scheduler config says so.
  aug_level  the SR stages' `noise_level`: round(level x the noising scheduler's num_train_timesteps)
The spec's `negative_prompt` and `[call]` table (any other argument of the pipeline's call) are passed as given.
Before the first image, every cell's call of a text-to-image stage is probed: the pipeline runs with the cell's
arguments up to its scheduler's first step, so a setting it cannot run is refused before any work (an SR stage, which
needs its low-res input, has its scheduler set and stepped on zeros).
Seeds: one CPU `torch.Generator` per image and stage, so an image does not depend on its batch or the device.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from imagen.config import stage_values, threshold_parts
from imagen.errors import UserError
from imagen.text import quiet_loading

from bench.filehash import HashMemo, digest_of
from bench.generators import diffusers_calls as dc
from bench.generators import schedulers as sch
from bench.generators.base import AXES, OPTIONS as CALL_OPTIONS, Generated, Settings

PREFIX = "diffusers:"
DTYPES = ("float32", "float16", "bfloat16")
OFFLOADS = ("model", "sequential")
OPTIONS = {"dtype", "variant", "safety_checker", "height", "width", "offload"}
try:  # diffusers renamed from_pretrained's torch_dtype to dtype (the old name warns)
    from diffusers.utils import deprecation_utils as _dep

    _DTYPE_KW = "dtype" if hasattr(_dep, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
except ImportError:  # pragma: no cover - diffusers missing: the generator's load says so
    _DTYPE_KW = "torch_dtype"
EMBED_MEMO = 1024  # prompts whose text embeddings a cascade keeps (encoded once, reused by every cell)


@dataclass(frozen=True)
class DiffusersSpec:
    sources: tuple[str, ...]  # hub ids or local folders, one per stage
    dtype: str = "float32"
    variant: str | None = None
    safety_checker: bool = True
    height: int | None = None  # None: the model's own size
    width: int | None = None
    offload: str | None = None  # None | "model" | "sequential"


def parse(spec: str) -> DiffusersSpec:
    """'diffusers:A+B?dtype=float16&safety_checker=off' -> DiffusersSpec; mistakes are one-line UserErrors."""
    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    body, _, query = body.partition("?")
    sources = tuple(s.strip() for s in body.split("+"))
    if not body.strip() or not all(sources):
        raise UserError(f"model {spec!r}: give a hub id or a folder after 'diffusers:', e.g. "
                        f"diffusers:DeepFloyd/IF-I-XL-v1.0+DeepFloyd/IF-II-L-v1.0 or diffusers:./my-pipeline")
    opts = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    unknown = set(opts) - OPTIONS
    if unknown:
        raise UserError(f"model {spec!r}: unknown option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
    dtype = opts.get("dtype", "float32")
    if dtype not in DTYPES:
        raise UserError(f"model {spec!r}: dtype={dtype!r}; choose {', '.join(DTYPES)}")
    sc = opts.get("safety_checker", "on").lower()
    if sc not in ("on", "off", "true", "false"):
        raise UserError(f"model {spec!r}: safety_checker={sc!r}; use on or off")
    size = {}
    for key in ("height", "width"):
        if key in opts:
            try:
                size[key] = int(opts[key])
            except ValueError:
                size[key] = 0
            if size[key] < 8:
                raise UserError(f"model {spec!r}: {key}={opts[key]!r}; give a whole number of pixels, e.g. "
                                f"?height=512&width=512")
    if len(size) == 1:
        raise UserError(f"model {spec!r}: give both height and width (e.g. ?height=512&width=512)")
    offload = opts.get("offload") or None
    if offload is not None and offload not in OFFLOADS:
        raise UserError(f"model {spec!r}: offload={offload!r}; choose model (enable_model_cpu_offload) or sequential "
                        f"(enable_sequential_cpu_offload)")
    if size and len(sources) > 1:
        raise UserError(f"model {spec!r}: height/width set a single pipeline's size; a cascade's size is its "
                        f"stages' own")
    return DiffusersSpec(sources, dtype, opts.get("variant") or None, sc in ("on", "true"), size.get("height"),
                         size.get("width"), offload)


# ----------------------------------------------------------------------------- loading


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _missing(source: str, exc: Exception) -> UserError:
    gated = "gated" in type(exc).__name__.lower() or "gated" in str(exc).lower()
    how = (f"accept its licence at https://huggingface.co/{source} and run `huggingface-cli login`, then "
           if gated else "")
    where = (f"it is not a local folder and not in the Hugging Face cache ({_hf_cache()}) and HF_HUB_OFFLINE is set"
             if _offline() else f"it is not a local folder, and the hub did not give it")
    return UserError(f"diffusers model {source!r} could not be loaded ({type(exc).__name__}): {where}; "
                     f"{how}run `huggingface-cli download {source}` on a machine with network and copy the cache "
                     f"here (or set HF_HOME), or give a local folder: diffusers:/path/to/pipeline")


def _hf_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - an old huggingface_hub
        return "~/.cache/huggingface/hub"


def resolve_folder(source: str, variant: str | None) -> Path:
    """A local folder, or the hub id's snapshot folder in the Hugging Face cache (downloaded when online)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"diffusers model {source}: the folder has no model_index.json; give a folder written "
                            f"by a pipeline's save_pretrained")
        return path
    if path.exists():
        raise UserError(f"diffusers model {source}: not a folder")
    from diffusers import DiffusionPipeline

    try:
        return Path(DiffusionPipeline.download(source, variant=variant, local_files_only=_offline()))
    except Exception as exc:  # huggingface_hub's errors (not found, gated, offline) are OSError/HTTP errors
        raise _missing(source, exc) from None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".onnx", ".h5")
VARIANT_INFIX = re.compile(r"\.(fp16|bf16|fp32|non_ema|ema|flax)\.")


def loaded_files(folder: Path, variant: str | None) -> list[Path]:
    """The files of a pipeline folder that loading it reads: model_index.json and, in each component's folder,
    its configs and the weights of the chosen variant (safetensors where there are any), not the other variants
    or formats a full `huggingface-cli download` also fetched, nor READMEs and sample images."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"diffusers model {folder}: unreadable model_index.json ({exc})") from None
    out = [folder / "model_index.json"]
    for name, value in sorted(index.items()):
        sub = folder / name
        if name.startswith("_") or not isinstance(value, list) or value[0] is None or not sub.is_dir():
            continue
        files = sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith("."))
        weighty = [f for f in files if f.name.endswith(WEIGHT_SUFFIXES) or ".index" in f.name]
        chosen = [f for f in weighty if variant and f".{variant}." in f.name]
        if not chosen:  # no variant asked, or none of this component: the plain files, as diffusers falls back
            chosen = [f for f in weighty if not VARIANT_INFIX.search(f.name)]
        if any(f.name.endswith(".safetensors") for f in chosen):
            chosen = [f for f in chosen if f.name.endswith(".safetensors") or ".index" in f.name]
        out += [f for f in files if f not in weighty] + chosen
    return out


def folder_hash(folder: Path, memo: HashMemo, variant: str | None = None) -> str:
    """A content hash of what loading a pipeline folder reads (`loaded_files`), so the same weights hash the same
    on every machine however much of the repository was downloaded. In the Hugging Face cache a file is a link to
    a blob named by its content hash, so nothing is read; other files are hashed once (remembered by path, size,
    mtime)."""
    entries = []
    for f in loaded_files(folder, variant):
        real = Path(os.path.realpath(f))
        sha = real.name if real.parent.name == "blobs" else memo.sha256(real)
        entries.append([f.relative_to(folder).as_posix(), sha])
    return digest_of(entries)


def _role(pipe) -> str:
    name = type(pipe).__name__
    if name.startswith("IFSuperResolution"):
        return "if-sr"
    if name == "StableDiffusionUpscalePipeline":
        return "upscale"
    return "text2image"


def _noising_scheduler(pipe):
    return getattr(pipe, "image_noising_scheduler", None) or getattr(pipe, "low_res_scheduler", None)


class DiffusersGenerator:
    """One diffusers pipeline, or a cascade of them, sampled with the grid's settings."""

    kind = "diffusers"
    axes = AXES
    options = CALL_OPTIONS
    uses_seeds = True

    def __init__(self, pipes: list, model_id: str, checkpoint_hash: str, spec: DiffusersSpec, device: str = "cpu"):
        self.pipes = pipes
        self.roles = [_role(p) for p in pipes]
        self.model_id = model_id
        self.checkpoint_hash = checkpoint_hash
        self.spec = spec
        self.device = device
        self.n_stages = len(pipes)
        self.pixel = [dc.pixel_space(p) for p in pipes]  # decodes with no autoencoder: the scheduler works on pixels
        self.base_schedulers = [p.scheduler for p in pipes]
        self.guidance = [dc.guidance_of(p) for p in pipes]
        self._embeds: dict[tuple, tuple] = {}
        self._probed: dict[str, dict] = {}
        self.call_defaults = [dc.call_defaults(p) for p in pipes]
        self.call_params = [set(dc.call_params(p)) for p in pipes]
        self.size = self._size()
        aug = tuple(int(self.call_defaults[i].get("noise_level", 0)) / self._timesteps(i) for i in range(1, len(pipes)))
        # sampler, steps and thresholding left out: each stage's own (its scheduler as it ships, its __call__'s
        # num_inference_steps), so an IF stage II keeps its 50 steps and its own sample_max_value; the weights and
        # noise levels are per stage anyway
        distilled = next((g.default_distilled for g in self.guidance if g.embedded), None)
        self.sampler_defaults = Settings(
            sampler=None, steps=None, guidance=tuple(g.default_w for g in self.guidance), threshold=None,
            aug_level=aug or (0.0,), distilled_guidance=distilled)

    def _size(self) -> tuple[int, int] | None:
        """(height, width) the single pipeline is called with: the spec's, else the model's own where the call's
        default is a fixed size that is not (Sana's and PixArt's 1024 on a 512 px model would be sampled at 512 by
        resolution binning and resized up to 1024); None: the call's own default."""
        if self.spec.height is not None:
            return self.spec.height, self.spec.width
        if self.n_stages > 1:
            return None
        pipe, d = self.pipes[0], self.call_defaults[0]
        den = dc.denoiser(pipe)
        sample = getattr(getattr(den, "config", None), "get", lambda *_: None)("sample_size")
        factor = getattr(pipe, "vae_scale_factor", None)
        if isinstance(d.get("height"), int) and isinstance(sample, int) and factor and "use_resolution_binning" in d:
            native = int(sample) * int(factor)
            if native != d["height"] or native != d.get("width"):
                return native, native
        return None

    @classmethod
    def load(cls, model: str, device: str = "cpu") -> "DiffusersGenerator":
        import torch
        from diffusers import DiffusionPipeline

        spec = parse(model)
        if spec.offload and not str(device).startswith("cuda"):
            raise UserError(f"model {model!r}: offload={spec.offload} moves weights between the CPU and a GPU; run "
                            f"with --device cuda, or drop the option")
        memo = HashMemo()
        dtype = getattr(torch, spec.dtype)
        pipes, hashes = [], []
        for i, source in enumerate(spec.sources):
            folder = resolve_folder(source, spec.variant)
            hashes.append(folder_hash(folder, memo, spec.variant))
            kwargs = {_DTYPE_KW: dtype}
            if spec.variant:
                kwargs["variant"] = spec.variant
            cfg = DiffusionPipeline.load_config(folder)
            if not spec.safety_checker and "safety_checker" in cfg:
                kwargs["safety_checker"] = None
                kwargs["requires_safety_checker"] = False
            if i > 0 and "text_encoder" in cfg and cfg.get("_class_name", "").startswith("IFSuperResolution"):
                kwargs["text_encoder"] = None  # stage II takes stage I's text embeddings: no second T5 in memory
            try:
                with quiet_loading():
                    pipe = DiffusionPipeline.from_pretrained(folder, **kwargs)
            except ImportError as exc:  # e.g. a T5 tokenizer that needs sentencepiece
                raise UserError(f"diffusers model {source}: loading it needs a package that is not installed "
                                f"({exc}); pip install it and rerun") from None
            except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
                raise UserError(f"diffusers model {source}: cannot load the pipeline from {folder} "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
            pipe.set_progress_bar_config(disable=True)
            if spec.offload == "model":
                pipe.enable_model_cpu_offload(device=device)
            elif spec.offload == "sequential":
                pipe.enable_sequential_cpu_offload(device=device)
            else:
                pipe = pipe.to(device)
            pipes.append(pipe)
        memo.save()
        if len(pipes) > 1 and _role(pipes[0]) != "text2image":
            raise UserError(f"model {model!r}: the first stage must be a text-to-image pipeline, got "
                            f"{type(pipes[0]).__name__}")
        for p in pipes[1:]:
            if _role(p) == "text2image":
                raise UserError(f"model {model!r}: {type(p).__name__} is not a super-resolution stage; a cascade is "
                                f"text-to-image + IFSuperResolutionPipeline / StableDiffusionUpscalePipeline stages")
        identity = {"stages": hashes, "dtype": spec.dtype, "variant": spec.variant,
                    "safety_checker": spec.safety_checker}
        if spec.height is not None:  # another size is another model: its images differ (older studies keep their id)
            identity["size"] = [spec.height, spec.width]
        return cls(pipes, model, digest_of(identity), spec, device)

    # ------------------------------------------------------------------------- settings -> pipeline arguments

    def _where(self, stage: int) -> str:
        return f"stage {stage + 1} ({type(self.pipes[stage]).__name__})" if self.n_stages > 1 else \
            f"{type(self.pipes[stage]).__name__} ({self.model_id})"

    def _timesteps(self, stage: int) -> int:
        """The training timesteps of an SR stage's noising scheduler (noise_level's scale)."""
        noising = _noising_scheduler(self.pipes[stage])
        return int(noising.config.num_train_timesteps) if noising is not None else 1000

    def _scheduler(self, stage: int, settings):
        """The stage's scheduler for these settings: a scheduler of the model's family for the sampler, with the
        clipping the threshold axis asks for (on pixel-space stages only)."""
        base = self.base_schedulers[stage]
        if settings.sampler is None and settings.threshold is None:
            return base  # the stage's own scheduler, as it ships
        n = self.n_stages  # a per-stage value ('ddim,ddpm', 'static,dynamic:0.95') gives each stage its own
        sampler = stage_values(settings.sampler, n, "axes.sampler")[stage] if settings.sampler is not None else None
        threshold = (stage_values(settings.threshold, n, "axes.threshold")[stage]
                     if settings.threshold is not None else None)
        where = self._where(stage)
        cls, extra = sch.scheduler_class(sampler or type(base).__name__, base, where)
        params = sch.init_params(cls)
        kind, p, cap = threshold_parts(threshold) if threshold is not None else (None, None, None)
        lost = sch.drops_own_clipping(base, cls) if kind is None else None
        if lost:
            raise UserError(f"axes.sampler: {cls.__name__} has no {lost}, which {where}'s own scheduler uses; give "
                            f"the threshold axis (none to run without it) or a sampler that has it (ddpm, ddim, "
                            f"dpmpp-2m)")
        clip: dict = {}
        if kind == "none" or (kind is not None and not self.pixel[stage]):
            clip = {k: False for k in sch.CLIP_KEYS}
        elif kind == "static":
            if "clip_sample" in params:
                clip = {"clip_sample": True, "clip_sample_range": 1.0, "thresholding": False}
            elif "thresholding" in params:
                clip = {"thresholding": True, "sample_max_value": 1.0}
            else:
                raise UserError(f"axes.threshold: {cls.__name__} has no thresholding, so 'static' cannot be honoured "
                                f"on {where}; use ddpm, ddim or dpmpp-2m, or threshold = none")
        elif kind == "dynamic":
            if "thresholding" not in params:
                raise UserError(f"axes.threshold: {cls.__name__} has no thresholding, so {threshold!r} cannot "
                                f"be honoured on {where}; use ddpm, ddim or dpmpp-2m")
            clip = {"thresholding": True, "dynamic_thresholding_ratio": p, "clip_sample": False,
                    "sample_max_value": cap if cap is not None else float("inf")}
        return sch.build(base, cls, extra, clip)

    def _noise_level(self, stage: int, level: float) -> int:
        pipe = self.pipes[stage]
        total = self._timesteps(stage)
        nl = int(round(level * total))
        top = int(getattr(pipe.config, "max_noise_level", total - 1) or total - 1)
        if nl > min(top, total - 1):
            raise UserError(f"axes.aug_level: {level:g} is noise_level {nl} on stage {stage + 1} "
                            f"({type(pipe).__name__}), above its maximum {min(top, total - 1)} "
                            f"(aug level <= {min(top, total - 1) / total:g})")
        return nl

    def calls(self, settings) -> list[dict]:
        """Per stage: the scheduler, the call's arguments these settings give (everything but the prompt, noise
        and images), and a guider where the pipeline guides with one (UserError if any cannot be honoured)."""
        n = self.n_stages
        guidance = settings.per_stage(tuple(settings.guidance), n, "axes.guidance")
        aug = settings.per_stage(tuple(settings.aug_level), n - 1, "axes.aug_level") if n > 1 else ()
        if n == 1 and any(a != 0 for a in settings.aug_level):
            raise UserError(f"axes.aug_level: {list(settings.aug_level)} cannot be honoured: model {self.model_id!r} "
                            f"has no super-resolution stage (add one, e.g. +DeepFloyd/IF-II-L-v1.0, or drop the axis)")
        if settings.threshold not in (None, "none") and not any(self.pixel):
            raise UserError(f"axes.threshold: {settings.threshold!r} cannot be honoured: model {self.model_id!r} is a "
                            f"latent-space pipeline (thresholding applies to pixel-space x0 only); use none")
        if settings.steps is not None and settings.steps < 1:
            raise UserError(f"axes.steps: {settings.steps} must be at least 1")
        distilled = getattr(settings, "distilled_guidance", None)
        if distilled is not None and not any(g.embedded for g in self.guidance):
            dc.guidance_call(self.pipes[0], self.guidance[0], 1.0, distilled, self._where(0))  # its refusal
        negative = getattr(settings, "negative_prompt", None)
        options = dc.check_call_options(self.pipes, getattr(settings, "call_options", dict)(), self.model_id,
                                        self.call_params)
        out = []
        for i, pipe in enumerate(self.pipes):
            steps = settings.steps if settings.steps is not None else self.call_defaults[i].get("num_inference_steps")
            g = self.guidance[i]
            gc = dc.guidance_call(pipe, g, float(guidance[i]), distilled if g.embedded else None, self._where(i))
            guider = gc.pop("guider", None)
            call = {"num_inference_steps": int(steps), **gc}
            neg = negative
            if neg is None and g.kind == "true-cfg" and call.get("true_cfg_scale", 1.0) > 1.0:
                neg = ""  # FLUX and Qwen-Image run true CFG only against a negative prompt: the empty one
            if neg is not None:
                if "negative_prompt" not in self.call_params[i]:
                    raise UserError(f"negative_prompt: {self._where(i)} takes no negative prompt; remove it")
                call["negative_prompt"] = neg
            if i == 0 and self.size is not None:
                call.update(height=self.size[0], width=self.size[1])
            if i > 0:
                call["noise_level"] = self._noise_level(i, aug[i - 1])
            if "clean_caption" in self.call_params[i]:  # what the pipeline will do, stated: see _clean_caption
                call["clean_caption"] = _clean_caption(self.call_defaults[i].get("clean_caption"))
            call.update(options[i])
            out.append({"scheduler": self._scheduler(i, settings), "call": call, "guider": guider})
        return out

    def _probe_key(self, stage: int, c: dict) -> str:
        s = c["scheduler"]
        return json.dumps([stage, type(s).__name__, {k: _jsonable(v) for k, v in sch.used_config(s).items()},
                           {k: _jsonable(v) for k, v in c["call"].items()}], sort_keys=True, default=str)

    def _probe(self, stage: int, c: dict) -> dict:
        """What the stage's pipeline asks of its scheduler with this call (memoised per scheduler and call)."""
        key = self._probe_key(stage, c)
        if key not in self._probed:
            pipe = self.pipes[stage]
            if self.roles[stage] != "text2image":  # an SR stage needs its low-res input: the scheduler alone
                import copy

                s = copy.deepcopy(c["scheduler"])
                try:
                    s.set_timesteps(c["call"]["num_inference_steps"])
                    dc._dry_step(s)
                except Exception as exc:
                    raise UserError(f"{self._where(stage)} cannot run {type(s).__name__} with these settings "
                                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
                self._probed[key] = {"timesteps": [round(float(t), 4) for t in s.timesteps]}
            else:
                import torch

                kw = dict(c["call"], prompt=["a photo"], generator=[torch.Generator("cpu").manual_seed(0)],
                          output_type="latent")
                if isinstance(kw.get("negative_prompt"), str):  # one per prompt, as the batch gives it
                    kw["negative_prompt"] = [kw["negative_prompt"]]
                saved = getattr(pipe, "guider", None)
                if c.get("guider") is not None:
                    pipe.guider = c["guider"]
                try:
                    seen = dc.probe(pipe, c["scheduler"], kw)
                finally:
                    if c.get("guider") is not None:
                        pipe.guider = saved
                size = (c["call"].get("height"), c["call"].get("width"))
                if seen.get("bin") is not None and size[0] is not None and tuple(seen["bin"]) != size and \
                        c["call"].get("use_resolution_binning", True):
                    raise UserError(f"{self._where(stage)} samples {size[0]}x{size[1]} at its aspect-ratio bin "
                                    f"{seen['bin'][0]}x{seen['bin'][1]} and resizes the result; ask for a bin size "
                                    f"(?height={seen['bin'][0]}&width={seen['bin'][1]}) or set [call] "
                                    f"use_resolution_binning = false")
                self._probed[key] = seen
        return self._probed[key]

    def check(self, settings: list, requests) -> None:
        for s in settings:
            if s is None:
                raise UserError(f"model {self.model_id!r} needs sampling settings; give the spec its [axes]")
            for i, c in enumerate(self.calls(s)):
                self._probe(i, c)

    def checker_stage(self) -> int | None:
        """The stage whose safety checker judges the final images: the last stage's own, else the first earlier
        stage that has one (an IF cascade's stages I and II hand tensors on unchecked, and the x4 upscaler has
        none: stage I's checker is run on the final images, as DeepFloyd's own example does)."""
        have = [i for i, p in enumerate(self.pipes) if getattr(p, "safety_checker", None) is not None]
        if not have:
            return None
        return have[-1] if have[-1] == len(self.pipes) - 1 else have[0]

    def describe(self, settings) -> dict:
        stages = []
        for i, (pipe, c) in enumerate(zip(self.pipes, self.calls(settings))):
            s = c["scheduler"]
            g = self.guidance[i]
            entry = {"pipeline": type(pipe).__name__, "scheduler": type(s).__name__,
                     "scheduler_config": {k: _jsonable(v) for k, v in sch.used_config(s).items()},
                     "call": {k: _jsonable(v) for k, v in c["call"].items()},
                     "guidance": {"kind": g.kind, "w": float(settings.per_stage(
                         tuple(settings.guidance), self.n_stages, "axes.guidance")[i])}}
            if c["guider"] is not None:
                entry["guider"] = {"class": type(c["guider"]).__name__,
                                   "guidance_scale": float(c["guider"].guidance_scale)}
            probed = self._probed.get(self._probe_key(i, c))
            if probed is not None:
                entry["timesteps"] = probed["timesteps"]
                entry.update({k: _jsonable(v) for k, v in probed.get("set_timesteps", {}).items() if k == "mu"})
            stages.append(entry)
        judge = self.checker_stage()
        out = {"kind": self.kind, "dtype": self.spec.dtype, "variant": self.spec.variant,
               "safety_checker": judge is not None,
               "safety_checker_stage": None if judge is None else f"{judge + 1} ({type(self.pipes[judge]).__name__})",
               "stages": stages}
        if self.spec.offload:
            out["offload"] = self.spec.offload
        return out

    # ------------------------------------------------------------------------- generation

    def _if_embeds(self, prompts: list[str], negative: str | None, clean: bool = False):
        """IF's T5 embeddings (cond, uncond) for each prompt, encoded once and kept for every cell."""
        import torch

        todo = [p for p in dict.fromkeys(prompts) if (p, negative) not in self._embeds]
        device = self.pipes[0]._execution_device
        if todo:
            pe, ne = self.pipes[0].encode_prompt(todo, do_classifier_free_guidance=True, num_images_per_prompt=1,
                                                 device=device, clean_caption=clean,
                                                 negative_prompt=None if negative is None else [negative] * len(todo))
            if len(self._embeds) + len(todo) > EMBED_MEMO:
                self._embeds.clear()
            for k, p in enumerate(todo):  # kept in host memory: T5-XXL embeddings are 0.6 MB a prompt in fp16
                self._embeds[(p, negative)] = (pe[k].cpu(), ne[k].cpu())
        return (torch.stack([self._embeds[(p, negative)][0] for p in prompts]).to(device),
                torch.stack([self._embeds[(p, negative)][1] for p in prompts]).to(device))

    def generate(self, prompts, seeds, settings, *, keys=None, batch_size: int = 8) -> Generated:
        prompts, seeds = list(prompts), list(seeds)
        plan = self.calls(settings)
        images, flagged = [], []
        for k in range(0, len(prompts), max(1, batch_size)):
            out = self._batch(prompts[k:k + batch_size], seeds[k:k + batch_size], plan)
            images += out.images
            flagged += out.flagged
        return Generated(images, flagged)

    def _batch(self, prompts: list[str], seeds: list[int], plan: list[dict]) -> Generated:
        import torch

        first = plan[0]["call"]
        embeds = self._if_embeds(prompts, first.get("negative_prompt"), bool(first.get("clean_caption"))) \
            if type(self.pipes[0]).__name__.startswith("IF") else None
        image, flagged = None, [False] * len(prompts)
        with torch.no_grad():
            for i, (pipe, c) in enumerate(zip(self.pipes, plan)):
                pipe.scheduler = c["scheduler"]
                saved_guider = getattr(pipe, "guider", None)
                if c["guider"] is not None:
                    pipe.guider = c["guider"]
                gens = [torch.Generator("cpu").manual_seed(_stage_seed(s, i)) for s in seeds]
                last = i == len(self.pipes) - 1
                kw = dict(c["call"], generator=gens, output_type="np" if last else "pt")
                if embeds is not None and self.roles[i] != "upscale":
                    kw.pop("negative_prompt", None)  # in the embeddings already
                    kw.update(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1])
                else:
                    kw["prompt"] = prompts
                    if isinstance(kw.get("negative_prompt"), str):  # a list like the prompts: pipelines insist
                        kw["negative_prompt"] = [kw["negative_prompt"]] * len(prompts)
                if i > 0:
                    kw["image"] = image
                try:
                    out = pipe(**kw)
                finally:
                    if c["guider"] is not None:
                        pipe.guider = saved_guider
                image = out.images
                flags = getattr(out, "nsfw_content_detected", None) or getattr(out, "nsfw_detected", None)
                if flags is not None:
                    flagged = [a or bool(b) for a, b in zip(flagged, flags)]
                if not last and self.roles[i + 1] == "upscale" and isinstance(image, torch.Tensor):
                    image = image.float().clamp(-1, 1)  # the upscaler takes [-1, 1] tensors as they come
            judge = self.checker_stage()
            if judge is not None and judge != len(self.pipes) - 1:  # the final images, by an earlier stage's checker
                pipe = self.pipes[judge]
                checked = pipe.run_safety_checker(image, pipe._execution_device, pipe.unet.dtype)
                image, flags = checked[0], checked[1]
                if flags is not None:
                    flagged = [a or bool(b) for a, b in zip(flagged, flags)]
        arr = np.asarray(image, dtype=np.float32)  # [B, H, W, 3] in [0, 1]
        if self.size is not None and tuple(arr.shape[1:3]) != tuple(self.size):
            raise UserError(f"{self._where(0)} made {arr.shape[2]}x{arr.shape[1]} images for the {self.size[1]}x"
                            f"{self.size[0]} asked; give a size the pipeline takes as it is")
        return Generated(list((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)), flagged)


def _clean_caption(default) -> bool:
    """The caption cleaning IF and PixArt run: their default (True) when bs4 and ftfy are installed; without them the
    pipeline turns it off itself with a warning, so the call says False."""
    if not default:
        return False
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("bs4", "ftfy"))


def _jsonable(v):
    """A scheduler config value as strict JSON takes it: inf/nan as strings (dynamic:P has no cap: "inf")."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _stage_seed(seed: int, stage: int) -> int:
    """Stage 0 uses the image's seed itself (as a user calling the pipeline with that seed would); later stages a
    seed of their own, so no two stages draw the same noise."""
    return int(seed) if stage == 0 else (int(seed) * 1_000_003 + stage) % (2**63 - 1)
