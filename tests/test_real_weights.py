"""Real checkpoints from the Hugging Face cache (opt-in: `pytest -m gpu`; skipped unless the weights are cached).

DeepFloyd IF stages I + II in float16 and a Stable Diffusion checkpoint, through `diffusers:<hub id>` as a user names
them, on CUDA: two prompts, a few steps, and the harness's own checks on what comes back. Place the weights first:
`huggingface-cli login` (IF is gated: accept its licence), `huggingface-cli download DeepFloyd/IF-I-XL-v1.0
DeepFloyd/IF-II-L-v1.0 stabilityai/stable-diffusion-2-1-base`, then run with HF_HUB_OFFLINE=1.
"""

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

IF = "diffusers:DeepFloyd/IF-I-XL-v1.0+DeepFloyd/IF-II-L-v1.0?dtype=float16&variant=fp16"
SD = "diffusers:stabilityai/stable-diffusion-2-1-base?dtype=float16"


def _cached(repo: str) -> bool:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - not in the cache, in any of huggingface_hub's ways of saying so
        return False


@pytest.mark.parametrize("model, repos, size", [(IF, ["DeepFloyd/IF-I-XL-v1.0", "DeepFloyd/IF-II-L-v1.0"], 256),
                                                (SD, ["stabilityai/stable-diffusion-2-1-base"], 512)])
def test_real_checkpoint_generates_through_the_contract(model, repos, size):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if not all(_cached(r) for r in repos):
        pytest.skip(f"{', '.join(repos)} not in the Hugging Face cache")
    from bench.generators import Request, load_generator

    gen = load_generator(model, device="cuda")
    settings = gen.sampler_defaults.given(steps=10)
    gen.check([settings], [])
    made = gen.generate([Request("a red apple on a wooden table", 1), Request("a corgi in a field", 2)], settings,
                        batch_size=2)
    assert [im.shape for im in made.images] == [(size, size, 3)] * 2
    assert all(im.std() > 5 for im, bad in zip(made.images, made.flagged) if not bad)  # pictures, not flat noise
    again = gen.generate([Request("a corgi in a field", 2)], settings, batch_size=1)
    assert np.abs(again.images[0].astype(int) - made.images[1]).mean() < 2.0  # the seed, not the batch, decides
    used = gen.describe(settings)
    assert used["dtype"] == "float16" and len(used["stages"]) == gen.n_stages
