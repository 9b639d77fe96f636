"""ImageReward (Xu et al., "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation",
NeurIPS 2023): BLIP (a ViT-L/16 image encoder at 224 px and a BERT-base text encoder that cross-attends to the image
tokens) with a 5-layer linear head on the text encoder's [CLS] output, trained on ImageRewardDB's rankings. The
score is the head's output standardised as the authors publish it, (reward - 0.16717362830052426) / 1.0333394966054072.

Built here from `transformers`' port of BLIP (BlipVisionModel, BlipTextModel: the same layers as BLIP's `med.py` and
`vit.py`, which transformers adapted) and loaded from the authors' own files: `ImageReward.pt` (their state_dict)
and `med_config.json` from the hub repository `THUDM/ImageReward`, with the `bert-base-uncased` tokenizer from the
Hugging Face cache plus the two tokens BLIP adds ([DEC], [ENC]). Not through the `image-reward` package: 1.5 pins
timm==0.6.13 (open_clip here uses timm 1.x), needs the GitHub-only `clip` package, and its BERT does not build with
transformers 5 (it imports helpers transformers 5 removed from `modeling_utils`, and its PreTrainedModel subclass
fails in `init_weights`). Preprocessing is the package's: shortest side to 224 (PIL bicubic), centre crop, CLIP
mean/std; prompts are padded and truncated to 35 tokens, as the package does. float32 by default, as the authors
run it (also on a GPU). The metric is `imagereward_v1_0` for the published file, `imagereward_file_<sha256[:8]>` for
another.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from bench.metrics.hub import file_sha256, hub_file, hub_folder, load_checkpoint
from imagen.errors import UserError

DEFAULT_REPO = "THUDM/ImageReward"
WEIGHTS_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
DEFAULT_TOKENIZER = "bert-base-uncased"
# From the hub repository's commit 7a9e21f ("Upload ImageReward.pt"), its LFS pointer.
PUBLISHED_SHA256 = "d71dc8d4912bc633c06ab8ef1ef6a81e8199d4369f14b47b29baf1d19de561f6"
PUBLISHED_SIZE = 1786880927
KEY_IMAGEREWARD_V1_0 = "imagereward_v1_0"
REWARD_MEAN, REWARD_STD = 0.16717362830052426, 1.0333394966054072  # the package's standardisation constants
MAX_TOKENS = 35
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HEAD_LINEARS = (0, 2, 4, 6, 7)  # the head's Linear layers among its modules (dropouts between the first four)
HEAD_WIDTHS = (1024, 128, 64, 16, 1)
VIT_HEAD_DIM = 64  # BLIP's ViTs (base 768/12, large 1024/16): heads = width / 64
VIT_LAYER_NORM_EPS = 1e-6
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: float32 on a CPU and on a GPU (the authors' setting)
EXAMPLE = 'imagereward = { weights = "/path/to/ImageReward.pt" }'


def metric_name(sha256: str) -> str:
    return KEY_IMAGEREWARD_V1_0 if sha256 == PUBLISHED_SHA256 else f"imagereward_file_{sha256[:8]}"


def resolve_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise UserError(f"metrics.imagereward.dtype: {dtype!r}; use one of {', '.join(DTYPES)}")
    return torch.float32 if dtype == "auto" else getattr(torch, dtype)


def weights_files(source: str | None, med_config: str | None = None) -> tuple[str, str]:
    """ImageReward.pt and med_config.json: the file, a folder with both, or the hub repository in the Hugging Face
    cache (default THUDM/ImageReward); med_config.json is looked for beside the weights, then in that repository."""
    weights = hub_file(source or DEFAULT_REPO, WEIGHTS_FILE, "ImageReward's weights", EXAMPLE)
    if med_config:
        return weights, hub_file(med_config, MED_CONFIG_FILE, "ImageReward's med_config",
                                 'imagereward = { weights = "...", med_config = "/path/to/med_config.json" }')
    beside = Path(weights).parent / MED_CONFIG_FILE
    if beside.is_file():
        return weights, str(beside)
    repo = source if source and not Path(source).expanduser().exists() else DEFAULT_REPO
    return weights, hub_file(repo, MED_CONFIG_FILE, "ImageReward's med_config (beside its weights)", EXAMPLE)


# ----------------------------------------------------------------------------- the checkpoint in transformers' names

_VIT_NAMES = [  # BLIP's ViT (timm layout) -> transformers' BlipVisionModel
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.", r"encoder.layers.\1.mlp.\2."),
    (r"norm\.", "post_layernorm."),
]


def split_checkpoint(state: dict) -> tuple[dict, dict, dict]:
    """ImageReward's state_dict -> (vision, text, head) state_dicts in transformers' BLIP names and the head's own
    (its Linear layers 0..4). The text encoder's names are BLIP's med.py names, which transformers kept; its
    `position_ids` buffer and the unused projections (vision_proj, text_proj) are dropped."""
    vision, text, head = {}, {}, {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            for pattern, repl in _VIT_NAMES:
                new, n = re.subn(rf"^{pattern}", repl, name)
                if n:
                    vision[new] = value
                    break
            else:
                raise UserError(f"ImageReward weights: unknown vision tensor {key!r}")
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            text[key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp.layers."):
            index, rest = key.removeprefix("mlp.layers.").split(".", 1)
            if int(index) not in HEAD_LINEARS:
                raise UserError(f"ImageReward weights: unexpected head tensor {key!r}")
            head[f"{HEAD_LINEARS.index(int(index))}.{rest}"] = value
    return vision, text, head


def vision_config(vision: dict):
    """BlipVisionConfig from the ViT's tensor shapes: width, depth, patch size, image size (the position table),
    MLP width; heads from BLIP's 64-wide heads; LayerNorm eps 1e-6 and exact GELU as BLIP's ViT."""
    from transformers import BlipVisionConfig

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = round((vision["embeddings.position_embedding"].shape[1] - 1) ** 0.5)
    depth = len({k.split(".")[2] for k in vision if k.startswith("encoder.layers.")})
    return BlipVisionConfig(hidden_size=width, intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
                            num_hidden_layers=depth, num_attention_heads=max(1, width // VIT_HEAD_DIM),
                            image_size=grid * patch, patch_size=patch, hidden_act="gelu",
                            layer_norm_eps=VIT_LAYER_NORM_EPS, attention_dropout=0.0)


def text_config(med_config: str, encoder_width: int):
    """BlipTextConfig from BLIP's med_config.json, cross-attending to `encoder_width`-wide image tokens."""
    from transformers import BlipTextConfig

    try:
        med = json.loads(Path(med_config).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"ImageReward's med_config {med_config}: cannot read it ({type(exc).__name__})") from None
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "hidden_act", "layer_norm_eps", "pad_token_id")
    missing = [k for k in keys if k not in med]
    if missing:
        raise UserError(f"ImageReward's med_config {med_config} has no {', '.join(missing)}")
    # is_decoder=True builds the cross-attention layers; each call passes is_decoder=False (bidirectional text)
    return BlipTextConfig(**{k: med[k] for k in keys}, encoder_hidden_size=encoder_width, is_decoder=True,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, bos_token_id=None,
                          eos_token_id=None, sep_token_id=None)  # no generation: no special ids


