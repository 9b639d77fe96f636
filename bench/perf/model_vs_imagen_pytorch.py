"""Benchmark (not a test): our Efficient U-Net against imagen-pytorch 2.1.0's Unet at the same size.

Times, in one run, on the same inputs (batch, image size, text length):

  * one classifier-free-guided sampling step: ours runs cond + uncond rows in ONE batched forward under
    torch.inference_mode; imagen-pytorch runs what its sampler runs, `Unet.forward_with_cond_scale` (two forwards,
    under torch.no_grad); for a same-work reference we also time imagen-pytorch on the doubled batch in one forward;
  * one training step: forward + MSE + backward + AdamW step, 10% of rows with their text dropped; both models
    use the same AdamW (fused by default: torch's default on CPU loops over tensors one by one).

Both models are built from our `small` preset's base U-Net (or --preset/--stage); imagen-pytorch gets the same
widths, levels, attention placement, heads and text width, and its per-level block counts are chosen so that its
parameter count is within 10% of ours (both counts are printed).

imagen-pytorch asks transformers for the `google/t5-v1_1-base` config from the network when its module is imported
(a default argument of `Unet.__init__`). This script never touches the network: during that import it answers
`T5Config.from_pretrained` with a locally built config (d_model=768, the real value), and passes text_embed_dim
explicitly to every Unet it builds.

    pip install imagen-pytorch==2.1.0
    python bench/perf/model_vs_imagen_pytorch.py                    # small base, batch 4, 32x32, 16 text tokens
    python bench/perf/model_vs_imagen_pytorch.py --threads 1 --repeats 7
    python bench/perf/model_vs_imagen_pytorch.py --preset tiny --batch 8 --json
    IMAGEN_CPU_PACK=0 python bench/perf/model_vs_imagen_pytorch.py --threads 1   # our plain-kernel path
"""

from __future__ import annotations

import argparse
import copy
import contextlib
import itertools
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import imagen.unet as unet_module  # noqa: E402
from imagen.config import preset  # noqa: E402
from imagen.unet import EfficientUNet  # noqa: E402


def import_imagen_pytorch():
    """Import imagen_pytorch.Unet offline: its import-time T5 config lookup gets a local config."""
    import transformers

    original = transformers.T5Config.from_pretrained

    def offline_config(cls, name, *args, **kwargs):
        if name == "google/t5-v1_1-base":
            return cls(d_model=768)  # what the hub config says; only d_model is read
        return original.__func__(cls, name, *args, **kwargs)

    transformers.T5Config.from_pretrained = classmethod(offline_config)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its "dim should be >= 128" advice goes to stderr
            from imagen_pytorch import Unet
    finally:
        transformers.T5Config.from_pretrained = original
    return Unet


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512_BF16 or AMX); without it bf16 is emulated."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_theirs(Unet, cfg, text_len: int, target: int):
    """imagen-pytorch's Unet with our widths and attention placement; block counts tuned to match `target`."""
    n = len(cfg.dim_mults)
    base = tuple(cfg.num_res_blocks)
    candidates = {base}
    for delta in itertools.product((-1, 0, 1), repeat=n):
        candidates.add(tuple(max(1, b + d) for b, d in zip(base, delta)))
    # their extras (global-context attention, attention-pooled text) can be switched off to reach a small size
    extras = [dict(), dict(use_global_context_attn=False), dict(use_global_context_attn=False, attn_pool_text=False)]
    # fairness: among configurations within 10% of our count, the one whose blocks per level are closest to
    # ours (so FLOPs sit at the same resolutions), then the one with the fewest of their extras switched off
    scored = []
    for blocks, (n_off, extra) in itertools.product(sorted(candidates), enumerate(extras)):
        kwargs = dict(**extra,
            dim=cfg.dim, dim_mults=tuple(cfg.dim_mults), num_resnet_blocks=blocks,
            layer_attns=tuple(cfg.self_attn), layer_cross_attns=tuple(cfg.cross_attn),
            attn_heads=cfg.attn_heads, attn_dim_head=cfg.attn_head_dim, text_embed_dim=cfg.text_dim,
            cond_dim=cfg.cond_dim, max_text_len=text_len, lowres_cond=cfg.lowres_cond, channels=cfg.in_channels,
        )
        with torch.device("meta"), contextlib.redirect_stdout(sys.stderr):
            count = n_params(Unet(**kwargs))
        off = abs(count / target - 1)
        distance = sum(abs(x - y) for x, y in zip(blocks, base))
        scored.append(((off > 0.10, distance, n_off, off), count, kwargs))
    best = min(scored, key=lambda s: s[0])[1:]
    kwargs = best[1]
    with contextlib.redirect_stdout(sys.stderr):
        return Unet(**kwargs), {k: v for k, v in kwargs.items() if k in ("num_resnet_blocks", "use_global_context_attn",
                                                                          "attn_pool_text")}


