"""FD-DINOv2: torch-fidelity's DINOv2 ViT-L/14 extractor, its code and a random-weights checkpoint laid out in a torch
hub cache as `torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")` finds them offline; the Frechet distance,
KID and precision/recall on its features equal torch-fidelity's own `calculate_metrics` on the same folders, named
FD-DINOv2 with the protocol; missing weights are one line naming what to copy where."""

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from bench.metrics.features import DINOV2, DINOV2_FILE, DINOV2_REPO

# A stand-in for the dinov2 repository's hubconf.py: the entry point torch-fidelity calls, a small random network
# (patch embedding, one mixing layer, a 1024-d CLS-like output), its weights read from the hub's checkpoints folder
# the way the real entry point reads them (load_state_dict_from_url finds the file there and downloads nothing).
HUBCONF = '''
import torch

dependencies = ["torch"]


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 32, 14, stride=14)
        self.mix = torch.nn.Linear(32, 32)
        self.head = torch.nn.Linear(32, 1024)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # [B, 256, 32]
        return self.head(torch.tanh(self.mix(tokens)).mean(1))


def dinov2_vitl14(pretrained=True, **kwargs):
    model = _Tiny()
    if pretrained:
        url = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
        model.load_state_dict(torch.hub.load_state_dict_from_url(url, map_location="cpu"))
    return model
'''


@pytest.fixture
def torch_hub(tmp_path, monkeypatch):
    """$TORCH_HOME with the dinov2 repository's (stand-in) code and a random checkpoint, as torch.hub lays them out."""
    import torch

    home = tmp_path / "torch_home"
    repo = home / "hub" / DINOV2_REPO
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    (home / "hub" / "checkpoints").mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.syspath_prepend(str(repo))
    import importlib

    hubconf = importlib.import_module("hubconf")
    torch.manual_seed(0)
    torch.save(hubconf.dinov2_vitl14(pretrained=False).state_dict(), home / "hub" / "checkpoints" / DINOV2_FILE)
    monkeypatch.delitem(__import__("sys").modules, "hubconf")
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    return home


def _folders(root, n=(12, 10), size=224):
    rng = np.random.default_rng(0)
    out = []
    for k, count in enumerate(n):
        folder = root / f"set{k}"
        folder.mkdir()
        for i in range(count):
            base = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)  # smooth-ish images, two distributions
            img = np.asarray(Image.fromarray(base).resize((size, size), Image.BILINEAR)).astype(np.int16)
            img = np.clip(img + 40 * k, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i}.png")
        out.append(folder)
    return out


def test_fd_kid_prc_equal_torch_fidelitys_own(torch_hub, tmp_path, capsys):
    import torch_fidelity

    from imagen_bench import main

    a, b = _folders(tmp_path)
    theirs = torch_fidelity.calculate_metrics(input1=str(a), input2=str(b), cuda=False, fid=True, kid=True,
                                              prc=True, feature_extractor=DINOV2, kid_subset_size=8, verbose=False,
                                              save_cpu_ram=True, cache=False)
    assert main(["fidelity", str(a), str(b), "--fd-dinov2", "--protocol", "torch-fidelity", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["metrics"]
    assert ours["fd_dinov2_vit_l_14_torch_fidelity"] == pytest.approx(theirs["frechet_inception_distance"],
                                                                      rel=1e-6)
    assert main(["fidelity", str(a), str(b), "--kid", "--prc", "--extractor", DINOV2, "--protocol",
                 "torch-fidelity", "--kid-subset-size", "8", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["metrics"]
    assert ours["kid_dinov2_vit_l_14_torch_fidelity"] == pytest.approx(theirs["kernel_inception_distance_mean"],
                                                                       rel=1e-6, abs=1e-9)
    assert ours["precision_dinov2_vit_l_14_torch_fidelity"] == pytest.approx(theirs["precision"])
    assert ours["recall_dinov2_vit_l_14_torch_fidelity"] == pytest.approx(theirs["recall"])


def test_the_clean_protocol_at_the_input_size_is_torch_fidelitys_resize(torch_hub, tmp_path):
    """224 px images: clean-fid's float resize and torch-fidelity's TF1 bilinear are both the identity, so the two
    protocols give one distance (and the float input reaches the same network)."""
    from bench.metrics import fid as F
    from bench.metrics.features import load_extractor, parse_protocol

    a, b = _folders(tmp_path)
    ext = load_extractor(DINOV2)
    vals = []
    for proto in ("clean", "torch-fidelity"):
        p = parse_protocol(proto)
        fa, fb = [F.features_from_files(F.image_paths(x), ext, p, cache=False)[0] for x in (a, b)]
        vals.append(F.frechet_distance(F.features_to_stats(fa, DINOV2, p.id, "a"),
                                       F.features_to_stats(fb, DINOV2, p.id, "b")))
    assert vals[0] == pytest.approx(vals[1], rel=1e-4) and vals[0] > 0


def test_missing_dinov2_is_one_line_naming_what_to_copy(tmp_path, monkeypatch, capsys):
    import torch

    from imagen_bench import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, b = _folders(tmp_path, n=(3, 3), size=32)
    assert main(["fidelity", str(a), str(b), "--fd-dinov2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')" in err[0]
    assert DINOV2_REPO in err[0] and DINOV2_FILE in err[0]


def test_a_grid_scores_fd_dinov2_against_its_reference(torch_hub, tmp_path, data_dir, monkeypatch):
    from bench import store
    from bench.grid import parse_spec, run_grid
    from imagen.errors import UserError

    class Gen:
        model_id, checkpoint_hash = "fake", "f" * 16

        def generate(self, prompts, seeds, settings):
            return np.stack([np.random.default_rng(s).integers(0, 256, (64, 64, 3), dtype=np.uint8) for s in seeds])

    (ref,) = _folders(tmp_path, n=(6,), size=64)
    text = (f'name = "d"\nmodel = "tiny"\nsuites = ["drawbench:3"]\nsamples_per_prompt = 2\n[axes]\nsteps = 2\n'
            f'guidance = 1.0\n[metrics]\nfd_dinov2 = {{ reference = "{ref}" }}\n'
            f'kid = {{ extractor = "{DINOV2}", reference = "{ref}", subset_size = 4 }}\n')
    spec = parse_spec(text)
    assert spec.metrics.fd_dinov2["extractor"] == DINOV2 and spec.metrics.fd_dinov2["protocol"] == "clean"
    run_grid(spec, tmp_path / "s", generator=Gen(), progress=False, log=lambda *_: None, data_dir=data_dir)
    m = store.read_table(tmp_path / "s", store.METRICS)
    names = set(m[store.COL_METRIC])
    assert {"fd_dinov2_vit_l_14_clean", "kid_dinov2_vit_l_14_clean"} <= names
    assert float(m[m[store.COL_METRIC] == "fd_dinov2_vit_l_14_clean"][store.COL_VALUE].iloc[0]) > 0
    with pytest.raises(UserError, match="fd_dinov2.extractor"):
        parse_spec(text.replace('fd_dinov2 = {', 'fd_dinov2 = { extractor = "inception", '))
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "nothing"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(UserError, match="FD-DINOv2 needs"):  # before any image
        run_grid(spec, tmp_path / "t", generator=Gen(), progress=False, log=lambda *_: None, data_dir=data_dir)
    assert not (tmp_path / "t").exists()
