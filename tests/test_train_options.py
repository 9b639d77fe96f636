"""The training options of issue 25, each off by default: absolute position (coordinate channels, a self-attention
position embedding), zero-initialised residual branches, renders cached in memory, fused AdamW, bf16 autocast on a
CPU. Old models and training states keep their files, hashes and results; a model trained with the options saves
them in its config and loads and samples with them."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from imagen.checkpoint import checkpoint_hash, load_cascade, read_config, resolve, save_cascade, shipped_models
from imagen.config import SamplerConfig, UNetConfig, cascade_from_json, cascade_to_json, to_dict
from imagen.errors import UserError
from imagen.train import _NO_HASH, config_hash, parse_config, train
from imagen.unet import EfficientUNet, coordinates, position_features
from test_train import FakeEncoder, _state, micro_cascade, micro_run

OPTIONS = dict(position_input=True, attn_position=True, zero_init=True)


def small_unet(**kw) -> UNetConfig:
    return dataclasses.replace(micro_cascade().stages[0].unet, **kw)


def inputs(b=2, res=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, res, res, generator=g), torch.randn(b, generator=g),
            torch.randn(b, 3, 16, generator=g), torch.ones(b, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- the options off: nothing changes


def test_shipped_models_keep_their_config_files_and_hashes():
    for name in shipped_models():
        folder = resolve(name)
        text = (folder / "config.json").read_text()
        assert cascade_to_json(cascade_from_json(text)) == text  # the added fields are not written at their default
        for stage in json.loads(text)["stages"]:  # an added field is there only where a model turned it on
            assert all(stage["unet"].get(k, True) is True for k in ("position_input", "attn_position", "zero_init"))
        assert len(checkpoint_hash(folder)) == 64
    old = [json.loads((resolve(n) / "config.json").read_text()) for n in ("shapes", "shapes-hard")]
    assert not any(k in st["unet"] for c in old for st in c["stages"] for k in ("position_input", "zero_init"))


def test_default_options_build_the_same_network_from_the_same_seed():
    torch.manual_seed(3)
    a = EfficientUNet(small_unet())
    torch.manual_seed(3)
    b = EfficientUNet(small_unet(position_input=False, attn_position=False, zero_init=False))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_to_dict_leaves_out_added_fields_at_their_default_only():
    assert "zero_init" not in to_dict(small_unet())
    d = to_dict(small_unet(**OPTIONS))
    assert d["position_input"] and d["attn_position"] and d["zero_init"]
    cfg = dataclasses.replace(micro_cascade(), stages=(dataclasses.replace(
        micro_cascade().stages[0], unet=small_unet(**OPTIONS)), micro_cascade().stages[1]))
    assert cascade_from_json(cascade_to_json(cfg)) == cfg


def test_train_config_hash_is_unchanged_by_the_added_keys_at_their_defaults():
    base = parse_config({"out": "x", "model": {"preset": "tiny"}, "train": {"steps": 5}, "data": {"kind": "shapes"}})
    same = parse_config({"out": "x", "model": {"preset": "tiny"}, "data": {"kind": "shapes"},
                         "train": {"steps": 5, "cache_renders": True, "fused_optimizer": False}})
    assert config_hash(base) == config_hash(same)  # cached renders are the same images: the same weights
    fused = parse_config({"out": "x", "model": {"preset": "tiny"}, "data": {"kind": "shapes"},
                          "train": {"steps": 5, "fused_optimizer": True}})
    assert config_hash(fused) != config_hash(base)
    assert "cache_renders" in _NO_HASH


# ----------------------------------------------------------------------------- the options on


def test_position_input_adds_coordinate_channels():
    net = EfficientUNet(small_unet(position_input=True))
    assert net.conv_in.weight.shape[1] == 3 + 2
    xy = coordinates(4, 5)
    assert xy.shape == (2, 4, 5) and xy[0, 0, 0] == -1 and xy[0, 0, -1] == 1 and xy[1, -1, 0] == 1
    assert torch.equal(xy[0, 1], xy[0, 2]) and torch.equal(coordinates(1, 1), torch.zeros(2, 1, 1))
    torch.nn.init.normal_(net.conv_out.weight, std=0.2)
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 8, 8), torch.zeros(1), torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool))
    # a blank input: without the coordinates the interior would be one value, with them it varies across the image
    assert out[0, :, 2:-2, 2:-2].flatten(1).std(1).min() > 1e-4


def test_attention_position_embedding_starts_at_zero_and_then_tells_positions_apart():
    torch.manual_seed(0)
    plain = EfficientUNet(small_unet())
    torch.manual_seed(0)
    with_pos = EfficientUNet(small_unet(attn_position=True))
    extra = set(with_pos.state_dict()) - set(plain.state_dict())
    assert extra and all(".pos_proj." in k for k in extra)
    torch.nn.init.normal_(plain.conv_out.weight, std=0.2)
    with_pos.load_state_dict(plain.state_dict(), strict=False)
    x = inputs()
    with torch.no_grad():
        assert torch.equal(plain(*x), with_pos(*x))  # zero-initialised projection: the same network at first
        for name, p in with_pos.named_parameters():
            if ".pos_proj." in name:
                p.normal_(std=0.5)
        assert not torch.allclose(plain(*x), with_pos(*x))
    feats = position_features(3, 4)
    assert feats.shape == (12, 2 + 16) and torch.equal(feats[:, :2], coordinates(3, 4).flatten(1).T)


def test_zero_init_makes_every_block_start_as_its_shortcut():
    net = EfficientUNet(small_unet(zero_init=True))
    zeroed = [n for n, p in net.named_parameters() if p.abs().sum() == 0]
    assert any(n.endswith("conv2.weight") for n in zeroed) and any("to_out.weight" in n for n in zeroed)
    assert any(n.endswith("ff.3.weight") for n in zeroed)
    assert all(p.abs().sum() == 0 for n, p in net.named_parameters() if n.endswith(("conv2.weight", "to_out.weight")))
    x = inputs()
    net.conv_out.weight.data.normal_(std=0.2)
    out = net(*x)
    out.square().mean().backward()  # the zeroed layers get gradients: they learn from the first step
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters()
               if n.endswith("conv2.weight"))


def options_run(out, **train_kw):
    run = micro_run(out, **train_kw)
    cfg = run.model
    base = dataclasses.replace(cfg.stages[0], unet=dataclasses.replace(cfg.stages[0].unet, **OPTIONS))
    return dataclasses.replace(run, model=dataclasses.replace(cfg, stages=(base, cfg.stages[1])))


def test_a_model_trained_with_the_options_saves_them_and_samples_with_them(tmp_path):
    run = options_run(tmp_path / "r", steps=3)
    train(run, progress=False, encoder=FakeEncoder())
    cfg = read_config(tmp_path / "r")
    assert cfg.stages[0].unet.position_input and cfg.stages[0].unet.attn_position and cfg.stages[0].unet.zero_init
    saved = json.loads((tmp_path / "r" / "train_state" / "base.json").read_text())["config"]
    assert saved["model"]["stages"][0]["unet"]["position_input"] is True
    cascade = load_cascade(tmp_path / "r", allow_missing=True)
    assert cascade.unets[0].conv_in.weight.shape[1] == 5
    tok, mask = FakeEncoder().encode(["a red circle", "two blue squares"])
    sampler = SamplerConfig(sampler="ddim", steps=3, guidance=(2.0,), threshold="static")
    sub = dataclasses.replace(cfg, stages=cfg.stages[:1])
    from imagen.cascade import Cascade

    base_only = Cascade(sub, make_unet=lambda _: cascade.unets[0])
    a = base_only.sample(tok, mask, [0, 1], sampler)
    again = load_cascade(tmp_path / "r", allow_missing=True)
    b = Cascade(sub, make_unet=lambda _: again.unets[0]).sample(tok, mask, [0, 1], sampler)
    assert torch.equal(a, b) and a.shape == (2, 3, 8, 8)
    save_cascade(again, tmp_path / "copy", stages=["base"])
    assert (tmp_path / "copy" / "config.json").read_text() == (tmp_path / "r" / "config.json").read_text()


def test_cached_renders_give_the_same_weights(tmp_path):
    a = train(micro_run(tmp_path / "a", steps=4), progress=False, encoder=FakeEncoder())
    b = train(micro_run(tmp_path / "b", steps=4, cache_renders=True), progress=False, encoder=FakeEncoder())
    assert a["loss"] == b["loss"]
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # a run may switch the cache on when it resumes: same config hash
    train(micro_run(tmp_path / "a", steps=6, cache_renders=True), resume=True, progress=False, encoder=FakeEncoder())


def test_rendered_images_in_worker_processes_equal_the_dataset():
    from imagen.data import RenderedImages, ShapesDataset

    ds = ShapesDataset(300, 0, 16, render_size=32, world="shapes-hard")
    cached = RenderedImages(ds, workers=2)
    assert cached.images.shape == (300, 16, 16, 3) and len(cached) == 300
    for i in (0, 1, 150, 299):
        assert np.array_equal(cached.image(i), ds.image(i)) and cached.caption(i) == ds.caption(i)


def test_fused_adamw_trains_and_is_refused_with_adafactor(tmp_path, capsys):
    res = train(micro_run(tmp_path / "f", steps=3, fused_optimizer=True), progress=True, encoder=FakeEncoder())
    assert np.isfinite(res["loss"])
    with pytest.raises(UserError, match="fused_optimizer"):
        parse_config({"out": "x", "model": {"preset": "tiny"}, "data": {"kind": "shapes"},
                      "train": {"optimizer": "adafactor", "fused_optimizer": True}})


def test_bf16_autocast_trains_on_a_cpu(tmp_path):
    res = train(micro_run(tmp_path / "bf", steps=3, precision="bf16"), progress=False, encoder=FakeEncoder())
    assert np.isfinite(res["loss"])
    # autocast: weights, EMA and optimiser state stay fp32
    assert all(v.dtype == torch.float32 for v in _state(tmp_path / "bf").values() if v.is_floating_point())
