"""Text encoders (real all-MiniLM-L6-v2 weights, a locally saved T5) and the on-disk embedding cache."""

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from imagen.config import TextEncoderConfig
from imagen.errors import UserError
from imagen.text import EmbeddingCache, TextEncoder, load_text_encoder, minilm_path, pooled

PROMPTS = ["a red circle", "a photo of a corgi riding a bicycle through a field of sunflowers", "a cat"]


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(TextEncoderConfig())


class FakeEncoder:
    """A deterministic encoder that counts how many prompts it was asked to encode."""

    id = "fake:v1"
    dim = 4
    max_length = 16

    def __init__(self):
        self.calls = []

    def encode(self, texts):
        self.calls.append(list(texts))
        length = max(len(t.split()) for t in texts)
        tokens = torch.zeros(len(texts), length, self.dim)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, t in enumerate(texts):
            for j, w in enumerate(t.split()):
                tokens[i, j] = torch.tensor([len(w), j, sum(map(ord, w)) / 100.0, i * 0 + 1.5])
                mask[i, j] = True
        return tokens, mask


def test_minilm_encodes_384d_tokens_and_a_mask(minilm):
    assert isinstance(minilm, TextEncoder)
    assert minilm.id == "minilm:all-MiniLM-L6-v2:64" and minilm.dim == 384
    tokens, mask = minilm.encode(PROMPTS)
    assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
    assert tokens.shape[0] == 3 and tokens.shape[2] == 384 and mask.shape == tokens.shape[:2]
    lengths = mask.sum(1)
    assert lengths[1] == tokens.shape[1] and lengths[0] < lengths[1]  # padded to the longest prompt
    # right-padded, padding zeroed; the tokenizer agrees on the length ([CLS] a red circle [SEP] = 5)
    assert lengths[0] == 5 and mask[0, :5].all() and not mask[0, 5:].any()
    assert tokens[0, 5:].abs().sum() == 0 and tokens[0, :5].abs().sum() > 0
    assert not tokens.requires_grad


def test_minilm_same_prompt_same_embedding_in_any_batch(minilm):
    alone, m_alone = minilm.encode(["a red circle"])
    batched, m_b = minilm.encode(["a much longer prompt about a blue square on a table", "a red circle"])
    n = int(m_alone.sum())
    torch.testing.assert_close(batched[1, :n], alone[0, :n], atol=1e-5, rtol=0)
    # and it is the real model: different prompts give different embeddings
    other, _ = minilm.encode(["a blue square"])
    assert (pooled(other, torch.ones(1, other.shape[1], dtype=torch.bool)) - pooled(alone, m_alone)).abs().max() > 0.1


def test_minilm_truncates_to_max_length():
    enc = load_text_encoder(TextEncoderConfig(max_length=8))
    tokens, mask = enc.encode(["one two three four five six seven eight nine ten eleven"])
    assert tokens.shape[1] == 8 and mask.all() and enc.id.endswith(":8")


def test_pooled_is_the_masked_mean():
    tokens = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    expect = torch.stack([tokens[0, :2].mean(0), tokens[1].mean(0)])
    torch.testing.assert_close(pooled(tokens, mask), expect)
    assert pooled(tokens, torch.zeros(2, 4, dtype=torch.bool)).abs().sum() == 0


# ----------------------------------------------------------------------------- T5 loading (offline)


