"""Datasets, the packed text table and the seeded data order."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imagen.data import (CocoDataset, FolderDataset, ShapesDataset, batch_indices, build_text_table,
                         epoch_permutation, square_resize, unique_captions)
from imagen.errors import UserError


def test_data_order_covers_each_epoch_and_shards_disjointly():
    n, b = 10, 3
    seq = np.concatenate([batch_indices(n, 7, s, b) for s in range(10)])  # 30 positions = 3 epochs
    for e in range(3):
        assert sorted(seq[e * n : (e + 1) * n]) == list(range(n))
        assert list(seq[e * n : (e + 1) * n]) == list(epoch_permutation(n, 7, e))
    assert not np.array_equal(epoch_permutation(n, 7, 0), epoch_permutation(n, 7, 1))
    # two ranks at step s take the two halves of the single-process global batch of size 2b
    for s in range(4):
        full = batch_indices(n, 7, s, 2 * b)
        r0, r1 = batch_indices(n, 7, s, b, 0, 2), batch_indices(n, 7, s, b, 1, 2)
        assert list(np.concatenate([r0, r1])) == list(full)


def test_square_resize_centre_crops_and_box_filters():
    a = np.zeros((4, 8, 3), np.uint8)
    a[:, 2:6] = 200  # the centre 4x4 square is 200, the sides 0
    out = square_resize(Image.fromarray(a), 2)
    assert out.shape == (2, 2, 3) and (out == 200).all()
    big = np.arange(16, dtype=np.uint8).reshape(4, 4)[..., None].repeat(3, 2)
    out = square_resize(Image.fromarray(big), 2)
    assert abs(int(out[0, 0, 0]) - np.mean([0, 1, 4, 5])) <= 0.5 and abs(int(out[1, 1, 0]) - np.mean([10, 11, 14, 15])) <= 0.5


def _write_images(folder, n):
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((6, 6, 3), 10 * i, np.uint8)).save(folder / f"{i}.png")


def test_folder_dataset_csv_and_jsonl(tmp_path):
    _write_images(tmp_path / "img", 3)
    (tmp_path / "c.csv").write_text("file,caption\n0.png,a zero\n1.png,\"one, with comma\"\n2.png,a zero\n")
    ds = FolderDataset(tmp_path / "img", tmp_path / "c.csv", size=4)
    assert len(ds) == 3 and ds.caption(1) == "one, with comma"
    assert ds.image(2).shape == (4, 4, 3) and ds.image(2)[0, 0, 0] == 20
    caps, ids = unique_captions(ds)
    assert caps == ["a zero", "one, with comma"] and list(ids) == [0, 1, 0]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"file": f"{i}.png", "caption": f"c{i}"}) for i in range(3)))
    assert FolderDataset(tmp_path / "img", tmp_path / "c.jsonl", 4).caption(2) == "c2"
    (tmp_path / "bad.csv").write_text("file,caption\nmissing.png,x\n")
    with pytest.raises(UserError, match="missing"):
        FolderDataset(tmp_path / "img", tmp_path / "bad.csv", 4)
    (tmp_path / "nohead.csv").write_text("path,text\n0.png,x\n")
    with pytest.raises(UserError, match="file and caption"):
        FolderDataset(tmp_path / "img", tmp_path / "nohead.csv", 4)


def test_coco_dataset(tmp_path):
    _write_images(tmp_path / "img", 2)
    ann = {"images": [{"id": 5, "file_name": "0.png"}, {"id": 9, "file_name": "1.png"}],
           "annotations": [{"image_id": 9, "caption": " a grey one "}, {"image_id": 5, "caption": "black"},
                           {"image_id": 9, "caption": "another"}]}
    (tmp_path / "cap.json").write_text(json.dumps(ann))
    ds = CocoDataset(tmp_path / "img", tmp_path / "cap.json", 4)
    assert len(ds) == 3 and ds.caption(0) == "a grey one" and ds.image(0)[0, 0, 0] == 10
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(UserError, match="COCO"):
        CocoDataset(tmp_path / "img", tmp_path / "bad.json", 4)


def test_shapes_dataset_matches_the_world():
    from imagen.shapes import ShapesWorld, render

    ds = ShapesDataset(n=5, seed=3, size=16, render_size=32)
    world = ShapesWorld(3, "train")
    assert [ds.caption(i) for i in range(5)] == [world.item(i)[1] for i in range(5)]
    img = ds.image(2)
    ref = render(world.item(2)[0], 32).astype(np.float64).reshape(16, 2, 16, 2, 3).mean((1, 3))
    assert img.shape == (16, 16, 3) and np.abs(img - ref).max() <= 1


def test_shapes_data_config_category_cycle_reaches_the_dataset():
    from imagen.data import make_dataset
    from imagen.train import DataConfig

    ds = make_dataset(DataConfig(kind="shapes", n=6, seed=3, categories=("Counting", "Positional")), 16)
    cats = [ds.world.item(i)[2].category for i in range(6)]
    assert cats == ["Counting", "Positional"] * 3


class CountingEncoder:
    id, dim, max_length = "count:4", 4, 8

    def __init__(self):
        self.seen = []

    def encode(self, texts):
        self.seen += texts
        L = max(len(t.split()) for t in texts)
        tok = torch.zeros(len(texts), L, 4)
        mask = torch.zeros(len(texts), L, dtype=torch.bool)
        for i, t in enumerate(texts):
            for j, w in enumerate(t.split()):
                tok[i, j] = torch.tensor([len(w), j, i, 0.5])
                mask[i, j] = True
        return tok, mask


def test_text_table_packs_once_and_gathers(tmp_path):
    caps = ["a b", "long caption here now", "x"]
    enc = CountingEncoder()
    table = build_text_table(enc, caps, tmp_path, batch_size=2)
    assert isinstance(table.tokens, np.memmap) and table.tokens.dtype == np.float16
    assert list(table.lengths) == [2, 4, 1]
    tok, mask = table.batch([2, 0])
    assert tok.shape == (2, 2, 4) and mask.tolist() == [[True, False], [True, True]]
    ref, _ = CountingEncoder().encode(["a b"])
    assert torch.equal(tok[1], ref[0])
    n_calls = len(enc.seen)
    again = build_text_table(enc, caps, tmp_path)
    assert len(enc.seen) == n_calls and np.array_equal(np.asarray(again.tokens), np.asarray(table.tokens))
