"""The types every stage of a study shares: the grid spec, its cells and work items (no imports above bench.store).

`grid` parses specs and runs them, `generate` turns work items into images, `cell_metrics` scores cells; all three
import these types from here, so none of them imports another's module for a type (no import cycles).

A cell is one full sampling setting (sampler, steps, guidance per stage, thresholding, SR augmentation level) of one
model; its id is a short hash of those settings' canonical JSON with the model's checkpoint hash, so the same
settings keep the same id across runs. A model with no sampling settings (a precomputed `images:` set) has one cell
whose settings are all None. A work item is (cell, prompt, sample index); its seed depends on the spec seed, the
prompt and the sample index but NOT on the cell, so every cell starts a given prompt/sample from the same noise
(a fair comparison across guidance weights and thresholding, paper Figure A.11).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from bench import store
from bench.generators.base import Settings
from bench.suites import Prompt


@dataclass(frozen=True, eq=False)
class MetricTable(Mapping):
    """A [metrics] table, typed and frozen, read like the TOML table it came from: its keys are the fields that are
    set (so `dict(table)`, `table["reference"]` and `table.get("subset_size")` work, and it equals that dict)."""

    def __getitem__(self, key: str):
        value = getattr(self, key, None) if key in self._names() else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self):
        return (k for k in self._names() if getattr(self, k) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True, eq=False)
class FeatureTable(MetricTable):
    """FID, KID, precision/recall: an image-feature network, its preprocessing protocol, the reference set."""

    extractor: str  # "effnet-lite0" | "inception" | "dinov2-vit-l-14"
    reference: str  # "shapes" | a folder of images | a study folder | a statistics .npz (FID only)
    protocol: str  # "clean", "torch-fidelity", "crop256+clean", ... (canonical spelling)
    subset_size: int | None = None  # KID only


@dataclass(frozen=True, eq=False)
class ClipTable(MetricTable):
    """CLIP score, CMMD, FD-CLIP: a CLIP model and its weights (and, for CMMD and FD-CLIP, the reference set)."""

    model: str  # "shapes-clip" | an open_clip architecture | hf-hub:/local-dir: name
    pretrained: str | None = None  # open_clip tag or weights file
    reference: str | None = None


@dataclass(frozen=True, eq=False)
class GenevalTable(MetricTable):
    """GenEval's scorer: the detector (hub id or folder) and the CLIP model that names the objects' colours."""

    detector: str
    clip: str
    pretrained: str | None = None


@dataclass(frozen=True, eq=False)
class VqaTable(MetricTable):
    """VQAScore: the vision-language model (hub id or folder), the question and the answer whose probability is the
    score, the weights' dtype; and how many images go through the model at once (not part of the score)."""

    model: str
    template: str
    answer: str
    dtype: str = "auto"
    batch_size: int = 8


@dataclass(frozen=True, eq=False)
class PickscoreTable(MetricTable):
    """PickScore: the CLIP model (hub id or folder) and the processor it was trained with."""

    model: str
    processor: str
    dtype: str = "auto"
    batch_size: int = 8


@dataclass(frozen=True, eq=False)
class HpsTable(MetricTable):
    """HPS v2.0 or v2.1: the checkpoint (a file, a folder holding it, or a hub repository; None: xswu/HPSv2)."""

    version: str
    weights: str | None = None
    architecture: str = "ViT-H-14"
    dtype: str = "auto"
    batch_size: int = 8


@dataclass(frozen=True, eq=False)
class ImageRewardTable(MetricTable):
    """ImageReward: ImageReward.pt and med_config.json (a file, a folder, or a hub repository; None: THUDM's)."""

    weights: str | None = None
    med_config: str | None = None
    tokenizer: str = "bert-base-uncased"  # BLIP's BERT tokenizer: a hub id (from the cache) or a folder
    dtype: str = "auto"
    batch_size: int = 8


@dataclass(frozen=True, eq=False)
class DiversityTable(MetricTable):
    """Diversity within a prompt: the embedding (a feature extractor, or "clip" with a CLIP model and weights)."""

    embedding: str
    model: str | None = None  # with embedding = "clip"
    pretrained: str | None = None


