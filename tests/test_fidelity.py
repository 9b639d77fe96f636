"""KID, precision/recall, CMMD and FD-CLIP: each against an independent numpy/scipy implementation on the same
features; the `fidelity` command; the grid's [metrics] taking them; reference caches that read no image twice."""

import json

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

import bench.metrics  # noqa: F401
from bench.metrics import fid as F
from bench.metrics import fidelity as M
from fixtures_coco import photo_crops, write_pngs


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))


def _features(n, d, shift, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, size=d) + shift


def test_kid_equals_an_independent_unbiased_polynomial_mmd():
    fa, fb = _features(40, 16, 0.0, 1), _features(30, 16, 0.4, 2)
    value, std, size = M.kid(fa, fb, subset_size=20, subsets=25, seed=7)
    assert size == 20
    rng = np.random.RandomState(7)  # the same subsets torch-fidelity draws
    mmds = []
    for _ in range(25):
        a, b = fa[rng.choice(40, 20, replace=False)], fb[rng.choice(30, 20, replace=False)]
        k = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3  # noqa: E731
        kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
        m = 20
        mmds.append((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                    - 2 * kab.mean())
    assert value == pytest.approx(np.mean(mmds), rel=1e-6) and std == pytest.approx(np.std(mmds), rel=1e-5)
    assert M.kid(fa, fb)[2] == 30  # default subset size: min(1000, the smaller set)


def test_precision_recall_equal_an_independent_knn_manifold():
    gen, real = _features(35, 8, 0.8, 3), _features(30, 8, 0.0, 4)
    p, r = M.prc(gen, real, k=3)

    def inside(x, manifold):  # is x within the k-NN radius of some manifold point?
        radii = np.sort(cdist(manifold, manifold), axis=1)[:, 3]  # k-th neighbour, itself excluded
        return (cdist(x, manifold) <= radii[None, :]).any(axis=1)

    assert p == pytest.approx(inside(gen, real).mean(), abs=1e-6)  # torch-fidelity returns float32
    assert r == pytest.approx(inside(real, gen).mean(), abs=1e-6)
    assert 0 < p < 1 and 0 < r < 1


def test_cmmd_equals_scipy_and_is_zero_on_the_same_set():
    ea = _features(20, 12, 0.0, 5)
    eb = _features(25, 12, 0.2, 6)
    ea, eb = ea / np.linalg.norm(ea, axis=1, keepdims=True), eb / np.linalg.norm(eb, axis=1, keepdims=True)
    k = lambda x, y: np.exp(-cdist(x, y, "sqeuclidean") / (2 * 10.0 ** 2)).mean()  # noqa: E731
    assert M.cmmd(ea, eb) == pytest.approx(1000 * (k(ea, ea) + k(eb, eb) - 2 * k(ea, eb)), rel=1e-9)
    assert abs(M.cmmd(ea, ea)) < 1e-9 and M.cmmd(ea, eb) > 0


def test_fd_equals_scipy_sqrtm():
    fa, fb = _features(60, 10, 0.0, 7), _features(50, 10, 0.3, 8)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    ref = (((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb)
           - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb)).real)
    assert M.fd(fa, fb, "clip") == pytest.approx(ref, rel=1e-6)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    write_pngs(photo_crops(10, seed=1, size=96), root / "a")
    write_pngs(photo_crops(9, seed=2, size=80), root / "b")
    return root / "a", root / "b"


