"""Captioned-image datasets for training, the packed text-embedding table, and the seeded data order.

Three sources, one interface (`CaptionedImages`): `__len__`, `caption(i) -> str` and `image(i) -> np.uint8 [S, S, 3]`
(square, already at the requested size):
  - `FolderDataset`: a folder of images with a captions file (CSV or JSONL, fields `file` and `caption`);
  - `CocoDataset`: COCO-format captions JSON (`images` + `annotations`) and the image folder;
  - `ShapesDataset`: the shapes world (imagen.shapes), rendered on the fly from a seed.

Text is never encoded per step: `build_text_table` encodes every unique caption once (through the on-disk
`EmbeddingCache`) and packs them into a memory-mapped float16 array [N_unique, L_max, D] plus lengths; a batch
gathers rows by caption index (`TextTable.batch`).

The data order is a pure function of (seed, step, rank): `batch_indices` walks an endless sequence of seeded
per-epoch permutations, so resuming at a step needs no sampler state.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from imagen.errors import UserError
from imagen.worlds import WORLDS



class CaptionedImages(Protocol):
    def __len__(self) -> int: ...

    def caption(self, i: int) -> str: ...

    def image(self, i: int) -> np.ndarray: ...


# ----------------------------------------------------------------------------- image helpers


def square_resize(img: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square, resize to size x size (box filter when shrinking by an integer factor) -> uint8 HWC."""
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    if w != h:
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if s != size:
        resample = Image.BOX if s > size and s % size == 0 else Image.BICUBIC
        img = img.resize((size, size), resample=resample)
    return np.asarray(img, dtype=np.uint8)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size] by area averaging (the same box filter `square_resize` uses)."""
    if x.shape[-1] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="area")


# ----------------------------------------------------------------------------- folder of images + captions


def _read_caption_file(path: Path) -> list[tuple[str, str]]:
    """(file, caption) pairs from a CSV (header with `file`, `caption`) or JSONL ({"file":..., "caption":...})."""
    if not path.is_file():
        raise UserError(f"captions file {path} not found; give a CSV or JSONL with fields file, caption")
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{n}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
                if not isinstance(rec, dict) or "file" not in rec or "caption" not in rec:
                    raise UserError(f"{path}:{n}: each line needs the keys \"file\" and \"caption\"")
                rows.append((str(rec["file"]), str(rec["caption"])))
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            fields = reader.fieldnames or []
            if "file" not in fields or "caption" not in fields:
                raise UserError(f"{path}: the header must have the columns file and caption (found {fields})")
            rows = [(r["file"], r["caption"]) for r in reader]
    else:
        raise UserError(f"{path}: captions must be a .csv, .tsv or .jsonl file")
    if not rows:
        raise UserError(f"{path}: no captions found")
    return rows


class FolderDataset:
    """Images in `root`, captions from `captions` (CSV/JSONL with `file`, `caption`; `file` relative to `root`)."""

    def __init__(self, root: str | os.PathLike, captions: str | os.PathLike, size: int):
        self.root, self.size = Path(root), size
        if not self.root.is_dir():
            raise UserError(f"image folder {self.root} not found")
        self.rows = _read_caption_file(Path(captions))
        missing = [f for f, _ in self.rows if not (self.root / f).is_file()]
        if missing:
            raise UserError(f"{len(missing)} image(s) listed in {captions} are missing from {self.root}, "
                            f"e.g. {missing[:3]}")

    def __len__(self) -> int:
        return len(self.rows)

    def caption(self, i: int) -> str:
        return self.rows[i][1]

    def image(self, i: int) -> np.ndarray:
        with Image.open(self.root / self.rows[i][0]) as img:
            return square_resize(img, self.size)


class CocoDataset:
    """COCO captions JSON (`images` with id/file_name, `annotations` with image_id/caption): one row per caption."""

    def __init__(self, images: str | os.PathLike, annotations: str | os.PathLike, size: int):
        self.root, self.size = Path(images), size
        if not self.root.is_dir():
            raise UserError(f"COCO image folder {self.root} not found")
        path = Path(annotations)
        if not path.is_file():
            raise UserError(f"COCO annotations {path} not found (e.g. annotations/captions_train2014.json)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            files = {int(im["id"]): im["file_name"] for im in data["images"]}
            self.rows = [(files[int(a["image_id"])], a["caption"].strip()) for a in data["annotations"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a COCO captions file (needs images[id, file_name] and "
                            f"annotations[image_id, caption]): {exc!r}") from None
        if not self.rows:
            raise UserError(f"{path}: no annotations")

    def __len__(self) -> int:
        return len(self.rows)

    def caption(self, i: int) -> str:
        return self.rows[i][1]

    def image(self, i: int) -> np.ndarray:
        f = self.root / self.rows[i][0]
        if not f.is_file():
            raise UserError(f"COCO image {f} listed in the annotations is missing")
        with Image.open(f) as img:
            return square_resize(img, self.size)


class ShapesDataset:
    """`n` items of a shapes world (imagen.worlds: shapes or shapes-hard), rendered at `render_size` then box-filtered to `size`.

    Rendering at the cascade's last resolution and box-filtering down makes the base stage's images exactly the
    low-res inputs the SR stage is trained on (`downsample` uses the same filter).
    """

    def __init__(self, n: int, seed: int, size: int, render_size: int | None = None, split: str = "train",
                 categories: tuple[str, ...] | None = None, world: str = "shapes"):
        self._args = (world, seed, split, tuple(categories) if categories else None)
        self._open()
        self.n, self.size = n, size
        self.render_size = max(size, render_size or size)
        self._captions = [self.world.item(i)[1] for i in range(n)]

    def _open(self) -> None:
        from imagen.worlds import get_world  # the world is only needed for this dataset

        name, seed, split, categories = self._args
        self._shapes = get_world(name)
        self.world = self._shapes.dataset(seed, split, categories)

    def __getstate__(self) -> dict:  # for worker processes: the world's modules are looked up again there
        return {k: v for k, v in self.__dict__.items() if k not in ("_shapes", "world")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.n

    def caption(self, i: int) -> str:
        return self._captions[i]

    def image(self, i: int) -> np.ndarray:
        scene = self.world.item(i)[0]
        img = np.asarray(self._shapes.render(scene, self.render_size), dtype=np.uint8)
        if self.render_size == self.size:
            return img
        return square_resize(Image.fromarray(img), self.size)


# ----------------------------------------------------------------------------- images rendered once


class RenderedImages:
    """A dataset's images read (or rendered) once into memory, uint8 [N, S, S, 3]; captions from the dataset.

    `image(i)` is byte for byte the dataset's own `image(i)`, so training on it gives the same weights, without the
    per-step rendering on the main thread. `workers` > 1 renders in that many processes (spawned: safe after CUDA
    or a process group has started).
    """

    def __init__(self, ds: CaptionedImages, workers: int = 0, progress: bool = False):
        self.ds = ds
        self.images = _render_all(ds, workers, progress)

    def __len__(self) -> int:
        return len(self.ds)

    def caption(self, i: int) -> str:
        return self.ds.caption(i)

    def image(self, i: int) -> np.ndarray:
        return self.images[i]


_WORKER_DS: list = []  # the dataset a rendering worker process was given


def _worker_init(ds) -> None:
    _WORKER_DS[:] = [ds]


def _render_span(span: tuple[int, int]) -> np.ndarray:
    ds = _WORKER_DS[0]
    return np.stack([ds.image(i) for i in range(*span)])


def _render_all(ds: CaptionedImages, workers: int, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    n = len(ds)
    first = np.asarray(ds.image(0), dtype=np.uint8)
    out = np.empty((n, *first.shape), dtype=np.uint8)  # [N, S, S, 3]
    out[0] = first
    bar = tqdm(total=n, initial=1, desc="rendering", unit="image", disable=not progress, dynamic_ncols=True)
    if workers <= 1 or n < 256:
        for i in range(1, n):
            out[i] = ds.image(i)
            bar.update(1)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        step = max(64, -(-n // (workers * 8)))
        spans = [(a, min(n, a + step)) for a in range(1, n, step)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                                 initargs=(ds,)) as pool:
            for (a, b), images in zip(spans, pool.map(_render_span, spans)):
                out[a:b] = images
                bar.update(b - a)
    bar.close()
    return out


# ----------------------------------------------------------------------------- packed text embeddings


@dataclass(frozen=True)
class TextTable:
    """All unique captions of a dataset, encoded once: tokens [N, L_max, D] float16 (memory-mapped) + lengths [N]."""

    captions: tuple[str, ...]
    tokens: np.ndarray  # [N, L_max, D] float16, np.memmap
    lengths: np.ndarray  # [N] int32, valid tokens per caption

    def batch(self, idx, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Rows idx -> (tokens [B, L, D] float32, mask [B, L] bool), L = the longest caption in the batch."""
        idx = np.asarray(idx, dtype=np.int64)
        lens = self.lengths[idx]
        L = max(int(lens.max()), 1)
        tok = torch.from_numpy(np.ascontiguousarray(self.tokens[idx, :L])).float()
        mask = torch.arange(L)[None, :] < torch.from_numpy(lens.astype(np.int64))[:, None]
        return tok.to(device), mask.to(device)