@dataclass(frozen=True)
class MetricsSpec:
    fid: FeatureTable | None = None
    clip_score: ClipTable | None = None
    alignment: bool = False  # the shapes scorer, per cell and per category (shapes suite only)
    kid: FeatureTable | None = None  # torch-fidelity's KID
    prc: FeatureTable | None = None  # precision and recall, k = 3
    cmmd: ClipTable | None = None  # CMMD on CLIP embeddings
    fd_clip: ClipTable | None = None  # Frechet distance on CLIP embeddings
    geneval: GenevalTable | None = None  # GenEval's rules (prompts with GenEval metadata only)
    vqascore: VqaTable | None = None  # P("Yes") from a vision-language model, every prompt
    fd_dinov2: FeatureTable | None = None  # the Frechet distance on DINOv2 ViT-L/14 features (Stein et al. 2023)
    diversity: DiversityTable | None = None  # within a prompt: mean pairwise distance and Vendi score
    pickscore: PickscoreTable | None = None  # learned human preference (Kirstain et al. 2023)
    hpsv2: HpsTable | None = None  # Human Preference Score v2.0 / v2.1 (Wu et al. 2023)
    imagereward: ImageRewardTable | None = None  # ImageReward (Xu et al. 2023)

    def distribution(self) -> dict:
        """The metrics that compare a cell's images with a reference set, by key."""
        return {k: v for k, v in (("kid", self.kid), ("prc", self.prc), ("cmmd", self.cmmd),
                                  ("fd_clip", self.fd_clip)) if v}

    def tables(self) -> dict:
        """Every metric the spec turns on, by its [metrics] key, in scoring order (bench.cell_metrics.SCORERS)."""
        return {k: v for k, v in (("fid", self.fid), ("fd_dinov2", self.fd_dinov2), *self.distribution().items(),
                                  ("clip_score", self.clip_score),
                                  ("alignment", self.alignment), ("geneval", self.geneval),
                                  ("vqascore", self.vqascore), ("pickscore", self.pickscore),
                                  ("hpsv2", self.hpsv2), ("imagereward", self.imagereward),
                                  ("diversity", self.diversity)) if v}


@dataclass(frozen=True)
class GridSpec:
    """A parsed grid spec. Axes are tuples of values; a model without sampling axes (`images:`) has them empty."""

    name: str
    model: str
    suites: tuple[str, ...]
    samples_per_prompt: int = 1
    seed: int = 0
    batch_size: int = 8
    guidance: tuple[tuple[float, ...], ...] = ((5.0,),)  # each entry: one weight, or one per stage
    threshold: tuple[str, ...] = ("dynamic:0.995",)
    sampler: tuple[str, ...] = ("ddpm",)
    steps: tuple[int, ...] = (50,)
    aug_level: tuple[tuple[float, ...], ...] = ((0.0,),)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    distilled_guidance: tuple[float, ...] | None = None  # embedded guidance values; None: the model's own
    negative_prompt: str | None = None  # the unconditional branch's prompt (None: the model's own, usually empty)
    call: str | None = None  # the [call] table as canonical JSON (bench.generators.base.canonical_call)

    @property
    def has_axes(self) -> bool:
        """False for a model without sampling settings (an image set: every axis empty). An axis that is None is
        the model's own setting (a diffusers pipeline's sampler, threshold or steps, each stage's own)."""
        return any(v != () for v in (self.guidance, self.threshold, self.sampler, self.steps, self.aug_level))


