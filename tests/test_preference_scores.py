"""Human-preference scorers (PickScore, HPS v2 / v2.1, ImageReward) on tiny random models saved in each authors' own
format and loaded through the path a real checkpoint takes: each score against an independent computation on the
same inputs, batched equal to one by one, named by its weights, and a missing checkpoint refused in one line that
says what to download."""

import numpy as np
import pytest

import preference_fixtures as pf
from imagen.errors import UserError

PROMPTS = ["a cat", "two red dogs on a long wooden table in the park at noon", "x", "a blue cube left of a ball",
           "a photo of the table"]


def _images(n, seed=0, sizes=((64, 64), (96, 64), (48, 80), (40, 40), (33, 57))):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """The Hugging Face cache is an empty folder (offline): nothing real can be found by accident."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _one_line(exc_info, *parts):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


# ----------------------------------------------------------------------------- PickScore


@pytest.fixture(scope="module")
def pickscore_folder(tmp_path_factory):
    return pf.make_pickscore(tmp_path_factory.mktemp("pickscore"))


@pytest.fixture(scope="module")
def pickscore(pickscore_folder):
    from bench.metrics.pickscore import PickScore

    return PickScore(pickscore_folder)


def test_pickscore_is_the_scaled_cosine_of_an_independent_computation(pickscore_folder, pickscore):
    """As the authors' README: the processor, get_image_features / get_text_features, unit norm, exp(logit_scale)."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(pickscore_folder).eval()
    proc = AutoProcessor.from_pretrained(pickscore_folder)
    images, prompts = _images(3, seed=1), PROMPTS[:3]
    with torch.no_grad():
        img = model.get_image_features(**proc(images=[Image.fromarray(i) for i in images], return_tensors="pt"))
        txt = model.get_text_features(**proc(text=prompts, padding=True, truncation=True, max_length=77,
                                             return_tensors="pt"))
    img, txt = (getattr(e, "pooler_output", e).double().numpy() for e in (img, txt))  # a tensor in transformers 4
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    expected = np.exp(3.1) * np.sum(img * txt, axis=-1)
    assert float(model.logit_scale.detach()) == pytest.approx(3.1)
    np.testing.assert_allclose(pickscore(images, prompts), expected, rtol=1e-5, atol=1e-6)


def test_pickscore_batched_equals_one_by_one(pickscore):
    images = _images(5)
    batched = pickscore(images, PROMPTS, batch_size=4)
    alone = np.concatenate([pickscore([im], [p], batch_size=1) for im, p in zip(images, PROMPTS)])
    assert batched.shape == (5,) and batched.dtype == np.float64
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(batched, 9))) == 5


def test_pickscore_pair_probability_is_the_softmax_of_the_two_scores(pickscore):
    from bench.metrics.pickscore import preference_probability

    a, b = _images(2, seed=2), _images(2, seed=3)
    prompts = PROMPTS[:2]
    sa, sb = pickscore(a, prompts), pickscore(b, prompts)
    by_hand = np.exp(sa) / (np.exp(sa) + np.exp(sb))
    np.testing.assert_allclose(pickscore.pair_probability(a, b, prompts), by_hand, rtol=1e-12)
    np.testing.assert_allclose(preference_probability([1000.0, -3.0], [0.0, -3.0]), [1.0, 0.5])


def test_pickscore_names_and_refusals(pickscore_folder, pickscore, empty_hf_cache, tmp_path):
    from bench.metrics.pickscore import DEFAULT_MODEL, PickScore, metric_name

    assert pickscore.name == "pickscore_pickscore_tiny" and pickscore.dtype == "float32"
    assert metric_name(DEFAULT_MODEL) == "pickscore_v1"
    with pytest.raises(UserError) as exc:
        PickScore(DEFAULT_MODEL)
    _one_line(exc, "huggingface-cli download yuvalkirstain/PickScore_v1", "HF_HOME", 'pickscore = { model = "')
    with pytest.raises(UserError) as exc:
        PickScore(pickscore_folder, processor="laion/not-here")
    _one_line(exc, "huggingface-cli download laion/not-here")
    with pytest.raises(UserError) as exc:
        PickScore(pickscore_folder, dtype="int8")
    _one_line(exc, "float32")


# ----------------------------------------------------------------------------- HPS v2 / v2.1


@pytest.fixture(scope="module")
def hps_file(tmp_path_factory):
    return pf.make_hps(tmp_path_factory.mktemp("hps"))


@pytest.fixture(scope="module")
def hps(hps_file):
    from bench.metrics.hpsv2 import HPSv2

    return HPSv2(hps_file, version="v2.1", architecture=pf.HPS_TINY)


