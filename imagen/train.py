"""Per-stage training of a cascade: the TOML run config, the loop, checkpoints and bit-exact resume.

One call of `train(run)` trains ONE stage (`[train] stage`) of the cascade `[model]` on `[data]` into the run folder
`out`:

    out/config.json, out/<stage>.safetensors     inference checkpoint (EMA weights; imagen.checkpoint format)
    out/train_state/<stage>.safetensors          raw weights, EMA weights, AdamW moments
    out/train_state/<stage>.json                 step, RNG states, config hash, sha256 of the tensors file
    out/loss.csv                                 stage, step, loss, lr, steps_per_s, seconds
    out/samples/<stage>-step<N>.png (+ .txt)     preview grids from the EMA weights
    out/text/text-<key>.npy                      the dataset's captions, encoded once (memory-mapped)

Training more stages of the same cascade into the same folder adds their files. Randomness is owned: the data
order is a function of (seed, step, rank) (imagen.data.batch_indices), the loss draws (t, noise, text dropout,
augmentation level) come from one torch.Generator whose state is checkpointed, so a resumed run equals an
uninterrupted one bit for bit. Several processes (torchrun / accelerate launch) shard each global batch, each
on its own device (cuda:LOCAL_RANK), through PyTorch's DistributedDataParallel or FSDP2 ([train] parallel; see
imagen.parallel); only rank 0 writes. Only the trained stage is built on the device: the other stages of the
cascade are meta tensors, and a preview loads the earlier stages from the run folder for its duration.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imagen.config import CascadeConfig, added_field, cascade_to_json, from_dict, preset, to_dict, toml_table
from imagen.errors import UserError
from imagen.fileio import atomic_write, sha256_file
from imagen.worlds import WORLD_FILE, WORLDS, model_world

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TrainConfig:
    """[train]: the optimisation of one stage."""

    stage: str = "base"  # which stage of the cascade to train
    steps: int = 1000  # optimiser steps in total (a resumed run continues up to this)
    batch_size: int = 16  # per process
    lr: float = 1e-4  # peak AdamW learning rate (paper appendix F: 1e-4)
    lr_schedule: str = "constant"  # "constant" | "cosine" (decays to 10% of lr at `steps`), both after warm-up
    warmup: int = 100  # linear learning-rate warm-up steps (paper: 10,000)
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.99)
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    ema_decay: float = 0.999  # sampling uses the EMA weights (paper appendix F: 0.9999)
    ema_warmup: int = 10  # EMA decay min(ema_decay, (1+s)/(ema_warmup+s)); 0 = constant decay
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 autocast on GPU, fp32 on CPU) | "fp32" | "bf16" | "fp16" (GPU)
    # "adamw" | "adafactor" (the paper's optimiser for the base model; torch.optim.Adafactor, whose lr is relative:
    # the step is min(lr, 1/sqrt(step)) x RMS(param), torch's default lr 1e-2; betas unused; not with fsdp)
    optimizer: str = "adamw"
    parallel: str = "ddp"  # with several processes: "ddp" (whole model per rank) | "fsdp" (sharded, FSDP2)
    grad_checkpointing: bool = False  # recompute each residual / attention block in backward (less memory)
    sample_every: int = 500  # preview grid every N steps (0 = only at the end)
    checkpoint_every: int = 500  # checkpoint every N steps (always at the end)
    log_every: int = 10  # rows in loss.csv every N steps
    num_workers: int = 0  # DataLoader worker processes for image loading
    sample_prompts: tuple[str, ...] = ()  # preview prompts (default: the first 8 captions of the dataset)
    sample_steps: int = 50  # sampler steps of the preview
    sample_guidance: float = 3.0  # guidance weight of the preview
    # training noise levels: log-SNR = schedule(t) + log_snr_shift, t ~ U(0, 1). Negative trains more at high noise,
    # where an image's layout is decided; sampling is unaffected. 0 = the paper's (uniform t).
    log_snr_shift: float = 0.0
    # start from these weights instead of random ones (a <stage>.safetensors, or a run folder holding one): the
    # second phase of a curriculum, or fine-tuning. Model and EMA both start there; the optimiser starts fresh.
    # Read only by a fresh run (so not in the config hash); its sha256 is kept in the training state.
    init: str = ""
    # render every training image once, into memory (uint8, at the dataset's render size), before the first step,
    # instead of on the main thread at every step; num_workers processes render it. The same images, so the same
    # weights: not in the config hash. Memory: n x size^2 x 3 bytes (20,000 scenes at 64 px: 246 MB).
    cache_renders: bool = added_field(False)
    # AdamW's fused kernel (torch.optim.AdamW(fused=True)) where torch has it for the device (CUDA; CPU since torch
    # 2.4); elsewhere the default implementation, with a note. Not with adafactor.
    fused_optimizer: bool = added_field(False)


@dataclass(frozen=True)
class DataConfig:
    """[data]: what the stage is trained on. Images are square-cropped and resized to the stage resolution."""

    kind: str = "shapes"  # a world of imagen.worlds ("shapes" | "shapes-hard") | "folder" | "coco"
    n: int = 10000  # shapes: number of training scenes
    seed: int = 0  # shapes: world seed
    split: str = "train"  # shapes: world split
    categories: tuple[str, ...] = ()  # shapes: category cycle (a name twice = twice as often); () = each once
    path: str = ""  # folder / coco: the image folder
    captions: str = ""  # folder: CSV/JSONL (file, caption); coco: the captions JSON
    crop: int = 0  # SR stages: train on random crops of this size (paper: 256 crops for the 1024 model); 0 = off


@dataclass(frozen=True)
class RunConfig:
    model: CascadeConfig
    train: TrainConfig
    data: DataConfig
    out: str

    def stage_index(self) -> int:
        names = [s.name for s in self.model.stages]
        if self.train.stage not in names:
            raise UserError(f"[train] stage {self.train.stage!r} is not a stage of the cascade; stages: {names}")
        return names.index(self.train.stage)


# fields that do not change the trained weights (excluded from the config hash, so they may differ on resume)
_NO_HASH = ("steps", "sample_every", "checkpoint_every", "log_every", "num_workers", "sample_prompts",
            "sample_steps", "sample_guidance", "parallel", "grad_checkpointing", "cache_renders")


def resolved_precision(t: TrainConfig, device: torch.device | str) -> str:
    """precision = "auto": bf16 autocast on a GPU, fp32 on a CPU."""
    if t.precision != "auto":
        return t.precision
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def config_hash(run: RunConfig, device: torch.device | str = "cpu") -> str:
    """sha256 over everything that decides the weights of `run.train.stage` (precision as resolved on `device`)."""
    tr = to_dict(run.train)
    tr["precision"] = resolved_precision(run.train, device)
    if tr["optimizer"] == "adamw":  # the default: hashes as before the key existed, so older runs still resume
        tr.pop("optimizer")
    for k in _NO_HASH:
        if not (k == "steps" and run.train.lr_schedule == "cosine"):
            tr.pop(k, None)  # an added_field at its default is not there
    data = to_dict(run.data)
    if not data["categories"]:  # the default: hashes as before the key existed, so older runs still resume
        data.pop("categories")
    if tr["log_snr_shift"] == 0.0:  # likewise
        tr.pop("log_snr_shift")
    # init decides only where a fresh run starts; a resumed run continues its own saved weights, so the file may
    # move or change afterwards. Its sha256 goes into the training state instead (init_sha256).
    tr.pop("init")
    blob = json.dumps({"model": to_dict(run.model), "train": tr, "data": data}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def init_weights(run: RunConfig) -> Path:
    """The weights file `[train] init` names: a .safetensors file, or <folder>/<stage>.safetensors."""
    p = Path(run.train.init).expanduser()
    if p.is_dir():
        p = p / f"{run.train.stage}.safetensors"
    if not p.is_file():
        raise UserError(f"[train] init: {p} not found; give a <stage>.safetensors file or a run folder that holds "
                        f"{run.train.stage}.safetensors")
    return p


def _section(cls, data: dict, section: str):
    """Build a config dataclass from a TOML table, naming the section in every error."""
    if not isinstance(data, dict):
        raise UserError(f"[{section}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in fields:
            raise UserError(f"unknown key {key!r} in [{section}]; known keys: {', '.join(fields)}")
        tp = hints[key]
        ok = (isinstance(value, bool) and tp is bool) or (
            not isinstance(value, bool) and (
                (tp is int and isinstance(value, int)) or (tp is float and isinstance(value, (int, float)))
                or (tp is str and isinstance(value, str))
                or (typing.get_origin(tp) is tuple and isinstance(value, list))))
        if not ok:
            raise UserError(f"[{section}] {key} = {value!r}: expected {getattr(tp, '__name__', tp)}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else float(v) if hints[k] is float else v) for k, v in data.items()}
    return cls(**kwargs)


def _model(data: dict, base: Path) -> CascadeConfig:
    """[model]: `preset = NAME`, `file = "cascade.toml|json"` (relative to the config), or the cascade inline."""
    if not isinstance(data, dict):
        raise UserError("[model] must be a table")
    keys = set(data)
    if keys == {"preset"}:
        return preset(data["preset"])
    if keys == {"file"}:
        path = (base / data["file"]).resolve()
        if not path.is_file():
            raise UserError(f"[model] file {path} not found")
        if path.suffix == ".json":
            inner = json.loads(path.read_text())
        else:
            inner = toml_table(path.read_text(encoding="utf-8"), str(path))
        return _model(inner, path.parent)
    allowed = {"name", "text", "stages"}
    unknown = keys - allowed
    if unknown or not {"name", "stages"} <= keys:
        raise UserError(f"[model] needs either preset = NAME, file = PATH, or name + text + stages; "
                        f"unexpected keys {sorted(unknown)}" if unknown else
                        "[model] needs either preset = NAME, file = PATH, or name + [model.text] + [[model.stages]]")
    data = dict(data)
    data.setdefault("text", {})
    try:
        return from_dict(CascadeConfig, data)
    except (TypeError, KeyError) as exc:
        raise UserError(f"[model] does not describe a cascade: {exc}") from None


def parse_config(data: dict, base: Path = Path("."), overrides: dict | None = None) -> RunConfig:
    """A RunConfig from parsed TOML; every key is checked. `overrides` = {"train.steps": 10, "out": ...}."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, value in (overrides or {}).items():
        if "." in key:
            sec, name = key.split(".", 1)
            data.setdefault(sec, {})[name] = value
        else:
            data[key] = value
    unknown = set(data) - {"model", "train", "data", "out"}
    if unknown:
        raise UserError(f"unknown top-level key(s) {sorted(unknown)}; a training config has out, [model], [train], "
                        f"[data]")
    if "model" not in data:
        raise UserError("the config needs a [model] section (preset = \"tiny\", or the cascade written out)")
    if not isinstance(data.get("out"), str) or not data["out"]:
        raise UserError("the config needs out = \"RUN_FOLDER\" (or pass --out)")
    run = RunConfig(_model(data["model"], base), _section(TrainConfig, data.get("train", {}), "train"),
                    _section(DataConfig, data.get("data", {}), "data"), data["out"])
    _validate(run)
    return run


