"""The SDEdit noise-level probe: how much of a scene's facts the base stage keeps when it denoises from log-SNR λ.

Clean held-out scenes of the model's world (the first n items of the world's `heldout` split at `seed`: the same
captions as the world's prompt suite) are rendered as the trainer renders them (at the cascade's last resolution,
then resized to the base's), noised to log-SNR λ with one fixed noise draw per scene, and denoised by the base stage
with its own sampler from λ to clean data (Meng et al. 2022, SDEdit): the model's timestep grid from λ on, so a
level costs as many steps as the grid has above it. Each result is scored by the world's scorer at the base's
resolution, per fact type; "clean" is the renders themselves. A level where the accuracy falls is a noise level
the base has not learnt to resolve that fact at; the levels below it cost nothing to get right. Each level also
gives `x0_mse`, the mean squared error (over pixels, in [-1, 1] units) of the base's first x0 estimate at λ against
the clean scene: what training minimises there, and a steadier signal than accuracy early in training.

`probe(cascade, encoder, world, levels, ...) -> dict`; `imagen-bench model probe MODEL` prints it.
"""

from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import torch

from imagen.config import SamplerConfig, stage_values
from imagen.diffusion import LOG_SNR_MAX, LOG_SNR_MIN, q_sample
from imagen.errors import UserError

DEFAULT_LEVELS = (-3.0, -1.0, 0.0, 1.0, 3.0)


def parse_levels(text: str) -> tuple[float, ...]:
    """'-3,-1,0,1,3' -> (-3.0, -1.0, 0.0, 1.0, 3.0); each a finite log-SNR in [LOG_SNR_MIN, LOG_SNR_MAX]."""
    try:
        levels = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UserError(f"--levels {text!r}: give log-SNR values separated by commas, e.g. -3,-1,0,1,3") from None
    if not levels or not all(LOG_SNR_MIN <= v <= LOG_SNR_MAX for v in levels):
        raise UserError(f"--levels {text!r}: give one or more log-SNR values in [{LOG_SNR_MIN:g}, {LOG_SNR_MAX:g}] "
                        f"(-20 is pure noise: sampling from scratch)")
    return levels


def scene_seed(seed: int, i: int) -> int:
    """The noise seed of scene i of a probe drawn with `seed` (the same at every level)."""
    return int.from_bytes(hashlib.sha256(f"imagen-probe:{int(seed)}:{int(i)}".encode()).digest()[:8], "little") >> 1


