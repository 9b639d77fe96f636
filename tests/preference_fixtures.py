"""Tiny random-weight human-preference scorers, each saved in its authors' own file format, built offline.

- ``make_pickscore(root)``: a transformers CLIPModel with a CLIPProcessor (byte-level CLIP tokenizer, CLIP image
  processor at 32 px) saved with save_pretrained, as PickScore_v1 and its processor are.
- ``make_hps(root)``: an open_clip model of a tiny registered architecture (``hps-tiny``: ViT-H-14's layout, shrunk)
  whose state_dict is saved as HPS checkpoints are, ``torch.save({'state_dict': ...})``.
- ``make_imagereward(root)``: ImageReward's state_dict layout (``blip.visual_encoder.*`` in BLIP's timm-style ViT
  names, ``blip.text_encoder.*`` in BLIP's med.py BERT names, ``mlp.layers.{0,2,4,6,7}``, plus the projections and
  buffer the published file also holds) with random tensors, a tiny med_config.json beside it, and a tiny BERT
  tokenizer laid out as huggingface_hub's cache (models--bert-base-uncased/snapshots/<commit>/, refs/main).
- ``imagereward_reference``: ImageReward's forward pass written out in float64 from that state_dict alone (BLIP's
  ViT, BERT with cross-attention, [CLS], the linear head, the published standardisation): the independent check.
"""

from __future__ import annotations

import inspect
import json
import string
from pathlib import Path

import numpy as np

HPS_TINY = "hps-tiny"
HPS_TINY_CONFIG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                                     "patch_size": 8},
                   "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
IR_VISION = dict(width=128, depth=2, patch=16, image=48)  # 2 heads of 64, a 3 x 3 grid
IR_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0)
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ----------------------------------------------------------------------------- PickScore


def make_pickscore(root, seed: int = 0) -> str:
    """Saves a tiny CLIPModel and its CLIPProcessor into root/pickscore_tiny; returns the folder."""
    import torch
    from diffusers_fixtures import _CLIP_BOS, _CLIP_EOS, _CLIP_VOCAB, _build_clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(root) / "pickscore_tiny"
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=_CLIP_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=_CLIP_BOS,
                         eos_token_id=_CLIP_EOS, pad_token_id=_CLIP_EOS),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16, logit_scale_init_value=3.1)  # exp(3.1) ~ 22: not CLIP's default, so the scale shows
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=_build_clip_tokenizer())
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return str(folder)


# ----------------------------------------------------------------------------- HPS v2


def register_hps_tiny(root, name: str = HPS_TINY, width: int = 32) -> str:
    """Registers a tiny open_clip architecture (`hps-tiny`: a model config JSON, as open_clip's own are); another
    `width` makes an architecture the tiny weights do not fit."""
    import open_clip

    config = json.loads(json.dumps(HPS_TINY_CONFIG))
    config["vision_cfg"]["width"] = config["text_cfg"]["width"] = width
    path = Path(root) / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(str(path))
    return name


def make_hps(root, seed: int = 0, filename: str = "HPS_v2.1_compressed.pt") -> str:
    """Saves a random `hps-tiny` open_clip model as an HPS checkpoint ({'state_dict': ...}); returns the file."""
    import open_clip
    import torch

    register_hps_tiny(root)
    torch.manual_seed(seed)
    model = open_clip.create_model(HPS_TINY, pretrained=None)
    path = Path(root) / filename
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, path)
    return str(path)


# ----------------------------------------------------------------------------- ImageReward


def bert_tokenizer():
    """An in-memory uncased WordPiece BERT tokenizer: the five specials, a few words, single characters and their
    ## continuations."""
    from transformers import BertTokenizer

    words = ["a", "the", "cat", "dog", "red", "blue", "on", "of", "two", "table", "photo"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + chars + ["##" + c for c in chars]
    tokens = list(dict.fromkeys(tokens))
    if "vocab_file" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers 4.x (slow class)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
            return BertTokenizer(str(Path(tmp) / "vocab.txt"), do_lower_case=True, model_max_length=512)
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True, model_max_length=512)


