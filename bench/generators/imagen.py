"""Our Imagen behind the generator contract: a shipped name, a checkpoint folder or a preset (imagen.pipeline)."""

from __future__ import annotations

from imagen.config import SamplerConfig, normalize_threshold
from imagen.errors import UserError
from imagen.sampling import check_sampler

from bench.generators.base import AXES, Generated, check_stage_lists


class ImagenGenerator:
    """imagen.pipeline.Pipeline with the contract's checks: per-stage lists fit the cascade's stages."""

    kind = "imagen"
    axes = AXES - {"distilled_guidance"}  # our cascades have no embedded guidance
    uses_seeds = True

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.model_id = pipeline.model_id
        self.checkpoint_hash = pipeline.checkpoint_hash
        self.n_stages = len(pipeline.cascade.cfg.stages)
        self.sampler_defaults = pipeline.sampler_defaults
        self.resolution = pipeline.resolution

    @classmethod
    def load(cls, model: str, device: str = "cpu", cache_root=None, precision: str = "fp32",
             compile: bool = False) -> "ImagenGenerator":
        from imagen.pipeline import Pipeline

        return cls(Pipeline.load(model, device=device, cache_root=cache_root, precision=precision, compile=compile))

    def per_stage(self, settings: SamplerConfig) -> dict:
        """The settings with per-stage lists spelled out (a list of the wrong length is a UserError)."""
        n = self.n_stages
        return {"sampler": settings.sampler, "steps": int(settings.steps),
                "guidance": list(settings.per_stage(settings.guidance, n, "axes.guidance")),
                "threshold": normalize_threshold(settings.threshold, "axes.threshold"),  # 'a' or 'a,b': one per stage
                "aug_level": list(settings.per_stage(settings.aug_level, n - 1, "axes.aug_level")) if n > 1 else []}

    def check(self, settings: list, requests) -> None:
        for s in settings:
            if s is None:
                raise UserError(f"model {self.model_id!r} needs sampling settings; give the spec its [axes]")
            check_stage_lists(s, self.n_stages, self.model_id)
            check_sampler(s.sampler, "axes.sampler")  # a diffusers scheduler name means nothing to our cascade

    def describe(self, settings: SamplerConfig) -> dict:
        return {"kind": self.kind, "stages": [s.name for s in self.pipeline.cascade.cfg.stages],
                "resolution": self.resolution, "precision": self.pipeline.cascade.precision,
                **self.per_stage(settings)}

    def generate(self, prompts, seeds, settings, *, keys=None, batch_size: int = 8) -> Generated:
        images = self.pipeline.generate(list(prompts), list(seeds), settings, batch_size=batch_size)
        return Generated(list(images))
