"""Checkpoints (imagen.checkpoint), the Pipeline (imagen.pipeline) and the `sample` command."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from imagen.checkpoint import build_untrained, checkpoint_hash, load_cascade, save_cascade
from imagen.config import CascadeConfig, SamplerConfig, StageConfig, TextEncoderConfig, UNetConfig
from imagen.errors import UserError
from imagen.pipeline import Pipeline
from imagen_bench import main

DIM = 16


class StubEncoder:
    """Deterministic word embeddings from a hash: the TextEncoder interface without a model."""

    id = "stub"
    dim = DIM
    max_length = 16

    def __init__(self):
        self.seen = []

    def encode(self, texts):
        self.seen.extend(texts)
        rows = []
        for t in texts:
            words = t.split()[: self.max_length] or [""]
            rows.append(torch.stack([torch.randn(DIM, generator=torch.Generator().manual_seed(
                int(hashlib.sha256(w.encode()).hexdigest()[:12], 16))) for w in words]))
        length = max(r.shape[0] for r in rows)
        tokens = torch.zeros(len(rows), length, DIM)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
            mask[i, : len(r)] = True
        return tokens, mask


def mini_cfg(name="mini", dim=8) -> CascadeConfig:
    """A real EfficientUNet cascade small enough for CPU tests: 8px base, 16px SR."""
    u = UNetConfig(dim=dim, dim_mults=(1, 2), num_res_blocks=(1, 1), self_attn=(False, True),
                   cross_attn=(False, True), attn_heads=1, attn_head_dim=8, text_dim=DIM, cond_dim=16, groups=4)
    sr = UNetConfig(dim=dim, dim_mults=(1, 2), num_res_blocks=(1, 1), self_attn=(False, False),
                    cross_attn=(False, True), attn_heads=1, attn_head_dim=8, text_dim=DIM, cond_dim=16, groups=4,
                    lowres_cond=True)
    return CascadeConfig(name, TextEncoderConfig(kind="hf", name="stub", dim=DIM),
                         (StageConfig("base", 8, u), StageConfig("sr16", 16, sr, lowres_resolution=8)))


def trained_like(cfg=None):
    """An untrained cascade whose zero output convs get random weights, so images depend on every weight."""
    cas = build_untrained(cfg or mini_cfg())
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for unet in cas.unets:
            unet.conv_out.weight.copy_(torch.randn(unet.conv_out.weight.shape, generator=g) * 0.1)
    return cas


SC = SamplerConfig(sampler="ddpm", steps=3, guidance=(3.0, 2.0), threshold="dynamic:0.99", aug_level=(0.1,))
PROMPTS = ["a red circle", "two blue squares", "a green triangle above a circle"]


# ----------------------------------------------------------------------------- checkpoints


def test_saved_and_reloaded_checkpoint_generates_the_same_image(tmp_path):
    cas = trained_like()
    before = Pipeline("mem", "none", cas, StubEncoder()).generate(PROMPTS, [1, 2, 3], SC)
    save_cascade(cas, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["base.safetensors", "config.json",
                                                                     "sr16.safetensors"]
    pipe = Pipeline.load(str(tmp_path / "ckpt"), encoder=StubEncoder())
    after = pipe.generate(PROMPTS, [1, 2, 3], SC)
    assert after.shape == (3, 16, 16, 3) and after.dtype == np.uint8
    assert np.array_equal(before, after)
    assert pipe.checkpoint_hash == checkpoint_hash(tmp_path / "ckpt")
    # a different checkpoint gives different images and a different hash
    assert not np.array_equal(after, Pipeline("u", "u", build_untrained(mini_cfg()), StubEncoder()).generate(
        PROMPTS, [1, 2, 3], SC))


def test_checkpoint_hash_covers_config_and_weights(tmp_path):
    cas = trained_like()
    save_cascade(cas, tmp_path / "a")
    h = checkpoint_hash(tmp_path / "a")
    assert len(h) == 64 and h == checkpoint_hash(tmp_path / "a")
    with torch.no_grad():
        cas.unets[1].conv_out.bias.add_(0.01)
    save_cascade(cas, tmp_path / "b")
    assert checkpoint_hash(tmp_path / "b") != h


def test_corrupt_checkpoint_is_refused(tmp_path):
    save_cascade(trained_like(), tmp_path / "c")
    (tmp_path / "c" / "sr16.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="sr16.safetensors is corrupt"):
        load_cascade(tmp_path / "c")


def test_truncated_weights_are_refused(tmp_path):
    save_cascade(trained_like(), tmp_path / "t")
    path = tmp_path / "t" / "base.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="base.safetensors is corrupt"):
        load_cascade(tmp_path / "t")


def test_mismatched_weights_are_refused(tmp_path):
    save_cascade(trained_like(mini_cfg(dim=8)), tmp_path / "m")
    other = build_untrained(mini_cfg(dim=12))
    save_cascade(other, tmp_path / "o")
    (tmp_path / "m" / "config.json").write_text((tmp_path / "o" / "config.json").read_text())
    with pytest.raises(UserError, match="does not match config.json.*shape"):
        load_cascade(tmp_path / "m")


def test_missing_files_are_refused(tmp_path):
    save_cascade(trained_like(), tmp_path / "f", stages=["base"])
    with pytest.raises(UserError, match="no weights for stage 'sr16'"):
        load_cascade(tmp_path / "f")
    assert load_cascade(tmp_path / "f", allow_missing=True).cfg.name == "mini"
    (tmp_path / "f" / "config.json").unlink()
    with pytest.raises(UserError, match="no config.json"):
        load_cascade(tmp_path / "f")
    (tmp_path / "f" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid cascade config"):
        load_cascade(tmp_path / "f")


def test_unknown_model_lists_presets():
    with pytest.raises(UserError, match="tiny"):
        Pipeline.load("no-such-model-xyz", encoder=StubEncoder())


def test_untrained_preset_is_deterministic_and_restores_rng():
    state = torch.random.get_rng_state()
    a = build_untrained(mini_cfg())
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)
    b = build_untrained(mini_cfg())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_untrained_preset_leaves_accelerator_rngs_alone(monkeypatch):
    """torch.manual_seed would reseed every CUDA generator (never restored): a Pipeline.load in the middle of a
    GPU run would reset its dropout/noise stream. Only the CPU generator may be touched."""
    called = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: called.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: called.append(seed))
    build_untrained(mini_cfg())
    assert called == []


# ----------------------------------------------------------------------------- pipeline


def test_generate_is_batch_independent_and_encodes_through_the_encoder():
    enc = StubEncoder()
    pipe = Pipeline("mem", "none", trained_like(), enc)
    whole = pipe.generate(PROMPTS, [5, 6, 7], SC, batch_size=3)
    ones = pipe.generate(PROMPTS, [5, 6, 7], SC, batch_size=1)
    assert np.abs(whole.astype(int) - ones.astype(int)).max() <= 1  # 1e-4 in [-1, 1] may flip one level
    assert enc.seen == PROMPTS + PROMPTS
    assert not np.array_equal(whole[0], whole[1])
    with pytest.raises(UserError, match="one seed per prompt"):
        pipe.generate(PROMPTS, [1], SC)
    assert pipe.generate([], [], SC).shape == (0, 16, 16, 3)


# ----------------------------------------------------------------------------- CLI


def test_sample_cli_writes_png_of_the_right_size(tmp_path, capsys):
    out = tmp_path / "img.png"
    rc = main(["sample", "--preset", "tiny", "--prompt", "a red circle", "--prompt", "a blue square",
               "--guidance", "3", "1", "--threshold", "dynamic:0.995", "--sampler", "ddim", "--steps", "2",
               "--seed", "4", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    paths = [tmp_path / "img-0.png", tmp_path / "img-1.png"]
    assert [i["path"] for i in info["images"]] == [str(p) for p in paths]
    for p in paths:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == (64, 64) and im.mode == "RGB"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("bad", ["dynamic:1.5", "dynamic:abc", "foo"])
def test_sample_cli_bad_threshold_exits_2_with_one_line(tmp_path, capsys, bad):
    out = tmp_path / "x.png"
    rc = main(["sample", "--preset", "tiny", "--prompt", "x", "--threshold", bad, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("imagen-bench: error:") and "dynamic:P" in err
    assert not out.exists()


def test_bf16_sampling_stays_close_to_fp32(data_dir):
    """--precision bf16: the shapes model's U-Nets in bf16 under bf16 autocast, against fp32 on the same seeds.
    Stated tolerance: a mean absolute difference under 1.5 of 255 levels and 99% of pixels within 12 levels (bf16
    keeps 8 bits of mantissa; the sampler's arithmetic stays fp32)."""
    import numpy as np

    from bench.generators import load_generator
    from imagen.config import SamplerConfig
    from imagen.pipeline import Pipeline

    s = SamplerConfig(sampler="ddim", steps=4, guidance=(3.0,), threshold="static")
    prompts = ["two red circles", "a blue square above a green triangle"]
    images = {}
    for p in ("fp32", "bf16"):
        pipe = Pipeline.load("shapes", precision=p)
        assert pipe.cascade.precision == p
        assert next(pipe.cascade.parameters()).dtype == (torch.bfloat16 if p == "bf16" else torch.float32)
        images[p] = pipe.generate(prompts, [0, 1], s).astype(int)
    diff = np.abs(images["bf16"] - images["fp32"])
    assert diff.mean() < 1.5 and np.quantile(diff, 0.99) <= 12, (diff.mean(), np.quantile(diff, 0.99))
    assert diff.max() > 0  # bf16 really ran
    assert load_generator("shapes", precision="bf16").describe(s)["precision"] == "bf16"
    with pytest.raises(UserError, match="give the dtype in the"):
        load_generator("diffusers:some/model", precision="bf16")


@pytest.mark.slow
def test_compiled_sampling_equals_eager():
    """--compile: torch.compile'd U-Nets (inductor; needs a C++ compiler on a CPU) give the eager images."""
    import numpy as np

    s = SamplerConfig(sampler="ddim", steps=3, guidance=(3.0,), threshold="static")
    eager = Pipeline.load("shapes").generate(["two red circles"], [0], s).astype(int)
    compiled = Pipeline.load("shapes", compile=True).generate(["two red circles"], [0], s).astype(int)
    assert np.abs(eager - compiled).max() <= 2
