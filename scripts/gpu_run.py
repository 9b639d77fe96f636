"""The prepared GPU run (issue 25): one call measures what a GPU machine can tell us and writes one JSON of every
figure.

    scripts/gpu_run.sh [--minutes 3] [--out runs/gpu-run]        # on a GPU machine
    python scripts/gpu_run.py --toy --out /tmp/g                  # the same code on a CPU at toy size (a test)

Parts, in order (a part that fails is recorded with its error and the others still run):
  env         torch, CUDA, the device and its memory
  pytest      `pytest -m gpu` (counts of passed / failed / skipped, the summary line)
  throughput  bench/perf/throughput.py on the paper's base stage: images/s and MFU of a CFG sampling step and a
              training step, bf16
  memory      the memory plan (imagen.memory) against torch.cuda.max_memory_allocated for the paper's base (a
              training step, AdamW + EMA, bf16) and for the hard-world base trained below
  train       the hard-world base of configs/gpu_hard_base.toml (width 128, batch 256 or the plan's largest batch,
              bf16, renders cached, fused AdamW): a short calibration run sets the steps that fill --minutes
  probe       the SDEdit noise-level probe of the trained base (imagen.probe)
  samples     held-out captions through the whole cascade (the trained base + shapes-hard's shipped SR stage) at
              several guidance weights, scored by the world's scorer at 64 px
JSON: {"settings", "env", "parts": {name: {"ok", "seconds", "error"}}, "pytest", "throughput", "memory", "train",
"probe", "samples"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from imagen.errors import UserError  # noqa: E402


def throughput_module():
    """bench/perf/throughput.py (a script, not a package module), loaded from its file."""
    spec = importlib.util.spec_from_file_location("imagen_throughput", ROOT / "bench" / "perf" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}",
                    bf16=torch.cuda.is_bf16_supported())
    return info


def run_pytest(args_list: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *args_list]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else proc.stderr.strip()[-300:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", summary)}
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": summary, **counts,
            "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20]}


def run_throughput(toy: bool, device: torch.device, out: Path, timeout: float) -> dict:
    path = out / "throughput.json"
    args = (["--preset", "tiny", "--stages", "base", "--batch", "1", "--precision", "fp32", "--repeats", "1"] if toy
            else ["--preset", "paper", "--stages", "base", "--batch", "16", "32", "--precision", "bf16"])
    cmd = [sys.executable, str(ROOT / "bench" / "perf" / "throughput.py"), *args, "--device", str(device),
           "--json", str(path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"throughput.py exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return json.loads(path.read_text())


def measured_train_peak(cfg, batch: int, device: torch.device, bf16: bool) -> int | None:
    """Peak bytes allocated by two training steps of stage 0 (network, EMA copy, AdamW), as the plan counts them;
    None off CUDA."""
    from imagen.memory import _inputs
    from imagen.unet import EfficientUNet

    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    st = cfg.stages[0]
    with torch.device(device):
        net = EfficientUNet(st.unet, null_text=st.null_text)
        ema = EfficientUNet(st.unet, null_text=st.null_text).requires_grad_(False)
        x, ls, text, mask, kw = _inputs(cfg, 0, batch)
    opt = torch.optim.AdamW(net.parameters(), fused=True)
    for _ in range(2):  # the second step is the steady state (AdamW's moments exist during its forward)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = net(x, ls, text, mask, **kw).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del net, ema, opt, x, text, mask
    torch.cuda.empty_cache()
    return peak


def memory_row(what: str, cfg, batch: int, measured: int | None, device_memory: int | None) -> dict:
    from imagen.memory import plan

    p = plan(cfg, cfg.stages[0].name, batch, mode="train", precision="bf16", optimizer="adamw",
             gpu_memory=device_memory)
    return {"what": what, "batch": batch, "planned_bytes": p.total, "measured_bytes": measured,
            "planned_over_measured": p.total / measured if measured else None, "max_batch": p.max_batch}


def load_run(toy: bool, out: Path, device: torch.device):
    from imagen.train import load_config

    run = load_config(ROOT / "configs" / "gpu_hard_base.toml", {"out": str(out / "model")})
    if toy:  # the same recipe, at toy size
        base = run.model.stages[0]
        unet = dataclasses.replace(base.unet, dim=8, attn_heads=1, attn_head_dim=8, cond_dim=16, groups=4)
        model = dataclasses.replace(run.model, stages=(dataclasses.replace(base, unet=unet), *run.model.stages[1:]))
        run = dataclasses.replace(run, model=model,
                                  train=dataclasses.replace(run.train, batch_size=4, num_workers=0, warmup=1,
                                                            checkpoint_every=1000, log_every=1),
                                  data=dataclasses.replace(run.data, n=32))
    return run


def calibrate(run, minutes: float, toy: bool, device, encoder, out: Path) -> dict:
    """Steps per second of this recipe from a short run on a small scene set; the steps that fill `minutes`."""
    from imagen.train import train

    warm, timed = (1, 3) if toy else (20, 100)  # loss.csv times to 0.1 s: 100 steps on a GPU take seconds
    cal = dataclasses.replace(run, out=str(out / "calibrate"),
                              train=dataclasses.replace(run.train, steps=warm + timed, log_every=1),
                              data=dataclasses.replace(run.data, n=min(run.data.n, 2048)))
    shutil.rmtree(out / "calibrate", ignore_errors=True)
    train(cal, device=str(device), progress=False, encoder=encoder)
    import csv

    rows = {int(r["step"]): float(r["seconds"]) for r in csv.DictReader(open(out / "calibrate" / "loss.csv"))}
    rate = timed / max(1e-9, rows[warm + timed] - rows[warm])
    steps = max(1, int(rate * minutes * 60)) if not toy else 3
    return {"steps_per_s": rate, "steps": steps, "warm_steps": warm, "timed_steps": timed}


def train_part(run, steps: int, device, encoder, tp, device_memory) -> tuple[dict, dict]:
    from imagen.memory import plan
    from imagen.train import train
    from imagen.unet import count_parameters

    cfg = run.model
    p = plan(cfg, "base", run.train.batch_size, precision="bf16", optimizer="adamw", gpu_memory=device_memory)
    batch = run.train.batch_size if not p.max_batch else min(run.train.batch_size, p.max_batch)
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, steps=steps, batch_size=batch))
    shutil.rmtree(run.out, ignore_errors=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    t0 = time.perf_counter()
    result = train(run, device=str(device), progress=False, encoder=encoder)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
    import csv

    rows = list(csv.DictReader(open(Path(run.out) / "loss.csv")))
    loop = float(rows[-1]["seconds"])
    flops = tp.count_flops(cfg, 0, batch, True)  # one training step, counted (FlopCounterMode on meta tensors)
    peak_tflops, peak_src = tp.peak_tflops(device, "bf16" if run.train.precision == "bf16" else "fp32", None)
    tflops = flops * steps / loop / 1e12
    figures = {"params": count_parameters(cfg.stages[0].unet), "batch": batch, "steps": steps,
               "scenes": run.data.n, "seconds_total": wall, "seconds_loop": loop, "steps_per_s": steps / loop,
               "images_per_s": steps * batch / loop, "loss_final": result["loss"],
               "loss_curve": [[int(r["step"]), float(r["loss"])] for r in rows],
               "flops_per_step": flops, "tflops": tflops, "mfu": tflops / peak_tflops, "peak_tflops": peak_tflops,
               "peak_source": peak_src, "out": run.out, "config": "configs/gpu_hard_base.toml"}
    mem = memory_row(f"hard-world base (dim {cfg.stages[0].unet.dim}) training, bf16, AdamW + EMA", cfg, batch, peak,
                     device_memory)
    return figures, mem


def samples_part(run, device, n: int, guidances: list[float], steps: int) -> dict:
    """The trained base with shapes-hard's shipped SR stage: n held-out captions per guidance weight at 64 px."""
    import numpy as np

    from imagen.checkpoint import resolve
    from imagen.config import SamplerConfig
    from imagen.pipeline import Pipeline
    from imagen.probe import score_rows
    from imagen.worlds import get_world

    folder = Path(run.out)
    sr = run.model.stages[1].name
    shutil.copy(resolve("shapes-hard") / f"{sr}.safetensors", folder / f"{sr}.safetensors")
    pipe = Pipeline.load(str(folder), device=device, precision="auto")
    world = get_world("shapes-hard")
    held = world.held_out_captions(n, 0)
    prompts, facts = [c for c, _, _ in held], [f for _, f, _ in held]
    out = {"n": n, "resolution": pipe.resolution, "sampler": "ddim", "steps": steps, "threshold": "static",
           "sr_stage": "shapes-hard's shipped sr64", "by_guidance": {}}
    for w in guidances:
        t0 = time.perf_counter()
        images = pipe.generate(prompts, list(range(n)), SamplerConfig(sampler="ddim", steps=steps, guidance=(w, 1.0),
                                                                      threshold="static"), batch_size=256)
        row = score_rows(world, np.asarray(images), facts)
        out["by_guidance"][f"{w:g}"] = {**row, "seconds": time.perf_counter() - t0}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gpu-run", help="folder for gpu_run.json, the model and the parts' files")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time of the hard-world base")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--toy", action="store_true", help="toy sizes (a CPU test of this script)")
    ap.add_argument("--skip", default="", help="parts to leave out, comma-separated (e.g. pytest,throughput)")
    ap.add_argument("--pytest-args", default="tests", help="what pytest -m gpu runs (space-separated)")
    ap.add_argument("--n", type=int, default=200, help="held-out captions per guidance weight")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    toy = args.toy
    n = 4 if toy else args.n
    report = {"settings": {**vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S")}, "parts": {}}
    json_path = out / "gpu_run.json"

    def part(name: str, fn):
        if name in skip:
            report["parts"][name] = {"ok": None, "seconds": 0.0, "error": "skipped (--skip)"}
            return None
        t0 = time.perf_counter()
        print(f"[gpu_run] {name} ...", flush=True)
        try:
            value = fn()
            report["parts"][name] = {"ok": True, "seconds": time.perf_counter() - t0}
        except (Exception, subprocess.TimeoutExpired) as exc:  # record it; the other parts still run
            value = None
            report["parts"][name] = {"ok": False, "seconds": time.perf_counter() - t0,
                                     "error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc()[-2000:]}
        print(f"[gpu_run] {name}: {report['parts'][name]}"[:300], flush=True)
        json_path.write_text(json.dumps(report, indent=1, default=str))  # what is done so far survives a kill
        return value

    report["env"] = part("env", lambda: env_info(device))
    device_memory = report["env"].get("memory_bytes") if report["env"] else None
    report["pytest"] = part("pytest", lambda: run_pytest(args.pytest_args.split(), timeout=60 if toy else 240))
    report["throughput"] = part("throughput", lambda: run_throughput(toy, device, out, timeout=120 if toy else 360))
    tp = throughput_module()
    run = load_run(toy, out, device)
    encoder = None

    def text_encoder():
        from imagen.text import load_text_encoder

        return load_text_encoder(run.model.text, device)  # captions encoded on the device, once per run

    encoder = part("text encoder", text_encoder)
    cal = part("calibrate", lambda: calibrate(run, args.minutes, toy, device, encoder, out))
    steps = cal["steps"] if cal else (3 if toy else 2000)
    report["calibrate"] = cal
    trained = part("train", lambda: train_part(run, steps, device, encoder, tp, device_memory))
    report["train"], train_memory = trained if trained else (None, None)

    def paper_memory():
        from imagen.config import preset

        cfg = preset("tiny" if toy else "paper")
        batch = 2 if toy else 16
        measured = measured_train_peak(cfg, batch, device, bf16=True)
        return memory_row(f"{cfg.name} base training, bf16, AdamW + EMA", cfg, batch, measured, device_memory)

    rows = [r for r in (train_memory, part("memory", paper_memory)) if r]
    report["memory"] = rows

    def probe_part():
        from imagen.config import SamplerConfig
        from imagen.probe import load_base, probe

        cascade, _, world = load_base(run.out, device)
        return probe(cascade, encoder, world, (-20.0, -3.0, -1.0, 0.0, 1.0, 3.0), n=8 if toy else 256, seed=0,
                     sampler=SamplerConfig(sampler="ddim", steps=3 if toy else 20, guidance=(1.0,),
                                           threshold="static"), batch_size=256)

    report["probe"] = part("probe", probe_part) if trained else None
    report["samples"] = (part("samples", lambda: samples_part(run, device, n, [1.0, 3.0, 5.0],
                                                              steps=2 if toy else 20)) if trained else None)
    report["settings"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    json_path.write_text(json.dumps(report, indent=1, default=str))
    failed = [k for k, v in report["parts"].items() if v["ok"] is False]
    print(f"[gpu_run] wrote {json_path}" + (f"; failed parts: {', '.join(failed)}" if failed else "; every part ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"gpu_run: error: {exc}", file=sys.stderr)
        sys.exit(2)
