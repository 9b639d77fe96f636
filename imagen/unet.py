"""The Efficient U-Net (Saharia et al. 2022, appendix B.1), built from a UNetConfig.

It knows nothing about noise schedules: it takes a noisy image, the log-SNR of its noise level, the text tokens and
(for super-resolution stages) the upsampled low-res image with its augmentation level, and returns the raw
prediction (eps, x0 or v: the stage config decides how it is read).

Layout, for levels i = 0..n-1 with channels dim * dim_mults[i]:

    in conv -> DBlock_0 .. DBlock_{n-1} -> middle -> UBlock_{n-1} .. UBlock_0 -> out conv (zero-init)

    DBlock_i: [downsample (i > 0)] -> num_res_blocks[i] ResBlocks -> [self-attn] [text cross-attn]
    UBlock_i: concat(x, skip_i / sqrt 2) -> num_res_blocks[i] ResBlocks -> [self-attn] [text cross-attn]
              -> [upsample (i > 0)]

Efficient U-Net choices (B.1): more blocks at low resolution (per-level num_res_blocks), skips scaled by 1/sqrt 2,
downsampling BEFORE the convolutions of a DBlock and upsampling AFTER those of a UBlock (the convolutions run at
the lower resolution, which is where the memory and time go).

Options beyond the paper (UNetConfig, off by default; issue 25): `position_input` concatenates x/y coordinate
channels to the input, `attn_position` adds a position embedding to every self-attention input, `zero_init` starts
every residual branch and attention / feed-forward output at zero.
"""

from __future__ import annotations

import math
import os
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from imagen.config import UNetConfig
from imagen.text import pooled

SKIP_SCALE = 2 ** -0.5  # B.1: skip connections scaled by 1/sqrt(2)


def _cpu_packing_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    names = ("_convolution_pointwise", "_reorder_convolution_weight", "_linear_pointwise", "_reorder_linear_weight")
    try:
        return (torch.backends.mkldnn.is_available() and os.environ.get("IMAGEN_CPU_PACK", "1") != "0"
                and all(hasattr(ops, name) for name in names))
    except (AttributeError, RuntimeError):
        return False


# CPU inference fast path (see Conv2d and Linear below): oneDNN kernels on weights packed once into oneDNN's blocked
# layout. Off where this torch build lacks the ops, or with IMAGEN_CPU_PACK=0.
_CPU_PACKING = _cpu_packing_available()
# module -> (key, weakref to the weight tensor it was packed from, packed weight); not module state, not deep-copied
_PACKED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _packed_weight(module: nn.Module, x: torch.Tensor, shape_key: tuple, pack):
    """The module's weight packed by `pack`, or None where the plain path must run (training, autocast, non-fp32,
    not CPU, torch.compile tracing). Cached per module, keyed by the weight tensor and its version counter, so an
    optimiser step, an EMA update, a checkpoint load or a new weight tensor repacks it."""
    w = module.weight
    if (not _CPU_PACKING or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
            or w.dtype != torch.float32 or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()
            or not torch._C._get_mkldnn_enabled()):
        return None
    try:
        key = (w._version, w.data_ptr(), shape_key)
    except RuntimeError:  # an inference tensor (made under inference_mode) has no version counter
        return None
    cached = _PACKED.get(module)
    # the weakref: a NEW weight tensor (load_state_dict(assign=True), .half().float()) may reuse the old one's
    # address and version number. Writes through `.data` bypass the version counter: they are not seen.
    if cached is None or cached[0] != key or cached[1]() is not w:
        cached = (key, weakref.ref(w), pack(w.detach()))
        _PACKED[module] = cached
    return cached[2]


class Conv2d(nn.Conv2d):
    """nn.Conv2d with a CPU inference fast path: oneDNN on a weight reordered once per (weights, input shape).

    Plain nn.Conv2d reorders the weight on every call, a copy that costs about a quarter of a 3x3 conv at 4x4
    resolution, and runs 1x1 convs on channels-last input through a slow generic kernel. Same parameters and state
    dict as nn.Conv2d; training, autocast, GPUs and torch.compile take the plain path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or x.dim() != 4:
            return super().forward(x)
        pad, stride, dil = list(self.padding), list(self.stride), list(self.dilation)
        w = _packed_weight(self, x, tuple(x.shape), lambda w: torch.ops.mkldnn._reorder_convolution_weight(
            w, pad, stride, dil, self.groups, list(x.shape)))
        if w is None:
            return super().forward(x)
        return torch.ops.mkldnn._convolution_pointwise(x, w, self.bias, pad, stride, dil, self.groups, "none", [], "")


class Linear(nn.Linear):
    """nn.Linear with a CPU inference fast path: oneDNN's matmul on a weight packed once.

    On CPUs where MKL's sgemm does not take its AVX-512 path (AMD EPYC, this project's machine) oneDNN runs these
    layers about 2x faster (bench/perf/README.md). Same parameters and state dict as nn.Linear.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _packed_weight(self, x, (), lambda w: torch.ops.mkldnn._reorder_linear_weight(w, None))
        if w is None:
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "none", [], "")