@dataclass(frozen=True)
class Cell:
    """One grid cell: every sampling setting of one model (all None for a model that has none)."""

    model_hash: str
    sampler: str | None  # None: each stage's own (a diffusers pipeline's scheduler as it ships)
    steps: int | None  # None: each stage's own default
    guidance: tuple[float, ...]  # per stage (one value = all stages); () when the model has no settings
    threshold: str | None  # None: each stage's own scheduler setting
    aug_level: tuple[float, ...]
    distilled_guidance: float | None = None  # embedded guidance (FLUX.1-dev); None: none / the model's own
    negative_prompt: str | None = None
    call: str | None = None  # canonical JSON of the [call] table

    @property
    def id(self) -> str:
        """A hash of every setting; the settings added after the first (distilled guidance, negative prompt, call
        options) count only when set, so a cell without them keeps its id."""
        d = dataclasses.asdict(self)
        for k in OPTIONAL:
            if d[k] is None:
                del d[k]
        canon = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def sampler_config(self) -> Settings | None:
        """The cell's settings (None for a model that has none; a None field is the model's own)."""
        if not self.guidance and not self.aug_level and self.sampler is None and self.steps is None:
            return None
        return Settings(sampler=self.sampler, steps=self.steps, guidance=self.guidance,
                        threshold=self.threshold, aug_level=self.aug_level,
                        distilled_guidance=self.distilled_guidance, negative_prompt=self.negative_prompt,
                        call=self.call)

    def settings(self) -> dict:
        """The cell's settings as sample-row columns."""
        return {
            store.COL_SAMPLER: self.sampler, store.COL_STEPS: self.steps,
            store.COL_GUIDANCE: self.guidance[0] if self.guidance else None,
            store.COL_GUIDANCE_STAGES: _join(self.guidance), store.COL_THRESHOLD: self.threshold,
            store.COL_AUG_LEVEL: _join(self.aug_level), store.COL_DISTILLED_GUIDANCE: self.distilled_guidance,
        }


OPTIONAL = ("distilled_guidance", "negative_prompt", "call")


def _join(values: tuple[float, ...]) -> str | None:
    return ",".join(f"{v:g}" for v in values) if values else None


def expand(spec: GridSpec, model_hash: str) -> list[Cell]:
    """The cartesian product of the axes, thresholding outermost (one curve per thresholding in the report)."""
    if not spec.has_axes:
        return [Cell(model_hash, None, None, (), None, ())]
    axes = [v if v is not None else (None,) for v in (spec.threshold, spec.guidance, spec.sampler, spec.steps,
                                                      spec.aug_level, spec.distilled_guidance)]
    return [Cell(model_hash, s, n, g, t, a, dg, spec.negative_prompt, spec.call)
            for t, g, s, n, a, dg in itertools.product(*axes)]


@dataclass(frozen=True)
class WorkItem:
    cell: Cell
    prompt: Prompt
    sample_index: int
    seed: int

    @property
    def sample_id(self) -> str:
        return f"{self.cell.id}/{self.prompt.prompt_id}/{self.sample_index}"

    @property
    def image_path(self) -> str:
        return f"images/{self.cell.id}/{self.prompt.prompt_id}-{self.sample_index}.png"


def item_seed(spec_seed: int, prompt_id: str, sample_index: int) -> int:
    """The seed of a work item: from (spec seed, prompt, sample index), not the cell; fits in 31 bits."""
    digest = hashlib.sha256(f"{spec_seed}/{prompt_id}/{sample_index}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def work_items(cells: list[Cell], prompts: list[Prompt], samples_per_prompt: int, seed: int) -> list[WorkItem]:
    """Every (cell, prompt, sample index), cell-major so a batch shares one sampler setting."""
    return [WorkItem(c, p, i, item_seed(seed, p.prompt_id, i))
            for c in cells for p in prompts for i in range(samples_per_prompt)]


def plan(cells: list[Cell], items: list[WorkItem], used: dict | None = None) -> dict:
    """{cell_id: {settings..., "items": n, "generation": what the generator used}} for the study table and status."""
    counts: dict[str, int] = {}
    for it in items:
        counts[it.cell.id] = counts.get(it.cell.id, 0) + 1
    return {c.id: {**c.settings(), "items": counts.get(c.id, 0),
                   **({"generation": used[c.id]} if used and c.id in used else {})} for c in cells}


def now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat()


__all__ = ["GridSpec", "MetricsSpec", "Cell", "WorkItem", "expand", "item_seed", "work_items", "plan", "now"]