def timed(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median wall and CPU (process) seconds per call; rounds are interleaved so that a busy neighbour on a shared
    machine slows every contender alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {k: {"wall_s": statistics.median(wall[k]), "cpu_s": statistics.median(cpu[k])} for k in fns}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--stage", default="base")
    ap.add_argument("--batch", type=int, default=4, help="images per step (the CFG step runs 2x this many rows)")
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--adamw", choices=("fused", "default"), default="fused",
                    help="AdamW implementation for BOTH models (torch's default on CPU is the per-tensor loop)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    stage = preset(args.preset).stage(args.stage)
    cfg = stage.unet
    Unet = import_imagen_pytorch()
    torch.manual_seed(0)
    ours = EfficientUNet(cfg).to(device)
    theirs, their_blocks = build_theirs(Unet, cfg, args.text_len, n_params(ours))
    theirs = theirs.to(device)
    torch.nn.init.normal_(ours.conv_out.weight, std=0.02)  # not a zero function: same work either way

    B, L, r, w = args.batch, args.text_len, stage.resolution, args.guidance
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, r, r, generator=g).to(device)
    text = torch.randn(B, L, cfg.text_dim, generator=g).to(device)
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    mask[0, L // 2:] = False  # one shorter prompt
    t = torch.rand(B, generator=g).to(device)  # imagen-pytorch's continuous time in [0, 1]
    log_snr = -2 * torch.log(torch.tan(torch.pi * t / 2))  # the same noise level as log-SNR (cosine schedule)
    lowres = torch.randn_like(x) if cfg.lowres_cond else None
    aug = torch.full((B,), 0.1, device=device) if cfg.lowres_cond else None
    ours_sr = dict(lowres=lowres, aug_level=aug) if cfg.lowres_cond else {}
    theirs_sr = dict(lowres_cond_img=lowres, lowres_noise_times=aug) if cfg.lowres_cond else {}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # --- one CFG sampling step
    drop2 = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(device)
    ours_sr2 = {k: torch.cat([v, v]) for k, v in ours_sr.items()}
    theirs_sr2 = {k: torch.cat([v, v]) for k, v in theirs_sr.items()}

    def ours_cfg():
        with torch.inference_mode():
            out = ours(torch.cat([x, x]), torch.cat([log_snr, log_snr]), torch.cat([text, text]),
                       torch.cat([mask, mask]), drop_text=drop2, **ours_sr2)  # cond rows, then uncond rows
            c, u = out.chunk(2)
            res = u + w * (c - u)
        sync()
        return res

    ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)  # --precision bf16: bf16 weights under bf16 autocast

    def ours_cfg_bf16():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            out = ours_bf16(torch.cat([x, x]), torch.cat([log_snr, log_snr]), torch.cat([text, text]),
                            torch.cat([mask, mask]), drop_text=drop2, **ours_sr2)
            cond, uncond = out.float().chunk(2)
            return uncond + 3.0 * (cond - uncond)

    def theirs_cfg():
        with torch.no_grad():  # what imagen-pytorch's p_sample_loop uses
            res = theirs.forward_with_cond_scale(x, t, text_embeds=text, text_mask=mask, cond_scale=w, **theirs_sr)
        sync()
        return res

    def theirs_cfg_batched():  # same work as ours: one forward of 2B rows, no guidance arithmetic
        with torch.no_grad():
            res = theirs(torch.cat([x, x]), torch.cat([t, t]), text_embeds=torch.cat([text, text]),
                         text_mask=torch.cat([mask, mask]), **theirs_sr2)
        sync()
        return res

    # --- one training step
    fused = {"fused": True} if args.adamw == "fused" else {}
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, **fused)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4, **fused)
    drop = torch.rand(B, generator=g).to(device) < 0.1

    def ours_train():
        loss = (ours(x, log_snr, text, mask, drop_text=drop, **ours_sr) - x).square().mean()
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()
        sync()

    def theirs_train():
        loss = (theirs(x, t, text_embeds=text, text_mask=mask, cond_drop_prob=0.1, **theirs_sr) - x).square().mean()
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        opt_theirs.step()
        sync()

    # our CPU inference fast path (imagen/unet.py: oneDNN on weights packed once); IMAGEN_CPU_PACK=0 turns it off
    fast_path = device.type == "cpu" and unet_module._CPU_PACKING
    results = timed({"sample_ours": ours_cfg, "sample_ours_bf16": ours_cfg_bf16, "sample_theirs": theirs_cfg,
                     "sample_theirs_batched": theirs_cfg_batched,
                     "train_ours": ours_train, "train_theirs": theirs_train}, args.repeats)

    report = {
        "preset": args.preset, "stage": args.stage, "device": str(device), "threads": args.threads,
        "batch": B, "resolution": r, "adamw": args.adamw, "text_len": L, "torch": torch.__version__,
        "cpu_packed_inference": fast_path,
        "params_ours": n_params(ours), "params_theirs": n_params(theirs),
        "their_changes": {k: list(v) if isinstance(v, tuple) else v for k, v in their_blocks.items()}, "our_num_res_blocks": list(cfg.num_res_blocks),
        "timings": results,
        "speedup_sample": results["sample_theirs"]["wall_s"] / results["sample_ours"]["wall_s"],
        "speedup_sample_bf16": results["sample_theirs"]["wall_s"] / results["sample_ours_bf16"]["wall_s"],
        "bf16_vs_fp32_ours": results["sample_ours"]["wall_s"] / results["sample_ours_bf16"]["wall_s"],
        "native_bf16": native_bf16(),
        "speedup_sample_same_work": results["sample_theirs_batched"]["wall_s"] / results["sample_ours"]["wall_s"],
        "speedup_train": results["train_theirs"]["wall_s"] / results["train_ours"]["wall_s"],
        "speedup_sample_cpu": results["sample_theirs"]["cpu_s"] / results["sample_ours"]["cpu_s"],
        "speedup_train_cpu": results["train_theirs"]["cpu_s"] / results["train_ours"]["cpu_s"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    p_o, p_t = report["params_ours"], report["params_theirs"]
    print(f"{args.preset}/{args.stage}: {r}x{r}, batch {B}, {L} text tokens, {device}, {args.threads} thread(s), "
          f"torch {torch.__version__}, AdamW {args.adamw}, our CPU packed-weight inference "
          f"{'on' if fast_path else 'off'}")
    print(f"params: ours {p_o:,} | imagen-pytorch {p_t:,} ({(p_t / p_o - 1) * 100:+.1f}%), "
          f"blocks ours {list(cfg.num_res_blocks)}, theirs {report['their_changes']}")
    for name, v in results.items():
        print(f"  {name:<22} wall {v['wall_s'] * 1e3:9.1f} ms   cpu {v['cpu_s'] * 1e3:9.1f} ms")
    print(f"CFG sampling step: {report['speedup_sample']:.2f}x faster by wall time, "
          f"{report['speedup_sample_cpu']:.2f}x by CPU time (target >= 2x; "
          f"vs their one batched forward: {report['speedup_sample_same_work']:.2f}x wall)")
    print(f"CFG step in bf16:  {report['speedup_sample_bf16']:.2f}x imagen-pytorch fp32, {report['bf16_vs_fp32_ours']:.2f}x our "
          f"fp32 (this CPU {'has' if report['native_bf16'] else 'has NO'} native bf16: AVX512_BF16 / AMX)")
    print(f"training step:     {report['speedup_train']:.2f}x faster by wall time, "
          f"{report['speedup_train_cpu']:.2f}x by CPU time (target >= 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
