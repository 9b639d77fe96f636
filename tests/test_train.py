"""The trainer: config validation, bit-exact resume, refusal of foreign/corrupt checkpoints, EMA, the CLI."""

import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from imagen.config import CascadeConfig, StageConfig, TextEncoderConfig, UNetConfig
from imagen.ema import EMA, ema_decay
from imagen.errors import UserError
from imagen.train import RunConfig, TrainConfig, DataConfig, load_config, lr_at, parse_config, train


class FakeEncoder:
    """Deterministic text embeddings from a hash of each word (no model download, instant)."""

    id, dim, max_length = "fake:16", 16, 8

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        words = [t.split()[: self.max_length] for t in texts]
        L = max(1, max(len(w) for w in words))
        tok = torch.zeros(len(texts), L, self.dim)
        mask = torch.zeros(len(texts), L, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "little")
                tok[i, j] = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
                mask[i, j] = True
        return tok, mask


def micro_cascade() -> CascadeConfig:
    unet = dict(dim=8, dim_mults=(1, 2), num_res_blocks=(1, 1), self_attn=(False, True), cross_attn=(False, True),
                attn_heads=1, attn_head_dim=8, text_dim=16, cond_dim=16, groups=4)
    return CascadeConfig(
        name="micro", text=TextEncoderConfig(kind="minilm", dim=16, max_length=8),
        stages=(StageConfig("base", 8, UNetConfig(**unet)),
                StageConfig("sr", 16, UNetConfig(**unet, lowres_cond=True), lowres_resolution=8)))


def micro_run(out, stage="base", steps=6, **train_kw) -> RunConfig:
    t = dict(stage=stage, steps=steps, batch_size=4, lr=1e-3, warmup=2, checkpoint_every=3, sample_every=0,
             sample_steps=2, log_every=1, ema_decay=0.9, ema_warmup=2)
    t.update(train_kw)
    return RunConfig(micro_cascade(), TrainConfig(**t), DataConfig(kind="shapes", n=24, seed=0), str(out))


def _state(out, stage="base"):
    return load_file(str(out / "train_state" / f"{stage}.safetensors"))