def test_t5_loads_from_a_local_folder(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=31000, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    T5EncoderModel(cfg).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(tmp_path)  # any tokenizer will do
    enc = load_text_encoder(TextEncoderConfig(kind="t5", name=str(tmp_path), dim=16, max_length=32))
    assert enc.id == f"t5:{tmp_path}:32" and enc.dim == 16
    tokens, mask = enc.encode(["a red circle", "a cat"])
    assert tokens.shape == (2, 5, 16) and mask.sum(1).tolist() == [5, 4]
    # the real weights are used: compare against the model run by hand
    model = T5EncoderModel.from_pretrained(tmp_path).eval()
    ids = AutoTokenizer.from_pretrained(tmp_path)(["a red circle"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(tokens[0], ref[0], atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="dim=16"):
        load_text_encoder(TextEncoderConfig(kind="t5", name=str(tmp_path), dim=4096))


def test_missing_t5_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(UserError) as err:
        load_text_encoder(TextEncoderConfig(kind="t5", name="google/t5-v1_1-xxl", dim=4096))
    msg = str(err.value)
    assert "google/t5-v1_1-xxl" in msg and "HF_HUB_OFFLINE=1" in msg and "folder" in msg
    with pytest.raises(UserError, match="does not exist"):
        load_text_encoder(TextEncoderConfig(kind="t5", name=str(tmp_path / "nowhere"), dim=4096))
    with pytest.raises(UserError, match="unknown text encoder kind"):
        load_text_encoder(TextEncoderConfig(kind="clip"))


# ----------------------------------------------------------------------------- cache


def test_cache_returns_what_the_encoder_returns_and_encodes_once(tmp_path, minilm):
    calls = []

    class Counting:
        id, dim, max_length, device = minilm.id, minilm.dim, minilm.max_length, minilm.device

        def encode(self, texts):
            calls.append(list(texts))
            return minilm.encode(texts)

    cache = EmbeddingCache(Counting(), tmp_path)
    direct, dmask = minilm.encode(PROMPTS)
    first, fmask = cache.encode(PROMPTS)
    assert torch.equal(first, direct) and torch.equal(fmask, dmask)  # exactly the encoder's output
    again, amask = cache.encode(PROMPTS)
    assert torch.equal(again, direct) and torch.equal(amask, dmask)
    assert calls == [PROMPTS]  # the second call encoded nothing
    # a new cache over the same folder (another process, a later run) reads from disk
    fresh = EmbeddingCache(Counting(), tmp_path)
    sub, smask = fresh.encode([PROMPTS[2], PROMPTS[0]])
    assert calls == [PROMPTS]
    n0, n2 = int(dmask[0].sum()), int(dmask[2].sum())
    assert torch.equal(sub[0, :n2], direct[2, :n2]) and torch.equal(sub[1, :n0], direct[0, :n0])
    assert sub.shape[1] == max(n0, n2) and smask.sum(1).tolist() == [n2, n0]


def test_cache_mixes_cached_and_new_prompts_and_dedupes(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache(enc, tmp_path)
    cache.encode(["a b", "c"])
    tokens, mask = cache.encode(["c", "new words here", "a b", "new words here"])
    assert enc.calls == [["a b", "c"], ["new words here"]]  # only the new prompt, once
    ref, rmask = enc.encode(["c", "new words here", "a b", "new words here"])
    assert torch.equal(tokens, ref) and torch.equal(mask, rmask)
    files = list(Path(tmp_path).rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]  # no temp files left behind
    assert len([f for f in files if f.suffix == ".npy"]) == 3


def test_cache_keys_include_the_encoder_id(tmp_path):
    a, b = FakeEncoder(), FakeEncoder()
    b.id = "fake:v2"
    ca, cb = EmbeddingCache(a, tmp_path), EmbeddingCache(b, tmp_path)
    assert ca.key("x") != cb.key("x")
    ca.encode(["x"])
    cb.encode(["x"])
    assert len(a.calls) == 1 and len(b.calls) == 1


def test_cache_recovers_from_a_corrupt_file(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache(enc, tmp_path)
    ref, _ = cache.encode(["hello world"])
    cache.path("hello world").write_bytes(b"not an array")
    again, _ = EmbeddingCache(enc, tmp_path).encode(["hello world"])  # a new process meets the corrupt file
    assert torch.equal(again, ref) and len(enc.calls) == 2
    assert np.load(cache.path("hello world")).shape == (2, 4)


def _worker(root, prompts, out):
    cache = EmbeddingCache(FakeEncoder(), root)
    tokens, mask = cache.encode(prompts)
    out.put(tokens.numpy())


def test_cache_is_safe_with_several_processes(tmp_path):
    prompts = [f"prompt number {i} " + "w " * (i % 5) for i in range(40)]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), prompts, out)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    ref, _ = FakeEncoder().encode(prompts)
    for r in results:
        np.testing.assert_array_equal(r, ref.numpy())
    cache = EmbeddingCache(FakeEncoder(), tmp_path)
    cached, _ = cache.encode(prompts)
    assert torch.equal(cached, ref) and cache.encoder.calls == []
    assert not list(Path(tmp_path).rglob("*.tmp"))


def test_default_cache_root_honours_the_environment(monkeypatch, tmp_path):
    from imagen.text import default_cache_root

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path / "text"
    assert EmbeddingCache(FakeEncoder()).root == tmp_path / "text"


def test_cache_reads_each_prompt_file_once_per_instance(tmp_path, monkeypatch):
    enc = FakeEncoder()
    EmbeddingCache(enc, tmp_path).encode(["a b", "c"])  # on disk now
    cache = EmbeddingCache(enc, tmp_path)
    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    first, _ = cache.encode(["a b", "c"])
    for _ in range(3):  # e.g. the same prompts in three grid cells
        again, _ = cache.encode(["c", "a b"])
        assert torch.equal(again, first[[1, 0]])
    assert len(loads) == 2 and len(enc.calls) == 1
