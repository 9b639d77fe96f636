"""Diversity within a prompt: the mean pairwise cosine distance and the Vendi score checked against numpy on the same
embeddings, and, end to end on real networks, a model that gives every seed nearly the same picture scores lower
than one that does not."""

import hashlib

import numpy as np
import pytest

from bench import store
from bench.grid import parse_spec, run_grid
from bench.metrics import diversity as D
from imagen.errors import UserError


def test_pairwise_distance_and_vendi_equal_numpy():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 7))
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    pairs = [1 - x[i] @ x[j] for i in range(5) for j in range(i + 1, 5)]
    assert D.mean_pairwise_distance(emb) == pytest.approx(np.mean(pairs), rel=1e-12)
    lam = np.linalg.eigvalsh(x @ x.T / 5)
    lam = lam[lam > 1e-12]
    assert D.vendi(emb) == pytest.approx(np.exp(-(lam * np.log(lam)).sum()), rel=1e-9)
    same = np.repeat(emb[:1], 4, axis=0)
    assert D.mean_pairwise_distance(same) == pytest.approx(0, abs=1e-12) and D.vendi(same) == pytest.approx(1)
    ortho = np.eye(4)
    assert D.vendi(ortho) == pytest.approx(4) and D.mean_pairwise_distance(ortho) == pytest.approx(1)
    got = D.per_prompt(emb, ["a", "a", "b", "b", "c"])
    assert set(got) == {"a", "b"}  # c has one image: no diversity to speak of
    assert got["a"] == (pytest.approx(D.mean_pairwise_distance(emb[:2])), pytest.approx(D.vendi(emb[:2])))


class _Gen:
    """Each prompt its own picture; `spread` of the pixels varies with the seed (0: every seed the same picture)."""

    model_id = "fake"

    def __init__(self, spread):
        self.spread, self.checkpoint_hash = spread, f"{int(spread * 100):016d}"

    def generate(self, prompts, seeds, settings):
        out = []
        for p, s in zip(prompts, seeds):
            base = np.random.default_rng(int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)).integers(0, 256, (8, 8, 3)).astype(float)
            own = np.random.default_rng(s).integers(0, 256, (8, 8, 3)).astype(float)
            img = (1 - self.spread) * base + self.spread * own + np.random.default_rng(s).normal(0, 2, (8, 8, 3))
            out.append(np.kron(np.clip(img, 0, 255), np.ones((8, 8, 1))).astype(np.uint8))  # 64 x 64
        return np.stack(out)


SPEC = ('name = "d"\nmodel = "tiny"\nsuites = ["drawbench:6"]\nsamples_per_prompt = 4\n[axes]\nsteps = 2\n'
        'guidance = 1.0\n[metrics]\ndiversity = EMB\n')


@pytest.mark.parametrize("embedding,slug", [('{ embedding = "effnet-lite0" }', "effnet_lite0"),
                                            ('{ embedding = "clip" }', "shapes_clip")])
def test_near_copies_score_lower_than_distinct_seeds(tmp_path, data_dir, monkeypatch, embedding, slug):
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    spec = parse_spec(SPEC.replace("EMB", embedding))
    values = {}
    for spread in (0.0, 1.0):
        out = tmp_path / f"s{spread}"
        run_grid(spec, out, generator=_Gen(spread), progress=False, log=lambda *_: None, data_dir=data_dir)
        m = store.read_table(out, store.METRICS)
        overall = m[m[store.COL_CATEGORY].isna()].set_index(store.COL_METRIC)
        values[spread] = overall
        assert overall.loc[f"vendi_{slug}", store.COL_N] == 6  # one value per prompt, the interval over prompts
        assert 1 <= overall.loc[f"vendi_{slug}", store.COL_VALUE] <= 4
    for name in (f"diversity_{slug}", f"vendi_{slug}"):
        low, high = values[0.0].loc[name], values[1.0].loc[name]
        assert low[store.COL_VALUE] < high[store.COL_VALUE]
        assert low[store.COL_HIGH] < high[store.COL_LOW]  # apart beyond their intervals
    assert values[0.0].loc[f"vendi_{slug}", store.COL_VALUE] < 1.2  # near-copies: about one distinct image


def test_diversity_needs_several_images_per_prompt_and_a_known_embedding(tmp_path, data_dir):
    with pytest.raises(UserError, match="samples_per_prompt >= 2"):
        run_grid(parse_spec(SPEC.replace("EMB", "true").replace("samples_per_prompt = 4", "samples_per_prompt = 1")),
                 tmp_path / "s", generator=_Gen(1.0), progress=False, log=lambda *_: None, data_dir=data_dir)
    assert not (tmp_path / "s").exists()
    with pytest.raises(UserError, match="embedding"):
        parse_spec(SPEC.replace("EMB", '{ embedding = "pixels" }'))
    with pytest.raises(UserError, match="go with embedding"):
        parse_spec(SPEC.replace("EMB", '{ embedding = "inception", model = "ViT-L-14" }'))
    assert parse_spec(SPEC.replace("EMB", "true")).metrics.diversity["embedding"] == "dinov2-vit-l-14"
