"""shapes-clip: the shipped weights retrieve the true caption of held-out shapes images among 16 candidates at
least 90% of the time; the architecture is registered with open_clip; training writes loadable weights."""

import json

import pytest
import torch

from bench.metrics import clip_train as T
from bench.metrics.clip_score import load_clip


def test_shipped_weights_retrieve_heldout_captions():
    clip = load_clip("shapes-clip")
    acc = T.retrieval_accuracy(clip.model, clip.preprocess, clip.tokenizer, n=200, candidates=16, seed=0)
    assert acc >= 0.90, f"top-1 among 16 = {acc:.3f}"
    acc_other = T.retrieval_accuracy(clip.model, clip.preprocess, clip.tokenizer, n=100, candidates=16, seed=7)
    assert acc_other >= 0.85  # another held-out stream


def test_untrained_model_is_at_chance():
    """The retrieval measure is not trivially high: random weights score near 1/16."""
    import open_clip

    T.register_shapes_clip()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("shapes-clip")
    acc = T.retrieval_accuracy(model, preprocess, open_clip.get_tokenizer("shapes-clip"), n=80, candidates=16)
    assert acc < 0.3


def test_shipped_files_are_small_and_registered():
    import open_clip

    folder = T.shipped_dir()
    weights = folder / T.WEIGHTS_FILE
    assert weights.stat().st_size < 10 * 2**20
    assert json.loads((folder / T.CONFIG_FILE).read_text()) == T.SHAPES_CLIP_CONFIG
    T.register_shapes_clip()
    assert "shapes-clip" in open_clip.list_models()
    assert open_clip.get_tokenizer("shapes-clip")(["a red circle"]).shape == (1, 32)


def test_training_writes_loadable_weights(tmp_path):
    cfg = T.TrainConfig(steps=2, batch_size=8, eval_every=1000, minutes=5)
    result = T.train_shapes_clip(tmp_path / "clip", cfg, progress=False, log=lambda s: None)
    assert result["steps"] == 2 and 0.0 <= result["retrieval_top1"] <= 1.0
    files = sorted(p.name for p in (tmp_path / "clip").iterdir())
    assert files == [T.CONFIG_FILE, T.WEIGHTS_FILE]  # no temp files left behind
    clip = load_clip("shapes-clip", str(tmp_path / "clip" / T.WEIGHTS_FILE))
    shipped = load_clip("shapes-clip")
    a = clip.model.state_dict()["text_projection"]
    b = shipped.model.state_dict()["text_projection"]
    assert a.shape == b.shape and not torch.equal(a, b)


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    from imagen_bench import main

    assert main(["train-clip", "--out", str(tmp_path / "x"), "--batch-size", "1"]) == 2
    assert "batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-clip"])  # --out is required