def test_hps_is_hpsv2s_score_by_open_clips_own_forward(hps_file, hps):
    """hpsv2's score(): the model's forward (unit-norm features), the diagonal of image_features @ text_features.T,
    no logit scale; the model loaded independently from the checkpoint file."""
    import open_clip
    import torch

    model = open_clip.create_model(pf.HPS_TINY, pretrained=None)
    model.load_state_dict(torch.load(hps_file, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    images, prompts = _images(4, seed=4), PROMPTS[:4]
    with torch.no_grad():
        out = model(hps.pixels(images), open_clip.get_tokenizer(pf.HPS_TINY)(prompts))
    image_features, text_features = (out["image_features"], out["text_features"]) if isinstance(out, dict) \
        else out[:2]
    expected = torch.diagonal(image_features @ text_features.T).double().numpy()
    np.testing.assert_allclose(hps(images, prompts), expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(expected) <= 1)


def test_hps_transform_is_hpsv2s_resize_longest_and_centre_on_black():
    """A square image at the input size: only mean/std. Longest side already the size (a wide image): centred on
    black, split as hpsv2 splits the padding. A larger image: torch's antialiased bicubic resize of the [0, 1] tensor
    to the longest side, then the padding."""
    import torch
    import torch.nn.functional as F

    from bench.metrics.hpsv2 import hps_transform

    mean, std = np.array([0.48, 0.46, 0.41]), np.array([0.27, 0.26, 0.28])
    norm = lambda x: (x - mean[:, None, None]) / std[:, None, None]  # noqa: E731
    rng = np.random.default_rng(5)
    square = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(hps_transform(square, 32, mean, std).numpy(),
                               norm(square.transpose(2, 0, 1) / 255.0), rtol=1e-6, atol=1e-6)
    wide = rng.integers(0, 256, (19, 32, 3), dtype=np.uint8)  # 13 rows of padding: 6 above, 7 below
    expected = np.zeros((3, 32, 32))
    expected[:, 6:25] = wide.transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(hps_transform(wide, 32, mean, std).numpy(), norm(expected), rtol=1e-6, atol=1e-6)
    tall = rng.integers(0, 256, (80, 50, 3), dtype=np.uint8)  # -> 32 x round(20.0) = 20 columns, 6 + 6 padding
    x = torch.from_numpy(tall).permute(2, 0, 1).double()[None] / 255
    resized = F.interpolate(x, size=(32, 20), mode="bicubic", align_corners=False, antialias=True)[0].numpy()
    expected = np.zeros((3, 32, 32))
    expected[:, :, 6:26] = resized
    np.testing.assert_allclose(hps_transform(tall, 32, mean, std).numpy(), norm(expected), rtol=1e-5, atol=1e-5)


def test_hps_batched_equals_one_by_one(hps):
    images = _images(5, seed=6)
    batched = hps(images, PROMPTS, batch_size=3)
    alone = np.concatenate([hps([im], [p], batch_size=1) for im, p in zip(images, PROMPTS)])
    assert batched.shape == (5,) and batched.dtype == np.float64
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(batched, 9))) == 5


def test_hps_names_by_version_and_file(hps_file, hps, monkeypatch):
    """A file that is not the published one is named by its sha256; the published sha256 for the version asked gives
    the plain name; v2.0's published file asked as v2.1 is refused."""
    from bench.metrics import hpsv2 as mod
    from bench.metrics.hub import file_sha256

    sha = file_sha256(hps_file)
    assert hps.name == f"hpsv2_1_file_{sha[:8]}" and hps.version == "v2.1" and hps.dtype == "float32"
    assert mod.metric_name("v2.0", mod.RELEASES["v2.0"].sha256) == "hpsv2_0"
    assert mod.metric_name("v2.1", mod.RELEASES["v2.1"].sha256) == "hpsv2_1"
    assert mod.metric_name("v2.0", mod.RELEASES["v2.1"].sha256).startswith("hpsv2_0_file_c57a38fb")
    monkeypatch.setitem(mod.RELEASES, "v2.1", mod.Release("v2.1", "HPS_v2.1_compressed.pt", sha, 0))
    assert mod.HPSv2(hps_file, architecture=pf.HPS_TINY).name == "hpsv2_1"
    monkeypatch.setitem(mod.RELEASES, "v2.0", mod.Release("v2.0", "HPS_v2_compressed.pt", sha, 0))
    with pytest.raises(UserError) as exc:
        mod.HPSv2(hps_file, version="v2.1", architecture=pf.HPS_TINY)
    _one_line(exc, 'the published v2.0 file', 'version = "v2.0"')
    with pytest.raises(UserError) as exc:
        mod.HPSv2(hps_file, version="v3")
    _one_line(exc, "v2.0, v2.1")


def test_hps_refusals_name_the_download(hps_file, empty_hf_cache, tmp_path):
    import torch

    from bench.metrics.hpsv2 import HPSv2

    for version, filename in (("v2.1", "HPS_v2.1_compressed.pt"), ("v2.0", "HPS_v2_compressed.pt")):
        with pytest.raises(UserError) as exc:
            HPSv2(None, version=version)
        _one_line(exc, f"huggingface-cli download xswu/HPSv2 {filename}", "HF_HOME", f'version = "{version}"')
    with pytest.raises(UserError) as exc:
        HPSv2(str(tmp_path / "nowhere" / "HPS_v2.1_compressed.pt"))
    _one_line(exc, "no such file")
    with pytest.raises(UserError) as exc:
        HPSv2(str(tmp_path))  # a folder without the file
    _one_line(exc, "has no HPS_v2.1_compressed.pt")
    wider = pf.register_hps_tiny(tmp_path, name="hps-tiny-wider", width=48)
    with pytest.raises(UserError) as exc:
        HPSv2(hps_file, architecture=wider)  # weights of another architecture
    _one_line(exc, "do not fit open_clip's hps-tiny-wider")
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "args": _Args()}, pickled)
    with pytest.raises(UserError) as exc:
        HPSv2(str(pickled), architecture=pf.HPS_TINY)
    _one_line(exc, "hold more than tensors")


