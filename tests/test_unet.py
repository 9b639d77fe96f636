"""The Efficient U-Net: shapes through every preset's stages, text masking, null text, B.1 structure."""

import dataclasses
import math

import pytest
import torch

import imagen.unet as unet_module
from imagen.config import PRESETS, UNetConfig, preset
from imagen.unet import SKIP_SCALE, EfficientUNet, ResBlock, count_parameters, log_snr_to_t

TEXT_DIM = 12


def narrow(u: UNetConfig) -> UNetConfig:
    """Same level structure (mults, blocks, attention placement), tiny widths."""
    return dataclasses.replace(u, dim=4, attn_heads=2, attn_head_dim=4, cond_dim=16, text_dim=TEXT_DIM, groups=2)


def randomised(model: EfficientUNet) -> EfficientUNet:
    """The output conv is zero-initialised; give it weights so outputs carry information."""
    torch.nn.init.normal_(model.conv_out.weight, std=0.2)
    return model.eval()


def inputs(b, res, length=5, seed=0, sr=False):
    g = torch.Generator().manual_seed(seed)
    kw = {}
    if sr:
        kw = dict(lowres=torch.randn(b, 3, res, res, generator=g), aug_level=torch.rand(b, generator=g) * 0.5)
    return (torch.randn(b, 3, res, res, generator=g), torch.randn(b, generator=g) * 4,
            torch.randn(b, length, TEXT_DIM, generator=g), torch.ones(b, length, dtype=torch.bool)), kw


def _run_every_stage(name, max_res):
    for st in preset(name).stages:
        model = randomised(EfficientUNet(narrow(st.unet), null_text=st.null_text))
        res = min(st.resolution, max_res)  # same level structure; 1024px at any width is slow on a CPU
        (x, snr, text, mask), kw = inputs(1, res, sr=st.is_sr)
        with torch.inference_mode():
            out = model(x, snr, text, mask, **kw)
        assert out.shape == x.shape, (name, st.name)
        assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_stage_of_every_preset_runs(name):
    _run_every_stage(name, max_res=64)


@pytest.mark.slow
def test_every_paper_stage_runs_at_full_resolution():
    _run_every_stage("paper", max_res=4096)


def test_untrained_output_is_zero():
    cfg = narrow(preset("tiny").stages[0].unet)
    (x, snr, text, mask), _ = inputs(2, 16)
    assert torch.equal(EfficientUNet(cfg)(x, snr, text, mask), torch.zeros_like(x))


def tiny_base():
    return randomised(EfficientUNet(narrow(preset("tiny").stages[0].unet)))


def test_masked_tokens_do_not_change_the_output():
    model = tiny_base()
    (x, snr, text, mask), _ = inputs(3, 16, length=5)
    mask[1, 3:] = False  # a shorter prompt in the batch
    with torch.inference_mode():
        ref = model(x, snr, text, mask)
        junk = torch.randn(3, 4, TEXT_DIM) * 100  # 4 extra padded tokens with wild values
        padded = torch.cat([text, junk], 1)
        pmask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1)
        text2 = text.clone()
        text2[1, 3:] = 1e3  # the masked tail of row 1
        out = model(x, snr, padded, pmask)
        out2 = model(x, snr, text2, mask)
        changed = text.clone()
        changed[0, 0, 0] += 1.0  # one feature of a valid token: must matter
        out3 = model(x, snr, changed, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out2, ref, atol=1e-5, rtol=0)
    assert (out3[0] - ref[0]).abs().max() > 1e-4
    torch.testing.assert_close(out3[1:], ref[1:], atol=1e-5, rtol=0)  # rows are independent


@pytest.mark.parametrize("dtype", [torch.float32, torch.long])
def test_non_bool_masks_mean_the_same_as_bool(dtype):
    """A 0/1 mask straight from a tokenizer (long) or as floats must mask, not be added to the attention logits."""
    model = tiny_base()
    (x, snr, text, mask), _ = inputs(2, 16, length=5)
    mask[1, 2:] = False
    text[1, 2:] = 50.0  # loud padding: attending to it would change the output
    with torch.inference_mode():
        ref = model(x, snr, text, mask)
        out = model(x, snr, text, mask.to(dtype))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("null_text", ["learned", "zero"])
def test_dropped_text_uses_the_null_embedding(null_text):
    model = randomised(EfficientUNet(narrow(preset("tiny").stages[0].unet), null_text=null_text))
    (x, snr, text, mask), _ = inputs(2, 16, length=5)
    other = torch.randn(2, 9, TEXT_DIM)
    drop = torch.tensor([True, False])
    with torch.inference_mode():
        a = model(x, snr, text, mask, drop_text=drop)
        b = model(x, snr, other, torch.ones(2, 9, dtype=torch.bool), drop_text=drop)
        kept = model(x, snr, text, mask)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)  # dropped row: independent of its text
    assert (a[1] - b[1]).abs().max() > 1e-4  # kept row sees its text
    torch.testing.assert_close(a[1], kept[1], atol=1e-5, rtol=0)
    assert (a[0] - kept[0]).abs().max() > 1e-4  # dropping changes the prediction
    null_params = [n for n, _ in model.named_parameters() if n.startswith("null_")]
    assert null_params == (["null_token", "null_pooled"] if null_text == "learned" else [])


