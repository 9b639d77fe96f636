"""A memory plan for one stage: what training and sampling keep on one device, and the largest batch that fits.

Method (`imagen-bench model plan` prints it):
- weights, gradients, optimiser state and EMA are counted from the parameter shapes (fp32 master weights; AdamW
  keeps two moments, Adafactor the factored second moments torch.optim.Adafactor allocates; FSDP divides all four
  by the number of ranks and adds the two largest blocks' whole fp32 weights, gathered while they run).
- activations are not guessed: the stage's own forward (and backward, for training) runs on shape-only tensors
  (meta tensors for fp32; torch's fake CPU tensors under CPU autocast for bf16, whose op lists are close to CUDA's) while a dispatch mode
  counts the bytes of every tensor the code creates, until the tensor is freed. Training's figure is the peak over
  forward + backward, gradients included as they appear. Sampling's is the peak of one forward of 2 x batch rows
  (classifier-free guidance runs cond and uncond together), with bf16 weights at bf16.
- on top: the CUDA context and allocator slack are not counted; keep a margin (the plan reserves 10%).
`tests/test_memory.py` checks the plan against measured CPU training steps (resident anonymous memory) within 25%.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import asdict, dataclass

import torch

from imagen.config import CascadeConfig
from imagen.errors import UserError

GiB = 2 ** 30


class LiveBytes:
    """Counts the bytes of tensors created by torch operations while active, until each is freed; keeps the peak."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        owner = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                owner._track(out)
                return out

        self.mode, self.seen, self.current, self.peak = _Mode(), set(), 0, 0
        self.grads, self.grads_at_peak = 0, 0  # gradient bytes held (as sharded), and at the peak

    def _track(self, out) -> None:
        from torch.utils._pytree import tree_flatten

        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t._base is None and id(t) not in self.seen:
                n = t.untyped_storage().nbytes()
                self.seen.add(id(t))
                self.current += n
                if self.current > self.peak:
                    self.peak, self.grads_at_peak = self.current, self.grads
                weakref.finalize(t, self._free, id(t), n)

    def gradient(self, nbytes: int, shards: int) -> None:
        """A parameter's gradient was accumulated: it counts 1/shards of its bytes from now on (FSDP keeps a shard;
        the whole one is freed after the reduce-scatter)."""
        self.current -= nbytes - nbytes // shards
        self.grads += nbytes // shards

    def _free(self, key: int, n: int) -> None:
        self.seen.discard(key)
        self.current -= n

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def _inputs(cfg: CascadeConfig, i: int, batch: int, crop: int = 0):
    st = cfg.stages[i]
    r, L = crop or st.resolution, cfg.text.max_length
    x = torch.randn(batch, 3, r, r)
    text = torch.randn(batch, L, st.unet.text_dim)
    mask = torch.ones(batch, L, dtype=torch.bool)
    kw = {}
    if st.is_sr:
        kw = dict(lowres=torch.randn(batch, 3, r, r), aug_level=torch.zeros(batch))
    return x, torch.zeros(batch), text, mask, kw


@contextlib.contextmanager
def _masked_cross_attention():
    from imagen import unet as U

    old = U.CROSS_ATTENTION, U._CPU_PACKING
    U.CROSS_ATTENTION = "masked"  # shape-only tensors: no data to group prompt lengths by
    U._CPU_PACKING = False  # nor oneDNN weight packing (the plain path allocates as CUDA does)
    try:
        yield
    finally:
        U.CROSS_ATTENTION, U._CPU_PACKING = old


def trace(cfg: CascadeConfig, i: int, batch: int, *, train: bool, bf16: bool = False,
          grad_checkpointing: bool = False, crop: int = 0, shards: int = 1) -> dict:
    """Traced bytes of stage i at `batch` (shape-only tensors, nothing allocated): {"peak" (of everything the step
    creates, gradients included as they appear, 1/shards of each), "grads_at_peak", "end_of_forward"}."""
    from imagen.unet import EfficientUNet

    st = cfg.stages[i]
    from torch._subclasses.fake_tensor import FakeTensorMode

    # shapes only: meta tensors for fp32; for bf16 fake CPU tensors, to which CPU autocast applies
    ctx = contextlib.ExitStack()
    ctx.enter_context(FakeTensorMode(allow_non_fake_inputs=True) if bf16 else torch.device("meta"))
    with ctx, _masked_cross_attention():
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16 if bf16 and not train else torch.float32)  # bf16 sampling: bf16 weights
        try:
            net = EfficientUNet(st.unet, null_text=st.null_text)
        finally:
            torch.set_default_dtype(old)
        x, ls, text, mask, kw = _inputs(cfg, i, batch, crop)
        net.grad_checkpointing = grad_checkpointing
        net.train(train)
        if not train:
            net.requires_grad_(False)
        live = LiveBytes()
        if train:
            for p in net.parameters():
                p.register_post_accumulate_grad_hook(lambda p: live.gradient(p.grad.untyped_storage().nbytes(), shards))
        with live, torch.set_grad_enabled(train):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = net(x, ls, text, mask, **kw)
                loss = out.float().square().mean() if train else None
            end = live.current
            if train:
                loss.backward()
        return {"peak": live.peak, "grads_at_peak": live.grads_at_peak, "end_of_forward": end}


def _adafactor_elements(shape: tuple[int, ...]) -> int:
    if len(shape) < 2:
        return math.prod(shape)
    return math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]  # row and column second moments