class _Args:
    """A pickled non-tensor object, as training scripts leave in checkpoints."""


# ----------------------------------------------------------------------------- ImageReward


@pytest.fixture(scope="module")
def ir_files(tmp_path_factory):
    return pf.make_imagereward(tmp_path_factory.mktemp("imagereward"))


@pytest.fixture
def ir_cache(ir_files, monkeypatch):
    """The fake Hugging Face cache holding bert-base-uncased's (tiny) tokenizer, offline."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", ir_files["hf_cache"])
    return ir_files


@pytest.fixture
def imagereward(ir_cache):
    from bench.metrics.imagereward import ImageReward

    return ImageReward(ir_cache["weights"])


def test_imagereward_equals_the_architecture_written_out_from_the_checkpoint(ir_cache, imagereward):
    """The reference reads only ImageReward.pt's tensors (BLIP's names) and runs BLIP's ViT, BERT with cross-attention
    over the image tokens, the [CLS] head and the published standardisation in float64; pixels from PIL directly
    (shortest side to 48 bicubic, centre crop, CLIP mean/std), tokens padded to 35."""
    import torch
    from PIL import Image

    state = torch.load(ir_cache["weights"], map_location="cpu", weights_only=True)
    images, prompts = _images(3, seed=7, sizes=((64, 64), (64, 96), (80, 48))), PROMPTS[1:4]
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    expected = []
    for image, prompt in zip(images, prompts):
        h, w = image.shape[:2]
        size = (48, int(48 * h / w)) if w < h else (int(48 * w / h), 48)  # (width, height), shortest side 48
        im = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), dtype=np.float64) / 255
        top, left = int(round((im.shape[0] - 48) / 2)), int(round((im.shape[1] - 48) / 2))
        pixels = ((im[top:top + 48, left:left + 48] - mean) / std).transpose(2, 0, 1)
        tok = imagereward.tokenizer(prompt, padding="max_length", truncation=True, max_length=35)
        assert len(tok["input_ids"]) == 35 and tok["input_ids"][0] == imagereward.tokenizer.cls_token_id
        expected.append(pf.imagereward_reference(state, pixels, tok["input_ids"], tok["attention_mask"],
                                                 pf.IR_TEXT["num_attention_heads"]))
    got = imagereward(images, prompts)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.std(expected) > 1e-3  # the head's output varies with the inputs


def test_imagereward_batched_equals_one_by_one(imagereward):
    images = _images(5, seed=8)
    batched = imagereward(images, PROMPTS, batch_size=4)
    alone = np.concatenate([imagereward([im], [p], batch_size=1) for im, p in zip(images, PROMPTS)])
    assert batched.shape == (5,) and batched.dtype == np.float64
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(batched, 9))) == 5


def test_imagereward_tokenizer_and_names(ir_cache, imagereward):
    from bench.metrics import imagereward as mod
    from bench.metrics.hub import file_sha256

    tok = imagereward.tokenizer
    assert tok.convert_tokens_to_ids("[DEC]") == len(tok) - 2 and tok.convert_tokens_to_ids("[ENC]") == len(tok) - 1
    assert imagereward.text.config.vocab_size == len(tok) and imagereward.text.config.encoder_hidden_size == 128
    assert imagereward.vision.config.image_size == 48 and imagereward.vision.config.num_attention_heads == 2
    sha = file_sha256(ir_cache["weights"])
    assert imagereward.name == f"imagereward_file_{sha[:8]}" and imagereward.dtype == "float32"
    assert mod.metric_name(mod.PUBLISHED_SHA256) == "imagereward_v1_0"
    assert mod.ImageReward(ir_cache["folder"]).name == imagereward.name  # a folder with both files


def test_imagereward_refusals_name_the_download(ir_files, empty_hf_cache, tmp_path):
    import shutil

    from bench.metrics.imagereward import ImageReward

    with pytest.raises(UserError) as exc:
        ImageReward(None)
    _one_line(exc, "huggingface-cli download THUDM/ImageReward ImageReward.pt", "HF_HOME", "imagereward = {")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ir_files["weights"], alone / "ImageReward.pt")
    with pytest.raises(UserError) as exc:
        ImageReward(str(alone / "ImageReward.pt"))  # no med_config.json beside it, none in the cache
    _one_line(exc, "huggingface-cli download THUDM/ImageReward med_config.json")
    with pytest.raises(UserError) as exc:
        ImageReward(ir_files["weights"])  # the BERT tokenizer is not in this (empty) cache
    _one_line(exc, "huggingface-cli download bert-base-uncased", "tokenizer")
