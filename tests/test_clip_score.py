"""CLIP score: equal to a direct open_clip computation, to torchmetrics' CLIPScore formula on the same embeddings,
clear errors for mismatched inputs, and the CLI on a folder + CSV and on a study."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.metrics import clip_score as C
from imagen.errors import UserError


@pytest.fixture(scope="module")
def clip():
    return C.load_clip("shapes-clip")


@pytest.fixture(scope="module")
def shapes():
    from imagen.shapes import ShapesWorld, render

    world = ShapesWorld(3, "heldout")
    items = [world.item(i) for i in range(10)]
    return [render(s, 64) for s, _, _ in items], [t for _, t, _ in items]


def test_equals_direct_open_clip_computation(clip, shapes):
    import open_clip

    from bench.metrics.clip_train import WEIGHTS_FILE, shipped_dir

    images, captions = shapes
    res = C.clip_score(clip, images, captions)
    # the same thing written out with open_clip's public API only
    model, _, preprocess = open_clip.create_model_and_transforms(
        "shapes-clip", pretrained=str(shipped_dir() / WEIGHTS_FILE))
    model.eval()
    tokenizer = open_clip.get_tokenizer("shapes-clip")
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(Image.fromarray(im)) for im in images]))
        txt = model.encode_text(tokenizer(captions))
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    expected = (100 * (img * txt).sum(-1)).clamp(min=0).numpy()
    np.testing.assert_allclose(res.per_image, expected, rtol=1e-5, atol=1e-4)
    assert res.value == pytest.approx(float(expected.mean()), rel=1e-5)
    assert res.n == 10 and res.metric == "clip_score_shapes_clip"
    # a trained model scores true captions above shuffled ones
    shuffled = C.clip_score(clip, images, captions[1:] + captions[:1])
    assert res.value > shuffled.value + 5


def test_equals_torchmetrics_formula_on_the_same_embeddings(clip, shapes, monkeypatch):
    import importlib

    tm = importlib.import_module("torchmetrics.functional.multimodal.clip_score")  # the module, not the function

    images, captions = shapes
    img = C.image_embeddings(clip, images) * 3.0  # unnormalised: torchmetrics normalises itself
    txt = C.text_embeddings(clip, captions) * 0.5

    def features(data, modality, device, model, processor):
        return img if modality == "image" else txt

    monkeypatch.setattr(tm, "_get_features", features)
    tensors = [torch.from_numpy(im).permute(2, 0, 1) for im in images]
    score, n = tm._clip_score_update(tensors, list(captions), model=torch.nn.Identity(), processor=None)
    assert n == 10
    ours = C.scores_from_embeddings(img, txt)
    np.testing.assert_allclose(ours, score.clamp(min=0).double().numpy(), rtol=1e-5, atol=1e-4)
    if (score > 0).all():  # torchmetrics clamps the mean; equal to the mean of clamped values when all positive
        assert float(ours.mean()) == pytest.approx(float(torch.max(score.mean(), torch.zeros(()))), rel=1e-5)


def test_score_is_100_max_cos_0():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    b = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(C.scores_from_embeddings(a, b), [100.0, 0.0, 60.0], atol=1e-9)


def test_long_text_is_truncated_not_an_error(clip, shapes):
    images, captions = shapes
    long = " ".join(["a red circle and a blue square"] * 40)
    res = C.clip_score(clip, images[:2], [long, captions[1]])
    assert np.isfinite(res.per_image).all()
    assert clip.tokenizer([long]).shape[1] == 32


def test_mismatched_counts_are_a_clear_error(clip, shapes):
    images, captions = shapes
    with pytest.raises(UserError, match="10 images and 9 captions"):
        C.clip_score(clip, images, captions[:9])


def test_metric_names_carry_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    assert C.clip_score_metric_name("ViT-L-14", "openai") == "clip_score_vit_l_14_openai"
    assert C.clip_score_metric_name("ViT-L-14", "laion2b_s32b_b82k") == "clip_score_vit_l_14_laion2b_s32b_b82k"
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    na, nb = C.clip_score_metric_name("ViT-B-32", str(a)), C.clip_score_metric_name("ViT-B-32", str(b))
    assert na.startswith("clip_score_vit_b_32_file_") and na != nb  # two files never share a column
    assert C.clip_score_metric_name("shapes-clip") == C.KEY_CLIP_SCORE_SHAPES_CLIP
    from bench.metrics.clip_train import WEIGHTS_FILE, shipped_dir

    assert C.clip_score_metric_name("shapes-clip", str(shipped_dir() / WEIGHTS_FILE)) == C.KEY_CLIP_SCORE_SHAPES_CLIP
    assert C.clip_score_metric_name("shapes-clip", str(a)).startswith("clip_score_shapes_clip_file_")
    assert C.clip_score_metric_name("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K") == \
        "clip_score_clip_vit_b_32_laion2b_s34b_b79k"


def test_a_bare_architecture_is_refused_not_scored_with_random_weights(tmp_path, capsys):
    from bench.grid import parse_spec
    from imagen_bench import main

    with pytest.raises(UserError, match=r"'ViT-B-32' has no weights.*randomly initialised.*openai"):
        C.load_clip("ViT-B-32")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "c.csv").write_text("file,caption\na.png,a cat\n")
    assert main(["clip-score", "--images", str(tmp_path / "imgs"), "--captions", str(tmp_path / "c.csv"),
                 "--clip-model", "ViT-B-32"]) == 2
    err = capsys.readouterr().err
    assert "--clip-pretrained" in err and err.count("\n") == 1
    spec = 'name = "x"\nmodel = "tiny"\nsuites = ["shapes:4"]\n[metrics]\nclip_score = { model = "ViT-L-14" }\n'
    with pytest.raises(UserError, match=r"metrics.clip_score: .*no weights.*pretrained = \"openai\""):
        parse_spec(spec)
    ok = parse_spec(spec.replace('"ViT-L-14" }', '"ViT-L-14", pretrained = "openai" }'))
    assert ok.metrics.clip_score == {"model": "ViT-L-14", "pretrained": "openai"}
    from bench.grid import spec_to_toml

    assert parse_spec(spec_to_toml(ok)) == ok


def test_images_and_captions_must_pair_up(tmp_path):
    (tmp_path / "imgs").mkdir()
    for k in range(8):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / f"{k}.png")
    (tmp_path / "c.csv").write_text("file,caption\n0.png,a cat\n")
    with pytest.raises(UserError, match=r"7 image\(s\) in .* have no caption .*: 1.png, 2.png, 3.png, 4.png, 5.png"):
        C.pairs_from_folder(tmp_path / "imgs", tmp_path / "c.csv")
    (tmp_path / "c.csv").write_text("file,caption\n" + "".join(f"{k}.png,x\n" for k in range(8)) + "9.png,y\n")
    with pytest.raises(UserError, match=r"1 caption\(s\) .* have no image .*: 9.png"):
        C.pairs_from_folder(tmp_path / "imgs", tmp_path / "c.csv")


def test_unknown_model_and_missing_weights_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown open_clip architecture"):
        C.load_clip("NoSuchNet-9")
    with pytest.raises(UserError, match="clip-pretrained"):
        C.load_clip("ViT-B-32", str(tmp_path / "missing.bin"))


def test_cli_folder_and_study(clip, shapes, tmp_path, capsys):
    from bench.store import COL_CELL_ID, COL_IMAGE_PATH, COL_PROMPT, COL_SAMPLE_ID, SAMPLES, write_part
    from imagen_bench import main

    images, captions = shapes
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = []
    for i, (im, cap) in enumerate(zip(images, captions)):
        Image.fromarray(im).save(folder / f"{i}.png")
        rows.append({"file": f"{i}.png", "caption": cap})
    with open(tmp_path / "c.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "caption"])
        w.writeheader()
        w.writerows(rows)
    assert main(["clip-score", "--images", str(folder), "--captions", str(tmp_path / "c.csv"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "clip_score_shapes_clip" and out["n"] == 10
    assert out["value"] == pytest.approx(C.clip_score(clip, images, captions).value, rel=1e-5)

    study = tmp_path / "study"
    srows = []
    for i, cap in enumerate(captions[:4]):
        rel = f"images/c0/{i}-0.png"
        (study / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(study / rel)
        srows.append({COL_SAMPLE_ID: f"c0/{i}/0", COL_CELL_ID: "c0", COL_IMAGE_PATH: rel, COL_PROMPT: cap})
    write_part(study, SAMPLES, srows)
    assert main(["clip-score", str(study), "--cell", "c0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 4
    assert out["value"] == pytest.approx(C.clip_score(clip, images[:4], captions[:4]).value, rel=1e-5)

    (folder / "3.png").unlink()
    assert main(["clip-score", "--images", str(folder), "--captions", str(tmp_path / "c.csv")]) == 2
    assert "3.png" in capsys.readouterr().err