def clean_scenes(world, n: int, seed: int, render_size: int, size: int):
    """The first n held-out scenes of `world` (imagen.worlds.World) as the trainer sees them: rendered at
    render_size, resized to size -> (x0 [n, 3, size, size] in [-1, 1], captions, facts)."""
    from imagen.cascade import resize
    from imagen.data import to_tensor

    ds = world.dataset(seed, "heldout")
    items = [ds.item(i) for i in range(n)]
    images = np.stack([np.asarray(world.render(scene, render_size), dtype=np.uint8) for scene, _, _ in items])
    x0 = resize(to_tensor(images), size)  # the trainer's resize (imagen.train): antialiased bilinear
    return x0, [c for _, c, _ in items], [f for _, _, f in items]


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson interval of k successes in n trials ((0, 1) for n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def score_rows(world, images: np.ndarray, facts: list) -> dict:
    """Accuracy per fact type over the images whose caption states it, and overall (every stated fact right):
    {"accuracy": {type: share}, "count": {type: images}, "overall_interval": [lo, hi]}."""
    right = {t: 0 for t in (*world.fact_types, "overall")}
    seen = dict.fromkeys(right, 0)
    for img, f in zip(images, facts):
        result = world.score(img, f)
        for t, ok in result.items():
            right[t] += bool(ok)
            seen[t] += 1
        right["overall"] += all(result.values())
        seen["overall"] += 1
    acc = {t: right[t] / seen[t] for t in right if seen[t]}
    return {"accuracy": acc, "count": {t: seen[t] for t in right if seen[t]},
            "overall_interval": list(wilson(right["overall"], seen["overall"]))}


def level_grid(level: float, steps: int, schedule_name: str) -> torch.Tensor:
    """The sampler's grid from `level` to clean data: [level] + the model's `steps`-step grid above it (float64)."""
    from imagen.sampling import log_snr_grid

    grid = log_snr_grid(steps, schedule_name)
    return torch.cat([torch.tensor([float(level)], dtype=torch.float64), grid[grid > level]])


@torch.no_grad()
def probe(cascade, encoder, world_name: str, levels=DEFAULT_LEVELS, *, n: int = 64, seed: int = 0,
          sampler: SamplerConfig | None = None, batch_size: int = 64, progress: bool = False) -> dict:
    """The probe of the cascade's base stage (see the module docstring). `encoder`: anything with encode(texts) ->
    (tokens, mask); `sampler`: the base's sampler, steps, guidance and thresholding (the first stage's entries)."""
    from imagen.pipeline import to_uint8
    from imagen.sampling import BatchNoise, get_sampler, guided, parse_threshold, thresholded
    from imagen.worlds import get_world

    if n < 1 or batch_size < 1:
        raise UserError(f"the probe needs n >= 1 scenes and a batch size >= 1, got n = {n}, batch size {batch_size}")
    t0 = time.perf_counter()
    sampler = sampler or SamplerConfig(sampler="ddim", steps=20, guidance=(1.0,), threshold="static")
    world = get_world(world_name)
    cfg = cascade.cfg
    st = cfg.stages[0]
    k = len(cfg.stages)
    sample_fn = get_sampler(stage_values(sampler.sampler, k, "sampler")[0])
    threshold = stage_values(sampler.threshold, k, "threshold")[0]
    w = float(sampler.per_stage(tuple(sampler.guidance), k, "guidance")[0])
    dev = cascade.device
    x0, captions, facts = clean_scenes(world, n, seed, cfg.stages[-1].resolution, st.resolution)
    out = {"world": world.name, "n": n, "seed": seed, "resolution": st.resolution,
           "sampler": stage_values(sampler.sampler, k, "sampler")[0], "steps": sampler.steps, "guidance": w,
           "threshold": threshold, "fact_types": list(world.fact_types),
           "clean": score_rows(world, to_uint8(x0), facts), "levels": []}
    seeds = [scene_seed(seed, i) for i in range(n)]
    images = {lam: [] for lam in levels}
    sq_err = dict.fromkeys(levels, 0.0)  # the first step's x0 estimate against the clean scene, summed over scenes
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        tok, mask = encoder.encode(captions[rows])
        tok, mask = tok.to(dev), mask.to(dev)
        denoise = thresholded(guided(cascade.stage_model_fn(0, tok, mask), w), parse_threshold(threshold))
        for lam in levels:
            noise = BatchNoise(seeds[rows], dev)  # the same draw at every level: only the level changes
            eps = noise.randn(x0.shape[1:])
            xb = x0[rows].to(dev)
            z = q_sample(xb, torch.full((xb.shape[0],), float(lam), device=dev), eps)  # [b, 3, H, W] at λ
            first = []
            x = sample_fn(denoise, z, level_grid(lam, sampler.steps, st.schedule), noise, disable=not progress,
                          callback=lambda d: first.append(d["x0"]) if d["i"] == 0 else None)
            sq_err[lam] += float((first[0].float() - xb.float()).square().mean(dim=(1, 2, 3)).sum())
            images[lam].append(to_uint8(x.clamp(-1.0, 1.0)))
    for lam in levels:
        row = score_rows(world, np.concatenate(images[lam]), facts)
        out["levels"].append({"log_snr": float(lam), "steps": len(level_grid(lam, sampler.steps, st.schedule)) - 1,
                              "x0_mse": sq_err[lam] / n, **row})
    out["seconds"] = time.perf_counter() - t0
    return out


def load_base(model: str, device="cpu"):
    """(cascade, its sampler settings, its world) of a shipped name, a checkpoint folder (its base stage trained;
    the SR stages may be missing) or a preset (untrained, seed 0)."""
    from pathlib import Path

    from imagen.checkpoint import build_untrained, load_cascade, resolve, sampler_defaults
    from imagen.config import PRESETS, preset
    from imagen.worlds import DEFAULT_WORLD, model_world

    if model in PRESETS and not Path(model).is_dir():
        return build_untrained(preset(model)).to(device), SamplerConfig(), DEFAULT_WORLD
    folder = resolve(model)
    cascade = load_cascade(folder, device, allow_missing=True)
    base = cascade.cfg.stages[0].name
    if not (folder / f"{base}.safetensors").is_file():
        raise UserError(f"{folder} has no weights for its base stage {base!r}: the probe denoises with the base")
    return cascade, sampler_defaults(folder), model_world(folder)


def format_table(result: dict) -> str:
    """The probe as a plain-text table: a row per level (and the clean renders), a column per fact type."""
    types = [t for t in result["fact_types"] if t in result["clean"]["count"]
             or any(t in r["count"] for r in result["levels"])]
    head = (f"{'log-SNR':>8} {'steps':>5} {'x0 MSE':>7} " + " ".join(f"{t:>8}" for t in types)
            + f" {'overall':>8}  95% interval")
    lines = [head]

    def line(label: str, steps: str, row: dict) -> str:
        acc = row["accuracy"]
        cells = " ".join(f"{acc[t]:8.2f}" if t in acc else f"{'-':>8}" for t in types)
        lo, hi = row["overall_interval"]
        mse = f"{row['x0_mse']:7.4f}" if "x0_mse" in row else f"{'-':>7}"
        return f"{label:>8} {steps:>5} {mse} {cells} {acc['overall']:8.2f}  [{lo:.2f}, {hi:.2f}]"

    for r in result["levels"]:
        lines.append(line(f"{r['log_snr']:g}", str(r["steps"]), r))
    lines.append(line("clean", "-", result["clean"]))
    counts = result["clean"]["count"]
    lines.append("scenes stating each fact: " + ", ".join(f"{t} {counts[t]}" for t in types if t in counts))
    return "\n".join(lines)


__all__ = ["DEFAULT_LEVELS", "parse_levels", "probe", "load_base", "clean_scenes", "score_rows", "level_grid",
           "format_table", "scene_seed", "wilson"]
