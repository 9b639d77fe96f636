"""VQAScore: P("Yes") from a vision-language model's next-token distribution, with a tiny random Qwen2.5-VL built from
its config and loaded through AutoProcessor / AutoModelForImageTextToText like a downloaded checkpoint; the right
tokens (controlled logits, an independent forward pass); batched equal to one by one; per-image scores stored once,
sharded under torchrun equal to one process, and a killed scoring run re-scoring nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import image_scores, store
from bench.cell_metrics import MetricFns
from bench.grid import parse_spec, run_grid
from imagen.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    import vlm_fixtures

    return vlm_fixtures.make_qwen2_5_vl(tmp_path_factory.mktemp("vlm"))


@pytest.fixture(scope="module")
def scorer(vlm):
    from bench.metrics.vqascore import VQAScore

    return VQAScore(vlm)


def _images(n, seed=0, sizes=((64, 64), (96, 64), (64, 80))):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


PROMPTS = ["a cat", "two red dogs on a long wooden table in the park at noon", "x", "a blue cube left of a ball"]


def test_the_model_loads_like_a_downloaded_checkpoint_and_is_named_by_it(scorer):
    assert scorer.name == "vqascore_qwen2_5_vl_tiny" and scorer.dtype == "float32"
    text = scorer.texts(["a cat"])[0]
    assert 'Does this figure show "a cat"? Please answer yes or no.' in text and text.endswith("assistant\n")
    assert len(scorer.answer_ids) == 1  # "Yes" is one token, as in the real vocabulary


def test_batched_equals_one_by_one(scorer):
    """Rows of different lengths (prompts) and image sizes padded together score as they do alone."""
    images = _images(4)
    batched = scorer(images, PROMPTS, batch_size=4)
    alone = np.concatenate([scorer([im], [p], batch_size=1) for im, p in zip(images, PROMPTS)])
    assert batched.shape == (4,) and np.all((batched > 0) & (batched < 1))
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=0)
    assert len(set(np.round(batched, 12))) == 4  # each row its own image and prompt


def test_the_score_is_the_yes_probability_of_an_independent_forward_pass(vlm, scorer):
    """Written out without the scorer: the chat prompt, one forward pass, softmax at the last position, "Yes"."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(vlm)
    model = AutoModelForImageTextToText.from_pretrained(vlm).eval()
    image = _images(1, seed=3)[0]
    question = 'Does this figure show "a blue cube"? Please answer yes or no.'
    text = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + question +
            "<|im_end|>\n<|im_start|>assistant\n")
    inputs = proc(text=[text], images=[Image.fromarray(image)], return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits[0, -1].double(), dim=-1)
    yes = proc.tokenizer.convert_tokens_to_ids("Yes")
    assert scorer([image], ["a blue cube"])[0] == pytest.approx(float(probs[yes]), rel=1e-5)


def test_controlled_logits_give_the_probability_by_hand():
    """Logits chosen by hand: one token, softmax by hand; two tokens, the product of both positions'."""
    import torch

    from bench.metrics.vqascore import answer_probability

    logits = torch.tensor([[[2.0, 0.0, -1.0, 0.5]], [[0.0, 0.0, 0.0, 0.0]]])
    by_hand = [np.exp(0.0) / (np.exp(2) + 1 + np.exp(-1) + np.exp(0.5)), 0.25]
    np.testing.assert_allclose(answer_probability(logits, [1]), by_hand, rtol=1e-12)
    two = torch.tensor([[[1.0, 3.0, 0.0], [0.0, 0.0, 2.0]]])
    p1, p2 = np.exp(3) / (np.exp(1) + np.exp(3) + 1), np.exp(2) / (2 + np.exp(2))
    np.testing.assert_allclose(answer_probability(two, [1, 2]), [p1 * p2], rtol=1e-12)


