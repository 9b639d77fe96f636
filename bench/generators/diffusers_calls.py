"""What a diffusers pipeline is, read from the pipeline itself: how it guides, whether it denoises pixels or latents,
which call arguments it takes; and a dry run of its call that stops at the scheduler (the probe).

Guidance. The grid's `guidance` is always the paper's classifier-free guidance weight w,
eps~ = eps_u + w (eps_c - eps_u), w = 1 the conditional model. Pipelines spell it four ways:
  cfg       `guidance_scale` = w (most pipelines: SD, SDXL, SD3, PixArt, Sana, Lumina2)
  cfg-cond  `guidance_scale` = s in eps_c + s (eps_c - eps_u), so s = w - 1 (Kandinsky 3, Cosmos 2); these run
            guidance only for s > 1, so w in (1, 2] cannot be honoured
  true-cfg  `true_cfg_scale` = w, with a negative prompt (an empty one when none is given), because
            `guidance_scale` is an embedded, distilled guidance value (FLUX.1, Qwen-Image)
  guider    a `guider` component (diffusers' guiders): a ClassifierFreeGuidance guider is set to w; another
            method (adaptive projected guidance, ...) is not classifier-free guidance and keeps its own weight
  none      no classifier-free guidance at all: only w = 1
Embedded guidance (`distilled_guidance`) is the value a guidance-distilled denoiser is conditioned on
(`guidance_embeds` in its config: FLUX.1-dev 3.5); FLUX.1-schnell and Qwen-Image have none.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import re
from dataclasses import dataclass

from imagen.errors import UserError

# Call arguments the harness sets itself: the prompt and its embeddings, the noise, the output, the axes' own
# arguments, the size (a model option) and the negative prompt (a spec key of its own).
RESERVED = frozenset({
    "prompt", "prompt_2", "prompt_3", "prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask",
    "negative_prompt_embeds", "negative_pooled_prompt_embeds", "negative_prompt_attention_mask", "negative_prompt",
    "negative_prompt_2", "negative_prompt_3", "generator", "latents", "num_images_per_prompt", "output_type",
    "return_dict", "callback", "callback_steps", "callback_on_step_end", "callback_on_step_end_tensor_inputs",
    "guidance_scale", "true_cfg_scale", "distilled_guidance_scale", "num_inference_steps", "noise_level", "height",
    "width", "image", "sigmas", "timesteps", "seed", "seeds"})
DENOISERS = ("unet", "transformer", "prior", "decoder")


@dataclass(frozen=True)
class Guidance:
    """How one pipeline guides (see the module docstring)."""

    kind: str  # "cfg" | "cfg-cond" | "true-cfg" | "guider" | "none"
    embedded: str | None  # the call argument of embedded guidance the denoiser takes, or None
    default_w: float  # the paper's w at the pipeline's own defaults
    default_distilled: float | None
    guider: str | None = None  # the guider's class name (kind "guider")


def call_params(pipe) -> dict:
    """The pipeline's __call__ parameters by name (inspect.Parameter)."""
    return dict(inspect.signature(type(pipe).__call__).parameters)


def call_defaults(pipe) -> dict:
    return {k: p.default for k, p in call_params(pipe).items() if p.default is not inspect.Parameter.empty}


def denoiser(pipe):
    for name in DENOISERS:
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "config"):
            return module
    return None


def _config(module, key, default=None):
    cfg = getattr(module, "config", None)
    return cfg.get(key, default) if cfg is not None and hasattr(cfg, "get") else default


def pixel_space(pipe) -> bool:
    """True when the pipeline denoises pixels: it decodes with no autoencoder (a VAE, a VQ-GAN, Kandinsky's MoVQ,
    Sana's DC-AE, Wuerstchen's Paella) and its denoiser takes RGB (3 channels, 6 with an SR stage's low-res input).
    Never from a component's name: Kandinsky 3 has no `vae`, it has `movq`."""
    for comp in getattr(pipe, "components", {}).values():
        if comp is None:
            continue
        cls, mod = type(comp).__name__, type(comp).__module__
        if "autoencoder" in mod or "vq_model" in mod or "VQ" in cls or "Autoencoder" in cls or "VAE" in cls.upper():
            return False
    return _config(denoiser(pipe), "in_channels") in (3, 6)


_UNCOND_PLUS = re.compile(r"(\w+)\s*\+\s*(?:self\.)?_?guidance_scale\s*\*\s*\(\s*(\w+)\s*-\s*(\w+)\s*\)")
_COND_TIMES = re.compile(r"\(\s*(?:self\.)?_?guidance_scale\s*\+\s*1(?:\.0)?\s*\)\s*\*\s*(\w+)\s*-\s*"
                         r"(?:self\.)?_?guidance_scale\s*\*\s*(\w+)")


@functools.lru_cache(maxsize=None)
def cond_form(cls) -> bool:
    """True when the class's __call__ combines its predictions as eps_c + s (eps_c - eps_u) (the other form of CFG:
    Kandinsky 3's `(s + 1) * eps_c - s * eps_u`, Cosmos 2's `eps + s * (eps - eps_u)`), read from its source."""
    try:
        src = inspect.getsource(cls.__call__)
    except (OSError, TypeError):
        return False
    if _COND_TIMES.search(src):
        return True
    m = _UNCOND_PLUS.search(src)
    return bool(m) and m.group(1) == m.group(2)


