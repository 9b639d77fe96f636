"""CUDA paths (the `gpu` marker; skipped without a GPU): bf16 training and sampling, flash-friendly attention,
the memory plan against torch.cuda's own peak."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_grouped_cross_attention_on_cuda_equals_masked():
    from imagen.unet import cross_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(6, 8, 256, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    mask = torch.arange(77, device="cuda")[None] < torch.tensor([77, 5, 12, 5, 40, 1], device="cuda")[:, None]
    k, v = k[:, :, :77], v[:, :, :77]
    torch.testing.assert_close(cross_attention(q, k, v, mask, mode="grouped"),
                               cross_attention(q, k, v, mask, mode="masked"), rtol=2e-2, atol=2e-2)


def test_bf16_training_step_and_sampling_on_cuda(tmp_path):
    from imagen.pipeline import Pipeline
    from imagen.config import SamplerConfig
    from imagen.train import train
    from test_train import FakeEncoder, micro_run

    res = train(micro_run(tmp_path / "r", steps=2), device="cuda", progress=False, encoder=FakeEncoder())
    assert res["step"] == 2 and res["loss"] == res["loss"]
    pipe = Pipeline.load("shapes", device="cuda", precision="auto")
    assert pipe.cascade.precision == "bf16"
    images = pipe.generate(["two red circles"], [0], SamplerConfig(sampler="ddim", steps=4))
    assert images.shape == (1, 64, 64, 3)


def test_memory_plan_against_cuda_peak():
    from imagen.config import preset
    from imagen.memory import plan
    from imagen.unet import EfficientUNet

    cfg = preset("small")
    st = cfg.stages[0]
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    net = EfficientUNet(st.unet).cuda()
    ema = EfficientUNet(st.unet).cuda()
    opt = torch.optim.AdamW(net.parameters())
    b, L = 32, cfg.text.max_length
    for _ in range(2):  # the second step is the steady state (AdamW's moments exist during its forward)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(torch.randn(b, 3, 32, 32, device="cuda"), torch.zeros(b, device="cuda"),
                      torch.randn(b, L, st.unet.text_dim, device="cuda"),
                      torch.ones(b, L, dtype=torch.bool, device="cuda"))
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del out
    measured = torch.cuda.max_memory_allocated() - base
    planned = plan(cfg, "base", b, precision="bf16").total
    del ema
    assert abs(planned - measured) / measured < 0.25, (planned / 2 ** 20, measured / 2 ** 20)