def _groups(cfg: UNetConfig, channels: int) -> int:
    return math.gcd(cfg.groups, channels)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias in place (not on the meta device, where there is nothing to write)."""
    for p in (module.weight, module.bias):
        if p is not None and p.device.type != "meta":
            nn.init.zeros_(p)
    return module


POSITION_FREQS = 4  # Fourier features of each coordinate: sin and cos of pi * 2^k * c for k < POSITION_FREQS
POSITION_FEATURES = 2 + 4 * POSITION_FREQS  # (x, y) themselves, then the sines and cosines of both


def coordinates(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The pixel centres' x and y in [-1, 1] (left/top = -1): [2, h, w], the same at every resolution."""
    def axis(n: int) -> torch.Tensor:
        return torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) * (1.0 if n > 1 else 0.0)

    ys, xs = axis(h), axis(w)
    return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)])


def position_features(h: int, w: int, device=None) -> torch.Tensor:
    """Fixed 2-D Fourier features of each position of an h x w grid: [h*w, POSITION_FEATURES] (row-major, as the
    attention blocks flatten [B, C, H, W] to [B, H*W, C])."""
    xy = coordinates(h, w, device).flatten(1).T  # [h*w, 2]
    freqs = math.pi * 2.0 ** torch.arange(POSITION_FREQS, device=device, dtype=torch.float32)  # [F]
    args = (xy[:, :, None] * freqs).flatten(1)  # [h*w, 2F]
    return torch.cat([xy, args.sin(), args.cos()], dim=1)


def log_snr_to_t(log_snr: torch.Tensor) -> torch.Tensor:
    """A bounded, monotone time-like value in (0, 1) from log-SNR in (-inf, inf): the cosine schedule's inverse."""
    return torch.atan(torch.exp(-0.5 * log_snr.float().clamp(-40.0, 40.0))) * (2.0 / math.pi)


def sinusoidal(x: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer-style features of a scalar per row: x [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = (x.float() * scale)[:, None] * freqs[None]  # [B, half]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> FiLM(cond) -> SiLU -> conv, plus a (1x1) shortcut."""

    def __init__(self, cfg: UNetConfig, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cfg, c_in), c_in)
        self.conv1 = Conv2d(c_in, c_out, 3, padding=1)
        self.film = Linear(cfg.cond_dim, 2 * c_out)  # scale and shift from the conditioning vector
        self.norm2 = nn.GroupNorm(_groups(cfg, c_out), c_out)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        if cfg.zero_init:
            zero_(self.conv2)  # the residual branch starts at zero: the block is its shortcut

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x [B, C_in, H, W], cond [B, cond_dim] (already SiLU-activated by the model)
        h = self.conv1(F.silu(self.norm1(x)))  # [B, C_out, H, W]
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)  # [B, C_out, 1, 1] each
        h = torch.addcmul(shift, self.norm2(h), scale + 1.0)
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.shortcut(x)


