"""Several processes training one stage: PyTorch's DistributedDataParallel or FSDP2 (`fully_shard`), under
torchrun / accelerate launch, each rank on its own device (LOCAL_RANK).

- `ddp`: every rank holds the whole U-Net; gradients are averaged in buckets that overlap the backward pass.
- `fsdp`: parameters, gradients and optimiser state are sharded over the ranks (one FSDP unit per residual block
  and attention block, then the root), for a stage that does not fit one device.

Checkpoints are always written in the single-device format (whole tensors, the optimiser state keyed by parameter
index, as `torch.optim.Optimizer.state_dict` keys it), so a run saved by 2 FSDP ranks resumes on 1 device, and the
other way round. The EMA of an FSDP run is kept on each rank's shards and gathered only to save or to preview.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from imagen.errors import UserError

MODES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this process group was created by init(), so shutdown() destroys it

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> Dist:
    """Join the process group torchrun / accelerate launch describe in the environment (world 1: nothing)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        nccl = device.type == "cuda" and os.environ.get("IMAGEN_DDP_BACKEND") != "gloo"
        dist.init_process_group("nccl" if nccl else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, owned)


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for a CUDA run under a launcher, else `device` as given."""
    if device.type != "cuda" or device.index is not None or "LOCAL_RANK" not in os.environ:
        return device
    local = int(os.environ["LOCAL_RANK"])
    if local >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) here: launch at most "
                        f"that many processes per node")
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown(d: Dist) -> None:
    """Leave the process group init() created: a gloo group left to the interpreter's exit can abort a rank
    ("terminate called without an active exception", exit -6) after its work is done."""
    if d.world > 1 and d.owned:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def mean_scalar(value: float, d: Dist, device: torch.device) -> float:
    if d.world <= 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / d.world


def gather_objects(obj, d: Dist) -> list:
    if d.world <= 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _fsdp_units(module: nn.Module):
    from imagen.unet import AttnBlock, ResBlock

    return [m for m in module.modules() if isinstance(m, (ResBlock, AttnBlock))]


def wrap(module: nn.Module, mode: str, d: Dist, device: torch.device) -> nn.Module:
    """The module the training step calls: the module itself (one process), DDP around it, or the module sharded in
    place by FSDP2 (which then is its own wrapper)."""
    if d.world <= 1:
        return module
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # static_graph: the same parameters take part every step (a config without cross-attention leaves the text
        # projection unused, which plain DDP refuses); gradients live in the buckets (no second copy)
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False, static_graph=True,
                                       gradient_as_bucket_view=True)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in _fsdp_units(module):
            fully_shard(unit)
        fully_shard(module)
        return module
    raise UserError(f"[train] parallel must be one of {', '.join(MODES)}, got {mode!r}")


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on the CPU (for a sharded module a collective: every rank calls it, rank 0 gets it)."""
    if not is_sharded(module):
        return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.contiguous() for k, v in sd.items()}


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if not is_sharded(module):
        module.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def _names(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def full_optim_state(module: nn.Module, opt: torch.optim.Optimizer) -> dict | None:
    """The optimiser's state dict in the single-device layout (state keyed by parameter index), whole tensors; for a
    sharded module a collective whose result only rank 0 gets (None elsewhere)."""
    if not is_sharded(module):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not sd:
        return None
    index = {n: k for k, n in enumerate(_names(module))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]]
    return {"state": {index[n]: st for n, st in sd["state"].items()}, "param_groups": groups}


def load_optim_state(module: nn.Module, opt: torch.optim.Optimizer, sd: dict) -> None:
    if not is_sharded(module):
        opt.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _names(module)
    fq = {"state": {names[int(k)]: st for k, st in sd["state"].items()},
          "param_groups": [{**g, "params": [names[int(k)] for k in g["params"]]} for g in sd["param_groups"]]}
    set_optimizer_state_dict(module, opt, fq, options=StateDictOptions(full_state_dict=True))


class ShardedEMA:
    """The EMA of an FSDP-sharded module, kept on this rank's shards (no gather per step)."""

    def __init__(self, module: nn.Module, decay: float, warmup: int):
        self.decay, self.warmup = decay, warmup
        self.names = [n for n, _ in module.named_parameters()]
        self.shadow = [p.detach().clone() for p in module.parameters()]  # DTensors, same sharding

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> float:
        from imagen.ema import ema_decay

        d = ema_decay(step, self.decay, self.warmup)
        for e, p in zip(self.shadow, module.parameters()):
            e.to_local().lerp_(p.detach().to_local().to(e.dtype), 1.0 - d)
        return d

    def full_state(self) -> dict[str, torch.Tensor]:
        """Whole tensors on the CPU (a collective: every rank calls it)."""
        return {n: e.full_tensor().detach().cpu().contiguous() for n, e in zip(self.names, self.shadow)}

    def load_full_state(self, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.tensor import distribute_tensor

        with torch.no_grad():
            for n, e in zip(self.names, self.shadow):
                src = distribute_tensor(state[n].to(e.device_mesh.device_type), e.device_mesh, e.placements)
                e.to_local().copy_(src.to_local())


__all__ = ["Dist", "MODES", "init", "rank_device", "barrier", "shutdown", "mean_scalar", "gather_objects", "wrap",
           "is_sharded", "full_model_state", "load_model_state", "full_optim_state", "load_optim_state",
           "ShardedEMA"]
