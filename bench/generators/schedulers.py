"""Sampler names -> diffusers schedulers of the model's own family, and the clipping a scheduler may do.

A diffusers model is trained in one of two families, and a scheduler of the other family integrates the wrong ODE
(a velocity model stepped as epsilon with DDPM betas), so a sampler name maps onto a scheduler of the model's family
or is refused:

  family     what marks it (the scheduler it ships with)                    samplers
  flow       a FlowMatch* class, use_flow_sigmas, prediction_type           euler (FlowMatchEulerDiscreteScheduler),
             "flow_prediction" (SD3, FLUX, Sana, Lumina2, Qwen-Image)       dpmpp-2m and unipc (flow sigmas),
                                                                            FlowMatch* classes; the model's shift is
                                                                            kept (shift, or flow_shift as Sana ships)
  diffusion  anything else: epsilon / v / sample prediction on betas        ddpm, ddim, dpmpp-2m, euler, unipc, and
             (SD, SDXL, PixArt, IF, Kandinsky)                              any class in scheduler.compatibles

Clipping: a scheduler built for a cell clips x0 (`clip_sample`, `thresholding`) only where the thresholding axis
asks for it on a pixel-space stage, or, with the axis left out, where the model's own scheduler config sets it. A
class default never turns it on (DDIMScheduler's `clip_sample = True` on a PixArt config that has no such key).
"""

from __future__ import annotations

import inspect

from imagen.errors import UserError

FLOW, DIFFUSION = "flow", "diffusion"
CLIP_KEYS = ("clip_sample", "thresholding")
# sampler name -> {family: (scheduler class, settings)}
SAMPLERS: dict[str, dict[str, tuple[str, dict]]] = {
    "euler": {FLOW: ("FlowMatchEulerDiscreteScheduler", {}), DIFFUSION: ("EulerDiscreteScheduler", {})},
    "dpmpp-2m": {FLOW: ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
                 DIFFUSION: ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2})},
    "unipc": {FLOW: ("UniPCMultistepScheduler", {}), DIFFUSION: ("UniPCMultistepScheduler", {})},
    "ddim": {DIFFUSION: ("DDIMScheduler", {})},
    "ddpm": {DIFFUSION: ("DDPMScheduler", {})},
}
NAMES = tuple(SAMPLERS)


def family(scheduler) -> str:
    """FLOW or DIFFUSION, from the scheduler a model ships with."""
    cfg = scheduler.config
    if type(scheduler).__name__.startswith("FlowMatch") or cfg.get("use_flow_sigmas") or \
            cfg.get("prediction_type") == "flow_prediction":
        return FLOW
    return DIFFUSION


def samplers_for(scheduler) -> list[str]:
    """The sampler names that fit a model whose own scheduler is `scheduler`."""
    fam = family(scheduler)
    return [name for name, by in SAMPLERS.items() if fam in by]


def flow_shift(scheduler) -> float:
    """A flow model's timestep shift as it ships: `shift` of a FlowMatch scheduler, `flow_shift` of a DPM/UniPC one."""
    cfg = scheduler.config
    if type(scheduler).__name__.startswith("FlowMatch"):
        return float(cfg.get("shift", 1.0))
    return float(cfg.get("flow_shift", 1.0) or 1.0)


def init_params(cls) -> set[str]:
    return {k for k in inspect.signature(cls.__init__).parameters if k != "self"}


def explicit_config(scheduler) -> dict:
    """The keys the model's own scheduler config sets (not the class defaults diffusers filled in)."""
    cfg = dict(scheduler.config)
    defaulted = set(cfg.get("_use_default_values", ()))
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in defaulted}


def used_config(scheduler) -> dict:
    """The scheduler's config, only the keys its class takes (a DDIM config carries no `shift`)."""
    keep = init_params(type(scheduler))
    return {k: v for k, v in dict(scheduler.config).items() if k in keep}


def scheduler_class(name: str, base, where: str):
    """(class, settings) for a sampler name or a diffusers scheduler class name on a model shipped with `base`; a
    name of the other family is a one-line UserError naming the samplers that fit."""
    import diffusers

    fam = family(base)
    fits = ", ".join(samplers_for(base))
    if name in SAMPLERS:
        if fam not in SAMPLERS[name]:
            raise UserError(f"axes.sampler: {name!r} does not fit {where}: it is a flow-matching model (its "
                            f"{type(base).__name__} predicts a velocity); use {fits}")
        cls_name, extra = SAMPLERS[name][fam]
        return getattr(diffusers, cls_name), dict(extra)
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise UserError(f"axes.sampler: {name!r} is neither a sampler ({', '.join(NAMES)}) nor a diffusers scheduler "
                        f"class; for {where} use {fits}")
    if cls is type(base):
        return cls, {}
    if fam == FLOW:
        if not (name.startswith("FlowMatch") or "use_flow_sigmas" in init_params(cls)):
            raise UserError(f"axes.sampler: {name} is not a flow-matching scheduler, and {where} is a flow-matching "
                            f"model; use {fits} or a FlowMatch* scheduler")
    elif name.startswith("FlowMatch") or name not in {c.__name__ for c in base.compatibles}:
        raise UserError(f"axes.sampler: {name} is not compatible with {where} (a {type(base).__name__} model: "
                        f"epsilon/v prediction); use {fits} or one of its compatibles")
    return cls, {}


def build(base, cls, extra: dict, clip: dict):
    """The scheduler of class `cls` for a model shipped with `base`: its config, the family's settings (flow: the
    model's shift, flow sigmas and flow prediction), and `clip` (clip_sample / thresholding settings)."""
    params = init_params(cls)
    config = dict(base.config)
    over = dict(extra)
    if family(base) == FLOW and cls is not type(base):
        shift = flow_shift(base)
        if cls.__name__.startswith("FlowMatch"):
            over["shift"] = shift
        else:
            over.update(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift)
    if "variance_type" not in params and config.get("variance_type") in ("learned", "learned_range"):
        # IF's stage I/II predict a variance too; a scheduler that cannot use it must say so in its config, or
        # the pipeline hands it the 6-channel output (the pipeline reads scheduler.config.variance_type)
        config["variance_type"] = None
    over.update({k: v for k, v in clip.items() if k in params})
    for k in CLIP_KEYS:  # never on by a class default: only the model's own config or the threshold axis
        if k in params and k not in over:
            over[k] = bool(explicit_config(base).get(k, False))
    # the keys this class takes (another family's `shift`, a PNDM's `skip_prk_steps`: not warned about, not stored),
    # and IF's `variance_type` = None where the class has none (the pipeline reads it from the config)
    keep = params | ({"variance_type"} if "variance_type" not in params and "variance_type" in config else set())
    return cls.from_config({k: v for k, v in config.items() if k in keep}, **over)


def drops_own_clipping(base, cls) -> str | None:
    """The clipping the model's own scheduler config turns on that a scheduler of class `cls` cannot do (IF's dynamic
    thresholding under EulerDiscreteScheduler), or None."""
    own = explicit_config(base)
    params = init_params(cls)
    lost = [k for k in CLIP_KEYS if own.get(k) and k not in params]
    if not lost or any(own.get(k) and k in params for k in CLIP_KEYS):
        return None
    return ", ".join(lost)


__all__ = ["FLOW", "DIFFUSION", "SAMPLERS", "NAMES", "family", "samplers_for", "flow_shift", "explicit_config",
           "used_config", "scheduler_class", "build", "drops_own_clipping"]
