"""Benchmark: our FID over two folders vs torch-fidelity called directly on the same folders (one run each,
no caches on either side). Target: ours / torch-fidelity <= 1.1x.

    python bench/perf/fid_vs_torch_fidelity.py A_DIR B_DIR [--extractor effnet-lite0] [--batch-size 32]
    python bench/perf/fid_vs_torch_fidelity.py --synthetic 64     # writes 2 x 64 photo crops to a temp folder

Images should already be at the protocol size (default 256) so both sides see identical pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _synthetic(n: int, root: Path, size: int) -> tuple[Path, Path]:
    """Two folders of n random crops of scikit-image / scikit-learn sample photos (tests/fixtures_coco.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from fixtures_coco import photo_crops, write_pngs

    write_pngs(photo_crops(n, seed=1, size=size), root / "a")
    write_pngs(photo_crops(n, seed=2, size=size), root / "b")
    return root / "a", root / "b"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", nargs="?")
    p.add_argument("b", nargs="?")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="make two folders of N photo crops")
    p.add_argument("--extractor", default="effnet-lite0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args(argv)

    import torch_fidelity

    import bench.metrics  # noqa: F401  (registers effnet-lite0)
    from bench.metrics import fid as F
    from bench.metrics.features import EXTRACTORS, ResizeProtocol

    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            a, b = _synthetic(args.synthetic, Path(tmp), args.size)
        elif args.a and args.b:
            a, b = Path(args.a), Path(args.b)
        else:
            p.error("give A_DIR B_DIR or --synthetic N")
        t0 = time.perf_counter()
        ref = torch_fidelity.calculate_metrics(
            input1=str(a), input2=str(b), fid=True, cuda=False, feature_extractor=EXTRACTORS[args.extractor]
            .fidelity_name, cache=False, verbose=False, save_cpu_ram=True, batch_size=args.batch_size)
        t1 = time.perf_counter()
        proto = ResizeProtocol(args.size)
        ours = F.fid(F.stats_from_folder(a, args.extractor, proto, args.batch_size, cache=False),
                     F.stats_from_folder(b, args.extractor, proto, args.batch_size, cache=False))
        t2 = time.perf_counter()
    report = {"extractor": args.extractor, "n_a": ours.n_a, "n_b": ours.n_b,
              "torch_fidelity_s": round(t1 - t0, 3), "ours_s": round(t2 - t1, 3),
              "ratio": round((t2 - t1) / (t1 - t0), 3),
              "fid_torch_fidelity": ref["frechet_inception_distance"], "fid_ours": ours.value}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
