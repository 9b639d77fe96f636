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


class HashJudge:
    """A judge whose verdicts vary from comparison to comparison: a score drawn from the image's bytes."""

    name = "hash_judge"

    def __call__(self, images, prompts, batch_size=8):
        import hashlib

        return np.array([int(hashlib.sha256(np.asarray(im).tobytes()).hexdigest()[:8], 16) / 16**8 for im in images])


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


def _people_choice(c, rater: str) -> str | None:
    """The system people choose: sys1 in every other category, sys0 in the rest; where the comparison id's hash is
    even, r2 is indifferent and r3 picks the other system (a three-way split: 'same' by majority), else r3 alone is
    indifferent (decided 2 to 1)."""
    import hashlib

    cats = sorted({"Colors", "Conflicting", "Counting", "DALL-E", "Descriptions", "Gary Marcus et al.",
                   "Misspellings", "Positional", "Rare Words", "Reddit", "Text"})
    want = "sys1" if cats.index(c.category) % 2 == 0 else "sys0"
    split = int(hashlib.sha256(c.id.encode()).hexdigest(), 16) % 2 == 0
    if rater == "r2" and split:
        return None
    if rater == "r3":
        return ({"sys0": "sys1", "sys1": "sys0"}[want]) if split else None
    return want


def test_stats_set_the_machine_beside_the_people_and_never_mix_them(session, capsys):
    """People prefer sys1 in some categories and sys0 in others; per category and overall the judge's agreement share
    equals an independent count and kappa equals scikit-learn's, and the people's own statistics are unchanged by
    the machine's answers."""
    from sklearn.metrics import cohen_kappa_score

    from imagen_bench import main
    from drawbench.votes import VoteStore

    vs = VoteStore.of_session(session)
    real = [c for c in session.comparisons if c.attention is None]
    for r in ("r1", "r2", "r3"):
        vs.register_rater(r)
        for c in real:
            chosen = _people_choice(c, r)
            answer = "same" if chosen is None else ("left" if c.left == chosen else "right")
            vs.submit(r, c.id, "same", answer)
    assert main(["drawbench", "stats", str(session.path), "--json", "--bootstrap", "200"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert "machine" not in before
    path = auto.rate_session(session, "clip_score", HashJudge(), margin=0.05, progress=False)
    assert main(["drawbench", "stats", str(session.path), "--json", "--bootstrap", "200"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["preference"] == before["preference"] and after["n_votes"] == before["n_votes"]  # never mixed
    df = pd.read_parquet(path)
    df = df[df.attention.isna()].set_index("comparison")
    machine = df["chosen_system"].map({"sys0": "a", "sys1": "b"}).fillna("same")
    people = {}
    for c in real:  # by hand: the answer of the majority of the three raters
        votes = [_people_choice(c, r) for r in ("r1", "r2", "r3")]
        top = max(set(votes), key=lambda v: (votes.count(v), str(v)))
        people[c.id] = "same" if top is None or votes.count(top) < 2 else {"sys0": "a", "sys1": "b"}[top]
    people = pd.Series(people).reindex(machine.index)
    assert {"a", "b", "same"} <= set(people) and machine.nunique() > 1
    rows = {r["category"]: r for r in after["machine"]}
    assert set(rows) - {"overall"} == set(df["category"])
    for cat, r in rows.items():
        ids = df.index if cat == "overall" else df.index[df["category"] == cat]
        m, p = machine.loc[ids].to_numpy(), people.loc[ids].to_numpy()
        both = (m != "same") & (p != "same")
        assert r["n"] == len(ids) and r["decided"] == int(both.sum())
        if both.any():
            assert r["agree"] == pytest.approx(np.mean(m[both] == p[both]))
        want = cohen_kappa_score(m, p, labels=list(auto.ANSWERS))
        assert (r["kappa"] is None and np.isnan(want)) or r["kappa"] == pytest.approx(want)
        assert r["people_same"] == pytest.approx(np.mean(p == "same"))
    assert main(["drawbench", "stats", str(session.path), "--bootstrap", "200", "--html"]) == 0
    assert "machine:hash_judge (alignment, margin 0.05) against people" in capsys.readouterr().out
    page = (session.path / "report" / "index.html").read_text()
    assert "Machine raters against people" in page and "machine:hash_judge" in page


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