def test_resume_is_bit_exact(tmp_path):
    enc = FakeEncoder()
    a, b = tmp_path / "a", tmp_path / "b"
    ra = train(micro_run(a), progress=False, encoder=enc)
    train(micro_run(b), progress=False, encoder=enc, stop_at=3)
    mid = _state(b)
    rb = train(micro_run(b), progress=False, encoder=enc, resume=True)
    assert ra["step"] == rb["step"] == 6
    sa, sb = _state(a), _state(b)
    assert set(sa) == set(sb) and any(k.startswith("optim.") for k in sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # training really moved the weights between step 3 and step 6
    assert any(not torch.equal(mid[k], sa[k]) for k in sa if k.startswith("model."))
    # the inference checkpoint holds the EMA weights
    ema = load_file(str(a / "base.safetensors"))
    assert all(torch.equal(ema[k], sa["ema." + k]) for k in ema)
    # loss.csv after resume has each step once
    rows = (b / "loss.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[1]) for r in rows] == list(range(1, 7))
    assert (a / "samples" / "base-step6.png").is_file()


def test_refuses_other_config_and_corrupt_state(tmp_path):
    enc = FakeEncoder()
    train(micro_run(tmp_path, steps=2, checkpoint_every=2), progress=False, encoder=enc)
    with pytest.raises(UserError, match="--resume"):
        train(micro_run(tmp_path, steps=4), progress=False, encoder=enc)
    with pytest.raises(UserError, match="different config"):
        train(micro_run(tmp_path, steps=4, lr=5e-4), progress=False, encoder=enc, resume=True)
    f = tmp_path / "train_state" / "base.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(UserError, match="corrupt"):
        train(micro_run(tmp_path, steps=4), progress=False, encoder=enc, resume=True)
    (tmp_path / "train_state" / "base.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        train(micro_run(tmp_path, steps=4), progress=False, encoder=enc, resume=True)


def test_sr_stage_joins_the_base_run_folder(tmp_path):
    enc = FakeEncoder()
    train(micro_run(tmp_path, steps=2), progress=False, encoder=enc)
    train(micro_run(tmp_path, stage="sr", steps=2), progress=False, encoder=enc)
    from imagen.checkpoint import load_cascade

    cascade = load_cascade(tmp_path)
    sr = load_file(str(tmp_path / "sr.safetensors"))
    assert all(torch.equal(cascade.unets[1].state_dict()[k], v) for k, v in sr.items())
    other = RunConfig(micro_cascade().__class__(name="other", text=micro_cascade().text,
                                                stages=micro_cascade().stages), micro_run(tmp_path).train,
                      micro_run(tmp_path).data, str(tmp_path))
    with pytest.raises(UserError, match="different cascade"):
        train(other, progress=False, encoder=enc)


def test_config_validation(tmp_path):
    good = {"out": "x", "model": {"preset": "tiny"}, "train": {"steps": 5}, "data": {"kind": "shapes", "n": 4}}
    run = parse_config(good)
    assert run.train.steps == 5 and run.model.name == "tiny"
    for bad, msg in [
        ({**good, "train": {"stepz": 5}}, r"'stepz' in \[train\]"),
        ({**good, "data": {"kind": "shapes", "colour": 1}}, r"'colour' in \[data\]"),
        ({**good, "train": {"steps": "five"}}, r"\[train\] steps"),
        ({**good, "train": {"precision": "fp8"}}, "precision"),
        ({**good, "train": {"stage": "sr9"}}, "sr9"),
        ({**good, "data": {"kind": "folder"}}, "path"),
        ({**good, "data": {"crop": 8}}, "SR stages only"),
        ({**good, "train": {"log_snr_shift": -40}}, r"\[train\] log_snr_shift must be a number in \[-10, 10\]"),
        ({**good, "data": {"kind": "shapes", "categories": ["Colors", "Colours"]}}, r"\[data\] unknown shapes categories 'Colours'"),
        ({**good, "data": {"kind": "folder", "path": "p", "captions": "c", "categories": ["Colors"]}},
         "for the shapes worlds only"),
        ({**good, "extra": 1}, "extra"),
        ({k: v for k, v in good.items() if k != "model"}, r"\[model\]"),
    ]:
        with pytest.raises(UserError, match=msg):
            parse_config(bad)
    # the shipped reference configs parse and describe one and the same cascade
    base, sr = load_config("configs/shapes_base.toml"), load_config("configs/shapes_sr.toml")
    assert base.model == sr.model and base.train.stage != sr.train.stage
    assert sr.model.stage(sr.train.stage).resolution == 4 * sr.model.stage(sr.train.stage).lowres_resolution


def test_config_hash_of_the_default_category_cycle_and_shift_is_the_hash_before_the_keys():
    import dataclasses
    import hashlib
    import json

    from imagen.config import to_dict
    from imagen.train import _NO_HASH, config_hash

    run = parse_config({"out": "x", "model": {"preset": "tiny"}, "train": {"steps": 5}, "data": {"kind": "shapes"}})
    tr = {k: v for k, v in to_dict(run.train).items()
          if k not in _NO_HASH and k not in ("log_snr_shift", "init", "optimizer")}
    tr["precision"] = "fp32"  # the old default; "auto" resolves to it on a CPU
    data = {k: v for k, v in to_dict(run.data).items() if k != "categories"}
    before = json.dumps({"model": to_dict(run.model), "train": tr, "data": data}, sort_keys=True)
    assert config_hash(run) == hashlib.sha256(before.encode()).hexdigest()
    cycled = dataclasses.replace(run, data=dataclasses.replace(run.data, categories=("Colors", "Positional")))
    assert config_hash(cycled) != config_hash(run)
    shifted = dataclasses.replace(run, train=dataclasses.replace(run.train, log_snr_shift=-4.0))
    assert config_hash(shifted) != config_hash(run)


def test_lr_schedule_and_ema_math():
    t = TrainConfig(lr=1.0, warmup=4, steps=14, lr_schedule="cosine")
    assert [lr_at(s, t) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert math.isclose(lr_at(14, t), 0.1) and math.isclose(lr_at(9, t), 0.55)
    assert lr_at(100, TrainConfig(lr=2.0, warmup=4)) == 2.0
    assert ema_decay(1, 0.999, 10) == pytest.approx(2 / 11) and ema_decay(10**6, 0.999, 10) == 0.999
    m = torch.nn.Linear(3, 2)
    e = EMA(m, decay=0.9, warmup=0)
    before = {k: v.clone() for k, v in e.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    e.update(m, 1)
    for k, v in m.state_dict().items():
        assert torch.allclose(e.state_dict()[k], 0.9 * before[k] + 0.1 * v)


def test_cli_train_json_and_errors(tmp_path, capsys, monkeypatch):
    from imagen_bench import main

    monkeypatch.setattr("imagen.text.load_text_encoder", lambda cfg, device="cpu": FakeEncoder())
    cfg = tmp_path / "c.toml"
    cascade = micro_cascade()
    from imagen.config import to_dict

    (tmp_path / "model.json").write_text(json.dumps(to_dict(cascade)))
    cfg.write_text(f'out = "{tmp_path / "run"}"\n[model]\nfile = "model.json"\n'
                   '[train]\nsteps = 2\nbatch_size = 2\nsample_every = 0\nsample_steps = 2\n'
                   '[data]\nkind = "shapes"\nn = 8\n')
    assert main(["train", str(cfg), "--json", "--device", "cpu", "--text-cache", str(tmp_path / "tc")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 2 and np.isfinite(out["loss"])
    assert main(["train", str(cfg), "--set", "train.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_init_starts_model_and_ema_from_given_weights(tmp_path):
    from imagen.train import config_hash

    enc = FakeEncoder()
    a, b = tmp_path / "a", tmp_path / "b"
    train(micro_run(a, steps=3), progress=False, encoder=enc)
    start = load_file(str(a / "base.safetensors"))  # a's EMA weights
    shutil.copy(a / "base.safetensors", tmp_path / "copy.safetensors")
    # b: one step at a learning rate too small to move anything, from a's weights (a folder or the file itself)
    for init in (str(a), str(a / "base.safetensors")):
        train(micro_run(b, steps=1, lr=1e-12, warmup=0, init=init), progress=False, encoder=enc)
        got = _state(b)
        for k, v in start.items():
            torch.testing.assert_close(got[f"model.{k}"], v, rtol=0, atol=1e-9)
            torch.testing.assert_close(got[f"ema.{k}"], v, rtol=0, atol=1e-9)
        shutil.rmtree(b)
    # init decides only where a fresh run starts: not hashed (a resumed run does not read it, so the file may move
    # or change), recorded in the training state; a missing file is one clear error
    assert config_hash(micro_run(b, init=str(a))) == config_hash(micro_run(b))
    train(micro_run(b, steps=2, init=str(a)), progress=False, encoder=enc)
    (a / "base.safetensors").unlink()
    train(micro_run(b, steps=3, init=str(a)), resume=True, progress=False, encoder=enc)
    meta = json.loads((b / "train_state" / "base.json").read_text())
    assert meta["step"] == 3 and meta["init_sha256"] == hashlib.sha256(
        (tmp_path / "copy.safetensors").read_bytes()).hexdigest()
    with pytest.raises(UserError, match=r"\[train\] init: .*nowhere.* not found"):
        train(micro_run(tmp_path / "c", init=str(tmp_path / "nowhere")), progress=False, encoder=enc)


def test_only_the_trained_stage_is_materialised(tmp_path, monkeypatch):
    """Training the SR stage builds the base as meta tensors: the parameters holding memory are the SR stage's."""
    import imagen.cascade as C
    from imagen.unet import count_parameters

    seen = []

    class Spy(C.Cascade):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen.append(self)

    monkeypatch.setattr(C, "Cascade", Spy)
    run = micro_run(tmp_path / "r", stage="sr", steps=2, sample_every=1)
    train(run, progress=False, encoder=FakeEncoder())
    cascade = seen[0]  # the training cascade (previews build their own)
    real = sum(p.numel() for p in cascade.parameters() if p.device.type != "meta")
    assert real == count_parameters(run.model.stages[1].unet)
    assert all(p.device.type == "meta" for p in cascade.unets[0].parameters())
    assert (tmp_path / "r" / "samples" / "sr-step2.png").is_file()  # the preview still ran the base first


def test_adafactor_trains_and_resumes_bit_exactly(tmp_path):
    enc = FakeEncoder()
    a, b = tmp_path / "a", tmp_path / "b"
    train(micro_run(a, optimizer="adafactor", lr=1e-2), progress=False, encoder=enc)
    train(micro_run(b, optimizer="adafactor", lr=1e-2), progress=False, encoder=enc, stop_at=3)
    train(micro_run(b, optimizer="adafactor", lr=1e-2), progress=False, encoder=enc, resume=True)
    sa, sb = _state(a), _state(b)
    assert any(".row_var" in k or ".variance" in k for k in sa)  # Adafactor's factored moments are saved
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(UserError, match="optimizer must be adamw or adafactor"):
        parse_config({"out": "x", "model": {"preset": "tiny"}, "train": {"optimizer": "sgd"}})


def test_gradient_checkpointing_gives_the_same_gradients():
    from imagen.cascade import Cascade

    cfg = micro_cascade()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        cascade = Cascade(cfg)
        unet = cascade.unets[1]
        unet.grad_checkpointing = ckpt
        assert unet.grad_checkpointing == ckpt
        g = torch.Generator().manual_seed(3)
        x = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
        tok, mask = torch.randn(3, 4, 16, generator=g), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).bool()
        cascade.stage_loss(1, x, tok, mask, generator=torch.Generator().manual_seed(5)).backward()
        grads.append({n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


def test_fsdp_with_adafactor_is_refused_in_one_line():
    from imagen.train import _check_parallel

    t = TrainConfig(optimizer="adafactor", parallel="fsdp")
    _check_parallel(t, 1)  # one process: nothing is sharded
    with pytest.raises(UserError, match="adafactor.*does not run on FSDP"):
        _check_parallel(t, 2)


def test_a_state_of_another_config_names_the_difference(tmp_path):
    enc = FakeEncoder()
    train(micro_run(tmp_path / "r", steps=2), progress=False, encoder=enc)
    with pytest.raises(UserError, match=r"differs in train.lr: saved 0.001, now 0.002"):
        train(micro_run(tmp_path / "r", steps=4, lr=2e-3), progress=False, encoder=enc, resume=True)
