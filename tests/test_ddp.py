"""Several processes (torchrun, gloo on CPU): PyTorch DDP and FSDP2 give the gradients of one process on the same
global batch, ranks agree, and a state saved by 2 processes resumes in 1."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent


def _torchrun(tmp_path, script: str, *args, port: int) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(script))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IMAGEN_DDP_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           str(driver), str(TESTS), *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


GRADIENTS = '''
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    torch.set_num_threads(1)
    import torch.distributed as dist
    from imagen import parallel
    from imagen.cascade import Cascade
    from test_train import micro_cascade

    mode, out = sys.argv[2], sys.argv[3]
    dev = torch.device("cpu")
    dd = parallel.init(dev)
    cfg = micro_cascade()
    torch.manual_seed(0)
    ref = Cascade(cfg)                      # the single-process model (rank 0 checks against it)
    torch.manual_seed(0)
    cascade = Cascade(cfg)
    unet = cascade.unets[0]
    model = parallel.wrap(unet, mode, dd, dev)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1           # the global batch: 2 rows per rank
    tok = torch.randn(4, 5, 16, generator=g)
    mask = torch.arange(5)[None] < torch.tensor([5, 3, 2, 4])[:, None]
    rows = slice(2 * dd.rank, 2 * dd.rank + 2)
    cascade.unets[0] = model
    gen = torch.Generator().manual_seed(100 + dd.rank)
    cascade.stage_loss(0, x[rows], tok[rows], mask[rows], generator=gen).backward()
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
             for n, p in unet.named_parameters()}
    if dd.rank == 0:                        # one process, same global batch and draws: mean of the two halves
        loss = sum(ref.stage_loss(0, x[2 * r:2 * r + 2], tok[2 * r:2 * r + 2], mask[2 * r:2 * r + 2],
                                  generator=torch.Generator().manual_seed(100 + r)) for r in range(2)) / 2
        loss.backward()
        want = {n: p.grad for n, p in ref.unets[0].named_parameters()}
        worst = max(float((grads[n] - want[n]).abs().max() / (want[n].abs().max() + 1e-12)) for n in want)
        torch.save({"worst": worst, "n": len(want), "sharded": parallel.is_sharded(unet)}, out)
    dist.destroy_process_group()
'''


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_give_the_single_process_gradients(tmp_path, mode):
    _torchrun(tmp_path, GRADIENTS, mode, tmp_path / "res.pt", port=29531 if mode == "ddp" else 29532)
    res = torch.load(tmp_path / "res.pt")
    assert res["n"] > 10 and res["sharded"] == (mode == "fsdp")
    assert res["worst"] < 1e-5, res


TRAIN = '''
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    torch.set_num_threads(1)
    import imagen.train as T
    from test_train import FakeEncoder, micro_run
    mode, out, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])
    res = T.train(micro_run(out, steps=9, checkpoint_every=3, parallel=mode), progress=False, encoder=FakeEncoder(),
                  stop_at=steps, resume=steps > 3)
'''


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_two_process_state_resumes_in_one_process(tmp_path, mode, capsys):
    """2 ranks train 3 steps (DDP or FSDP) and save in the single-device format; one process continues to step 6,
    and 2 ranks again to step 9 (loading a whole state into sharded parameters, optimiser and EMA)."""
    from safetensors.torch import load_file

    from imagen.checkpoint import load_cascade
    from imagen.train import train
    from test_train import FakeEncoder, micro_run

    run = tmp_path / "run"
    run.mkdir()
    _torchrun(tmp_path, TRAIN, mode, run, 3, port=29533 if mode == "ddp" else 29534)
    meta = json.loads((run / "train_state" / "base.json").read_text())
    assert meta["world"] == 2 and len(meta["rng"]) == 2 and meta["step"] == 3 and meta["parallel"] == mode
    mid = load_file(str(run / "train_state" / "base.safetensors"))
    n_params = sum(1 for k in mid if k.startswith("model."))
    assert sum(1 for k in mid if k.startswith("ema.")) == n_params
    assert sum(1 for k in mid if k.startswith("optim.") and k.endswith(".exp_avg")) == n_params  # whole AdamW state
    res = train(micro_run(run, steps=9, checkpoint_every=3), progress=True, encoder=FakeEncoder(), resume=True,
                stop_at=6)
    assert res["step"] == 6 and res["world"] == 1
    assert "resuming a 2-process state with 1 process(es)" in capsys.readouterr().out
    end = load_file(str(run / "train_state" / "base.safetensors"))
    assert any(not torch.equal(mid[k], end[k]) for k in mid if k.startswith("model."))
    assert load_cascade(run, allow_missing=True).cfg.name == "micro"
    _torchrun(tmp_path, TRAIN, mode, run, 9, port=29535 if mode == "ddp" else 29536)
    meta = json.loads((run / "train_state" / "base.json").read_text())
    assert meta["step"] == 9 and meta["world"] == 2
    last = load_file(str(run / "train_state" / "base.safetensors"))
    assert set(last) == set(end) and all(torch.isfinite(v).all() for v in last.values() if v.is_floating_point())
    assert any(not torch.equal(end[k], last[k]) for k in end if k.startswith("ema."))
    # resumed from 1 process into 2: each rank got its own random stream, not a copy of the saved one
    assert meta["rng"][0]["loss_generator"] != meta["rng"][1]["loss_generator"]


NO_CROSS = '''
    import dataclasses, sys, torch
    sys.path.insert(0, sys.argv[1])
    torch.set_num_threads(1)
    import imagen.train as T
    from test_train import FakeEncoder, micro_run
    run = micro_run(sys.argv[2], steps=3, checkpoint_every=3)
    stages = tuple(dataclasses.replace(st, unet=dataclasses.replace(st.unet, cross_attn=(False, False)))
                   for st in run.model.stages)
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, stages=stages))
    T.train(run, progress=False, encoder=FakeEncoder())
'''


def test_ddp_trains_a_model_whose_text_projection_is_unused(tmp_path):
    """Without cross-attention the token projection gets no gradient; DDP (static graph) trains on regardless."""
    (tmp_path / "run").mkdir()
    _torchrun(tmp_path, NO_CROSS, tmp_path / "run", port=29537)
    assert json.loads((tmp_path / "run" / "train_state" / "base.json").read_text())["step"] == 3


@pytest.mark.slow
def test_two_process_ranks_agree(tmp_path):
    """Both DDP ranks end with the same weights, and rank 0 saved them."""
    script = '''
        import sys, torch
        sys.path.insert(0, sys.argv[1])
        torch.set_num_threads(1)
        import imagen.train as T
        import imagen.ema as E
        from test_train import FakeEncoder, micro_run
        seen = {}
        class Spy(E.EMA):
            def update(self, model, step):
                seen["model"] = model
                return super().update(model, step)
        E.EMA = Spy
        out = sys.argv[2]
        res = T.train(micro_run(out, steps=3, checkpoint_every=3), progress=False, encoder=FakeEncoder())
        torch.save({k: v.detach().clone() for k, v in seen["model"].state_dict().items()}, f"{out}/rank{res['rank']}.pt")
    '''
    (tmp_path / "run").mkdir()
    _torchrun(tmp_path, script, tmp_path / "run", port=29517)
    w0 = torch.load(tmp_path / "run" / "rank0.pt")
    w1 = torch.load(tmp_path / "run" / "rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "run" / "train_state" / "base.safetensors"))
    assert all(torch.equal(state["model." + k], w0[k]) for k in w0)