def test_the_answer_is_read_at_the_right_positions(scorer, monkeypatch):
    """A model whose logits at each position favour the token after the input's (id + 1): the answer "Yes please"
    (several tokens, teacher-forced) is likely exactly where each answer token follows its predecessor, and the
    first is read at the prompt's last position (left padding: every row's)."""
    import torch

    from bench.metrics.vqascore import VQAScore

    vocab, c = 300, 4.0

    class Shifted(torch.nn.Module):
        def forward(self, input_ids, logits_to_keep=0, **kw):
            logits = torch.zeros(*input_ids.shape, vocab)
            logits.scatter_(-1, ((input_ids + 1) % vocab).unsqueeze(-1), c)
            return type("Out", (), {"logits": logits[:, -logits_to_keep:] if logits_to_keep else logits})()

    s = object.__new__(VQAScore)
    s.__dict__.update(scorer.__dict__)
    s.model, s.answer_ids = Shifted(), [100, 101, 57]
    hi, lo = np.exp(c) / (np.exp(c) + vocab - 1), 1 / (np.exp(c) + vocab - 1)
    images, prompts = _images(2), ["a cat", "two red dogs on a long wooden table"]
    inputs = s.processor(text=s.texts(prompts), images=[__import__("PIL.Image").Image.fromarray(i) for i in images],
                         padding=True, return_tensors="pt")
    last = inputs["input_ids"][:, -1]
    first = [hi if 100 == int(t) + 1 else lo for t in last]  # the prompt's last token -> the answer's first
    expected = np.array(first) * hi * lo  # 100 -> 101 follows; 101 -> 57 does not
    np.testing.assert_allclose(s(images, prompts, batch_size=2), expected, rtol=1e-6)
    s.answer_ids = [int(last[0]) + 1]  # one token that does follow the (shared) last prompt token
    np.testing.assert_allclose(s(images, prompts, batch_size=2), [hi, hi], rtol=1e-6)


