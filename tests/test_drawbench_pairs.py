"""Rating sessions: prompts in common, blinded sides from a recorded seed, attention checks, codes, atomic writes."""

import hashlib
import json
from collections import Counter

import pandas as pd
import pytest

from bench import store
from drawbench import pairs
from drawbench_fixtures import drawbench_prompts, make_study
from imagen.errors import UserError
from imagen_bench import main


@pytest.fixture()
def studies(tmp_path, data_dir):
    prompts = drawbench_prompts(data_dir, 12)
    a = make_study(tmp_path / "a", prompts, n_samples=5)
    b = make_study(tmp_path / "b", prompts.iloc[2:], n_samples=4, hue=2.0, cells=("x", "y"))
    return prompts, a, b


def test_session_from_two_studies(studies, tmp_path):
    prompts, a, b = studies
    s, codes = pairs.build_session([str(a), f"{b}:y"], tmp_path / "s", names=["imagen", "base"], per_set=4,
                                   n_codes=3, organiser_password="pw", seed=3)
    # the intersection: prompts 2..11 of the first study; the two missing ones are counted as dropped
    assert s.dropped_prompts == 2
    assert sorted(c.prompt_id for c in s.comparisons) == sorted(prompts.prompt_id[2:])
    cats = dict(zip(prompts.prompt_id, prompts.category))
    texts = dict(zip(prompts.prompt_id, prompts.prompt))
    samples_a = store.read_table(a, store.SAMPLES).set_index(["prompt_id", "sample_index"])
    samples_b = store.read_table(b, store.SAMPLES)
    samples_b = samples_b[samples_b.cell_id == "y"].set_index(["prompt_id", "sample_index"])
    for c in s.comparisons:
        assert c.category == cats[c.prompt_id] and c.prompt == texts[c.prompt_id]
        assert c.sample_indices == (0, 1, 2, 3)  # the same indices for both systems (b has only 4)
        assert {c.left, c.right} == {"imagen", "base"}
        # every image is a byte-identical copy of the study's image of that system and sample index
        for system, imgs in ((c.left, c.left_images), (c.right, c.right_images)):
            src = samples_a if system == "imagen" else samples_b
            for k, rel in zip(c.sample_indices, imgs):
                assert rel.startswith("images/") and (s.path / rel).is_file()
                assert hashlib.sha256((s.path / rel).read_bytes()).hexdigest() == src.loc[(c.prompt_id, k), "sha256"]
                assert "imagen" not in rel and "base" not in rel  # file names do not reveal the system
    # sides are randomised: both orders occur
    assert len({c.left for c in s.comparisons}) == 2
    # a reload gives back the same session; system names and cells are recorded for the organiser
    again = pairs.load_session(s.path)
    assert again.comparisons == s.comparisons
    assert [(x.name, x.cell_id) for x in again.systems] == [("imagen", "cell-a"), ("base", "y")]
    # codes: three distinct, stored only hashed, each maps to one rater; the password is hashed too
    text = (s.path / "session.json").read_text()
    assert len(set(codes)) == 3 and not any(code in text for code in codes) and "pw" not in json.loads(text)["organiser"].values()
    assert [pairs.rater_for_code(again, c) for c in codes] == ["rater-01", "rater-02", "rater-03"]
    assert pairs.rater_for_code(again, "nope") is None
    assert pairs.check_password(again, "pw") and not pairs.check_password(again, "wrong")


def test_sides_reproduce_from_the_seed(studies, tmp_path):
    _, a, b = studies
    s1, _ = pairs.build_session([str(a), f"{b}:x"], tmp_path / "s1", seed=11, open_access=True)
    s2, _ = pairs.build_session([str(a), f"{b}:x"], tmp_path / "s2", seed=11, open_access=True)
    s3, _ = pairs.build_session([str(a), f"{b}:x"], tmp_path / "s3", seed=12, open_access=True)
    sides = lambda s: [(c.prompt_id, c.left) for c in s.comparisons]  # noqa: E731
    assert sides(s1) == sides(s2)
    assert sides(s1) != sides(s3)
    assert json.loads((s1.path / "session.json").read_text())["seed"] == 11


