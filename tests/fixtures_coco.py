"""A small MS-COCO-format fixture built from real photos that ship with scikit-image and scikit-learn.

`build_coco_fixture(root)` writes what the COCO protocol reads:

    root/val2014/COCO_val2014_<image_id:012d>.jpg    real photos (JPEG, like COCO), at their own sizes
    root/annotations/captions_val2014.json           the official layout: images[] + annotations[] (captions)
    root/val2014_captions.csv                        caption_id,image_id,caption,file_name,height,width

Captions were written for these photos by hand, two per image (COCO has about five).
`photo_crops(n, seed, size)` gives n distinct uint8 images (random crops and flips of the photos) for FID tests.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def _sk(name):
    def load():
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(index):
    def load():
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


# name -> (loader, captions written for the photo)
PHOTOS = {
    "astronaut": (_sk("astronaut"), ["An astronaut in a white space suit poses in front of a flag.",
                                     "A smiling woman astronaut holding a helmet."]),
    "chelsea": (_sk("chelsea"), ["A ginger tabby cat looks to the side.",
                                 "Close up of an orange cat with green eyes."]),
    "coffee": (_sk("coffee"), ["A cup of coffee on a saucer with a spoon.",
                               "A white mug of espresso on a red table."]),
    "rocket": (_sk("rocket"), ["A rocket on the launch pad under a blue sky.",
                               "A space rocket standing next to its launch tower."]),
    "hubble": (_sk("hubble_deep_field"), ["Many distant galaxies on a black sky.",
                                          "A deep space photograph full of tiny galaxies."]),
    "ihc": (_sk("immunohistochemistry"), ["A microscope slide of stained tissue.",
                                          "Brown and blue cells seen under a microscope."]),
    "motorcycle": (_sk("stereo_motorcycle"), ["A red motorcycle parked in a room.",
                                              "A sports motorbike seen from the side indoors."]),
    "china": (_sklearn(0), ["An old temple with a tiled roof among trees.",
                            "A Chinese pagoda building on a sunny day."]),
    "flower": (_sklearn(1), ["A pink flower in close up.",
                             "A single blossom with pink petals and a yellow centre."]),
    "retina": (_sk("retina"), ["A photograph of the back of a human eye.",
                               "An orange retina with red blood vessels."]),
}


def photo(name: str) -> np.ndarray:
    """One photo as uint8 [H, W, 3]."""
    img = PHOTOS[name][0]()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def photo_crops(n: int, seed: int, size: int | None = 64) -> list[np.ndarray]:
    """n distinct images: random square crops (and flips) of the photos, resized to size x size (None: keep)."""
    rng = np.random.default_rng(seed)
    names = list(PHOTOS)
    photos = {k: photo(k) for k in names}
    out = []
    for i in range(n):
        img = photos[names[i % len(names)]]
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        pil = Image.fromarray(np.ascontiguousarray(crop))
        if size is not None:
            pil = pil.resize((size, size), Image.BICUBIC)
        out.append(np.asarray(pil))
    return out


def write_pngs(images: list[np.ndarray], folder: Path, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = folder / f"{prefix}{i:04d}.png"
        Image.fromarray(im).save(p)
        paths.append(p)
    return paths


@dataclass(frozen=True)
class CocoFixture:
    root: Path
    images_dir: Path
    annotations: Path  # captions_val2014.json
    captions_csv: Path
    n_images: int
    n_captions: int


def build_coco_fixture(root: Path, max_side: int = 320) -> CocoFixture:
    """Write the fixture under root (photos downscaled so the longer side is at most max_side)."""
    root = Path(root)
    images_dir = root / "val2014"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, rows = [], [], []
    caption_id = 1000
    for k, (name, (_, captions)) in enumerate(PHOTOS.items()):
        image_id = 100 + 7 * k
        file_name = f"COCO_val2014_{image_id:012d}.jpg"
        pil = Image.fromarray(photo(name))
        pil.thumbnail((max_side, max_side), Image.BICUBIC)
        pil.save(images_dir / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "height": pil.height, "width": pil.width})
        for text in captions:
            annotations.append({"id": caption_id, "image_id": image_id, "caption": text})
            rows.append({"caption_id": caption_id, "image_id": image_id, "caption": text, "file_name": file_name,
                         "height": pil.height, "width": pil.width})
            caption_id += 3
    ann_dir = root / "annotations"
    ann_dir.mkdir(exist_ok=True)
    ann = ann_dir / "captions_val2014.json"
    ann.write_text(json.dumps({"info": {"description": "test fixture"}, "images": images,
                               "annotations": annotations}))
    csv_path = root / "val2014_captions.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return CocoFixture(root, images_dir, ann, csv_path, len(images), len(annotations))
