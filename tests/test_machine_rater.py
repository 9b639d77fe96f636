"""The machine rater: a judge answers every comparison of a DrawBench session (left, right, or indifferent within a
stated margin) from its images' scores, its answers kept apart from the people's votes, and `drawbench stats` sets
them beside the people's with their agreement (share of comparisons both decided, Cohen's kappa) per category."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from drawbench import auto
from drawbench_fixtures import make_session


class RedJudge:
    """A judge whose verdicts are known: an image's score is the mean of its red channel."""

    name = "red_judge"

    def __init__(self):
        self.calls = 0

    def __call__(self, images, prompts, batch_size=8):
        self.calls += 1
        assert len(images) == len(prompts)
        return np.array([float(np.asarray(im)[..., 0].mean()) for im in images])


def _red(session, rels) -> float:
    return float(np.mean([np.asarray(Image.open(session.image_file(r)).convert("RGB"))[..., 0].mean() for r in rels]))


@pytest.fixture
def session(tmp_path, data_dir):
    s, _ = make_session(tmp_path, data_dir, n_prompts=10, n_codes=0, per_set=2, attention_rate=0.2)
    return s


def test_the_judge_answers_each_comparison_from_its_sets_mean_scores(session):
    """Each answer is the set with the larger mean score when the means differ by more than the margin; attention
    checks are answered too (and marked); a margin wider than every difference makes the judge indifferent."""
    path = auto.rate_session(session, "clip_score", RedJudge(), margin=1.0, progress=False)
    df = pd.read_parquet(path).set_index("comparison")
    assert path.parent.name == auto.MACHINE_DIR and len(df) == len(session.comparisons)
    assert set(df["kind"]) == {"machine"} and set(df["rater"]) == {"machine:red_judge"}
    assert df["attention"].notna().any()
    for c in session.comparisons:
        left, right = _red(session, c.left_images), _red(session, c.right_images)
        want = "same" if abs(left - right) <= 1.0 else ("left" if left > right else "right")
        row = df.loc[c.id]
        assert row["left_score"] == pytest.approx(left) and row["right_score"] == pytest.approx(right)
        assert row["choice"] == want and row["margin"] == 1.0
        assert row["chosen_system"] == {"left": c.left, "right": c.right}.get(want)
    wide = pd.read_parquet(auto.rate_session(session, "clip_score", RedJudge(), margin=1e9, progress=False))
    assert set(wide["choice"]) == {"same"}
    with pytest.raises(Exception, match="margin"):
        auto.rate_session(session, "clip_score", RedJudge(), margin=-1, progress=False)


def test_people_verdicts_take_the_answer_most_raters_gave():
    rows = [("c1", "A", "A"), ("c1", "A", "A"), ("c1", "A", None),  # 2 of 3: A
            ("c2", "A", "B"), ("c2", "A", "A"),  # a tie between A and B: same
            ("c3", "B", None), ("c3", "B", None), ("c3", "B", "B")]  # 2 indifferent: same
    df = pd.DataFrame([{"comparison": c, "left_system": left, "right_system": "B" if left == "A" else "A",
                        "alignment_system": chosen} for c, left, chosen in rows])
    v = auto.people_verdicts(df, "alignment", "A", "B")
    assert v.to_dict() == {"c1": "a", "c2": "same", "c3": "same"}


def test_kappa_equals_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    x = rng.choice(auto.ANSWERS, 60)
    y = np.where(rng.random(60) < 0.6, x, rng.choice(auto.ANSWERS, 60))
    assert auto.cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y), abs=1e-12)


def test_stats_set_the_machine_beside_the_people_and_never_mix_them(session, capsys):
    """People prefer sys1 on alignment; the judge's agreement share and kappa equal an independent count, and the
    people's own statistics are unchanged by the machine's answers."""
    from imagen_bench import main
    from drawbench.votes import VoteStore

    vs = VoteStore.of_session(session)
    real = [c for c in session.comparisons if c.attention is None]
    for r in ("r1", "r2", "r3"):
        vs.register_rater(r)
        for c in real:
            vs.submit(r, c.id, "same", "left" if c.left == "sys1" else "right")
    assert main(["drawbench", "stats", str(session.path), "--json", "--bootstrap", "200"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert "machine" not in before
    path = auto.rate_session(session, "clip_score", RedJudge(), margin=0.5, progress=False)
    assert main(["drawbench", "stats", str(session.path), "--json", "--bootstrap", "200"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["preference"] == before["preference"] and after["n_votes"] == before["n_votes"]  # never mixed
    overall = next(r for r in after["machine"] if r["category"] == "overall")
    df = pd.read_parquet(path)
    df = df[df.attention.isna()]
    picked = df["chosen_system"].map({"sys0": "a", "sys1": "b"}).fillna("same")
    decided = picked != "same"
    assert overall["n"] == len(df) == len(real) and overall["decided"] == int(decided.sum())
    assert overall["agree"] == pytest.approx((picked[decided] == "b").mean())  # people: sys1 (= b) every time
    assert overall["people_b"] == 1.0 and overall["machine_b"] == pytest.approx((picked == "b").mean())
    from sklearn.metrics import cohen_kappa_score

    want = cohen_kappa_score(picked.to_numpy(), np.full(len(picked), "b"), labels=list(auto.ANSWERS))
    assert (overall["kappa"] is None and np.isnan(want)) or overall["kappa"] == pytest.approx(want)
    cats = {r["category"] for r in after["machine"]}
    assert cats - {"overall"} == set(df["category"])
    assert main(["drawbench", "stats", str(session.path), "--bootstrap", "200", "--html"]) == 0
    assert "machine:red_judge (alignment, margin 0.5) against people" in capsys.readouterr().out
    page = (session.path / "report" / "index.html").read_text()
    assert "Machine raters against people" in page and "machine:red_judge" in page


def test_the_cli_runs_a_real_judge_end_to_end(session, capsys):
    """`drawbench auto --judge clip_score` with the shipped shapes-clip: an answer per comparison, stored."""
    from imagen_bench import main

    assert main(["drawbench", "auto", str(session.path), "--judge", "clip_score", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rater"] == "machine:clip_score_shapes_clip" and out["question"] == "alignment"
    assert out["comparisons"] == len(session.comparisons) and sum(out["answers"].values()) == out["comparisons"]
    assert out["margin"] == auto.JUDGES["clip_score"].margin
    assert len(auto.machine_votes(session)) == len(session.comparisons)
    assert main(["drawbench", "auto", str(session.path), "--judge", "hpsv2", "--model", "/nonexistent.pt"]) == 2