def fake_hf_cache(cache, repo: str = "bert-base-uncased") -> Path:
    """Lays the tiny BERT tokenizer out as huggingface_hub's cache does: models--<repo>/snapshots/<commit>/ with
    refs/main naming the commit; returns the cache folder (HF_HUB_CACHE)."""
    cache = Path(cache)
    base = cache / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    bert_tokenizer().save_pretrained(str(snapshot))
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(FAKE_COMMIT)
    return cache


def _rand(gen, *shape, scale=None):
    fan_in = shape[-1] if len(shape) > 1 else 1
    return (gen.standard_normal(shape) * (scale if scale is not None else fan_in ** -0.5)).astype(np.float32)


def imagereward_state(vocab_size: int, seed: int = 0) -> dict:
    """A random ImageReward state_dict in the published file's names and shapes (tiny sizes)."""
    import torch

    gen = np.random.default_rng(seed)
    w, p, n = IR_VISION["width"], IR_VISION["patch"], (IR_VISION["image"] // IR_VISION["patch"]) ** 2
    d, ff = IR_TEXT["hidden_size"], IR_TEXT["intermediate_size"]
    sd = {}

    def linear(prefix, n_out, n_in):
        sd[prefix + ".weight"], sd[prefix + ".bias"] = _rand(gen, n_out, n_in), _rand(gen, n_out, scale=0.1)

    def norm(prefix, n):
        sd[prefix + ".weight"], sd[prefix + ".bias"] = 1 + _rand(gen, n, scale=0.1), _rand(gen, n, scale=0.1)

    v = "blip.visual_encoder."
    sd[v + "cls_token"], sd[v + "pos_embed"] = _rand(gen, 1, 1, w, scale=1.0), _rand(gen, 1, n + 1, w, scale=1.0)
    sd[v + "patch_embed.proj.weight"] = _rand(gen, w, 3, p, p, scale=(3 * p * p) ** -0.5)
    sd[v + "patch_embed.proj.bias"] = _rand(gen, w, scale=0.1)
    for i in range(IR_VISION["depth"]):
        b = f"{v}blocks.{i}."
        norm(b + "norm1", w), linear(b + "attn.qkv", 3 * w, w), linear(b + "attn.proj", w, w)
        norm(b + "norm2", w), linear(b + "mlp.fc1", 4 * w, w), linear(b + "mlp.fc2", w, 4 * w)
    norm(v + "norm", w)
    t = "blip.text_encoder."
    sd[t + "embeddings.word_embeddings.weight"] = _rand(gen, vocab_size, d, scale=1.0)
    sd[t + "embeddings.position_embeddings.weight"] = _rand(gen, IR_TEXT["max_position_embeddings"], d, scale=1.0)
    sd[t + "embeddings.position_ids"] = np.arange(IR_TEXT["max_position_embeddings"])[None]
    norm(t + "embeddings.LayerNorm", d)
    for i in range(IR_TEXT["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        for att, kv_in in (("attention", d), ("crossattention", w)):
            linear(f"{b}{att}.self.query", d, d)
            linear(f"{b}{att}.self.key", d, kv_in), linear(f"{b}{att}.self.value", d, kv_in)
            linear(f"{b}{att}.output.dense", d, d), norm(f"{b}{att}.output.LayerNorm", d)
        linear(b + "intermediate.dense", ff, d), linear(b + "output.dense", d, ff), norm(b + "output.LayerNorm", d)
    linear("blip.vision_proj", 256, w), linear("blip.text_proj", 256, d)  # in the published file, unused
    widths = (d, 1024, 128, 64, 16, 1)
    for index, (n_in, n_out) in zip((0, 2, 4, 6, 7), zip(widths[:-1], widths[1:])):
        linear(f"mlp.layers.{index}", n_out, n_in)
    return {k: torch.from_numpy(np.asarray(a)) for k, a in sd.items()}


def make_imagereward(root, seed: int = 0) -> dict:
    """Writes root/imagereward/{ImageReward.pt, med_config.json} and a fake HF cache with the BERT tokenizer;
    returns {'weights', 'med_config', 'folder', 'hf_cache'}."""
    import torch

    folder = Path(root) / "imagereward"
    folder.mkdir(parents=True, exist_ok=True)
    cache = fake_hf_cache(Path(root) / "hf_cache")
    vocab_size = len(bert_tokenizer()) + 2  # BLIP adds [DEC] and [ENC]
    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1,
           "initializer_range": 0.02, "model_type": "bert", "type_vocab_size": 2, "vocab_size": vocab_size,
           "encoder_width": 768, "add_cross_attention": True, **IR_TEXT}
    (folder / "med_config.json").write_text(json.dumps(med, indent=2))
    torch.save(imagereward_state(vocab_size, seed), folder / "ImageReward.pt")
    return {"weights": str(folder / "ImageReward.pt"), "med_config": str(folder / "med_config.json"),
            "folder": str(folder), "hf_cache": str(cache)}


def _ln(x, sd, prefix, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * sd[prefix + ".weight"] + sd[prefix + ".bias"]


def _lin(x, sd, prefix):
    return x @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]


def _attend(q, k, v, heads, key_mask=None):
    """Multi-head attention, q [L, D], k/v [M, D]; key_mask [M] (1 = attend)."""
    dh = q.shape[-1] // heads
    split = lambda x: x.reshape(x.shape[0], heads, dh).transpose(1, 0, 2)  # noqa: E731 - [H, L, dh]
    logits = split(q) @ split(k).transpose(0, 2, 1) / np.sqrt(dh)
    if key_mask is not None:
        logits = np.where(key_mask[None, None, :] > 0, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return (weights @ split(v)).transpose(1, 0, 2).reshape(q.shape[0], -1)


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def imagereward_reference(state: dict, pixels: np.ndarray, input_ids, attention_mask, heads_text: int) -> float:
    """ImageReward of one image from the state_dict alone, float64: pixels [3, S, S] normalised; input_ids and
    attention_mask [L]."""
    sd = {k: v.double().numpy() for k, v in state.items()}
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    w, p = sd[v + "cls_token"].shape[-1], sd[v + "patch_embed.proj.weight"].shape[-1]
    # BLIP's ViT: patches, [CLS], positions; pre-norm blocks (eps 1e-6); final norm
    g = pixels.shape[-1] // p
    patches = pixels.reshape(3, g, p, g, p).transpose(1, 3, 0, 2, 4).reshape(g * g, 3 * p * p)
    x = patches @ sd[v + "patch_embed.proj.weight"].reshape(w, -1).T + sd[v + "patch_embed.proj.bias"]
    x = np.concatenate([sd[v + "cls_token"][0], x]) + sd[v + "pos_embed"][0]
    for i in range(sum(k.endswith("attn.qkv.weight") for k in sd)):
        b = f"{v}blocks.{i}."
        h = _ln(x, sd, b + "norm1", 1e-6)
        q, k, vv = np.split(_lin(h, sd, b + "attn.qkv"), 3, axis=-1)
        x = x + _lin(_attend(q, k, vv, w // 64), sd, b + "attn.proj")
        x = x + _lin(_gelu(_lin(_ln(x, sd, b + "norm2", 1e-6), sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
    image = _ln(x, sd, v + "norm", 1e-6)
    # BERT (med.py): embeddings, then per layer self-attention, cross-attention to the image, feed-forward; post-norm
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
    eps = IR_TEXT["layer_norm_eps"]
    y = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][:len(ids)]
    y = _ln(y, sd, t + "embeddings.LayerNorm", eps)
    for i in range(sum(k.endswith("crossattention.self.query.weight") for k in sd)):
        b = f"{t}encoder.layer.{i}."
        for att, src, key_mask in (("attention", None, mask), ("crossattention", image, None)):
            kv = y if src is None else src
            out = _attend(_lin(y, sd, f"{b}{att}.self.query"), _lin(kv, sd, f"{b}{att}.self.key"),
                          _lin(kv, sd, f"{b}{att}.self.value"), heads_text, key_mask)
            y = _ln(_lin(out, sd, f"{b}{att}.output.dense") + y, sd, f"{b}{att}.output.LayerNorm", eps)
        ff = _lin(_gelu(_lin(y, sd, b + "intermediate.dense")), sd, b + "output.dense")
        y = _ln(ff + y, sd, b + "output.LayerNorm", eps)
    r = y[0]
    for index in (0, 2, 4, 6, 7):  # the linear head, no activations
        r = _lin(r, sd, f"mlp.layers.{index}")
    return float((r[0] - 0.16717362830052426) / 1.0333394966054072)
