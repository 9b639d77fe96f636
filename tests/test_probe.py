"""The SDEdit noise-level probe (imagen.probe, `imagen-bench model probe`): its bookkeeping against known answers
(a base that returns the clean scene exactly scores like the clean scene at every level; one that returns the next
scene's image scores like that image, counted here independently), its levels and grid, the command."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from imagen.cascade import Cascade
from imagen.checkpoint import read_config, resolve
from imagen.config import SamplerConfig
from imagen.errors import UserError
from imagen.pipeline import to_uint8
from imagen.probe import clean_scenes, level_grid, parse_levels, probe, scene_seed
from imagen.worlds import get_world


class Oracle(torch.nn.Module):
    """A base U-Net predicting x0 that returns the given images (for the conditional and the unconditional rows)."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images = images
        self.calls = 0

    def forward(self, z, log_snr, text, mask, drop_text=None, **kw):
        self.calls += 1
        return self.images.repeat(z.shape[0] // self.images.shape[0], 1, 1, 1)


class WordEncoder:
    id, dim, max_length = "words:8", 384, 8

    def encode(self, texts):
        n = max(len(t.split()) for t in texts)
        return torch.ones(len(texts), n, self.dim), torch.ones(len(texts), n, dtype=torch.bool)


def oracle_cascade(images: torch.Tensor) -> Cascade:
    cfg = read_config(resolve("shapes-hard"))  # a 32 px base under a 64 px cascade
    cfg = dataclasses.replace(cfg, stages=(dataclasses.replace(cfg.stages[0], prediction="x0"), *cfg.stages[1:]))
    oracle = Oracle(images)
    return Cascade(cfg, make_unet=lambda st: oracle if st.name == "base" else torch.nn.Identity())


N = 24
LEVELS = (-20.0, -3.0, 0.0, 3.0)


@pytest.fixture(scope="module")
def scenes():
    return clean_scenes(get_world("shapes-hard"), N, 0, 64, 32)


@pytest.mark.parametrize("sampler,w", [("ddim", 1.0), ("ddpm", 3.0)])
def test_a_base_that_returns_the_clean_scene_scores_like_the_clean_scene(scenes, sampler, w):
    x0, captions, facts = scenes
    cascade = oracle_cascade(x0)
    result = probe(cascade, WordEncoder(), "shapes-hard", LEVELS, n=N, seed=0, batch_size=N,
                   sampler=SamplerConfig(sampler=sampler, steps=10, guidance=(w,), threshold="static"))
    clean = result["clean"]
    assert 0.5 < clean["accuracy"]["overall"] < 1.0  # the scorer at 32 px is close to, not exactly, right
    for row in result["levels"]:
        assert row["accuracy"] == clean["accuracy"] and row["count"] == clean["count"], row["log_snr"]
        assert row["x0_mse"] == 0.0  # its first estimate is the scene itself
    assert [r["log_snr"] for r in result["levels"]] == list(LEVELS)
    assert [r["steps"] for r in result["levels"]] == [len(level_grid(v, 10, "cosine")) - 1 for v in LEVELS]
    assert cascade.unets[0].calls == sum(r["steps"] for r in result["levels"])


def test_a_base_that_returns_another_scene_scores_like_that_scene(scenes):
    x0, captions, facts = scenes
    wrong = torch.roll(x0, 1, dims=0)  # scene i - 1's image for caption i
    result = probe(oracle_cascade(wrong), WordEncoder(), "shapes-hard", (0.0,), n=N, seed=0, batch_size=N,
                   sampler=SamplerConfig(sampler="ddim", steps=5, guidance=(1.0,), threshold="none"))
    world = get_world("shapes-hard")
    right, seen, every = {}, {}, 0
    for img, f in zip(to_uint8(wrong), facts):
        marks = world.score(img, f)
        for t, ok in marks.items():
            right[t] = right.get(t, 0) + int(ok)
            seen[t] = seen.get(t, 0) + 1
        every += all(marks.values())
    row = result["levels"][0]
    assert row["count"] == {**seen, "overall": N}
    assert row["accuracy"] == pytest.approx({**{t: right[t] / seen[t] for t in seen}, "overall": every / N})
    assert row["accuracy"]["overall"] < result["clean"]["accuracy"]["overall"]
    assert row["x0_mse"] == pytest.approx(float((wrong - x0).square().mean()), rel=1e-5)


def test_clean_scenes_are_the_worlds_held_out_captions_rendered_as_the_trainer_does():
    from imagen.cascade import resize
    from imagen.data import ShapesDataset, to_tensor

    x0, captions, facts = clean_scenes(get_world("shapes-hard"), 6, 3, 64, 32)
    assert captions == [c for c, _, _ in get_world("shapes-hard").held_out_captions(6, 3)]
    ds = ShapesDataset(6, 3, 64, split="heldout", world="shapes-hard")
    expect = resize(to_tensor(np.stack([ds.image(i) for i in range(6)])), 32)
    assert torch.equal(x0, expect) and x0.shape == (6, 3, 32, 32)


def test_levels_and_grid():
    assert parse_levels("-3,-1,0,1,3") == (-3.0, -1.0, 0.0, 1.0, 3.0)
    for bad in ("", "a,b", "-30", "1,inf"):
        with pytest.raises(UserError):
            parse_levels(bad)
    g = level_grid(0.0, 20, "cosine")
    assert g[0] == 0.0 and torch.isinf(g[-1]) and bool((g[1:-1] > 0).all()) and bool((g.diff() > 0).all())
    assert len(level_grid(-20.0, 20, "cosine")) == 21  # -20 (the grid's own start), then the rest of the grid
    assert scene_seed(0, 1) != scene_seed(0, 2) and scene_seed(0, 1) == scene_seed(0, 1)


def test_probe_command_on_an_untrained_preset(capsys, tmp_path):
    from imagen_bench import main

    assert main(["model", "probe", "tiny", "--n", "6", "--levels", "-3,3", "--steps", "6", "--json",
                 "--text-cache", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["world"] == "shapes" and result["n"] == 6 and result["resolution"] == 16
    assert [r["log_snr"] for r in result["levels"]] == [-3.0, 3.0]
    for row in [result["clean"], *result["levels"]]:
        assert all(0.0 <= v <= 1.0 for v in row["accuracy"].values()) and row["count"]["overall"] == 6
        lo, hi = row["overall_interval"]
        assert 0.0 <= lo <= row["accuracy"]["overall"] <= hi <= 1.0
    assert main(["model", "probe", "tiny", "--n", "4", "--levels", "-1", "2.5", "--steps", "3",
                 "--text-cache", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "log-SNR" in table and "clean" in table and "overall" in table and "2.5" in table
    assert main(["model", "probe", "tiny", "--levels", "99"]) == 2
    assert "--levels" in capsys.readouterr().err
