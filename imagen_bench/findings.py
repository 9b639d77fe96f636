"""`imagen-bench findings`: measure the paper's findings on our own offline model and write docs/findings.md."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

DESCRIPTION = """\
Measure four findings of the Imagen paper with the harness itself, on the model's own world, and write them up
with a verdict each (holds / does not hold / inconclusive at this n) in OUT/findings.md, with figures in
OUT/findings/ and every number in OUT/findings.json:

  1  guidance trades fidelity against alignment (Fig. A.11): alignment vs FID over w, for none/static/dynamic;
  2  dynamic thresholding beats static and none at w >= 5, and its percentile p matters (a p sweep);
  3  noise-conditioning augmentation is critical for SR: the SR stage trained with and without it, sampled over
     aug levels on the base's samples and on clean low-res renders;
  4  a pretrained text encoder beats its random init, and cross-attention beats the pooled vector alone.

Findings 1-2 are grid studies (CACHE/studies/, resumable). Findings 3-4 train ablation models with the training
configs and `imagen-bench train --ablation`'s changes into CACHE/<name>/; a model whose recipe is unchanged is
reused, and a stopped one resumes. The report says what each part cost in wall and CPU minutes.

A run of some findings (--only) keeps the others from OUT/findings.json, each section labelled with the model,
captions and command that measured it (finding 2 is kept only with the finding 1 it was measured with)."""

EPILOG = """\
examples:
  imagen-bench findings                                     # the committed run (docs/findings.md; about an hour
                                                            # on a 2-core CPU once the ablation models are cached)
  imagen-bench findings --only 1 2 --n 400 --seed 1       # the two grids only, on more captions (3-4 kept)
  imagen-bench findings --model runs/shapes-hard --out /tmp/f --cache /tmp/fc
  imagen-bench findings --n 4 --steps 2 --guidance 1 5 --percentiles 0.9 --aug-levels 0 0.3 \\
      --base-steps 2 --sr-steps 2 --train-n 32 --out /tmp/f --cache /tmp/fc   # a smoke run (a minute or two)
"""


def run(args: argparse.Namespace) -> int:
    from findings.report import write_findings
    from findings.run import FindingsConfig, run_findings
    from imagen.errors import UserError

    if any(not g >= 0 for g in args.guidance):
        raise UserError(f"--guidance needs non-negative weights, got {args.guidance}")
    if any(not 0 <= a <= 1 for a in args.aug_levels):
        raise UserError(f"--aug-levels must be in [0, 1], got {args.aug_levels}")
    if args.sampler is not None:
        from imagen.sampling import check_sampler

        args.sampler = check_sampler(args.sampler, "--sampler")
    if any(not 0 < p <= 1 for p in args.percentiles):
        raise UserError(f"--percentiles must be in (0, 1], got {args.percentiles}")
    for flag, v in (("--base-steps", args.base_steps), ("--sr-steps", args.sr_steps), ("--train-n", args.train_n),
                    ("--steps", args.steps), ("--batch-size", args.batch_size)):
        if v is not None and v < 1:
            raise UserError(f"{flag} must be at least 1, got {v}")
    if args.rewrite:  # the write-up again from OUT/findings.json, measuring nothing
        from pathlib import Path

        from findings.report import rewrite

        path = rewrite(Path(args.out))
        print(json.dumps({"report": str(path)}) if args.json else f"findings rewritten: {path}")
        return 0
    cfg = FindingsConfig(
        model=args.model, cache=args.cache, n=args.n, seed=args.seed, sampler=args.sampler, steps=args.steps,
        guidance=tuple(args.guidance), percentiles=tuple(args.percentiles), aug_levels=tuple(args.aug_levels),
        base_config=args.base_config, sr_config=args.sr_config, base_steps=args.base_steps, sr_steps=args.sr_steps,
        train_n=args.train_n, findings=tuple(sorted(set(args.only))), device=args.device,
        batch_size=args.batch_size, progress=not args.json)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    results = run_findings(cfg, log=log)
    command = "imagen-bench findings " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == [
        "findings"] else "imagen-bench findings"
    path = write_findings(results, args.out, command, log)
    if args.json:
        print(json.dumps({"report": str(path), "total": results["total"]}))
    else:
        print(f"findings written: {path} ({results['total']['cpu_minutes']} CPU minutes)")
    return 0


def register(subparsers) -> None:
    from imagen_bench import HelpFormatter

    p = subparsers.add_parser("findings", help="the paper's findings measured on our own model, with verdicts",
                              description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--model", default="shapes-hard2", help="shipped model or checkpoint folder (findings 1-3)")
    p.add_argument("--out", default="docs", help="folder for findings.md, findings.json and findings/*.png")
    p.add_argument("--cache", default="runs/findings-cache", help="grid studies and ablation models (reused)")
    p.add_argument("--only", type=int, nargs="+", default=[1, 2, 3, 4], metavar="K", help="findings to measure")
    p.add_argument("--n", type=int, default=50, help="held-out captions per setting")
    p.add_argument("--seed", type=int, default=0, help="held-out captions and image seeds")
    p.add_argument("--sampler", default=None, help="sampler (default: the model's sampler.toml)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's sampler.toml)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0, 8.0], metavar="W",
                   help="finding 1's guidance weights (finding 2 takes those >= 5)")
    p.add_argument("--percentiles", type=float, nargs="+", default=[0.9, 0.99], metavar="P",
                   help="finding 2's dynamic thresholding percentiles (beside finding 1's 0.995)")
    p.add_argument("--aug-levels", type=float, nargs="+", default=[0.0, 0.2, 0.4], metavar="A",
                   help="finding 3's SR augmentation levels at sampling")
    p.add_argument("--base-config", default="configs/hard_base.toml", help="training config of finding 4's bases")
    p.add_argument("--sr-config", default="configs/hard_sr.toml", help="training config of finding 3's SR stages")
    p.add_argument("--base-steps", type=int, default=400, help="training steps of each of finding 4's bases")
    p.add_argument("--sr-steps", type=int, default=None, help="training steps of each SR stage (default: the "
                                                              "SR config's)")
    p.add_argument("--train-n", type=int, default=None, help="training scenes of the ablation runs (default: the "
                                                             "configs' [data] n)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--batch-size", type=int, default=25, help="images per forward pass")
    p.add_argument("--rewrite", action="store_true",
                   help="rewrite OUT/findings.md and its figures from OUT/findings.json without measuring anything")
    p.add_argument("--json", action="store_true", help="print only a JSON summary (progress on stderr)")
    p.set_defaults(func=run)