def test_attention_checks(studies, tmp_path):
    _, a, b = studies
    s, _ = pairs.build_session([str(a), f"{b}:x"], tmp_path / "s", attention_rate=0.25, seed=1, open_access=True)
    checks = [c for c in s.comparisons if c.attention]
    real = [c for c in s.comparisons if not c.attention]
    assert len(real) == 10 and len(checks) == round(0.25 * 10 / 0.75)
    import numpy as np
    from PIL import Image

    kinds = set()
    for c in checks:
        fake_side = pairs.RIGHT if c.attention == pairs.LEFT else pairs.LEFT
        kind = getattr(c, fake_side)
        kinds.add(kind)
        assert kind in ("noise", "offprompt") and getattr(c, c.attention) == "real"
        fake = c.right_images if fake_side == pairs.RIGHT else c.left_images
        real_imgs = c.left_images if fake_side == pairs.RIGHT else c.right_images
        all_real = {p for r in real for p in r.left_images + r.right_images}
        assert set(real_imgs) <= all_real
        by_prompt = {r.prompt_id: set(r.left_images + r.right_images) for r in real}
        if kind == "noise":  # a looking check: noise
            for rel in fake:
                assert np.asarray(Image.open(s.path / rel)).std() > 60  # uniform noise: std ~ 74
        else:  # a reading check: real images of another prompt, shown under this one
            assert set(fake) <= all_real and not set(fake) & by_prompt[c.prompt_id]
    assert kinds == {"noise", "offprompt"}


def test_more_than_two_systems_make_every_pair(tmp_path, data_dir):
    prompts = drawbench_prompts(data_dir, 3)
    st = [str(make_study(tmp_path / f"s{i}", prompts, n_samples=2, hue=i)) for i in range(3)]
    s, _ = pairs.build_session(st, tmp_path / "sess", per_set=2, open_access=True)
    pairs_seen = Counter(frozenset((c.left, c.right)) for c in s.comparisons)
    assert pairs_seen == {frozenset("AB"): 3, frozenset("AC"): 3, frozenset("BC"): 3}


def test_user_errors(studies, tmp_path, data_dir):
    prompts, a, b = studies
    with pytest.raises(UserError, match="cells"):
        pairs.build_session([str(a), str(b)], tmp_path / "s", open_access=True)  # b has two cells
    with pytest.raises(UserError, match="not in study"):
        pairs.build_session([str(a), f"{b}:zz"], tmp_path / "s", open_access=True)
    other = make_study(tmp_path / "c", pd.DataFrame([{"prompt_id": "q", "prompt": "x", "category": "c"}]))
    with pytest.raises(UserError, match="no prompt in common"):
        pairs.build_session([str(a), str(other)], tmp_path / "s", open_access=True)
    with pytest.raises(UserError, match="two systems"):
        pairs.build_session([str(a)], tmp_path / "s", open_access=True)
    with pytest.raises(UserError, match="not a study"):
        pairs.build_session([str(a), str(tmp_path)], tmp_path / "s", open_access=True)
    assert not (tmp_path / "s").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.tmp")]  # nothing half-written
    pairs.build_session([str(a), f"{b}:x"], tmp_path / "s", open_access=True)
    with pytest.raises(UserError, match="already exists"):
        pairs.build_session([str(a), f"{b}:x"], tmp_path / "s", open_access=True)