# The ablations of the findings report (paper 4.4 and 2.4), each a change of [model] on the same recipe:
ABLATIONS: dict[str, str] = {
    "random-text": "the text encoder's architecture with random weights (minilm-random) instead of pretrained MiniLM",
    "pooled-text": "no cross-attention on the text tokens: every stage sees the pooled text vector only",
    "no-aug": "SR stages trained without noise-conditioning augmentation (noise_aug_max = 0)",
}


def ablate(run: RunConfig, name: str) -> RunConfig:
    """The run with one ablation of ABLATIONS applied to its [model] (a different cascade: train it into its own
    out folder)."""
    if name not in ABLATIONS:
        raise UserError(f"unknown ablation {name!r}; choose one of {', '.join(ABLATIONS)}")
    m = run.model
    if name == "random-text":
        if m.text.kind != "minilm":
            raise UserError(f"ablation random-text needs the minilm text encoder, the config has {m.text.kind!r}")
        m = dataclasses.replace(m, text=dataclasses.replace(m.text, kind="minilm-random"))
    elif name == "pooled-text":
        m = dataclasses.replace(m, stages=tuple(dataclasses.replace(
            s, unet=dataclasses.replace(s.unet, cross_attn=(False,) * len(s.unet.cross_attn))) for s in m.stages))
    else:
        if not run.model.stages[run.stage_index()].is_sr:
            raise UserError("ablation no-aug changes SR stages only; train an SR stage with it")
        m = dataclasses.replace(m, stages=tuple(dataclasses.replace(s, noise_aug_max=0.0) if s.is_sr else s
                                                for s in m.stages))
    return dataclasses.replace(run, model=m)


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training config {path} not found")
    return parse_config(toml_table(path.read_text(encoding="utf-8"), str(path)), path.parent, overrides)


