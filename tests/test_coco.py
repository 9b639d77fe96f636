"""The COCO zero-shot FID protocol on a small COCO-format fixture built from real photos."""

import dataclasses
import json
import warnings

import numpy as np
import pytest

from bench.metrics import coco as K
from bench.metrics import fid as F
from fixtures_coco import build_coco_fixture
from imagen.errors import UserError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return build_coco_fixture(tmp_path_factory.mktemp("coco"))


def test_json_and_csv_readers_agree(fixture):
    a = K.read_captions(fixture.annotations)
    b = K.read_captions(fixture.captions_csv)
    assert len(a) == fixture.n_captions == 20
    assert sorted(a, key=lambda c: c.caption_id) == sorted(b, key=lambda c: c.caption_id)
    assert all(c.file_name.startswith("COCO_val2014_") for c in a)


def test_shared_5k_csv_reads(data_dir):
    caps = K.read_captions(data_dir / "coco" / "val2014_captions_5k.csv")
    assert len(caps) == 5000 and len({c.image_id for c in caps}) == 5000


def test_sampling_is_seeded_one_caption_per_image_and_order_free(fixture):
    caps = K.read_captions(fixture.annotations)
    s1 = K.sample_captions(caps, 6, seed=0)
    assert K.sample_captions(list(reversed(caps)), 6, seed=0) == s1  # file order does not matter
    assert len({c.image_id for c in s1}) == 6  # one caption per image
    assert K.sample_captions(caps, 6, seed=1) != s1
    # every image and both of its captions get drawn over many seeds (the draw is not stuck)
    seen = {c.caption_id for seed in range(40) for c in K.sample_captions(caps, 3, seed)}
    assert seen == {c.caption_id for c in caps}
    with pytest.raises(UserError, match="more than the 10 images"):
        K.sample_captions(caps, 11, seed=0)


def test_sampling_matches_an_independent_reimplementation(data_dir):
    caps = K.read_captions(data_dir / "coco" / "val2014_captions_5k.csv")
    got = K.sample_captions(caps, 50, seed=123)
    rng = np.random.default_rng(123)  # the protocol written out: sorted image ids, draw, then pick a caption
    ids = sorted({c.image_id for c in caps})
    picks = rng.choice(len(ids), 50, replace=False)
    by_id = {c.image_id: c for c in caps}  # one caption per image in this file
    expected = []
    for k in picks:
        rng.integers(1)
        expected.append(by_id[ids[int(k)]].caption_id)
    assert [c.caption_id for c in got] == expected


def test_reference_stats_from_folder_and_npz(fixture, tmp_path):
    ref = K.reference_stats(images_dir=fixture.images_dir)
    assert ref.n == 10 and ref.protocol == "crop256+torch-fidelity"
    F.save_stats(ref, tmp_path / "ref.npz")
    again = K.reference_stats(stats_file=tmp_path / "ref.npz")
    assert again.key == ref.key
    np.testing.assert_array_equal(again.mu, ref.mu)
    with pytest.raises(UserError, match="either --images"):
        K.reference_stats(images_dir=fixture.images_dir, stats_file=tmp_path / "ref.npz")


def test_manifest_and_comparability(fixture):
    caps = K.read_captions(fixture.captions_csv)
    ref = K.reference_stats(images_dir=fixture.images_dir)
    m1 = K.build_manifest(captions_file=fixture.captions_csv, sampled=K.sample_captions(caps, 5, 0), seed=0,
                          reference=ref, extractor="effnet-lite0", size=256)
    assert m1["n"] == 5 and len(m1["caption_ids"]) == 5 and m1["reference_stats"] == ref.key
    assert m1["metric"] == "fid_effnet_lite0_crop256_torch_fidelity" and m1["fid_protocol"] == "crop256+torch-fidelity"
    assert not m1["comparable_with_fid30k"] and "not comparable" in m1["warning"]
    assert m1["extractor_weights"] == ref.weights and len(ref.weights) == 64
    assert m1["versions"]["torch-fidelity"] and m1["versions"]["clean-fid"]
    m2 = K.build_manifest(captions_file=fixture.captions_csv, sampled=K.sample_captions(caps, 5, 1), seed=1,
                          reference=ref, extractor="effnet-lite0", size=256)
    assert K.comparable(m1, m1) == []
    assert set(K.comparable(m1, m2)) == {"seed", "caption_ids"}
    m3 = K.build_manifest(captions_file=fixture.captions_csv, sampled=K.sample_captions(caps, 5, 0), seed=0,
                          reference=ref, extractor="effnet-lite0", size=256, kind="clean")
    assert m3["metric"] == "fid_effnet_lite0_crop256_clean" and "fid_protocol" in K.comparable(m1, m3)


