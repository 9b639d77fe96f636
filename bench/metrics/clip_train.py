"""shapes-clip: a small CLIP (open_clip code, a custom architecture registered with open_clip) trained on the
shapes world, so that CLIP score works offline and means something on shapes images.

Architecture (`SHAPES_CLIP_CONFIG`, shipped as bench/weights/shapes-clip/shapes-clip.json and registered with
`open_clip.add_model_config`): a ViT on 64x64 images (16x16 patches, 3 layers, width 128) and a 2-layer text
transformer of width 64 over open_clip's own BPE tokenizer (its vocabulary ships inside the package), joint
embedding 64-d. Trained with the symmetric contrastive loss of CLIP (Radford et al. 2021) on freshly rendered
shapes-world images and captions (`imagen.shapes.ShapesWorld`, train split); evaluated by caption retrieval among
16 candidates on the held-out split. Weights are stored as float16 safetensors (a few MB).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imagen.errors import UserError
from imagen.fileio import atomic_write

SHAPES_CLIP = "shapes-clip"
WEIGHTS_FILE = "shapes-clip.safetensors"
CONFIG_FILE = "shapes-clip.json"

SHAPES_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def shipped_dir() -> Path:
    """bench/weights/shapes-clip/ inside the installed package (read-only at run time)."""
    return Path(__file__).resolve().parents[1] / "weights" / SHAPES_CLIP


def register_shapes_clip(folder: Path | None = None) -> Path:
    """Register the shapes-clip architecture with open_clip (idempotent); returns the config file used."""
    import open_clip

    cfg = Path(folder or shipped_dir()) / CONFIG_FILE
    if not cfg.is_file():
        raise UserError(f"shapes-clip config {cfg} is missing; reinstall the package or run `imagen-bench train-clip`")
    if SHAPES_CLIP not in open_clip.list_models():
        open_clip.add_model_config(cfg)
    return cfg


# ----------------------------------------------------------------------------- data


def shapes_batch(world, start: int, n: int, size: int) -> tuple[list[np.ndarray], list[str]]:
    """Items start..start+n of a ShapesWorld: (uint8 [size,size,3] images, captions)."""
    from imagen.shapes import render

    images, captions = [], []
    for i in range(start, start + n):
        scene, text, _ = world.item(i)
        images.append(render(scene, size))
        captions.append(text)
    return images, captions


def to_tensor(images: list[np.ndarray], preprocess) -> torch.Tensor:
    """uint8 HWC images -> the model's normalised input [B,3,S,S] through open_clip's own preprocess."""
    from PIL import Image

    return torch.stack([preprocess(Image.fromarray(im)) for im in images])


# ----------------------------------------------------------------------------- evaluation


_INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def _content(facts) -> tuple:
    """What a caption asserts about a scene: the multiset of (colour, shape, count) kinds and, for Positional
    captions, the relation in a canonical direction ("B right of A" == "A left of B")."""
    kinds = facts.kinds()
    rel = None
    if facts.relation is not None and len(kinds) == 2:
        rel = (kinds[0], facts.relation, kinds[1])
        if facts.relation in ("right", "below"):
            rel = (kinds[1], _INVERSE[facts.relation], kinds[0])
    return tuple(sorted(kinds)), rel


def also_true(candidate, truth) -> bool:
    """Whether a candidate caption's facts could also describe the true image (same objects; a relation that
    agrees or is not stated): such candidates are not distractors."""
    (kc, rc), (kt, rt) = _content(candidate), _content(truth)
    return kc == kt and (rc is None or rt is None or rc == rt)


@torch.no_grad()
def retrieval_accuracy(model, preprocess, tokenizer, n: int = 200, candidates: int = 16, seed: int = 0,
                       device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of picking an image's true caption among `candidates`: itself and false captions of other
    held-out items, drawn at random (captions that could also be true of the image, like a rephrasing or a
    misspelling of the same facts, are not used as distractors), on the first n held-out shapes-world items."""
    from imagen.shapes import ShapesWorld

    world = ShapesWorld(seed, "heldout")
    size = SHAPES_CLIP_CONFIG["vision_cfg"]["image_size"]
    items = [world.item(i) for i in range(5 * n)]  # the first n are queried; all 5n give distractor captions
    images = [render_scene(scene, size) for scene, _, _ in items[:n]]
    facts_of = {}
    for _, text, facts in items:
        facts_of.setdefault(text, facts)
    pool = sorted(facts_of)
    index = {c: k for k, c in enumerate(pool)}
    rng = np.random.default_rng(seed)
    model.eval()
    img = F.normalize(model.encode_image(to_tensor(images, preprocess).to(device)), dim=-1)  # [n, E]
    txt_all = F.normalize(model.encode_text(tokenizer(pool).to(device)), dim=-1)  # [P, E], each caption once
    correct = 0
    for i, (_, true, facts) in enumerate(items[:n]):
        others = [c for c in pool if not also_true(facts_of[c], facts)]
        texts = [true] + [others[j] for j in rng.choice(len(others), candidates - 1, replace=False)]
        txt = txt_all[[index[t] for t in texts]]  # [candidates, E]
        correct += int((txt @ img[i]).argmax().item() == 0)
    return correct / n


