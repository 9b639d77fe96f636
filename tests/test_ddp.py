"""Data-parallel training with 2 CPU processes (torchrun, gloo): both ranks end with the same weights."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

@pytest.mark.slow
def test_two_process_gloo_ranks_agree(tmp_path):
    driver = tmp_path / "driver.py"
    # each rank saves its trained U-Net weights through a hook on save: compare rank 0's checkpoint with rank 1's
    driver.write_text(textwrap.dedent('''
        import sys, torch
        sys.path.insert(0, sys.argv[2])
        torch.set_num_threads(1)
        import imagen.train as T
        from test_train import FakeEncoder, micro_run
        seen = {}
        orig = T.EMA if hasattr(T, "EMA") else None
        import imagen.ema as E
        class Spy(E.EMA):
            def update(self, model, step):
                seen["model"] = model
                return super().update(model, step)
        E.EMA = Spy
        out = sys.argv[1]
        res = T.train(micro_run(out, steps=3, checkpoint_every=3), progress=False, encoder=FakeEncoder())
        torch.save({k: v.detach().clone() for k, v in seen["model"].state_dict().items()}, f"{out}/rank{res['rank']}.pt")
    '''))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IMAGEN_DDP_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           str(driver), str(tmp_path / "run"), str(Path(__file__).parent)]
    (tmp_path / "run").mkdir()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "run" / "rank0.pt")
    w1 = torch.load(tmp_path / "run" / "rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "run" / "train_state" / "base.safetensors"))
    assert all(torch.equal(state["model." + k], w0[k]) for k in w0)
    import json

    meta = json.loads((tmp_path / "run" / "train_state" / "base.json").read_text())
    assert meta["world"] == 2 and len(meta["rng"]) == 2 and meta["step"] == 3