def test_fidelity_command_computes_everything_from_one_feature_pass(sets, capsys, monkeypatch):
    from bench.metrics import features
    from imagen_bench import main

    a, b = sets
    calls = []
    real = features.extract_features
    monkeypatch.setattr(F, "extract_features", lambda *x, **k: calls.append(1) or real(*x, **k))
    assert main(["fidelity", str(a), str(b), "--fid", "--kid", "--prc", "--cmmd", "--fd-clip", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(calls) == 2  # one pass per set, for FID, KID and precision/recall together
    assert set(out["metrics"]) == {"fid_effnet_lite0_clean", "kid_effnet_lite0_clean", "precision_effnet_lite0_clean",
                                   "recall_effnet_lite0_clean", "cmmd_shapes_clip", "fd_clip_shapes_clip"}
    assert (out["n_a"], out["n_b"]) == (10, 9) and out["details"]["kid_effnet_lite0_clean"]["subset_size"] == 9
    direct = F.fid(F.stats_from_folder(a), F.stats_from_folder(b)).value
    assert out["metrics"]["fid_effnet_lite0_clean"] == pytest.approx(direct, rel=1e-6)
    assert main(["fidelity", str(a), str(b), "--json"]) == 2
    assert "choose at least one metric" in capsys.readouterr().err


def test_a_second_pass_over_a_reference_reads_no_image(sets, monkeypatch):
    """Per-file hashes remembered by (path, size, mtime): the second run hashes nothing and loads no image; a
    changed file is re-hashed; --verify re-hashes everything."""
    import bench.filehash as H
    from bench.metrics import features

    a, _ = sets
    first = F.stats_from_folder(a)
    hashed = []
    real_sha = H.sha256_file
    monkeypatch.setattr(H, "sha256_file", lambda p: hashed.append(p) or real_sha(p))
    monkeypatch.setattr(F, "load_image", lambda p: pytest.fail(f"read {p}"))
    second = F.stats_from_folder(a)
    assert hashed == [] and second.key == first.key and np.array_equal(second.mu, first.mu)
    F.stats_from_folder(a, verify=True)
    assert len(hashed) == 10
    assert first.weights == features.weights_sha256("effnet-lite0") and first.key != F.stats_key(
        first.source_hash, "effnet-lite0", first.protocol)  # the weights are part of the key


def test_grid_metrics_take_kid_prc_cmmd_and_fd_clip(tmp_path):
    from bench import store
    from bench.grid import parse_spec, run_grid, spec_to_toml

    class Gen:
        model_id, checkpoint_hash = "g", "1" * 64

        def generate(self, prompts, seeds, settings):
            return [np.random.default_rng(s).integers(0, 256, (16, 16, 3)).astype(np.uint8) for s in seeds]

    text = ('name = "d"\nmodel = "tiny"\nsuites = ["shapes:6"]\n[axes]\nsteps = [1]\nguidance = [1.0, 2.0]\n'
            '[metrics]\nkid = { subset_size = 4 }\nprc = true\ncmmd = true\nfd_clip = true\n')
    spec = parse_spec(text)
    assert spec.metrics.kid == {"extractor": "effnet-lite0", "reference": "shapes", "protocol": "clean",
                                "subset_size": 4}
    assert parse_spec(spec_to_toml(spec)) == spec
    run_grid(spec, tmp_path / "s", generator=Gen(), progress=False, log=lambda m: None)
    m = store.read_table(tmp_path / "s", store.METRICS)
    names = set(m[store.COL_METRIC])
    assert names == {"kid_effnet_lite0_clean", "precision_effnet_lite0_clean", "recall_effnet_lite0_clean",
                     "cmmd_shapes_clip", "fd_clip_shapes_clip"}
    kid = m[m[store.COL_METRIC] == "kid_effnet_lite0_clean"]
    assert len(kid) == 2 and all(json.loads(d)["subset_size"] == 4 for d in kid[store.COL_DETAILS])
    again = run_grid(spec, tmp_path / "s", generator=Gen(), progress=False, log=lambda m: None)
    assert again["metric_rows"] == 0  # stored once
    from bench.metrics.features import weights_sha256

    made = json.loads(store.read_table(tmp_path / "s", store.STUDY)[store.COL_PROVENANCE].iloc[-1])
    assert made == {"extractors": {"effnet-lite0": weights_sha256("effnet-lite0")}, "protocols": ["clean"],
                    "clip": ["shapes-clip:shipped"]}
    versions = json.loads(store.read_table(tmp_path / "s", store.STUDY)[store.COL_VERSIONS].iloc[-1])
    assert versions["torch-fidelity"] and versions["clean-fid"]
    from imagen.errors import UserError

    with pytest.raises(UserError, match="statistics file; this metric needs the reference images"):
        npz = tmp_path / "r.npz"
        npz.write_bytes(b"x")
        run_grid(parse_spec(text.replace("prc = true", f'prc = {{ reference = "{npz}" }}')), tmp_path / "n",
                 generator=Gen(), progress=False, log=lambda m: None)


def test_reference_clip_embeddings_are_cached(sets, monkeypatch):
    from bench.metrics import clip_score as C

    a, _ = sets
    clip = C.load_clip("shapes-clip")
    paths = F.image_paths(a)
    first = M.clip_embeddings_of_files(clip, paths, chunk=4)  # read in chunks
    monkeypatch.setattr(M, "clip_embeddings", lambda *x, **k: pytest.fail("embedded again"))
    again = M.clip_embeddings_of_files(clip, paths)
    assert first.shape == (10, again.shape[1]) and np.allclose(first, again, atol=1e-6)


def test_a_grid_run_loads_each_network_once(tmp_path, monkeypatch):
    """FID and KID share the extractor, CLIP score and CMMD the CLIP model: each is loaded once per run."""
    from bench.grid import parse_spec, run_grid
    from bench.metrics import clip_score, features

    loads = []
    real_ext, real_clip = features.load_extractor, clip_score.load_clip
    monkeypatch.setattr(features, "load_extractor", lambda *a, **k: loads.append("ext") or real_ext(*a, **k))
    monkeypatch.setattr(clip_score, "load_clip", lambda *a, **k: loads.append("clip") or real_clip(*a, **k))

    class Gen:
        model_id, checkpoint_hash = "g", "2" * 64

        def generate(self, prompts, seeds, settings):
            return [np.random.default_rng(s).integers(0, 256, (16, 16, 3)).astype(np.uint8) for s in seeds]

    spec = parse_spec('name = "n"\nmodel = "tiny"\nsuites = ["shapes:4"]\n[axes]\nsteps = [1]\nguidance = [1.0, 2.0]\n'
                      '[metrics]\nfid = true\nkid = { subset_size = 3 }\nclip_score = true\ncmmd = true\n')
    run_grid(spec, tmp_path / "s", generator=Gen(), progress=False, log=lambda m: None)
    assert sorted(loads) == ["clip", "ext"]