@functools.lru_cache(maxsize=None)
def cfg_threshold(cls) -> float:
    """The guidance_scale above which the class runs guidance at all, read from its do_classifier_free_guidance
    (`self._guidance_scale > 1` in most pipelines, `> 0` in some of the eps_c + s (eps_c - eps_u) ones); 1 if unread."""
    prop = getattr(cls, "do_classifier_free_guidance", None)
    try:
        src = inspect.getsource(prop.fget if isinstance(prop, property) else prop)
    except (OSError, TypeError):
        return 1.0
    m = re.search(r"guidance_scale\s*>\s*([0-9.]+)", src)
    return float(m.group(1)) if m else 1.0


def guidance_of(pipe) -> Guidance:
    params, d = call_params(pipe), call_defaults(pipe)
    embeds = bool(_config(denoiser(pipe), "guidance_embeds", False))
    embedded = None
    if embeds:
        embedded = next((k for k in ("distilled_guidance_scale", "guidance_scale") if k in params), None)
    distilled = float(d[embedded]) if embedded and d.get(embedded) is not None else None
    guider = getattr(pipe, "guider", None)
    if "true_cfg_scale" in params:
        return Guidance("true-cfg", embedded, float(d.get("true_cfg_scale") or 1.0), distilled)
    if guider is not None:
        scale = float(getattr(guider, "guidance_scale", 1.0))
        w = scale + 1 if getattr(guider, "use_original_formulation", False) else scale
        return Guidance("guider", embedded, w, distilled, type(guider).__name__)
    if "guidance_scale" in params and embedded != "guidance_scale":
        s = float(d.get("guidance_scale") or 1.0)
        if cond_form(type(pipe)):
            return Guidance("cfg-cond", embedded, s + 1, distilled)
        return Guidance("cfg", embedded, s, distilled)
    return Guidance("none", embedded, 1.0, distilled)


def guidance_call(pipe, g: Guidance, w: float, distilled: float | None, where: str) -> dict:
    """The call arguments (and, for a guider, the component) that give the paper's weight w and the embedded
    guidance value; a weight the pipeline cannot honour is a one-line UserError."""
    if not math.isfinite(w) or w < 1.0:
        raise UserError(f"axes.guidance: {w:g} on {where} cannot be honoured: classifier-free guidance weights "
                        f"below 1 would extrapolate away from the prompt, which diffusers pipelines do not run; "
                        f"use weights >= 1 (1 = the conditional model)")
    out: dict = {}
    if g.kind == "cfg":
        out["guidance_scale"] = float(w)
    elif g.kind == "cfg-cond":
        floor = cfg_threshold(type(pipe))
        if 1.0 < w <= 1.0 + floor:
            raise UserError(f"axes.guidance: {w:g} on {where} cannot be honoured: the pipeline writes guidance as "
                            f"eps_c + s (eps_c - eps_u) with s = w - 1 and runs it only for s > {floor:g}; use w = 1 "
                            f"or w > {1 + floor:g}")
        out["guidance_scale"] = float(w - 1.0)
    elif g.kind == "true-cfg":
        out["true_cfg_scale"] = float(w)
    elif g.kind == "guider":
        guider = pipe.guider
        if not hasattr(guider, "use_original_formulation") or type(guider).__name__ != "ClassifierFreeGuidance":
            if abs(w - g.default_w) > 1e-9:
                raise UserError(f"axes.guidance: {where} guides with {g.guider}, not classifier-free guidance, so "
                                f"its weight cannot be set as w = {w:g}; leave the guidance axis out to run it as "
                                f"shipped")
        else:
            scale = w - 1.0 if guider.use_original_formulation else w
            out["guider"] = guider.new(guidance_scale=float(scale))
    elif w != 1.0:
        raise UserError(f"axes.guidance: {where} has no classifier-free guidance (its call takes no guidance_scale "
                        f"or true_cfg_scale), so only w = 1 can be honoured; drop the axis or use [1.0]")
    if distilled is not None:
        if g.embedded is None:
            raise UserError(f"axes.distilled_guidance: {where} has no embedded guidance (its denoiser's config has "
                            f"no guidance_embeds, as FLUX.1-dev has); remove the axis (classifier-free guidance is "
                            f"the guidance axis)")
        out[g.embedded] = float(distilled)
    return out