def test_comparable_with_fid30k_only_for_inception_at_the_published_protocol(fixture, monkeypatch):
    """N >= 30,000 alone is not enough: the extractor must be Inception and the protocol crop256+torch-fidelity."""
    import dataclasses

    caps = K.read_captions(fixture.captions_csv)
    ref = K.reference_stats(images_dir=fixture.images_dir)
    sampled = K.sample_captions(caps, 5, 0)
    monkeypatch.setattr(K, "FID_30K", 5)  # the rule, on a fixture of 5 captions
    inc = dataclasses.replace(ref, extractor="inception")
    build = lambda **kw: K.build_manifest(captions_file=fixture.captions_csv, sampled=sampled, seed=0,  # noqa: E731
                                          reference=inc, size=256, **kw)
    assert build(extractor="inception")["comparable_with_fid30k"]
    unknown = dataclasses.replace(inc, protocol="unknown")  # a clean-fid / pytorch-fid file: mu and sigma only
    m = K.build_manifest(captions_file=fixture.captions_csv, sampled=sampled, seed=0, reference=unknown, size=256,
                         extractor="inception")
    assert not m["comparable_with_fid30k"] and m["reference_protocol"] == "unknown"
    assert not build(extractor="inception", kind="clean")["comparable_with_fid30k"]
    assert not build(extractor="effnet-lite0")["comparable_with_fid30k"]


def test_small_n_warning():
    assert K.small_n_warning(30_000) is None
    assert "far too few" in K.small_n_warning(500)
    assert "fewer than the paper's" in K.small_n_warning(20_000)


