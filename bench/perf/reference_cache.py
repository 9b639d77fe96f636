"""The reference-statistics cache: a second run over a few thousand reference images against the first, in one run
(target: >= 20x faster), and what `--verify` (re-hash every file) costs.

The first run hashes every file and extracts its features; a second run looks each file's sha256 up by (path, size,
mtime), reads no image and loads the cached statistics. The images are random 64x64 PNGs written to a temp folder.

    python bench/perf/reference_cache.py [--images 3000] [--extractor effnet-lite0] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--extractor", default="effnet-lite0")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="refcache-"))
    os.environ["IMAGEN_BENCH_CACHE"] = str(tmp / "cache")
    folder = tmp / "reference"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.images):
        Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")

    from bench.metrics import fid as F
    from bench.metrics.features import LazyExtractor

    ext = LazyExtractor(args.extractor)

    def timed(**kw) -> tuple[float, str]:
        t0 = time.perf_counter()
        stats = F.stats_from_folder(folder, ext, **kw)
        return time.perf_counter() - t0, stats.key

    first, k1 = timed()
    second, k2 = timed()
    verify, k3 = timed(verify=True)
    assert k1 == k2 == k3
    print(json.dumps({"images": args.images, "size": args.size, "extractor": args.extractor,
                      "threads": torch.get_num_threads(), "first_s": round(first, 3), "second_s": round(second, 4),
                      "verify_s": round(verify, 3), "speedup_second": round(first / second, 1),
                      "speedup_verify": round(first / verify, 1)}, indent=1))


if __name__ == "__main__":
    main()