def reward_head(width: int):
    """The 5-layer linear head (no activations between its layers, as published): width -> 1024 -> 128 -> 64 -> 16
    -> 1."""
    import torch

    sizes = (width, *HEAD_WIDTHS)
    return torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])


def load_tokenizer(source: str = DEFAULT_TOKENIZER):
    """BERT's uncased tokenizer with BLIP's two added tokens ([DEC] as bos, [ENC]), as ImageReward's BLIP makes it."""
    from transformers import BertTokenizer

    from imagen.text import quiet_loading

    folder = hub_folder(source, "ImageReward's BERT tokenizer",
                        'imagereward = { weights = "...", tokenizer = "/path/to/bert-base-uncased" }',
                        marker="tokenizer_config.json")
    with quiet_loading():
        tok = BertTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageReward:
    """One ImageReward model loaded once; `scorer(images, prompts)` -> the standardised reward per image."""

    def __init__(self, source: str | None = None, device: str = "cpu", dtype: str = "auto",
                 med_config: str | None = None, tokenizer: str = DEFAULT_TOKENIZER):
        import torch
        from transformers import BlipTextModel, BlipVisionModel

        from imagen.text import quiet_loading

        self.torch_dtype = resolve_dtype(dtype)
        self.path, self.med_config = weights_files(source, med_config)
        self.sha256 = file_sha256(self.path)
        self.tokenizer = load_tokenizer(tokenizer)
        state = load_checkpoint(self.path, self.sha256, known=self.sha256 == PUBLISHED_SHA256, what="ImageReward")
        vision, text, head = split_checkpoint(state)
        if "embeddings.class_embedding" not in vision or not text or not head:
            raise UserError(f"ImageReward weights {self.path}: not an ImageReward state_dict (blip.visual_encoder.*, "
                            "blip.text_encoder.*, mlp.layers.*)")
        vcfg = vision_config(vision)
        tcfg = text_config(self.med_config, vcfg.hidden_size)
        with quiet_loading():
            self.vision = BlipVisionModel(vcfg)
            self.text = BlipTextModel(tcfg, add_pooling_layer=False)
        self.head = reward_head(tcfg.hidden_size)
        for part, sd, what in ((self.vision, vision, "vision encoder"), (self.text, text, "text encoder"),
                               (self.head, head, "reward head")):
            try:
                part.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise UserError(f"ImageReward weights {self.path}: the {what} does not fit ({first})") from None
            part.to(device=device, dtype=self.torch_dtype).eval().requires_grad_(False)
        self.image_size = vcfg.image_size
        self.source, self.device, self.torch = source, device, torch
        self.dtype = str(self.torch_dtype).removeprefix("torch.")

    @property
    def name(self) -> str:
        return metric_name(self.sha256)

    def pixels(self, images):
        """uint8 [H, W, 3] images -> [N, 3, S, S]: shortest side to S (PIL bicubic), centre crop, CLIP mean/std."""
        from PIL import Image
        from torchvision import transforms as T

        tf = T.Compose([T.Resize(self.image_size, interpolation=T.InterpolationMode.BICUBIC),
                        T.CenterCrop(self.image_size), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
        return self.torch.stack([tf(Image.fromarray(np.asarray(im)).convert("RGB")) for im in images])

    def tokens(self, prompts: list[str]):
        """[N, 35] input ids and attention mask: padded to 35 and truncated there, as ImageReward does."""
        return self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                              return_tensors="pt")

    def __call__(self, images, prompts: list[str], batch_size: int = 8) -> np.ndarray:
        """ImageReward for each (image uint8 [H, W, 3], prompt), in batches of batch_size."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        torch = self.torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                px = self.pixels(images[start:start + batch_size]).to(self.device, self.torch_dtype)
                tok = self.tokens(prompts[start:start + batch_size]).to(self.device)
                image_tokens = self.vision(pixel_values=px).last_hidden_state  # [B, 1 + patches, W]
                image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=self.device)
                hidden = self.text(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                                   encoder_hidden_states=image_tokens, encoder_attention_mask=image_mask,
                                   is_decoder=False).last_hidden_state  # [B, 35, D]
                reward = self.head(hidden[:, 0, :]).double().squeeze(-1)  # the [CLS] position
                out.append(((reward - REWARD_MEAN) / REWARD_STD).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


__all__ = ["ImageReward", "DEFAULT_REPO", "DEFAULT_TOKENIZER", "WEIGHTS_FILE", "MED_CONFIG_FILE", "PUBLISHED_SHA256",
           "KEY_IMAGEREWARD_V1_0", "REWARD_MEAN", "REWARD_STD", "DTYPES", "metric_name", "resolve_dtype",
           "weights_files", "split_checkpoint", "vision_config", "text_config", "reward_head", "load_tokenizer"]
