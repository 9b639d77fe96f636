"""Object detectors behind one small interface for GenEval's rules (bench.metrics.geneval): an image -> Detections.

The default is Mask2Former through `transformers` (`facebook/mask2former-swin-small-coco-instance`, the public COCO
instance-segmentation checkpoint closest to GenEval's mmdet Mask2Former Swin-S). Numbers from another detector are
close to the published ones, not equal: the metric's name says which detector made it. Weights come from a folder
(save_pretrained) or the Hugging Face cache (HF_HUB_OFFLINE respected); a missing one is one line naming what to
download and where to put it.
"""

from __future__ import annotations

import numpy as np

from imagen.errors import UserError

from bench.metrics.geneval import Detection
from bench.metrics.hub import hub_folder, slug

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
# COCO's class names where GenEval's object list spells them otherwise (GenEval maps mmdet's class index to its
# object_names.txt, so its "computer mouse" is COCO's "mouse"); a detector's labels are read in GenEval's spelling
GENEVAL_NAMES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}


def detector_slug(source: str) -> str:
    """A metric-name part for a detector: its hub repository's or folder's name, lower-case, [a-z0-9_]."""
    return slug(source)


def resolve(source: str) -> str:
    """The detector's folder, or its hub snapshot in the Hugging Face cache; else one line (bench.metrics.hub)."""
    return hub_folder(source, "GenEval's detector", 'geneval = { detector = "/path/to/detector" }')


class Mask2FormerDetector:
    """Mask2Former instance segmentation (transformers) as a GenEval detector: each predicted instance is a Detection
    with its class name (the checkpoint's id2label in GenEval's spelling), score, the box around its mask and the
    mask."""

    def __init__(self, source: str = DEFAULT_DETECTOR, device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

        from imagen.text import quiet_loading

        folder = resolve(source)
        try:
            with quiet_loading():
                self.processor = AutoImageProcessor.from_pretrained(folder)
                self.model = AutoModelForUniversalSegmentation.from_pretrained(folder).to(device).eval()
        except (OSError, ValueError) as exc:
            raise UserError(f"detector {source!r}: cannot load it from {folder} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        self.source, self.device, self.torch = source, device, torch
        self.labels = {int(k): GENEVAL_NAMES.get(v, v) for k, v in self.model.config.id2label.items()}

    @property
    def name(self) -> str:
        return detector_slug(self.source)

    def __call__(self, image: np.ndarray) -> list[Detection]:
        torch = self.torch
        h, w = image.shape[:2]
        inputs = self.processor(images=[image], return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model(**inputs)
        res = self.processor.post_process_instance_segmentation(out, threshold=0.0, target_sizes=[(h, w)],
                                                                return_binary_maps=True)[0]
        dets = []
        seg = res["segmentation"]
        for k, info in enumerate(res["segments_info"]):
            mask = seg[k].cpu().numpy().astype(bool) if seg is not None else None
            if mask is None or not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
            dets.append(Detection(self.labels.get(int(info["label_id"]), str(info["label_id"])), float(info["score"]),
                                  box, mask))
        return dets


__all__ = ["DEFAULT_DETECTOR", "GENEVAL_NAMES", "Mask2FormerDetector", "detector_slug", "resolve"]