def test_changed_image_is_refused(studies, tmp_path):
    _, a, b = studies
    img = next((a / "images").rglob("*.png"))
    img.write_bytes(img.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(UserError, match="sha256"):
        pairs.build_session([str(a), f"{b}:x"], tmp_path / "s", open_access=True)
    assert not (tmp_path / "s").exists()


def test_images_only_from_the_session_folder(studies, tmp_path):
    _, a, b = studies
    s, _ = pairs.build_session([str(a), f"{b}:x"], tmp_path / "s", open_access=True)
    ok = s.image_file(s.comparisons[0].left_images[0])
    assert ok.is_file()
    for bad in ("images/../session.json", "../a/images/cell-a/x.png", "/etc/passwd", "votes.sqlite"):
        with pytest.raises(UserError):
            s.image_file(bad)


def test_cli_pairs_prints_codes_once(studies, tmp_path, capsys, monkeypatch):
    _, a, b = studies
    monkeypatch.setenv("DRAWBENCH_ORGANISER_PASSWORD", "pw")  # the password comes from the environment
    rc = main(["drawbench", "pairs", "--study", str(a), "--study", f"{b}:x", "--names", "imagen", "base",
               "--codes", "2", "--out", str(tmp_path / "s"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["comparisons"] == 10 and out["dropped_prompts"] == 2 and len(out["codes"]) == 2
    s = pairs.load_session(tmp_path / "s")
    assert [pairs.rater_for_code(s, c) for c in out["codes"].values()] == list(out["codes"])
    assert pairs.check_password(s, "pw") and not pairs.check_password(s, "wrong")
    rc = main(["drawbench", "pairs", "--study", str(a), "--study", f"{b}:x", "--codes", "1",
               "--out", str(tmp_path / "s")])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_access_rules(studies, tmp_path, capsys, monkeypatch):
    """Codes come from `secrets` (a rebuild with the same seed gives new ones); a session without codes needs
    --open and says so; the organiser password is never an argument."""
    _, a, b = studies
    monkeypatch.delenv("DRAWBENCH_ORGANISER_PASSWORD", raising=False)
    base = ["drawbench", "pairs", "--study", str(a), "--study", f"{b}:x", "--seed", "3"]
    codes = []
    for k in range(2):
        assert main(base + ["--codes", "3", "--out", str(tmp_path / f"c{k}"), "--json"]) == 0
        codes.append(set(json.loads(capsys.readouterr().out)["codes"].values()))
    assert not codes[0] & codes[1]  # same studies, same seed: new codes
    assert all(len(c) == pairs.CODE_LENGTH and set(c) <= set(pairs.CODE_ALPHABET) for c in codes[0])
    assert round(pairs.CODE_BITS, 1) == 49.5
    assert main(base + ["--out", str(tmp_path / "open")]) == 2
    err = capsys.readouterr().err
    assert "--open" in err and err.count("\n") == 1 and not (tmp_path / "open").exists()
    assert main(base + ["--open", "--out", str(tmp_path / "open")]) == 0
    assert pairs.load_session(tmp_path / "open").open_access
    assert "open session" in capsys.readouterr().out
    assert main(base + ["--codes", "2", "--organiser-password", "pw", "--out", str(tmp_path / "pw")]) == 2
    err = capsys.readouterr().err
    assert "visible in `ps`" in err and "DRAWBENCH_ORGANISER_PASSWORD" in err and not (tmp_path / "pw").exists()
    with pytest.raises(UserError, match="--open is for a session without access codes"):
        pairs.build_session([str(a), f"{b}:x"], tmp_path / "both", n_codes=2, open_access=True)
    assert main(base + ["--crowd", "prolific", "--quota", "4", "--completion-code", "C0DE", "--out",
                        str(tmp_path / "crowd")]) == 0
    crowd = pairs.load_session(tmp_path / "crowd")
    assert crowd.crowd["param"] == "PROLIFIC_PID" and crowd.quota == 4 and not crowd.open_access
    assert "?PROLIFIC_PID=" in capsys.readouterr().out
    assert len(pairs.rater_order(crowd, "prolific:x")) == 4
    assert main(base + ["--codes", "2", "--completion-code", "C0DE", "--out", str(tmp_path / "cc")]) == 2
    assert "add --crowd" in capsys.readouterr().err
    codes = tmp_path / "codes.txt"
    codes.write_text("alpha-1\nbeta-2\n\n# comment\n")
    assert main(["drawbench", "pairs", "--study", str(a), "--study", f"{b}:x", "--codes-file", str(codes),
                 "--out", str(tmp_path / "s2")]) == 0
    text = capsys.readouterr().out
    assert "alpha-1" not in text
    assert pairs.rater_for_code(pairs.load_session(tmp_path / "s2"), "beta-2") == "rater-02"