def unique_captions(dataset: CaptionedImages) -> tuple[list[str], np.ndarray]:
    """(unique captions in first-seen order, caption index [len(dataset)] int64 per item)."""
    index: dict[str, int] = {}
    ids = np.empty(len(dataset), dtype=np.int64)
    for i in range(len(dataset)):
        ids[i] = index.setdefault(dataset.caption(i), len(index))
    return list(index), ids


def text_table_key(encoder_id: str, captions: list[str]) -> str:
    h = hashlib.sha256(encoder_id.encode())
    for c in captions:
        h.update(b"\0" + c.encode("utf-8"))
    return h.hexdigest()[:16]


def build_text_table(encoder, captions: list[str], folder: str | os.PathLike, batch_size: int = 256,
                     progress: bool = False) -> TextTable:
    """Encode `captions` once (encoder: anything with `id` and `encode`) and pack them under `folder`.

    Files: text-<key>.npy (float16 [N, L_max, D]), text-<key>.lengths.npy, where key hashes the encoder id and the
    caption list; an existing table with the same key is memory-mapped and reused.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = text_table_key(encoder.id, captions)
    tok_path, len_path = folder / f"text-{key}.npy", folder / f"text-{key}.lengths.npy"
    if tok_path.is_file() and len_path.is_file():
        try:
            tokens = np.load(tok_path, mmap_mode="r")
            lengths = np.load(len_path)
            if tokens.shape[0] == len(captions) == lengths.shape[0]:
                return TextTable(tuple(captions), tokens, lengths)
        except (ValueError, OSError):
            pass  # corrupt: rebuild below
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    from tqdm.auto import tqdm

    for s in tqdm(range(0, len(captions), batch_size), desc="encoding captions", disable=not progress,
                  unit="batch"):
        tok, mask = encoder.encode(captions[s : s + batch_size])  # [b, l, D], [b, l]
        chunks.append((tok.detach().float().cpu().numpy().astype(np.float16), mask.cpu().numpy().sum(1)))
    L = max(c[0].shape[1] for c in chunks)
    D = chunks[0][0].shape[2]
    tmp = tok_path.with_name(tok_path.name + f".tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(captions), L, D))
    lengths = np.zeros(len(captions), dtype=np.int32)
    row = 0
    for tok, lens in chunks:
        b, l, _ = tok.shape
        out[row : row + b, :l] = tok
        out[row : row + b, l:] = 0
        lengths[row : row + b] = lens
        row += b
    out.flush()
    del out
    tmp_len = len_path.with_name(len_path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp_len, lengths)
    os.replace(tmp, tok_path)
    os.replace(tmp_len, len_path)
    return TextTable(tuple(captions), np.load(tok_path, mmap_mode="r"), lengths)


# ----------------------------------------------------------------------------- seeded data order


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch `epoch`: a permutation of range(n) that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, seed: int, step: int, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Dataset indices of `rank`'s batch at `step` [batch_size].

    The global batch of a step is `batch_size * world` consecutive positions of the endless sequence of epoch
    permutations; rank r takes the r-th slice (DistributedSampler-style sharding of one seeded order).
    """
    start = (step * world + rank) * batch_size
    out = np.empty(batch_size, dtype=np.int64)
    filled, pos = 0, start
    while filled < batch_size:
        epoch, off = divmod(pos, n)
        perm = epoch_permutation(n, seed, epoch)
        take = min(batch_size - filled, n - off)
        out[filled : filled + take] = perm[off : off + take]
        filled += take
        pos += take
    return out


def make_dataset(data, size: int, render_size: int | None = None) -> CaptionedImages:
    """The dataset a `DataConfig` (imagen.train) describes, with images at `size` px."""
    if data.kind in WORLDS:
        return ShapesDataset(data.n, data.seed, size, render_size=render_size, split=data.split,
                             categories=tuple(data.categories) or None, world=data.kind)
    if data.kind == "folder":
        return FolderDataset(data.path, data.captions, size)
    if data.kind == "coco":
        return CocoDataset(data.path, data.captions, size)
    raise UserError(f"[data] kind must be {', '.join(WORLDS)}, folder or coco, got {data.kind!r}")


__all__ = [
    "CaptionedImages", "FolderDataset", "CocoDataset", "ShapesDataset", "RenderedImages", "TextTable",
    "build_text_table",
    "unique_captions", "text_table_key", "epoch_permutation", "batch_indices", "square_resize", "to_tensor",
    "downsample", "make_dataset",
]