def render_scene(scene, size: int) -> np.ndarray:
    from imagen.shapes import render

    return render(scene, size)


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1200
    batch_size: int = 96
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 50
    seed: int = 0
    minutes: float = 15.0  # wall-clock budget: stop early (and save) when it is spent
    eval_every: int = 100
    init: str | None = None  # continue from these weights (a shapes-clip .safetensors) instead of from scratch


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_shapes_clip(model, folder: Path) -> Path:
    """Write config + float16 safetensors into folder, atomically (temp files + rename)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(
        state, str(tmp), metadata={"format": "pt", "arch": json.dumps(SHAPES_CLIP_CONFIG)}))
    atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(SHAPES_CLIP_CONFIG, indent=2) + "\n"))
    return folder / WEIGHTS_FILE


def train_shapes_clip(out: Path, cfg: TrainConfig = TrainConfig(), device: str = "cpu", progress: bool = True,
                      log=print) -> dict:
    """Train shapes-clip from scratch into `out`; returns {steps, seconds, retrieval_top1}."""
    import open_clip
    from tqdm import tqdm

    from imagen.shapes import ShapesWorld

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(SHAPES_CLIP_CONFIG, indent=2) + "\n")
    register_shapes_clip(out)
    torch.manual_seed(cfg.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(SHAPES_CLIP, pretrained=cfg.init, device=device)
    tokenizer = open_clip.get_tokenizer(SHAPES_CLIP)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    world = ShapesWorld(cfg.seed, "train")
    size = SHAPES_CLIP_CONFIG["vision_cfg"]["image_size"]
    gen = torch.Generator().manual_seed(cfg.seed)
    t0, step, acc = time.time(), 0, float("nan")
    bar = tqdm(range(cfg.steps), disable=not progress, desc="train-clip")
    for step in bar:
        images, captions = shapes_batch(world, step * cfg.batch_size, cfg.batch_size, size)
        x = to_tensor(images, preprocess).to(device)  # [B,3,64,64]
        # robustness to generated images: mild Gaussian pixel noise on half the batch
        noise = torch.randn(x.shape, generator=gen) * torch.rand(x.shape[0], 1, 1, 1, generator=gen) * 0.3
        x = x + noise.to(device) * (torch.rand(x.shape[0], 1, 1, 1, generator=gen) < 0.5).to(device)
        tokens = tokenizer(captions).to(device)  # [B, 32]
        model.train()
        img = F.normalize(model.encode_image(x), dim=-1)  # [B, E]
        txt = F.normalize(model.encode_text(tokens), dim=-1)  # [B, E]
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T  # [B, B]
        # captions repeat within a batch ("a red circle"): every image whose caption text matches is a positive
        same = torch.tensor([[a == b for b in captions] for a in captions], device=device, dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        loss = (torch.sum(-target * logits.log_softmax(1), 1).mean()
                + torch.sum(-target * logits.T.log_softmax(1), 1).mean()) / 2
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.eval_every == 0:
            acc = retrieval_accuracy(model, preprocess, tokenizer, n=100, device=device)
            save_shapes_clip(model, out)
            log(f"step {step + 1} loss {loss.item():.4f} heldout top1@16 {acc:.3f} "
                f"({time.time() - t0:.0f}s)")
        if time.time() - t0 > cfg.minutes * 60:
            log(f"time budget of {cfg.minutes} min spent at step {step + 1}")
            break
    save_shapes_clip(model, out)
    acc = retrieval_accuracy(model, preprocess, tokenizer, n=200, device=device)
    result = {"steps": step + 1, "seconds": round(time.time() - t0, 1), "retrieval_top1": acc}
    log(json.dumps(result))
    return result