def test_sr_stage_uses_lowres_and_aug_level():
    cfg = narrow(preset("tiny").stages[1].unet)
    model = randomised(EfficientUNet(cfg))
    (x, snr, text, mask), kw = inputs(2, 32, sr=True)
    with torch.inference_mode():
        ref = model(x, snr, text, mask, **kw)
        other_aug = model(x, snr, text, mask, lowres=kw["lowres"], aug_level=kw["aug_level"] + 0.3)
        other_low = model(x, snr, text, mask, lowres=kw["lowres"] * 0.5, aug_level=kw["aug_level"])
    assert (ref - other_aug).abs().max() > 1e-4
    assert (ref - other_low).abs().max() > 1e-4
    with pytest.raises(ValueError, match="lowres"):
        model(x, snr, text, mask)


def test_time_input_is_log_snr_and_bounded():
    snr = torch.tensor([-1e4, -20.0, 0.0, 20.0, 1e4, float("inf"), -float("inf")])
    t = log_snr_to_t(snr)
    assert torch.isfinite(t).all() and (t >= 0).all() and (t <= 1).all()
    assert torch.all(t[:-2].diff() < 0) or torch.all(t[:-2].diff() <= 0)  # decreasing in log-SNR
    # the cosine schedule's inverse: log_snr = -2 log tan(pi t / 2)
    tt = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(log_snr_to_t(-2 * torch.log(torch.tan(math.pi * tt / 2))), tt)
    model = tiny_base()
    (x, _, text, mask), _ = inputs(1, 16)
    with torch.inference_mode():
        a = model(x, torch.tensor([-3.0]), text, mask)
        b = model(x, torch.tensor([3.0]), text, mask)
    assert (a - b).abs().max() > 1e-4


def test_efficient_unet_structure():
    """B.1: DBlock convs run after its downsample, UBlock convs before its upsample, skips scaled by 1/sqrt 2."""
    cfg = dataclasses.replace(narrow(preset("tiny").stages[0].unet), num_res_blocks=(1, 2, 3))
    model = randomised(EfficientUNet(cfg))
    assert SKIP_SCALE == pytest.approx(1 / math.sqrt(2))
    sizes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[-1]))
             for m in model.modules() if isinstance(m, ResBlock)]
    (x, snr, text, mask), _ = inputs(1, 16)
    with torch.inference_mode():
        model(x, snr, text, mask)
    for h in hooks:
        h.remove()
    # down: 1 block @16, 2 @8, 3 @4; middle: 2 @4; up: 3 @4, 2 @8, 1 @16
    assert sizes == [16, 8, 8, 4, 4, 4] + [4, 4] + [4, 4, 4, 8, 8, 16]
    # per-level attention placement follows the config
    assert [lvl.attn is not None and lvl.attn.self_attn is not None for lvl in model.down] == list(cfg.self_attn)
    assert [lvl.attn is not None and lvl.attn.cross_attn is not None for lvl in model.down] == list(cfg.cross_attn)


def test_skip_connections_are_scaled():
    """Each UBlock's input is concat(x, skip / sqrt 2), where skip is the matching DBlock's output."""
    model = tiny_base()
    (x, snr, text, mask), _ = inputs(1, 16)
    downs, ups = [], []
    hooks = [lvl.register_forward_hook(lambda mod, inp, out: downs.append(out)) for lvl in model.down]
    hooks += [lvl.register_forward_hook(lambda mod, inp, out: ups.append(inp[0])) for lvl in model.up]
    with torch.inference_mode():
        model(x, snr, text, mask)
    for h in hooks:
        h.remove()
    for skip, up_in in zip(reversed(downs), ups):
        c = skip.shape[1]
        torch.testing.assert_close(up_in[:, c:], skip / math.sqrt(2))


def test_count_parameters_matches_a_real_model_and_allocates_nothing():
    for st in preset("tiny").stages:
        real = sum(p.numel() for p in EfficientUNet(st.unet).parameters())
        assert count_parameters(st.unet) == real
    with torch.device("meta"):
        m = EfficientUNet(preset("paper").stages[0].unet)
    assert all(p.device.type == "meta" for p in m.parameters())


def test_backward_reaches_every_parameter():
    model = EfficientUNet(narrow(preset("tiny").stages[1].unet))
    torch.nn.init.normal_(model.conv_out.weight, std=0.2)
    (x, snr, text, mask), kw = inputs(2, 16, sr=True)
    model(x, snr, text, mask, drop_text=torch.tensor([True, False]), **kw).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


# --- the CPU inference fast path (oneDNN on packed weights) ------------------------------------------------------

needs_packing = pytest.mark.skipif(not unet_module._CPU_PACKING, reason="this torch build lacks the oneDNN ops")