@dataclass(frozen=True)
class Plan:
    stage: str
    mode: str  # "train" | "sample"
    batch: int  # per device
    precision: str
    params: int
    weights: int
    gradients: int
    optimizer: int
    ema: int
    gathered: int  # FSDP: whole weights of the blocks being run
    activations: int  # the step's traced peak, less the gradients held at that moment
    # total = weights + optimizer + ema + gathered + the step's peak (activations and gradients as they appear)
    total: int
    gpu_memory: int | None
    fits: bool | None
    max_batch: int | None
    crop: int = 0
    optimizer_name: str = "adamw"
    parallel: str = "none"
    gpus: int = 1
    grad_checkpointing: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _static(cfg: CascadeConfig, i: int, mode: str, precision: str, optimizer: str, parallel: str, gpus: int):
    """(params, weights, gradients, optimizer, ema, gathered) bytes per device."""
    from imagen.unet import AttnBlock, EfficientUNet, ResBlock

    st = cfg.stages[i]
    with torch.device("meta"):
        net = EfficientUNet(st.unet, null_text=st.null_text)
    shapes = [tuple(p.shape) for p in net.parameters()]
    n = sum(math.prod(s) for s in shapes)
    if mode == "sample":
        return n, n * (2 if precision == "bf16" else 4), 0, 0, 0, 0
    shard = gpus if parallel == "fsdp" else 1
    opt = 8 * n if optimizer == "adamw" else 4 * sum(_adafactor_elements(s) for s in shapes)
    gathered = 0
    if shard > 1:
        units = sorted((sum(p.numel() for p in m.parameters()) for m in net.modules()
                        if isinstance(m, (ResBlock, AttnBlock))), reverse=True)
        gathered = 4 * sum(units[:2])
    return n, 4 * n // shard, 4 * n // shard, opt // shard, 4 * n // shard, gathered


def _step(cfg, i, batch, mode, precision, grad_checkpointing, crop=0, shards=1) -> dict:
    low = precision in ("bf16", "fp16")  # fp16 is traced as bf16: the same widths
    if mode == "sample":
        return trace(cfg, i, 2 * batch, train=False, bf16=low)
    return trace(cfg, i, batch, train=True, bf16=low, grad_checkpointing=grad_checkpointing, crop=crop,
                 shards=shards)


def plan(cfg: CascadeConfig, stage: str, batch: int, *, mode: str = "train", precision: str = "bf16",
         optimizer: str = "adamw", parallel: str = "none", gpus: int = 1, grad_checkpointing: bool = False,
         gpu_memory: int | None = None, margin: float = 0.10, crop: int = 0) -> Plan:
    """`crop`: training on random crops of this size ([data] crop; the paper's 1024 stage trains on 256 crops)."""
    names = [s.name for s in cfg.stages]
    if stage not in names:
        raise UserError(f"--stage {stage!r} is not a stage of {cfg.name}; stages: {', '.join(names)}")
    if batch < 1 or gpus < 1:
        raise UserError("--batch and --gpus must be at least 1")
    if mode not in ("train", "sample") or precision not in ("fp32", "bf16", "fp16"):
        raise UserError("--mode must be train or sample, --precision fp32, bf16 or fp16")
    if optimizer not in ("adamw", "adafactor") or parallel not in ("none", "ddp", "fsdp"):
        raise UserError("--optimizer must be adamw or adafactor, --parallel none, ddp or fsdp")
    if optimizer == "adafactor" and parallel == "fsdp" and gpus > 1:
        raise UserError("adafactor does not run on FSDP-sharded parameters (imagen.train refuses it): plan adafactor "
                        "with --parallel ddp, or adamw with fsdp")
    i = names.index(stage)
    n, w, g, o, e, gathered = _static(cfg, i, mode, precision, optimizer, parallel, gpus)
    if crop and not (cfg.stages[i].is_sr and crop <= cfg.stages[i].resolution):
        raise UserError("--crop is for training an SR stage on crops no larger than its resolution")
    shards = gpus if (parallel == "fsdp" and gpus > 1 and mode == "train") else 1
    step = _step(cfg, i, batch, mode, precision, grad_checkpointing, crop, shards)
    fixed = w + o + e + gathered  # the step's own peak holds the gradients (sharded) as they appear

    def total_at(b: int) -> int:
        return fixed + _step(cfg, i, b, mode, precision, grad_checkpointing, crop, shards)["peak"]

    total = fixed + step["peak"]
    act = step["peak"] - step["grads_at_peak"]
    fits = max_batch = None
    if gpu_memory:
        budget = gpu_memory * (1 - margin)
        fits = total <= budget
        # activations are linear in the batch at these sizes: a line through (batch, 2 batch), then checked by a
        # trace at the answer (and stepped down while it does not fit)
        per = (total_at(2 * batch) - total) / batch
        max_batch = max(0, int((budget - (total - batch * per)) // per)) if per > 0 else None
        for _ in range(4):
            if not max_batch or total_at(max_batch) <= budget:
                break
            max_batch = int(max_batch * 0.95)
    return Plan(stage, mode, batch, precision, n, w, g, o, e, gathered, act, total, gpu_memory,
                fits, max_batch, crop if mode == "train" else 0, optimizer, parallel if gpus > 1 else "none", gpus, grad_checkpointing)


def parse_size(text: str) -> int:
    """'80GiB', '80GB', '141 GiB', '16g' -> bytes."""
    t = text.strip().lower().replace(" ", "")
    units = {"gib": GiB, "gb": 10 ** 9, "g": GiB, "mib": 2 ** 20, "mb": 10 ** 6, "m": 2 ** 20, "tib": 2 ** 40}
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            try:
                return int(float(t[: -len(u)]) * units[u])
            except ValueError:
                break
    raise UserError(f"--gpu-memory {text!r}: write a size such as 80GiB, 141GiB or 24GB")


__all__ = ["LiveBytes", "Plan", "plan", "trace", "parse_size", "GiB"]
