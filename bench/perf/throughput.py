"""Benchmark (not a test): images/s and model FLOP utilisation of sampling and training steps, per stage and batch.

For each stage of a preset and each batch size it times
  * a classifier-free-guided sampling step (one forward of 2 x batch rows), in images/s of one denoising step,
  * a training step (forward, loss, backward, AdamW step), in images/s,
and divides the model FLOPs of that step by its time and by the device's peak rate (MFU). FLOPs are counted, not
estimated: torch.utils.flop_counter.FlopCounterMode over one forward (and backward) on shape-only meta tensors,
which counts every convolution, matmul and attention the U-Net runs. The peak rate: --peak-tflops, else a table of
dense bf16/fp32 tensor-core peaks by CUDA device name, else (CPU) the rate of a large fp32 matmul measured here
(so a CPU's MFU is against what its BLAS reaches, and says so).

    python bench/perf/throughput.py                                   # CPU: the small preset, fp32
    python bench/perf/throughput.py --preset paper --stages base --batch 16 64 --precision bf16 --device cuda
    python bench/perf/throughput.py --preset tiny --batch 1 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date

import torch

from imagen.config import preset

# dense peaks in TFLOP/s (vendor data sheets: SXM parts, no sparsity) by a substring of the CUDA device name
CUDA_PEAKS = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0},
              "A100": {"bf16": 312.0, "fp32": 19.5}, "L40S": {"bf16": 362.0, "fp32": 91.6},
              "A10": {"bf16": 125.0, "fp32": 31.2}}


def _inputs(cfg, i, batch, device):
    from imagen.memory import _inputs as shapes_only  # the memory plan's inputs for a stage, on `device`

    with torch.device(device):
        return shapes_only(cfg, i, batch)


def count_flops(cfg, i, batch, train: bool) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from imagen import unet as U
    from imagen.memory import _masked_cross_attention

    st = cfg.stages[i]
    with _masked_cross_attention():  # meta tensors: nothing to group prompt lengths by
        with torch.device("meta"):
            net = U.EfficientUNet(st.unet, null_text=st.null_text)
            x, ls, text, mask, kw = _inputs(cfg, i, batch, "meta")
        with FlopCounterMode(display=False) as fc:
            out = net(x, ls, text, mask, **kw)
            if train:
                out.square().mean().backward()
        return int(fc.get_total_flops())


def peak_tflops(device: torch.device, precision: str, given: float | None) -> tuple[float, str]:
    if given:
        return given, "given (--peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in CUDA_PEAKS.items():
            if key in name:
                return peaks["bf16" if precision == "bf16" else "fp32"], f"data sheet, {name}"
        raise SystemExit(f"no peak known for {name}: pass --peak-tflops")
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    n = 6
    for _ in range(n):
        a @ b
    rate = n * 2 * 2048 ** 3 / (time.perf_counter() - t0) / 1e12
    return rate, "measured: a 2048^3 fp32 matmul on this CPU"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    fn()
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_stage(cfg, i, batch, device, precision, repeats) -> list[dict]:
    from imagen.unet import EfficientUNet

    st = cfg.stages[i]
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    rows = []
    torch.manual_seed(0)
    with torch.device(device):
        net = EfficientUNet(st.unet, null_text=st.null_text)
    torch.nn.init.normal_(net.conv_out.weight, std=0.02)
    x, ls, text, mask, kw = _inputs(cfg, i, 2 * batch, device)
    sample_net = net if precision == "fp32" else __import__("copy").deepcopy(net).to(torch.bfloat16).eval()

    def sample():
        with torch.inference_mode(), torch.autocast(**amp):
            sample_net(x, ls, text, mask, **kw)

    half = {k: v[:batch] for k, v in kw.items()}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step():
        with torch.autocast(**amp):
            loss = net(x[:batch], ls[:batch], text[:batch], mask[:batch], **half).float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for mode, fn, flops in (("sample (CFG step)", sample, count_flops(cfg, i, 2 * batch, False)),
                            ("train step", step, count_flops(cfg, i, batch, True))):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        s = timed(fn, device, repeats)
        rows.append({"stage": st.name, "mode": mode, "batch": batch, "seconds": s, "images_per_s": batch / s,
                     "tflops": flops / s / 1e12, "flops": flops,
                     "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda"
                     else None})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="default: paper on CUDA, small on CPU")
    ap.add_argument("--stages", nargs="+", help="default: every stage")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    cfg = preset(args.preset or ("paper" if device.type == "cuda" else "small"))
    peak, peak_src = peak_tflops(device, precision, args.peak_tflops)
    names = [s.name for s in cfg.stages]
    rows = []
    for name in args.stages or names:
        for b in args.batch:
            for r in bench_stage(cfg, names.index(name), b, device, precision, args.repeats):
                r["mfu"] = r["tflops"] / peak
                rows.append(r)
                print(f"{r['stage']:<8} {r['mode']:<18} batch {b:>4}  {r['images_per_s']:9.2f} img/s  "
                      f"{r['tflops']:8.2f} TFLOP/s  MFU {100 * r['mfu']:5.1f}%"
                      + (f"  peak {r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else ""),
                      flush=True)
    meta = {"date": date.today().isoformat(), "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(), "preset": cfg.name, "precision": precision,
            "peak_tflops": peak, "peak_source": peak_src, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    print(f"peak {peak:.2f} TFLOP/s ({peak_src}); {meta['device']}, torch {meta['torch']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