def check_call_options(pipes: list, options: dict, model_id: str, params: list | None = None) -> list[dict]:
    """Per stage, the [call] options its __call__ takes (`params`: each stage's parameter names, read once); a name
    no stage takes (or one the harness sets) is a one-line UserError."""
    per_stage: list[dict] = [{} for _ in pipes]
    params = params if params is not None else [set(call_params(p)) for p in pipes]
    for key, value in options.items():
        if key in RESERVED:
            raise UserError(f"call.{key}: set by the harness (prompt, seeds, axes, size, negative_prompt); it cannot "
                            f"be a [call] option")
        takers = [i for i in range(len(pipes)) if key in params[i]]
        if not takers:
            names = sorted({k for names in params for k in names} - RESERVED - {"self", "kwargs"})
            raise UserError(f"call.{key}: {' / '.join(type(p).__name__ for p in pipes)} takes no such argument "
                            f"(model {model_id!r}); it takes: {', '.join(names)}")
        for i in takers:
            per_stage[i][key] = value
    return per_stage


# ----------------------------------------------------------------------------- the probe


class _Reached(Exception):
    """Raised by the probe's scheduler after its first step: the call got as far as one denoising step."""


def _dry_step(scheduler) -> None:
    """One step of the scheduler on zeros: a scheduler that cannot step with this config fails here, not mid-grid."""
    import torch

    sch = copy.deepcopy(scheduler)
    learned = sch.config.get("variance_type") in ("learned", "learned_range")
    x = torch.zeros(1, 4, 4, 4)
    eps = torch.zeros(1, 8 if learned else 4, 4, 4)
    t = sch.timesteps[0]
    x_in = sch.scale_model_input(x, t) if hasattr(sch, "scale_model_input") else x
    sch.step(eps, t, x_in, return_dict=False)


def _oom() -> type:
    import torch

    return getattr(torch, "OutOfMemoryError", MemoryError)


def probe(pipe, scheduler, kwargs: dict) -> dict:
    """Call the pipeline as a batch would be called, but stop right after its scheduler's first step: the prompt
    encoding, the input checks, set_timesteps with the pipeline's own arguments (sigmas, mu) and one denoising step
    with the pipeline's own step arguments have all run. Returns what the pipeline asked of the scheduler
    ({"timesteps": [...], "set_timesteps": {...}, "bin": (h, w) | None}); any failure, or a warning that the pipeline
    resized the request, is a one-line UserError."""
    seen: dict = {}
    cls = type(scheduler)
    real_set, real_step = cls.set_timesteps, cls.step

    @functools.wraps(real_set)
    def set_timesteps(self, *args, **kw):
        real_set(self, *args, **kw)
        seen["set_timesteps"] = {k: v for k, v in kw.items() if k in ("mu", "sigmas") and v is not None}
        seen["timesteps"] = [round(float(t), 4) for t in self.timesteps]

    @functools.wraps(real_step)
    def step(self, *args, **kw):
        real_step(self, *args, **kw)
        raise _Reached

    probe_sch = copy.deepcopy(scheduler)
    probe_sch.__class__ = type(cls.__name__, (cls,), {"set_timesteps": set_timesteps, "step": step})
    processor = getattr(pipe, "image_processor", None)
    binner = getattr(processor, "classify_height_width_bin", None)
    warnings: list[str] = []
    reached = False

    class Catch(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if any(w in msg for w in ("divisible", "resized", "will be resized")):
                warnings.append(msg)

    handler = Catch(level=logging.WARNING)
    log = logging.getLogger("diffusers")
    saved = pipe.scheduler
    try:
        if binner is not None:
            def record_bin(height, width, *a, **k):
                seen["bin"] = binner(height, width, *a, **k)
                return seen["bin"]
            processor.classify_height_width_bin = record_bin
        log.addHandler(handler)
        pipe.scheduler = probe_sch
        pipe(**kwargs)
    except _Reached:
        reached = True
    except UserError:
        raise
    except (MemoryError, _oom()) as exc:  # not a setting the pipeline refused
        raise UserError(f"{type(pipe).__name__}: out of memory while checking a cell's call ({type(exc).__name__}); "
                        f"lower the size or batch, use ?dtype=bfloat16 or ?offload=model") from None
    except Exception as exc:  # the pipeline's own refusal of these settings, or a scheduler that cannot run them
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"{type(pipe).__name__} cannot run {cls.__name__} with these settings "
                        f"({type(exc).__name__}: {text[:300]})") from None
    finally:
        pipe.scheduler = saved
        log.removeHandler(handler)
        if hasattr(pipe, "maybe_free_model_hooks"):  # the call stopped early: offloaded models back to the CPU
            pipe.maybe_free_model_hooks()
        if binner is not None:
            del processor.classify_height_width_bin
    if "timesteps" not in seen:
        raise UserError(f"{type(pipe).__name__} finished without asking {cls.__name__} for timesteps; this "
                        f"pipeline cannot be checked before the grid runs")
    if not reached:
        raise UserError(f"{type(pipe).__name__} finished without a step of {cls.__name__}; this pipeline cannot be "
                        f"checked before the grid runs")
    if warnings:
        raise UserError(f"{type(pipe).__name__}: {warnings[0].strip().splitlines()[0]} - give a size it takes as it "
                        f"is (?height=..&width=..), so the images are made at the size stored")
    return seen


__all__ = ["Guidance", "RESERVED", "call_params", "call_defaults", "denoiser", "pixel_space", "cond_form",
           "cfg_threshold",
           "guidance_of", "guidance_call", "check_call_options", "probe"]