def _validate(run: RunConfig) -> None:
    t, d = run.train, run.data
    i = run.stage_index()
    st = run.model.stages[i]
    checks = [
        (t.steps >= 1, "[train] steps must be >= 1"),
        (t.batch_size >= 1, "[train] batch_size must be >= 1"),
        (t.lr > 0, "[train] lr must be > 0"),
        (t.warmup >= 0 and t.ema_warmup >= 0, "[train] warmup and ema_warmup must be >= 0"),
        (0 <= t.ema_decay < 1, "[train] ema_decay must be in [0, 1)"),
        (t.grad_clip >= 0, "[train] grad_clip must be >= 0 (0 = off)"),
        (len(t.betas) == 2, "[train] betas needs two numbers, e.g. [0.9, 0.99]"),
        (t.precision in ("auto", "fp32", "bf16", "fp16"),
         f"[train] precision must be auto, fp32, bf16 or fp16, got {t.precision!r}"),
        (t.optimizer in ("adamw", "adafactor"), f"[train] optimizer must be adamw or adafactor, got {t.optimizer!r}"),
        (t.parallel in ("ddp", "fsdp"), f"[train] parallel must be ddp or fsdp, got {t.parallel!r}"),
        (not (t.fused_optimizer and t.optimizer != "adamw"),
         "[train] fused_optimizer is AdamW's fused kernel: use it with optimizer = \"adamw\""),
        (t.lr_schedule in ("constant", "cosine"), "[train] lr_schedule must be constant or cosine"),
        (math.isfinite(t.log_snr_shift) and abs(t.log_snr_shift) <= 10,
         f"[train] log_snr_shift must be a number in [-10, 10] (0 = off), got {t.log_snr_shift}"),
        (min(t.sample_every, t.checkpoint_every, t.num_workers) >= 0 and t.log_every >= 1,
         "[train] sample_every, checkpoint_every, num_workers must be >= 0 and log_every >= 1"),
        (d.kind in (*WORLDS, "folder", "coco"),
         f"[data] kind must be {', '.join(WORLDS)}, folder or coco, got {d.kind!r}"),
        (d.kind not in WORLDS or d.n >= 1, "[data] n must be >= 1"),
        (d.kind in WORLDS or (d.path and d.captions),
         f"[data] kind = {d.kind!r} needs path = IMAGE_FOLDER and captions = FILE"),
        (d.crop == 0 or st.is_sr, "[data] crop is for SR stages only (the base stage sees whole images)"),
        (not d.categories or d.kind in WORLDS, "[data] categories is for the shapes worlds only"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    if d.categories:  # the world checks its own arguments; here, before any work and naming the section
        from imagen.worlds import get_world

        try:
            get_world(d.kind).dataset(d.seed, d.split, tuple(d.categories))
        except UserError as e:
            raise UserError(f"[data] {e}") from None
    if d.crop:
        f = st.resolution // st.lowres_resolution
        if not (0 < d.crop <= st.resolution and d.crop % f == 0):
            raise UserError(f"[data] crop = {d.crop}: must be <= {st.resolution} and a multiple of the SR factor {f}")


def config_to_toml_dict(run: RunConfig) -> dict:
    return {"out": run.out, "model": to_dict(run.model), "train": to_dict(run.train), "data": to_dict(run.data)}


# ----------------------------------------------------------------------------- small helpers


def lr_at(step: int, t: TrainConfig) -> float:
    """Learning rate of optimiser step `step` (1-based): linear warm-up, then constant or cosine to 0.1 * lr."""
    if t.warmup and step <= t.warmup:
        return t.lr * step / t.warmup
    if t.lr_schedule == "cosine":
        frac = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
        return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    return t.lr


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    return dev


# ----------------------------------------------------------------------------- train state (resume)


def _optim_tensors(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser state dict (state keyed by parameter index) as flat tensors and JSON-able metadata."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optim_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The optimiser state dict `_optim_tensors` took apart."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state(gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "loss_generator": gen.get_state().tolist(),
    }


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    gen.set_state(torch.tensor(state["loss_generator"], dtype=torch.uint8))


def state_paths(out: Path, stage: str) -> tuple[Path, Path]:
    return out / "train_state" / f"{stage}.safetensors", out / "train_state" / f"{stage}.json"


def _config_difference(saved: dict | None, run: RunConfig | None, device) -> str:
    """'; it differs in train.precision: saved "fp32", now "auto" (bf16 on cuda)', or '' when nothing names it."""
    if not saved or run is None:
        return ""
    now = config_to_toml_dict(run)
    diffs = []
    for sec in ("model", "train", "data"):
        a, b = saved.get(sec, {}), now.get(sec, {})
        for k in sorted(set(a) | set(b)):
            if sec == "train" and k in _NO_HASH + ("init",):
                continue
            va, vb = a.get(k), b.get(k)
            if sec == "train" and k == "precision":
                va = "fp32" if va is None else va
                if resolved_precision(dataclasses.replace(run.train, precision=va), device) == \
                        resolved_precision(run.train, device):
                    continue
                vb = f"{vb} ({resolved_precision(run.train, device)} on {torch.device(device).type})"
            if sec == "train" and k == "optimizer" and {va, vb} <= {None, "adamw"}:
                continue
            if va != vb and not (isinstance(va, list) and isinstance(vb, (list, tuple)) and list(vb) == va):
                diffs.append(f"{sec}.{k}: saved {json.dumps(va)}, now {json.dumps(vb, default=str)}")
    return ("; it differs in " + "; ".join(diffs[:4])) if diffs else ""


def read_train_state(out: Path, stage: str, expect_hash: str, run: RunConfig | None = None,
                     device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """The saved tensors and metadata of `stage`; a corrupt file or another config's state is a UserError."""
    from safetensors.torch import load_file

    tpath, jpath = state_paths(out, stage)
    try:
        meta = json.loads(jpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{jpath} is unreadable or corrupt ({exc.__class__.__name__}); delete {out / 'train_state'} "
                        f"to start over") from None
    if meta.get("config_hash") != expect_hash:
        raise UserError(f"{out} holds a {stage!r} checkpoint of a different config (hash {meta.get('config_hash', '?')[:12]}"
                        f" != {expect_hash[:12]}{_config_difference(meta.get('config'), run, device)}); use the "
                        f"config it was trained with, or another --out")
    if not tpath.is_file() or sha256_file(tpath) != meta.get("tensors_sha256"):
        raise UserError(f"{tpath} is missing, truncated or corrupt (sha256 does not match {jpath.name}); "
                        f"delete {out / 'train_state'} to start over")
    try:
        tensors = load_file(str(tpath))
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(f"{tpath} cannot be read ({exc}); delete it to start over") from None
    return tensors, meta


# ----------------------------------------------------------------------------- the loop


def _batch_images(ds, idx: np.ndarray) -> np.ndarray:
    return np.stack([ds.image(int(i)) for i in idx])  # uint8 [B, S, S, 3]


class _StepImages(torch.utils.data.Dataset):
    """Item k = the uint8 images of this rank's batch at step start + k (order fixed by batch_indices)."""

    def __init__(self, ds, n_steps: int, start: int, seed: int, batch: int, rank: int, world: int):
        self.ds, self.n, self.start, self.seed, self.batch, self.rank, self.world = (
            ds, n_steps, start, seed, batch, rank, world)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int):
        from imagen.data import batch_indices

        idx = batch_indices(len(self.ds), self.seed, self.start + k, self.batch, self.rank, self.world)
        return idx, _batch_images(self.ds, idx)


def _crop(x: torch.Tensor, low: torch.Tensor, crop: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops (one offset per row) of x [B,3,R,R] (crop px) and of its low-res image low [B,3,r,r] (crop*r/R px).

    Offsets are multiples of the SR factor so both crops cover the same region (paper appendix F: the 1024 model
    is trained on 256x256 crops with 64x64 low-res crops).
    """
    f = x.shape[-1] // low.shape[-1]
    c_lo, n_pos = crop // f, (x.shape[-1] - crop) // f + 1
    ky, kx = rng.integers(0, n_pos, size=(2, x.shape[0]))
    xs = torch.stack([x[b, :, f * ky[b] : f * ky[b] + crop, f * kx[b] : f * kx[b] + crop] for b in range(x.shape[0])])
    ls = torch.stack([low[b, :, ky[b] : ky[b] + c_lo, kx[b] : kx[b] + c_lo] for b in range(x.shape[0])])
    return xs, ls


def _save_grid(images: np.ndarray, path: Path, prompts: list[str]) -> None:
    """uint8 [B, H, W, 3] -> one PNG grid (ceil(sqrt B) columns) + the prompts, one per line, beside it."""
    from PIL import Image

    b, h, w, _ = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, dtype=np.uint8)
    for k in range(b):
        r, c = divmod(k, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = images[k]
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
    atomic_write(path.with_suffix(".txt"), lambda tmp: Path(tmp).write_text("\n".join(prompts) + "\n"))


@contextlib.contextmanager
def _swapped(cascade, i: int, module):
    """cascade.unets[i] temporarily replaced by `module` (the DDP wrapper for a step, the EMA copy for saving)."""
    old = cascade.unets[i]
    cascade.unets[i] = module
    try:
        yield cascade
    finally:
        cascade.unets[i] = old


def _check_parallel(t: TrainConfig, world: int) -> None:
    if world > 1 and t.parallel == "fsdp" and t.optimizer == "adafactor":
        raise UserError("[train] optimizer = \"adafactor\" does not run on FSDP-sharded parameters (torch.optim."
                        "Adafactor's factored statistics need whole rows and columns); use parallel = \"ddp\" with "
                        "adafactor, or adamw with fsdp")


def _derived_seed(*parts) -> int:
    """A 62-bit seed from any parts, the same in every process (Python's hash() of a str is not)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 62) - 1)


def _build_unet(st, device: torch.device, meta: bool = False):
    from imagen.unet import EfficientUNet

    with torch.device("meta" if meta else device):
        return EfficientUNet(st.unet, null_text=st.null_text)


@torch.no_grad()
def preview(cfg: CascadeConfig, i: int, ema_module, tok, mask, out: Path, step: int, prompts: list[str],
            t: TrainConfig):
    """Sample the cascade up to stage i with the EMA weights of stage i. The earlier stages are loaded from `out`
    for the duration of the preview (random ones, seeded, where `out` has none), then freed."""
    from imagen.cascade import Cascade
    from imagen.checkpoint import load_stage
    from imagen.config import SamplerConfig

    dev = next(ema_module.parameters()).device
    earlier = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # training RNG streams untouched
        for k in range(i):
            torch.manual_seed(t.seed + k)
            m = _build_unet(cfg.stages[k], dev)
            p = out / f"{cfg.stages[k].name}.safetensors"
            if p.is_file():
                load_stage(m, p, dev)
            earlier.append(m.eval())
    sub = Cascade(dataclasses.replace(cfg, stages=cfg.stages[: i + 1]), make_unet=lambda _: torch.nn.Identity())
    sub.unets = torch.nn.ModuleList([*earlier, ema_module])
    was = ema_module.training
    ema_module.eval()
    sampler = SamplerConfig(sampler="ddim", steps=t.sample_steps, guidance=(t.sample_guidance,),
                            threshold="dynamic:0.995")
    imgs = sub.sample(tok, mask, list(range(len(prompts))), sampler)  # [B, 3, H, W] in [-1, 1]
    ema_module.train(was)
    u8 = ((imgs.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    path = out / "samples" / f"{cfg.stages[i].name}-step{step}.png"
    _save_grid(u8, path, prompts)
    return path


def _optimizer(t: TrainConfig, params: list, note=print) -> torch.optim.Optimizer:
    if t.optimizer == "adafactor":  # factored second moments: a fraction of AdamW's optimiser memory
        return torch.optim.Adafactor(params, lr=t.lr, weight_decay=t.weight_decay)
    kw = dict(lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    if t.fused_optimizer:
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except (RuntimeError, ValueError) as exc:  # torch refuses devices and dtypes its fused kernel lacks
            note(f"[train] fused_optimizer: torch has no fused AdamW here ({str(exc).splitlines()[0]}); "
                 f"using the default implementation")
    return torch.optim.AdamW(params, **kw)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast speeds training up;
    elsewhere torch emulates it, several times slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _append_log(path: Path, rows: list[dict], stage: str, keep_until: int | None = None) -> None:
    """Append rows to loss.csv; with keep_until, first drop this stage's rows after that step (resume)."""
    fields = ["stage", "step", "loss", "lr", "steps_per_s", "seconds"]
    old: list[dict] = []
    if path.is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
        if keep_until is not None:
            old = [r for r in old if r["stage"] != stage or int(r["step"]) <= keep_until]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(old)
            w.writerows(rows)

    atomic_write(path, write)


def train(run: RunConfig, *, resume: bool = False, device: str = "cpu", progress: bool = True,
          stop_at: int | None = None, encoder=None, text_cache: str | os.PathLike | None = None) -> dict:
    """Train stage `run.train.stage` into `run.out`; returns {"step", "loss", "out", "seconds", "rank", "world"}.

    resume: continue from out/train_state/<stage>.* (refused if it belongs to another config or is corrupt);
    without it, an existing state of this stage is an error. stop_at: stop after that step (as if interrupted).
    encoder: a ready TextEncoder (default: load_text_encoder(model.text) behind the on-disk EmbeddingCache).
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from imagen import parallel
    from imagen.cascade import Cascade, resize
    from imagen.checkpoint import CONFIG_FILE, save_cascade
    from imagen.data import build_text_table, make_dataset, to_tensor, unique_captions
    from imagen.ema import EMA

    t, cfg = run.train, run.model
    i = run.stage_index()
    st = cfg.stages[i]
    dev = parallel.rank_device(resolve_device(device))
    dd = parallel.init(dev)
    rank, world = dd.rank, dd.world
    out = Path(run.out)
    precision = resolved_precision(t, dev)
    chash = config_hash(run, dev)
    tpath, jpath = state_paths(out, st.name)
    if precision == "fp16" and dev.type != "cuda":
        raise UserError("[train] precision = \"fp16\" needs a CUDA device; use fp32 (or bf16) on CPU")
    if precision == "bf16" and dev.type == "cpu" and progress and not native_bf16_cpu():
        print("[train] precision = \"bf16\": this CPU has no native bf16 (AVX512-BF16 or AMX); torch emulates it, "
              "which is slower than fp32")
    sharded = world > 1 and t.parallel == "fsdp"
    _check_parallel(t, world)

    # -- the run folder: one cascade config per folder
    cfg_file = out / CONFIG_FILE
    if cfg_file.is_file() and cfg_file.read_text() != cascade_to_json(cfg):
        raise UserError(f"{out} already holds a different cascade (config.json differs from [model]); use the same "
                        f"[model] for every stage of a cascade, or another out folder")
    has_weights = any((out / f"{s.name}.safetensors").is_file() for s in cfg.stages)
    if run.data.kind in WORLDS and (has_weights or (out / WORLD_FILE).is_file()) and model_world(out) != run.data.kind:
        raise UserError(f"{out} holds a model of the {model_world(out)!r} world; [data] kind = {run.data.kind!r} "
                        f"needs another out folder")
    if run.data.kind not in WORLDS and (out / WORLD_FILE).is_file():
        raise UserError(f"{out} holds a model of the {model_world(out)!r} world; [data] kind = {run.data.kind!r} "
                        f"needs another out folder")
    if jpath.is_file() and not resume:
        raise UserError(f"{out} already has a training state for stage {st.name!r}; pass --resume to continue it, "
                        f"or choose another out folder")
    if t.init and not jpath.is_file():
        init_weights(run)  # a fresh run starts there: a missing file is an error before any work

    # -- data and text (captions encoded once, rank 0 first)
    render = max(s.resolution for s in cfg.stages) if run.data.kind in WORLDS else st.resolution
    ds = make_dataset(run.data, size=render, render_size=render)
    if t.cache_renders:  # every image once, into memory: the same uint8 images the loop would render per step
        from imagen.data import RenderedImages

        ds = RenderedImages(ds, workers=t.num_workers, progress=progress and rank == 0)
    captions, cap_ids = unique_captions(ds)
    prompts = list(t.sample_prompts) or captions[:8]
    all_caps = captions + [p for p in prompts if p not in set(captions)]
    if encoder is None:
        from imagen.text import EmbeddingCache, load_text_encoder

        encoder = EmbeddingCache(load_text_encoder(cfg.text, "cpu"), text_cache)
    if rank == 0:
        table = build_text_table(encoder, all_caps, out / "text", progress=progress)
    parallel.barrier(dd)
    if rank != 0:
        table = build_text_table(encoder, all_caps, out / "text")  # memory-maps rank 0's table
    cap_pos = {c: k for k, c in enumerate(all_caps)}
    prompt_tok, prompt_mask = table.batch([cap_pos[p] for p in prompts], dev)

    # -- model: only the trained stage is materialised, on this rank's device (same seed on every rank); the other
    # stages are meta tensors (a preview loads the earlier ones from `out` while it runs)
    torch.manual_seed(t.seed)
    cascade = Cascade(cfg, make_unet=lambda s: _build_unet(s, dev, meta=s.name != st.name))
    cascade.requires_grad_(False)
    unet = cascade.unets[i].requires_grad_(True).train()
    if t.grad_checkpointing:
        unet.grad_checkpointing = True
    step, elapsed, init_sha, meta, tensors = 0, 0.0, None, None, None
    if resume and jpath.is_file():
        tensors, meta = read_train_state(out, st.name, chash, run, dev)
        unet.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        step, elapsed, init_sha = int(meta["step"]), float(meta.get("seconds", 0.0)), meta.get("init_sha256")
    else:
        if resume and rank == 0 and progress:
            print(f"no training state for stage {st.name!r} in {out}: starting from step 0")
        if t.init:
            from imagen.checkpoint import load_stage

            init_path = init_weights(run)
            load_stage(unet, init_path, dev)
            init_sha = sha256_file(init_path)
    ema = None if sharded else EMA(unet, t.ema_decay, t.ema_warmup)
    if meta is not None and ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    model = parallel.wrap(unet, t.parallel, dd, dev)  # what the step calls: unet, DDP(unet) or unet sharded in place
    if sharded:
        ema = parallel.ShardedEMA(unet, t.ema_decay, t.ema_warmup)
        if meta is not None:
            ema.load_full_state({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = _optimizer(t, params, note=print if rank == 0 and progress else (lambda _msg: None))
    gen = torch.Generator(device=dev)
    gen.manual_seed(t.seed * 1_000_003 + rank)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    if meta is not None:
        parallel.load_optim_state(unet, opt, _optim_state(  # FSDP shards it from the CPU copy
            {k: v if sharded else v.to(dev) for k, v in tensors.items() if k.startswith("optim.")}, meta["optim"]))
        saved_world = int(meta.get("world", 1))
        if saved_world == world:
            _set_rng_state(meta["rng"][rank], gen)
        else:  # another number of ranks: fresh, distinct streams per rank from (seed, step, rank)
            torch.manual_seed(_derived_seed(t.seed, step, rank, "resume"))
            gen.manual_seed(_derived_seed(t.seed, step, rank, "loss"))
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        if saved_world != world and rank == 0 and progress:
            print(f"resuming a {saved_world}-process state with {world} process(es): training continues from step "
                  f"{step}; the data sharding and random draws from here on differ from an uninterrupted "
                  f"{saved_world}-process run (exact to the step, not bit for bit)")
        del tensors

    def ema_module_and_state(for_preview: bool):
        """(the whole EMA module or None, its state on the CPU or None); rank 0 gets them. A collective under FSDP
        (every rank calls it); the gathered module is built on the CPU and moved to the device only to preview."""
        if not sharded:
            if rank != 0:
                return None, None
            return ema.module, {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
        state = ema.full_state()
        if rank != 0:
            return None, None
        with torch.device("meta"):
            m = _build_unet(st, dev, meta=True)
        m.load_state_dict(state, assign=True)
        m = m.eval().requires_grad_(False)
        return (m.to(dev) if for_preview else m), state

    # -- checkpointing (the single-device format whatever the parallelism)
    def checkpoint(at: int, seconds: float):
        rngs = parallel.gather_objects(_rng_state(gen), dd)
        if sharded:
            model_state = parallel.full_model_state(unet)  # collectives: every rank
            optim_sd = parallel.full_optim_state(unet, opt)
        elif rank == 0:
            model_state, optim_sd = parallel.full_model_state(unet), parallel.full_optim_state(unet, opt)
        ema_mod, ema_state = ema_module_and_state(for_preview=False)
        if rank != 0:
            return None
        tens = {f"model.{k}": v for k, v in model_state.items()}
        tens.update({f"ema.{k}": v for k, v in ema_state.items()})
        otens, ometa = _optim_tensors(optim_sd)
        tens.update(otens)
        atomic_write(tpath, lambda tmp: save_file(tens, str(tmp)))
        meta_out = {"stage": st.name, "step": at, "seconds": seconds, "config_hash": chash, "world": world,
                    "parallel": t.parallel if world > 1 else "none", "tensors_sha256": sha256_file(tpath),
                    "optim": ometa, "rng": rngs, "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "config": config_to_toml_dict(run), "init_sha256": init_sha}
        atomic_write(jpath, lambda tmp: Path(tmp).write_text(json.dumps(meta_out)))
        with _swapped(cascade, i, ema_mod):
            save_cascade(cascade, out, stages=[st.name])
        if run.data.kind in WORLDS:  # the world the model is scored on (imagen.worlds.model_world)
            atomic_write(out / WORLD_FILE, lambda tmp: Path(tmp).write_text(run.data.kind + "\n"))
        return ema_mod

    # -- the loop
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    end = min(t.steps, stop_at) if stop_at is not None else t.steps
    stream = _StepImages(ds, max(0, end - step), step, t.seed, t.batch_size, rank, world)
    loader = (torch.utils.data.DataLoader(stream, batch_size=None, num_workers=t.num_workers, shuffle=False)
              if t.num_workers > 0 and not t.cache_renders else (stream[k] for k in range(len(stream))))
    log_rows: list[dict] = []
    if rank == 0 and out.joinpath("loss.csv").is_file():
        _append_log(out / "loss.csv", [], st.name, keep_until=step)
    bar = tqdm(total=end, initial=step, desc=f"train {st.name}", unit="step", disable=not progress or rank != 0,
               dynamic_ncols=True)
    t0, loss_v, last_loss = time.perf_counter(), 0.0, float("nan")
    for k, (idx, imgs) in enumerate(loader):
        step += 1
        idx = np.asarray(idx)
        x = to_tensor(np.asarray(imgs)).to(dev)  # [B, 3, S, S] in [-1, 1]
        x = resize(x, st.resolution) if x.shape[-1] > st.resolution else x
        lowres = None
        if st.is_sr:
            lowres = resize(x, st.lowres_resolution)  # [B, 3, r, r]: what the previous stage produces
            if run.data.crop and run.data.crop < st.resolution:
                x, lowres = _crop(x, lowres, run.data.crop, np.random.default_rng([t.seed, step, rank, 7]))
        tok, mask = table.batch(cap_ids[idx], dev)
        lr = lr_at(step, t)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None), _swapped(cascade, i, model):
            loss = cascade.stage_loss(i, x, tok, mask, lowres=lowres, generator=gen, log_snr_shift=t.log_snr_shift)
        scaler.scale(loss).backward()  # DDP averages the gradients in buckets during backward; FSDP reduce-scatters
        scaler.unscale_(opt)
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        ema.update(unet, step)
        last_loss = parallel.mean_scalar(float(loss.detach()), dd, dev)
        if not math.isfinite(last_loss):
            raise UserError(f"the loss became {last_loss} at step {step}; lower [train] lr or use precision = fp32")
        seconds = elapsed + time.perf_counter() - t0
        loss_v = last_loss if k == 0 else 0.9 * loss_v + 0.1 * last_loss
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr:.2e}")
        if step % t.log_every == 0 or step == end:
            log_rows.append({"stage": st.name, "step": step, "loss": f"{last_loss:.6f}", "lr": f"{lr:.6g}",
                             "steps_per_s": f"{(k + 1) / (time.perf_counter() - t0):.4f}", "seconds": f"{seconds:.1f}"})
        saved, ema_mod = False, None
        if (t.checkpoint_every and step % t.checkpoint_every == 0) or step == end:
            saved, ema_mod = True, checkpoint(step, seconds)
            if rank == 0:
                _append_log(out / "loss.csv", log_rows, st.name)
            log_rows = []
        if (t.sample_every and step % t.sample_every == 0) or step == t.steps:
            if not sharded:
                ema_mod = ema.module
            elif not saved:  # a collective under FSDP: every rank takes part (rank 0 gets the module)
                ema_mod = ema_module_and_state(for_preview=True)[0]
            elif rank == 0:
                ema_mod = ema_mod.to(dev)
            if rank == 0:
                preview(cfg, i, ema_mod, prompt_tok, prompt_mask, out, step, prompts, t)
    bar.close()
    parallel.barrier(dd)
    parallel.shutdown(dd)
    return {"step": step, "loss": last_loss, "out": str(out), "seconds": elapsed + time.perf_counter() - t0,
            "rank": rank, "world": world}