# How text cross-attention handles padding: "grouped" runs one unmasked SDPA call per distinct prompt length on
# the keys cut to that length, so SDPA may pick its flash or memory-efficient kernel (a mask rules flash out);
# "masked" is one call with the boolean mask; "auto" groups on CUDA in bf16/fp16 and masks elsewhere. Equal
# results (a test).
CROSS_ATTENTION = os.environ.get("IMAGEN_CROSS_ATTENTION", "auto")


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                    mode: str | None = None) -> torch.Tensor:
    """Attention of q [B, h, N, d] to k, v [B, h, L, d] where mask [B, L] (True = attend) is True on a prefix of
    each row (right padding, as tokenizers pad). A mask that is not a prefix takes the masked path."""
    mode = mode or CROSS_ATTENTION
    if mode not in ("auto", "grouped", "masked"):
        raise ValueError(f"IMAGEN_CROSS_ATTENTION must be auto, grouped or masked, got {mode!r}")
    # auto: where flash can run (CUDA, half precision) and not while torch.compile traces (data-dependent groups)
    grouped = mode == "grouped" or (mode == "auto" and q.device.type == "cuda"
                                    and q.dtype in (torch.bfloat16, torch.float16))
    if not grouped or mask.device.type == "meta" or torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    if bool(mask.all()):
        return F.scaled_dot_product_attention(q, k, v)  # no padding at all: no mask needed
    lengths = mask.sum(1)  # [B]
    prefix = torch.arange(mask.shape[1], device=mask.device)[None] < lengths[:, None]
    if bool((prefix == mask).all()) and bool((lengths > 0).all()):
        out = torch.empty_like(q)
        for n in lengths.unique().tolist():
            rows = (lengths == n).nonzero().squeeze(1)
            out[rows] = F.scaled_dot_product_attention(q[rows], k[rows, :, :n], v[rows, :, :n])
        return out
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])


class Attention(nn.Module):
    """Multi-head attention of image tokens to themselves (context None) or to text tokens (context given)."""

    def __init__(self, cfg: UNetConfig, channels: int, context_dim: int | None):
        super().__init__()
        self.heads, self.head_dim = cfg.attn_heads, cfg.attn_head_dim
        inner = self.heads * self.head_dim
        self.norm = nn.LayerNorm(channels)
        self.cross = context_dim is not None
        if self.cross:
            self.to_q = Linear(channels, inner, bias=False)
            self.to_kv = Linear(context_dim, 2 * inner, bias=False)
        else:
            self.to_qkv = Linear(channels, 3 * inner, bias=False)
        self.to_out = Linear(inner, channels)
        # self-attention with cfg.attn_position: fixed Fourier features of each token's position, projected by a
        # learned layer that starts at zero (the untrained block is the block without it)
        self.pos_proj = (zero_(Linear(POSITION_FEATURES, channels))
                         if cfg.attn_position and not self.cross else None)
        if cfg.zero_init:
            zero_(self.to_out)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, heads, N, head_dim]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, grid: tuple[int, int] | None = None) -> torch.Tensor:
        # x [B, N, C] image tokens; context [B, L, Dc]; context_mask [B, L] bool (True = attend); grid = (H, W), N = H*W
        h = self.norm(x)
        if self.pos_proj is not None:
            h = h + self.pos_proj(position_features(*grid, device=x.device).to(h.dtype))  # + [N, C]
        if self.cross:
            q = self._split(self.to_q(h))
            k, v = (self._split(t) for t in self.to_kv(context).chunk(2, dim=-1))
            out = cross_attention(q, k, v, context_mask)  # [B, heads, N, head_dim]
        else:
            q, k, v = (self._split(t) for t in self.to_qkv(h).chunk(3, dim=-1))
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)  # [B, N, inner]
        return x + self.to_out(out)


class AttnBlock(nn.Module):
    """Optional self-attention, optional text cross-attention, then a feed-forward layer, on [B, C, H, W]."""

    def __init__(self, cfg: UNetConfig, channels: int, self_attn: bool, cross_attn: bool):
        super().__init__()
        self.self_attn = Attention(cfg, channels, None) if self_attn else None
        self.cross_attn = Attention(cfg, channels, cfg.cond_dim) if cross_attn else None
        self.ff = nn.Sequential(nn.LayerNorm(channels), Linear(channels, 2 * channels), nn.GELU(),
                                Linear(2 * channels, channels))
        if cfg.zero_init:
            zero_(self.ff[-1])

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        t = x.flatten(2).transpose(1, 2)  # [B, H*W, C]
        if self.self_attn is not None:
            t = self.self_attn(t, grid=(hgt, wid))
        if self.cross_attn is not None:
            t = self.cross_attn(t, text, text_mask)
        t = t + self.ff(t)
        return t.transpose(1, 2).reshape(b, c, hgt, wid)


class Level(nn.Module):
    """The residual blocks and attention of one level (shared by DBlock and UBlock)."""

    def __init__(self, cfg: UNetConfig, c_in: int, c_out: int, n_blocks: int, self_attn: bool, cross_attn: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(cfg, c_in if j == 0 else c_out, c_out) for j in range(n_blocks))
        self.attn = AttnBlock(cfg, c_out, self_attn, cross_attn) if (self_attn or cross_attn) else None
        self.checkpointing = False  # set through EfficientUNet.grad_checkpointing

    def forward(self, x, cond, text, text_mask):
        ckpt = self.checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            # gradient checkpointing: keep only each block's input; backward recomputes its activations
            x = checkpoint(block, x, cond, use_reentrant=False) if ckpt else block(x, cond)
        if self.attn is not None:
            x = checkpoint(self.attn, x, text, text_mask, use_reentrant=False) if ckpt else self.attn(x, text, text_mask)
        return x


