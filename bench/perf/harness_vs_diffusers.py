"""The harness's overhead around a diffusers pipeline: images/s through `grid run` against calling the same
pipeline directly on the same prompts, seeds and batch size, in one run (target: ratio <= 1.05).

The pipeline is a random-weights pipeline built from configs (tests/diffusers_fixtures.py: Stable Diffusion;
tests/diffusers_families.py: the flow-matching SD3 and FLUX.1-dev), saved with save_pretrained and loaded through
`diffusers:<folder>`, as a user's checkpoint is. Both sides make the same images (the harness's `euler` on a flow
model is the pipeline's own FlowMatchEulerDiscreteScheduler with its shift); the harness also checks every cell's
call before the first image (one denoising step), writes each PNG, its sha256 and one Parquet part per batch.
Timings are noisy: compare the ratio, measured here in one run, with the two orders alternated.

    python bench/perf/harness_vs_diffusers.py [--family sd|sd3|flux-dev] [--prompts 16] [--steps 10] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("sd", "sd3", "flux-dev"), default="sd")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch
    from diffusers import DiffusionPipeline

    import diffusers_families as FAM
    import diffusers_fixtures as F
    from bench.grid import parse_spec, run_grid
    from bench.generators import load_generator
    from bench.work import item_seed
    from bench.suites import load_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="harness-perf-"))
    os.environ["IMAGEN_BENCH_CACHE"] = str(tmp / "cache")
    folder = F.make_sd_pipeline(tmp) if args.family == "sd" else FAM.FAMILIES[args.family](tmp)
    flow = args.family != "sd"
    # the same sampling on both sides: DDIM without clipping on SD; the model's own flow Euler on SD3 and FLUX, whose
    # guidance is classifier-free guidance 3 on SD3 and, on FLUX.1-dev, none (w = 1) with its embedded 3.5
    w = 1.0 if args.family == "flux-dev" else 3.0
    prompts_csv = tmp / "prompts.csv"
    words = ["red", "blue", "green", "yellow"]
    prompts_csv.write_text("prompt\n" + "".join(f"a {words[i % 4]} shape number {i}\n" for i in range(args.prompts)))
    spec_text = f"""
name = "perf"
model = "diffusers:{folder}"
suites = ["{prompts_csv}"]
batch_size = {args.batch}
[axes]
guidance = [{w}]
threshold = ["none"]
sampler = ["{'euler' if flow else 'ddim'}"]
steps = [{args.steps}]
"""
    spec = parse_spec(spec_text)
    prompts = load_suite(str(prompts_csv))
    seeds = [item_seed(spec.seed, p.prompt_id, 0) for p in prompts]
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    from diffusers import DDIMScheduler

    if not flow:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, thresholding=False, clip_sample=False)
    extra = {} if args.family == "flux-dev" else {"guidance_scale": w}
    gen = load_generator(spec.model)  # loaded once, as a grid run loads it once

    def direct() -> float:
        t0 = time.perf_counter()
        for k in range(0, len(prompts), args.batch):
            chunk = prompts[k:k + args.batch]
            pipe(prompt=[p.text for p in chunk], num_inference_steps=args.steps, **extra,
                 generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[k:k + args.batch]],
                 output_type="np")
        return time.perf_counter() - t0

    def harness(i: int) -> float:
        t0 = time.perf_counter()
        run_grid(spec, tmp / f"study-{i}", generator=gen, metrics=False, progress=False, log=lambda m: None)
        return time.perf_counter() - t0

    direct()  # warm-up: first-call allocations on both sides
    harness(-1)
    times = {"direct": [], "harness": []}
    for i in range(args.repeats):
        order = (("direct", direct), ("harness", lambda: harness(i))) if i % 2 == 0 else \
            (("harness", lambda: harness(i)), ("direct", direct))
        for name, fn in order:
            times[name].append(fn())
    best = {k: min(v) for k, v in times.items()}
    out = {"family": args.family, "prompts": len(prompts), "steps": args.steps, "batch": args.batch, "threads": torch.get_num_threads(),
           "images_per_s": {k: round(len(prompts) / v, 3) for k, v in best.items()},
           "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
           "ratio_harness_over_direct": round(best["harness"] / best["direct"], 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