def test_end_to_end_tiny_model_is_a_resumable_study(fixture, tmp_path, capsys):
    from bench import store
    from bench.coco_study import run_coco
    from imagen.config import SamplerConfig
    from imagen_bench import main

    run = K.CocoRun(model="tiny", captions=str(fixture.annotations), out=str(tmp_path / "run"), n=4, seed=0,
                    images=str(fixture.images_dir), batch_size=4)
    sampler = SamplerConfig(sampler="ddim", steps=2, guidance=(3.0,), threshold="dynamic:0.995")
    with pytest.warns(UserWarning, match="not comparable"):
        result = run_coco(run, sampler, progress=False)
    out = tmp_path / "run"
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == 4 and result["n"] == 4 and result["n_ref"] == 10
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["caption_ids"] == [c.caption_id for c in K.sample_captions(
        K.read_captions(fixture.annotations), 4, 0)]
    assert manifest["sampler"]["guidance"] == [3.0] and manifest["generation"]["kind"] == "imagen"
    assert json.loads((out / "result.json").read_text())["value"] == result["value"] > 0
    # a study like any other: one row per image with the caption's ids, the FID row in the store
    rows = store.read_table(out, store.SAMPLES)
    assert len(rows) == 4 and set(rows[store.COL_SUITE]) == {"coco"}
    metas = [json.loads(m) for m in rows[store.COL_META]]
    assert sorted(m["caption_id"] for m in metas) == sorted(manifest["caption_ids"])
    # the FID equals one computed by hand from the written images and the reference folder
    from bench.metrics.features import COCO_PROTOCOL

    by_hand = F.frechet_distance(F.stats_from_files(pngs, protocol=COCO_PROTOCOL, cache=False),
                                 F.stats_from_folder(fixture.images_dir, protocol=COCO_PROTOCOL, cache=False))
    assert result["value"] == pytest.approx(by_hand, rel=1e-6)
    # resumable: a rerun keeps the images (same bytes, same mtime) and gives the same number
    mtimes = [p.stat().st_mtime_ns for p in pngs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = run_coco(run, sampler, progress=False)
        # the same settings spelled otherwise are the same cell: guidance per stage, the threshold's spelling
        same = run_coco(run, SamplerConfig(sampler="ddim", steps=2, guidance=(3.0, 3.0), threshold="dynamic:.995"),
                        progress=False)
    assert [p.stat().st_mtime_ns for p in pngs] == mtimes and again["value"] == result["value"]
    assert same["cell_id"] == result["cell_id"]
    # other settings are another cell beside the first, its images never mixed into this one's FID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = run_coco(run, SamplerConfig(sampler="ddim", steps=2, guidance=(3.0,), threshold="static"),
                         progress=False)
    assert other["cell_id"] != result["cell_id"] and other["n"] == 4
    assert [p.stat().st_mtime_ns for p in pngs] == mtimes and len(list((out / "images").rglob("*.png"))) == 8
    # the CLI: the same run through `imagen-bench coco`; `report` and `grid status` read the study
    code = main(["coco", "--model", "tiny", "--captions", str(fixture.annotations), "--images",
                 str(fixture.images_dir), "--n", "4", "--seed", "0", "--out", str(out), "--sampler", "ddim",
                 "--steps", "2", "--guidance", "3", "--threshold", "dynamic:0.995", "--batch-size", "4", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["value"] == pytest.approx(result["value"], rel=1e-9)
    assert "not comparable" in captured.err
    assert main(["grid", "status", str(out)]) == 0 and "8/8 images" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0 and (out / "report" / "index.html").is_file()
    capsys.readouterr()
    # and people can rate its two settings against each other, as any two cells of any study
    session = tmp_path / "session"
    assert main(["drawbench", "pairs", "--study", f"{out}:{result['cell_id']}", "--study",
                 f"{out}:{other['cell_id']}", "--names", "dynamic", "static", "--per-set", "1", "--codes", "1", "--out", str(session),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["comparisons"] >= 4


def test_a_coco_study_refuses_what_would_mix_runs(fixture, tmp_path):
    """Another seed (another caption draw and noise) is refused before any work; a bad setting writes nothing."""
    from bench.coco_study import run_coco
    from imagen.config import SamplerConfig

    out = tmp_path / "run"
    run = K.CocoRun(model="tiny", captions=str(fixture.annotations), out=str(out), n=2, seed=0,
                    images=str(fixture.images_dir), batch_size=2)
    good = SamplerConfig(sampler="ddim", steps=1, guidance=(3.0,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match="axes.guidance"):  # three weights for a two-stage model: nothing written
            run_coco(run, SamplerConfig(sampler="ddim", steps=1, guidance=(3.0, 1.0, 1.0)), progress=False)
        assert not out.exists()
        run_coco(run, good, progress=False)
        with pytest.raises(UserError, match="another seed"):
            run_coco(dataclasses.replace(run, seed=1), good, progress=False)
        with pytest.raises(UserError, match="not both"):
            run_coco(dataclasses.replace(run, reference_stats="x.npz"), good, progress=False)


def test_a_coco_draw_with_repeated_caption_texts_keeps_every_image(data_dir):
    """The 5k CSV repeats some caption texts: the protocol's draw of N images is N prompts (keyed by caption id)."""
    from bench.suites import load_suite

    drawn = K.sample_captions(K.read_captions(data_dir / "coco" / "val2014_captions_5k.csv"), 1000, 0)
    assert len({c.caption for c in drawn}) < 1000  # the case: some texts twice
    prompts = load_suite("coco:1000", data_dir, 0)
    assert len(prompts) == 1000 and len({p.prompt_id for p in prompts}) == 1000
    assert [json.loads(p.meta)["caption_id"] for p in prompts] == [c.caption_id for c in drawn]


def test_the_result_is_the_fid_of_this_runs_reference(fixture, tmp_path):
    """Two runs of one cell against two references: each run reports the FID against its own."""
    from bench.coco_study import run_coco
    from bench.metrics.features import COCO_PROTOCOL
    from imagen.config import SamplerConfig

    half = tmp_path / "half.npz"
    files = sorted(fixture.images_dir.iterdir())[:5]
    F.save_stats(F.stats_from_files(files, protocol=COCO_PROTOCOL, cache=False), half)
    run = K.CocoRun(model="tiny", captions=str(fixture.annotations), out=str(tmp_path / "run"), n=3, seed=0,
                    images=str(fixture.images_dir), batch_size=3)
    good = SamplerConfig(sampler="ddim", steps=1, guidance=(3.0,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = run_coco(run, good, progress=False)
        npz = run_coco(dataclasses.replace(run, images=None, reference_stats=str(half)), good, progress=False)
        again = run_coco(run, good, progress=False)
    assert (folder["n_ref"], npz["n_ref"], again["n_ref"]) == (10, 5, 10)
    assert folder["value"] != npz["value"] and again["value"] == folder["value"]