class EfficientUNet(nn.Module):
    """forward(x, log_snr, text, text_mask, *, drop_text=None, lowres=None, aug_level=None) -> prediction."""

    def __init__(self, cfg: UNetConfig, null_text: str = "learned"):
        super().__init__()
        if null_text not in ("learned", "zero"):
            raise ValueError(f"null_text must be 'learned' or 'zero', got {null_text!r}")
        self.cfg = cfg
        chans = [cfg.dim * m for m in cfg.dim_mults]
        n = len(chans)
        c_cond = cfg.cond_dim

        # conditioning: time (log-SNR), pooled text, SR augmentation level -> one vector [B, cond_dim] (2.5, 2.4)
        self.sin_dim = max(32, (cfg.dim // 2) * 2)
        self.time_mlp = nn.Sequential(Linear(self.sin_dim, c_cond), nn.SiLU(), Linear(c_cond, c_cond))
        self.aug_mlp = (nn.Sequential(Linear(self.sin_dim, c_cond), nn.SiLU(), Linear(c_cond, c_cond))
                        if cfg.lowres_cond else None)
        self.text_norm = nn.LayerNorm(cfg.text_dim)  # 2.5: layer norm of the text tokens
        self.text_proj = Linear(cfg.text_dim, c_cond)  # tokens [B, L, D] -> [B, L, cond_dim]
        self.pool_proj = nn.Sequential(Linear(cfg.text_dim, c_cond), nn.SiLU(), Linear(c_cond, c_cond))
        # classifier-free guidance (2.2): the embedding that replaces dropped text, learned or fixed zero
        if null_text == "learned":
            self.null_token = nn.Parameter(torch.randn(c_cond) * 0.02)  # one key/value token
            self.null_pooled = nn.Parameter(torch.zeros(c_cond))
        else:
            self.register_buffer("null_token", torch.zeros(c_cond), persistent=False)
            self.register_buffer("null_pooled", torch.zeros(c_cond), persistent=False)

        # image path
        c_img = cfg.in_channels * (2 if cfg.lowres_cond else 1)  # SR: noisy image ++ upsampled low-res image
        c_img += 2 if cfg.position_input else 0  # ++ x, y coordinate channels
        self.conv_in = Conv2d(c_img, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i in range(n):
            # B.1: the DBlock downsamples first, so its convolutions run at the lower resolution
            self.downsample.append(Conv2d(chans[i - 1], chans[i], 3, stride=2, padding=1) if i else nn.Identity())
            self.down.append(Level(cfg, chans[i], chans[i], cfg.num_res_blocks[i], cfg.self_attn[i],
                                   cfg.cross_attn[i]))
        self.mid = Level(cfg, chans[-1], chans[-1], 2, cfg.self_attn[-1], cfg.cross_attn[-1])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(n)):
            self.up.append(Level(cfg, 2 * chans[i], chans[i], cfg.num_res_blocks[i], cfg.self_attn[i],
                                 cfg.cross_attn[i]))
            # B.1: the UBlock upsamples after its convolutions; the channel-changing conv also runs at the low
            # resolution (a quarter of the FLOPs of conv-after-upsample, same parameters)
            self.upsample.append(nn.Sequential(Conv2d(chans[i], chans[i - 1], 3, padding=1),
                                               nn.Upsample(scale_factor=2.0, mode="nearest")) if i else nn.Identity())
        self.norm_out = nn.GroupNorm(_groups(cfg, chans[0]), chans[0])
        self.conv_out = Conv2d(chans[0], cfg.in_channels, 3, padding=1)
        if self.conv_out.weight.device.type != "meta":
            nn.init.zeros_(self.conv_out.weight)  # the untrained model predicts zero
            nn.init.zeros_(self.conv_out.bias)

    @property
    def grad_checkpointing(self) -> bool:
        """Recompute each residual and attention block in backward instead of keeping its activations."""
        return any(m.checkpointing for m in self.modules() if isinstance(m, Level))

    @grad_checkpointing.setter
    def grad_checkpointing(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, Level):
                m.checkpointing = bool(on)

    # ------------------------------------------------------------------ conditioning
    def condition(self, log_snr, text, text_mask, drop_text=None, aug_level=None):
        """-> (cond [B, cond_dim] after SiLU, text tokens [B, L, cond_dim], mask [B, L] with null rows applied)."""
        b, length = text_mask.shape
        # a bool mask, whatever came in: SDPA would ADD a float 0/1 mask as a bias and attend to the padding
        text_mask = text_mask.to(device=text.device, dtype=torch.bool)
        drop = ~text_mask.any(dim=1)  # a row with no valid token is treated as dropped
        if drop_text is not None:
            drop = drop | drop_text.to(device=text_mask.device, dtype=torch.bool)
        normed = self.text_norm(text.to(self.text_proj.weight.dtype))  # [B, L, D]
        tokens = self.text_proj(normed)  # [B, L, cond_dim]
        pool = self.pool_proj(pooled(normed, text_mask))  # [B, cond_dim]
        if length == 0:  # no text at all: one slot for the null token
            tokens = tokens.new_zeros(b, 1, tokens.shape[-1])
            text_mask = torch.zeros(b, 1, dtype=torch.bool, device=tokens.device)
            drop = torch.ones_like(drop)
        # dropped rows see only the null token at position 0 (2.2); their own text cannot leak through
        first = torch.zeros_like(text_mask)
        first[:, 0] = True
        d = drop[:, None]
        tokens = torch.where(d[..., None], self.null_token.to(tokens.dtype).expand_as(tokens), tokens)
        mask = torch.where(d, first, text_mask)
        pool = torch.where(d, self.null_pooled.to(pool.dtype).expand_as(pool), pool)

        t = log_snr_to_t(log_snr.reshape(-1).expand(b) if log_snr.numel() == 1 else log_snr)
        cond = self.time_mlp(sinusoidal(t, self.sin_dim).to(tokens.dtype)) + pool
        if self.aug_mlp is not None:
            aug = aug_level if aug_level is not None else torch.zeros(b, device=t.device)
            cond = cond + self.aug_mlp(sinusoidal(aug.reshape(-1).expand(b) if aug.numel() == 1 else aug,
                                                  self.sin_dim).to(tokens.dtype))
        return F.silu(cond), tokens, mask

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, log_snr: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, *,
                drop_text: torch.Tensor | None = None, lowres: torch.Tensor | None = None,
                aug_level: torch.Tensor | None = None) -> torch.Tensor:
        # x [B, C, H, W]; log_snr [B]; text [B, L, D]; text_mask [B, L] bool; lowres [B, C, H, W] (SR only)
        cond, tokens, mask = self.condition(log_snr, text, text_mask, drop_text, aug_level)
        if self.cfg.lowres_cond:
            if lowres is None:
                raise ValueError("this is a super-resolution U-Net: pass lowres (already at the output size)")
            x = torch.cat([x, lowres.to(x.dtype)], dim=1)  # [B, 2C, H, W]
        if self.cfg.position_input:
            xy = coordinates(x.shape[-2], x.shape[-1], x.device, x.dtype)  # [2, H, W]
            x = torch.cat([x, xy.expand(x.shape[0], -1, -1, -1)], dim=1)  # [B, C (+C) + 2, H, W]
        # channels-last: faster convolutions on CPU and GPU, and the attention blocks' [B, H*W, C] view is free
        h = self.conv_in(x.contiguous(memory_format=torch.channels_last))
        skips = []
        for down, level in zip(self.downsample, self.down):
            h = level(down(h), cond, tokens, mask)
            skips.append(h)
        h = self.mid(h, cond, tokens, mask)
        for level, up in zip(self.up, self.upsample):
            h = torch.cat([h, skips.pop() * SKIP_SCALE], dim=1)  # [B, 2C_i, H_i, W_i]
            h = up(level(h, cond, tokens, mask))
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()  # [B, C, H, W], standard layout


def count_parameters(cfg: UNetConfig, null_text: str = "learned") -> int:
    """Parameters of the U-Net a config describes, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = EfficientUNet(cfg, null_text=null_text)
    return sum(p.numel() for p in model.parameters())


__all__ = ["EfficientUNet", "count_parameters", "cross_attention", "CROSS_ATTENTION", "log_snr_to_t", "sinusoidal",
           "SKIP_SCALE", "coordinates", "position_features", "zero_"]