def test_a_missing_model_and_bad_options_are_one_line(monkeypatch, tmp_path):
    from bench.metrics.vqascore import VQAScore

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"huggingface-cli download nobody/no-vlm.*HF_HOME.*vqascore = \{ model"):
        VQAScore("nobody/no-vlm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        VQAScore(str(tmp_path / "empty"))
    base = 'name = "v"\nmodel = "m"\nsuites = ["drawbench:2"]\n[metrics]\nvqascore = '
    for table, message in (('{ template = "Is it there?" }', "has no {prompt}"),
                           ('{ template = "{prompt} {x}" }', "cannot be filled"),
                           ('{ dtype = "int8" }', "dtype"), ('{ batch_size = 0 }', "batch_size"),
                           ('{ modle = "x" }', "unknown key")):
        with pytest.raises(UserError, match=message):
            parse_spec(base + table)
    spec = parse_spec(base + "true")
    assert dict(spec.metrics.vqascore) == {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "answer": "Yes", "dtype": "auto",
                                           "template": 'Does this figure show "{prompt}"? Please answer yes or no.',
                                           "batch_size": 8}


class _Gen:
    model_id, checkpoint_hash = "fake", "f" * 16

    def generate(self, prompts, seeds, settings):
        return np.stack([np.random.default_rng(s).integers(0, 256, (56, 56, 3), dtype=np.uint8) for s in seeds])


def _spec(vlm: str, suites='["drawbench:6"]', extra="") -> str:
    return (f'name = "v"\nmodel = "tiny"\nsuites = {suites}\nsamples_per_prompt = 2\n[axes]\nsteps = 2\n'
            f'guidance = [1.0, 3.0]\n[metrics]\nvqascore = {{ model = "{vlm}", batch_size = 3{extra} }}\n')


def test_a_grid_stores_each_image_once_and_a_cell_mean_per_category(vlm, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    run_grid(parse_spec(_spec(vlm)), tmp_path / "s", generator=_Gen(), progress=False, log=lambda *_: None,
             data_dir=data_dir)
    scores = store.read_table(tmp_path / "s", store.SCORES)
    samples = store.read_table(tmp_path / "s", store.SAMPLES)
    assert len(scores) == len(samples) == 24 and scores[store.COL_SAMPLE_ID].is_unique
    assert set(scores[store.COL_METRIC]) == {"vqascore_qwen2_5_vl_tiny"}
    m = store.read_table(tmp_path / "s", store.METRICS)
    overall = m[m[store.COL_CATEGORY].isna()]
    assert len(overall) == 2 and set(overall[store.COL_METRIC]) == {"vqascore_qwen2_5_vl_tiny"}
    for _, row in overall.iterrows():  # the cell's mean of its images' stored values
        vals = scores[scores[store.COL_CELL_ID] == row[store.COL_CELL_ID]][store.COL_VALUE]
        assert row[store.COL_VALUE] == pytest.approx(vals.mean()) and row[store.COL_N] == 12
        assert row[store.COL_LOW] <= row[store.COL_VALUE] <= row[store.COL_HIGH]
    assert m[m[store.COL_CATEGORY].notna()][store.COL_CATEGORY].nunique() >= 2  # DrawBench's categories
    prov = json.loads(store.read_table(tmp_path / "s", store.STUDY)[store.COL_PROVENANCE].iloc[0])
    assert prov["vqascore"]["template"].startswith("Does this figure show") and prov["vqascore"]["weights"]


def test_a_killed_scoring_run_rescores_nothing_stored(vlm, tmp_path, data_dir, monkeypatch):
    """Killed after two chunks: the rerun scores only the images not stored, and every image once in all."""
    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(image_scores, "CHUNK", 5)
    seen = []

    def judge(images, prompts, table, fail_after=None):
        if fail_after is not None and len(seen) >= fail_after:
            raise KeyboardInterrupt
        seen.append(len(images))
        return "vqascore_fake", [len(p) / 100 for p in prompts]

    spec = parse_spec(_spec(vlm))
    with pytest.raises(KeyboardInterrupt):
        run_grid(spec, tmp_path / "s", generator=_Gen(), progress=False, log=lambda *_: None, data_dir=data_dir,
                 metric_fns=MetricFns(vqascore=lambda *a: judge(*a, fail_after=2)))
    assert seen == [5, 5] and len(store.read_table(tmp_path / "s", store.SCORES)) == 10
    run_grid(spec, tmp_path / "s", generator=_Gen(), progress=False, log=lambda *_: None, data_dir=data_dir,
             metric_fns=MetricFns(vqascore=judge))
    assert sum(seen) == 24  # 10 before the kill, 14 after
    scores = store.read_table(tmp_path / "s", store.SCORES)
    assert len(scores) == 24 and scores[store.COL_SAMPLE_ID].is_unique
    assert len(store.read_table(tmp_path / "s", store.METRICS)) > 0


def test_a_missing_vlm_is_one_line_before_any_image(tmp_path, data_dir, monkeypatch, capsys):
    from imagen_bench import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = tmp_path / "spec.toml"
    spec.write_text(_spec("nobody/no-vlm").replace('model = "tiny"', f'model = "images:{tmp_path}"')
                    .replace("[axes]\nsteps = 2\nguidance = [1.0, 3.0]\n", ""))
    assert main(["grid", "run", str(spec), "--out", str(tmp_path / "s"), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "VQAScore's model 'nobody/no-vlm' is not here" in err[0] and "huggingface-cli" in err[0]
    assert not (tmp_path / "s").exists()


def _image_set(root: Path, data_dir: Path, n_prompts: int) -> Path:
    """A folder of images another system made: one sub-folder per DrawBench prompt id, two images each."""
    from bench.suites import load_suites

    rng = np.random.default_rng(0)
    from PIL import Image

    for p in load_suites([f"drawbench:{n_prompts}"], data_dir, 0):
        (root / p.prompt_id).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(root / p.prompt_id / f"{i}.png")
    return root


def test_two_torchrun_ranks_score_their_shards_and_equal_one_process(vlm, tmp_path, data_dir):
    """torchrun with 2 CPU processes: each rank scores the images of its shard (its own part files, one model load),
    the rows merge with no duplicates, and the scores and metrics equal a one-process run's row for row."""
    images = _image_set(tmp_path / "set", data_dir, 5)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'name = "v"\nmodel = "images:{images}"\nsuites = ["drawbench:5"]\nsamples_per_prompt = 2\n'
                    f'[metrics]\nvqascore = {{ model = "{vlm}", batch_size = 2 }}\n')
    env = {**os.environ, "IMAGEN_BENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "IMAGEN_BENCH_DATA": str(data_dir), "HF_HUB_OFFLINE": "1"}
    cmd = ["grid", "run", str(spec), "--json"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29541", "-m", "imagen_bench", *cmd, "--out", str(tmp_path / "two")], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "imagen_bench", *cmd, "--out", str(tmp_path / "one")], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    parts = store.part_files(tmp_path / "two", store.SCORES)
    assert {p.name.split("-")[0] for p in parts} == {"s0of2", "s1of2"}  # each rank scored its own shard
    key = [store.COL_SAMPLE_ID, store.COL_METRIC]
    a = store.read_table(tmp_path / "two", store.SCORES).sort_values(key).reset_index(drop=True)
    b = store.read_table(tmp_path / "one", store.SCORES).sort_values(key).reset_index(drop=True)
    assert len(a) == len(b) == 10 and not a.duplicated(key).any()
    assert a[key + [store.COL_SHA256]].equals(b[key + [store.COL_SHA256]])
    np.testing.assert_allclose(a[store.COL_VALUE], b[store.COL_VALUE], rtol=1e-6)
    cols = [store.COL_CELL_ID, store.COL_METRIC, store.COL_CATEGORY, store.COL_N]
    ma = store.read_table(tmp_path / "two", store.METRICS).sort_values(cols[:3]).reset_index(drop=True)
    mb = store.read_table(tmp_path / "one", store.METRICS).sort_values(cols[:3]).reset_index(drop=True)
    assert len(ma) == len(mb) > 1 and ma[cols].equals(mb[cols])
    np.testing.assert_allclose(ma[[store.COL_VALUE, store.COL_LOW, store.COL_HIGH]].astype(float),
                               mb[[store.COL_VALUE, store.COL_LOW, store.COL_HIGH]].astype(float), rtol=1e-6)


def test_the_papers_table_has_vqascore_per_suite_and_per_skill(vlm, tmp_path, data_dir, monkeypatch, capsys):
    """A study of DrawBench and T2I-CompBench prompts: VQAScore overall, per suite (the stored per-image values, an
    interval clustered by prompt) and per CompBench category; DrawBench's categories stay out of the table."""
    from imagen_bench import main
    from reports.table import collect

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    spec = parse_spec(_spec(vlm, suites='["drawbench:4", "t2i-compbench-color:3", "t2i-compbench-shape:3"]'))
    fns = MetricFns(vqascore=lambda images, prompts, table: ("vqascore_fake", [len(p) % 7 / 7 for p in prompts]))
    run_grid(spec, tmp_path / "s", generator=_Gen(), progress=False, log=lambda *_: None, data_dir=data_dir,
             metric_fns=fns)
    rows, columns, notes = collect([tmp_path / "s"])
    assert {"vqascore_fake", "vqascore_fake (drawbench)", "vqascore_fake (t2i-compbench)",
            "vqascore_fake[color]", "vqascore_fake[shape]"} <= set(columns)
    assert not any(c.startswith("vqascore_fake[") and c not in ("vqascore_fake[color]", "vqascore_fake[shape]")
                   for c in columns)
    samples = store.read_table(tmp_path / "s", store.SAMPLES)
    for r in rows:
        s = samples[(samples[store.COL_CELL_ID] == r["cell"]) & (samples[store.COL_SUITE] == "drawbench")]
        value, low, high = r["values"]["vqascore_fake (drawbench)"]
        assert value == pytest.approx(np.mean([len(p) % 7 / 7 for p in s[store.COL_PROMPT]]))
        assert low <= value <= high
        both = [r["values"][f"vqascore_fake[{c}]"][0] for c in ("color", "shape")]  # 3 prompts x 2 images each
        assert r["values"]["vqascore_fake (t2i-compbench)"][0] == pytest.approx(np.mean(both))
    assert main(["table", str(tmp_path / "s"), "--format", "csv"]) == 0
    assert "vqascore_fake (drawbench)" in capsys.readouterr().out


def test_the_report_has_a_per_skill_figure_of_each_benchmark(tmp_path, data_dir, monkeypatch, vlm):
    from PIL import Image

    from reports.build import build_report, skills_by_suite

    monkeypatch.setenv("IMAGEN_BENCH_CACHE", str(tmp_path / "cache"))
    spec = parse_spec(_spec(vlm, suites='["drawbench:4", "t2i-compbench-color:2", "t2i-compbench-shape:2"]'))
    fns = MetricFns(vqascore=lambda images, prompts, table: ("vqascore_fake", [len(p) % 7 / 7 for p in prompts]))
    run_grid(spec, tmp_path / "s", generator=_Gen(), progress=False, log=lambda *_: None, data_dir=data_dir,
             metric_fns=fns)
    skills = skills_by_suite(store.read_table(tmp_path / "s", store.SAMPLES))
    assert skills["t2i-compbench"] == ["color", "shape"] and "drawbench" in skills
    index = build_report(tmp_path / "s")
    text = index.read_text()
    assert "Per skill, by benchmark" in text and "t2i-compbench: vqascore_fake" in text
    fig = index.parent / "skills-t2i-compbench-vqascore_fake.png"
    assert fig.is_file() and Image.open(fig).size[0] > 500


def test_people_against_vqascore_in_a_drawbench_session(vlm, tmp_path, data_dir):
    """Two studies scored by the real (tiny) VQAScore per DrawBench category; people prefer one of them: the human
    report says, per category, whether VQAScore picks their winner."""
    from bench.cell_metrics import compute_metrics
    from drawbench.report import build_human_report, metric_agreement
    from drawbench.stats import preference_table
    from drawbench.votes import VoteStore, votes_table
    from drawbench_fixtures import make_session

    s, _ = make_session(tmp_path, data_dir, n_prompts=6, n_codes=0, per_set=1)
    spec = parse_spec(f'name = "v"\nmodel = "m"\nsuites = ["drawbench:6"]\n[metrics]\n'
                      f'vqascore = {{ model = "{vlm}" }}\n')
    for sys_ in s.systems:
        assert compute_metrics(Path(sys_.study), spec, progress=False, log=lambda *_: None) > 0
    vs = VoteStore.of_session(s)
    for r in ("r1", "r2", "r3", "r4"):
        vs.register_rater(r)
        for c in s.comparisons:  # everyone prefers sys1 on alignment
            vs.submit(r, c.id, "same", "left" if c.left == "sys1" else "right")
    table = metric_agreement(s, preference_table(votes_table(s), systems=["sys0", "sys1"]))
    v = table[table.metric == "vqascore_qwen2_5_vl_tiny"]
    assert len(v) == len({c.category for c in s.comparisons}) + 1  # each category and overall
    for r in v.itertuples():
        assert r.agree == (r.people_decided and np.sign(r.metric_a - r.metric_b) == np.sign(r.human_difference))
    assert "vqascore_qwen2_5_vl_tiny" in Path(build_human_report(s.path, n_boot=100)).read_text()