def _plain(model, *args, **kw):
    """The same forward with the fast path switched off (plain nn.Conv2d / nn.Linear kernels)."""
    saved = unet_module._CPU_PACKING
    unet_module._CPU_PACKING = False
    try:
        with torch.inference_mode():
            return model(*args, **kw)
    finally:
        unet_module._CPU_PACKING = saved


@needs_packing
@pytest.mark.parametrize("stage", [0, 1])
def test_packed_inference_equals_the_plain_kernels(stage):
    st = preset("tiny").stages[stage]
    model = randomised(EfficientUNet(narrow(st.unet), null_text=st.null_text))
    (x, snr, text, mask), kw = inputs(3, 16, sr=st.is_sr)
    with torch.inference_mode():
        fast = model(x, snr, text, mask, **kw)
    assert any(isinstance(m, (unet_module.Conv2d, unet_module.Linear)) and m in unet_module._PACKED
               for m in model.modules()), "the fast path did not run"
    torch.testing.assert_close(fast, _plain(model, x, snr, text, mask, **kw), rtol=1e-5, atol=1e-5)
    # another batch size (the last batch of a run) repacks the convs and still agrees
    with torch.inference_mode():
        fast1 = model(x[:1], snr[:1], text[:1], mask[:1], **{k: v[:1] for k, v in kw.items()})
    torch.testing.assert_close(fast1, fast[:1], rtol=1e-5, atol=1e-5)


@needs_packing
def test_packed_weights_follow_in_place_updates():
    model = randomised(EfficientUNet(narrow(preset("tiny").stages[0].unet)))
    (x, snr, text, mask), _ = inputs(2, 16)
    with torch.inference_mode():
        before = model(x, snr, text, mask)
    with torch.no_grad():  # what an optimiser step, an EMA update and load_state_dict do: in-place writes
        for p in model.parameters():
            p.mul_(1.05)
    with torch.inference_mode():
        after = model(x, snr, text, mask)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, _plain(model, x, snr, text, mask), rtol=1e-5, atol=1e-5)


@needs_packing
def test_packing_leaves_state_dict_copies_and_training_alone():
    import copy

    model = randomised(EfficientUNet(narrow(preset("tiny").stages[0].unet)))
    keys = set(model.state_dict())
    (x, snr, text, mask), _ = inputs(2, 16)
    with torch.inference_mode():
        out = model(x, snr, text, mask)
    assert set(model.state_dict()) == keys  # packed weights are not state
    twin = copy.deepcopy(model)  # oneDNN's opaque tensors cannot be deep-copied: they must not be attributes
    with torch.inference_mode():
        torch.testing.assert_close(twin(x, snr, text, mask), out, rtol=1e-5, atol=1e-5)
    model.train()
    model(x, snr, text, mask).square().mean().backward()  # grad mode: the plain kernels, gradients flow
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p is not model.null_token)


@needs_packing
def test_packed_weights_follow_new_weight_tensors():
    """load_state_dict(assign=True) puts NEW tensors in place (version 0, maybe the old address): repacked."""
    model = randomised(EfficientUNet(narrow(preset("tiny").stages[0].unet)))
    (x, snr, text, mask), _ = inputs(2, 16)
    for seed in range(3):
        torch.manual_seed(seed)
        fresh = {k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items()}
        model.load_state_dict(fresh, assign=True)
        with torch.inference_mode():
            fast = model(x, snr, text, mask)
        torch.testing.assert_close(fast, _plain(model, x, snr, text, mask), rtol=1e-5, atol=1e-5)


def test_grouped_cross_attention_equals_the_masked_one():
    """The flash-friendly scheme (one unmasked SDPA call per prompt length on keys cut to it) equals one call with
    the boolean mask; a mask that is not a prefix falls back to the mask; the U-Net agrees under both."""
    from imagen import unet as U

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 2, 7, 8, generator=g) for _ in range(3))
    lengths = torch.tensor([4, 1, 6, 4, 2])
    mask = torch.arange(6)[None] < lengths[:, None]
    masked = U.cross_attention(q, k[:, :, :6], v[:, :, :6], mask, mode="masked")
    grouped = U.cross_attention(q, k[:, :, :6], v[:, :, :6], mask, mode="grouped")
    torch.testing.assert_close(grouped, masked, rtol=1e-6, atol=1e-6)
    holes = mask.clone()
    holes[0, 1] = False  # not a prefix
    torch.testing.assert_close(U.cross_attention(q, k[:, :, :6], v[:, :, :6], holes, mode="grouped"),
                               U.cross_attention(q, k[:, :, :6], v[:, :, :6], holes, mode="masked"))
    from imagen.config import preset

    cfg = preset("tiny").stages[0].unet
    torch.manual_seed(0)
    net = U.EfficientUNet(cfg).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x, text = torch.randn(3, 3, 16, 16), torch.randn(3, 6, cfg.text_dim)
    tmask = torch.arange(6)[None] < torch.tensor([6, 2, 4])[:, None]
    outs = []
    for mode in ("masked", "grouped"):
        U.CROSS_ATTENTION = mode
        try:
            with torch.no_grad():
                outs.append(net(x, torch.zeros(3), text, tmask))
        finally:
            U.CROSS_ATTENTION = "auto"
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
