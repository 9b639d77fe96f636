"""The paper's table: one row per cell of one or more studies, one column per score, with 95% intervals, and a
footnote of the protocol (images per prompt, seeds, the judges' weights, the FID protocol). Reads results only through
the store (`imagen-bench table STUDY [STUDY ...] --format md|csv|latex`).

Columns: every overall metric row of the studies (FID, CLIP score, VQAScore, alignment, GenEval overall, ...); the
per-skill rows of the benchmark suites as columns of their own (GenEval's tags, T2I-CompBench's categories:
"geneval_...[position]", "vqascore_...[color]"); and, for a study of several suites, each per-image score per suite
("vqascore_... (dpg-bench)"), from the stored per-image values. An interval is the stored one, or for a suite's column
the same bootstrap clustered by prompt; a value without one (FID, GenEval's overall mean of tags) is shown alone.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from bench import store
from imagen.errors import UserError

SKIP = {"flagged_share"}
FORMATS = ("md", "csv", "latex")
SKILL_SUITES = ("geneval", "t2i-compbench")  # suites whose categories are the skills their papers report


def collect(studies: list[str | Path]) -> tuple[list[dict], list[str], list[str]]:
    """(rows, columns, footnotes): a row per (study, cell) with {column: (value, low, high)}."""
    rows: list[dict] = []
    columns: list[str] = []
    notes: list[str] = []
    for study in studies:
        study = Path(study)
        if not store.is_study(study):
            raise UserError(f"{study} is not a study folder (no tables/); run `imagen-bench grid run SPEC --out "
                            f"{study}` first")
        samples = store.read_table(study, store.SAMPLES, key=store.COL_SAMPLE_ID)
        metrics = store.read_table(study, store.METRICS)
        runs = store.read_table(study, store.STUDY)
        if not len(metrics):
            raise UserError(f"{study} has no metric rows yet; run its grid to the end (its [metrics] are scored "
                            f"when every image is made)")
        metrics = metrics.drop_duplicates([store.COL_CELL_ID, store.COL_METRIC, store.COL_CATEGORY], keep="last")
        skills = _skill_categories(samples)
        for cell_id, cell_rows in metrics.groupby(store.COL_CELL_ID, sort=False):
            s = samples[samples[store.COL_CELL_ID] == cell_id]
            label = _label(study, s)
            values = {}
            for _, r in cell_rows.iterrows():
                name, cat = str(r[store.COL_METRIC]), r[store.COL_CATEGORY]
                if name in SKIP or (isinstance(cat, str) and not _skill_column(name, skills.get(cat))):
                    continue
                col = name if not isinstance(cat, str) else f"{name}[{cat}]"
                values[col] = (float(r[store.COL_VALUE]), _num(r.get(store.COL_LOW)), _num(r.get(store.COL_HIGH)))
                if col not in columns:
                    columns.append(col)
            hashes = {str(r[store.COL_METRIC]): json.loads(r[store.COL_DETAILS]).get("settings_hash")
                      for _, r in cell_rows.iterrows() if isinstance(r.get(store.COL_DETAILS), str)
                      and not isinstance(r[store.COL_CATEGORY], str)}
            for col, v in _per_suite(study, s, hashes).items():
                values[col] = v
                if col not in columns:
                    columns.append(col)
            rows.append({"study": study.name, "cell": cell_id, "label": label, "values": values})
        notes += _footnotes(study, samples, runs)
    return rows, columns, notes


def _skill_categories(samples: pd.DataFrame) -> dict:
    """{category: its benchmark} for the categories that are a benchmark's skills: those whose prompts all come from
    GenEval or all from T2I-CompBench (DrawBench's or PartiPrompts' categories stay in the report's figures)."""
    from reports.build import skills_by_suite

    return {cat: suite for suite, cats in skills_by_suite(samples).items() if suite in SKILL_SUITES for cat in cats}


ALIGNMENT_SCORES = ("vqascore_", "clip_score_", "pickscore_")  # scores of how well an image shows its prompt


def _skill_column(metric: str, bench: str | None) -> bool:
    """GenEval's tags are columns of GenEval's score; T2I-CompBench's categories of the alignment scores (its own
    judges are not ours: VQAScore, CLIP score and PickScore per category stand in, under their own names)."""
    return ((bench == "t2i-compbench" and metric.startswith(ALIGNMENT_SCORES))
            or (bench == "geneval" and metric.startswith("geneval_")))


def _per_suite(study: Path, samples: pd.DataFrame, hashes: dict) -> dict:
    """{"<metric> (<suite>)": (mean, low, high)} of each per-image score of a cell whose prompts come from several
    suites: the mean over the suite's images, the interval a bootstrap clustered by prompt. Only the values the
    cell's overall row was made of (`hashes`: metric -> the scorer's settings hash it records)."""
    from bench.cell_metrics import bootstrap_ci

    if not len(samples) or samples[store.COL_SUITE].nunique() < 2:
        return {}
    scores = store.read_table(study, store.SCORES)
    if not len(scores):
        return {}
    if store.COL_SETTINGS_HASH in scores:
        scores = scores[[hashes.get(m) == h for m, h in zip(scores[store.COL_METRIC], scores[store.COL_SETTINGS_HASH])]]
    scores = scores.drop_duplicates([store.COL_SAMPLE_ID, store.COL_METRIC, store.COL_SHA256], keep="last")
    got = scores.merge(samples[[store.COL_SAMPLE_ID, store.COL_SHA256, store.COL_SUITE, store.COL_PROMPT_ID]],
                       on=[store.COL_SAMPLE_ID, store.COL_SHA256])
    out = {}
    for (name, suite), g in got.groupby([store.COL_METRIC, store.COL_SUITE], sort=True):
        if str(name).startswith("geneval_"):
            continue  # GenEval's overall is the mean of its tags, shown as its own columns
        low, high = bootstrap_ci(g[store.COL_VALUE].to_numpy(), clusters=g[store.COL_PROMPT_ID].to_numpy())
        out[f"{name} ({suite})"] = (float(g[store.COL_VALUE].mean()), low, high)
    return out


def _num(v):
    return None if v is None or (isinstance(v, float) and v != v) else float(v)


def _label(study: Path, s: pd.DataFrame) -> str:
    if not len(s):
        return study.name
    r = s.iloc[0]
    parts = [str(r[store.COL_MODEL])]
    for col, fmt in ((store.COL_GUIDANCE_STAGES, "w={}"), (store.COL_THRESHOLD, "{}"), (store.COL_SAMPLER, "{}"),
                     (store.COL_STEPS, "{} steps")):
        v = r.get(col)
        if v is not None and v == v:
            parts.append(fmt.format(v))
    return " ".join(parts)


def _footnotes(study: Path, samples: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """What makes the study's numbers: images per prompt per suite (against the published protocol where one
    exists), the seed, and the metrics' judges and protocols."""
    from bench.published import protocol_images

    out = []
    if len(samples):
        per = samples.groupby([store.COL_SUITE, store.COL_CELL_ID, store.COL_PROMPT_ID]).size()
        for suite, counts in per.groupby(level=0):
            got = sorted({int(c) for c in counts})
            want = protocol_images(str(suite))
            extra = "" if want is None else (" (its protocol's)" if got == [want] else f" (its protocol makes {want})")
            out.append(f"{study.name}: {suite}, {'/'.join(map(str, got))} image(s) per prompt{extra}")
    if len(runs):
        last = runs.iloc[-1]
        seed = last.get(store.COL_SEED)
        if seed is not None and seed == seed:
            out.append(f"{study.name}: seed {int(seed)} (an image's noise: spec seed, prompt, sample index)")
        prov = last.get(store.COL_PROVENANCE)
        if isinstance(prov, str) and prov.strip() not in ("", "{}"):
            out.append(f"{study.name}: judges and protocols {json.dumps(json.loads(prov), sort_keys=True)}")
    return out


def _cell(v) -> str:
    if v is None:
        return "-"
    value, low, high = v
    return f"{value:.4g}" if low is None or high is None else f"{value:.4g} [{low:.4g}, {high:.4g}]"


def render(studies: list[str | Path], fmt: str = "md") -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose {', '.join(FORMATS)}")
    rows, columns, notes = collect(studies)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["study", "cell", "label"] + [f"{c}{s}" for c in columns for s in ("", "_ci_low", "_ci_high")])
        for r in rows:
            vals = [r["values"].get(c, (None, None, None)) for c in columns]
            w.writerow([r["study"], r["cell"], r["label"]] + [x if x is not None else "" for v in vals for x in v])
        return buf.getvalue()
    if fmt == "latex":
        esc = (lambda t: str(t).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&"))
        lines = [r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule",
                 " & ".join(["model / setting"] + [esc(c) for c in columns]) + r" \\", r"\midrule"]
        lines += [" & ".join([esc(r["label"])] + [esc(_cell(r["values"].get(c))) for c in columns]) + r" \\"
                  for r in rows]
        lines += [r"\bottomrule", r"\end{tabular}", ""] + [f"% {esc(n)}" for n in notes]
        return "\n".join(lines) + "\n"
    lines = ["| model / setting | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += ["| " + r["label"] + " | " + " | ".join(_cell(r["values"].get(c)) for c in columns) + " |" for r in rows]
    lines += ["", "95% intervals in brackets (bootstrap clustered by prompt); a value alone has none."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


__all__ = ["collect", "render", "FORMATS"]
