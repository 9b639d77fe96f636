"""A study's result tables -> summary.csv/.parquet, a Pareto plot (paper Figure A.11), category bars, contact
sheets, and one self-contained index.html (every image inlined as base64). Reads results only through bench.store.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench import store
from imagen.errors import UserError
from imagen.fileio import atomic_write

SETTINGS = [store.COL_GUIDANCE, store.COL_GUIDANCE_STAGES, store.COL_THRESHOLD, store.COL_SAMPLER,
            store.COL_STEPS, store.COL_AUG_LEVEL, store.COL_DISTILLED_GUIDANCE]
SHEET_PROMPTS = 8  # contact sheets show the same first prompts of every cell, side by side
THUMB = 96  # px per contact-sheet thumbnail (small models are upscaled, nearest neighbour)


# ----------------------------------------------------------------------------- tables


def overall_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """The last stored overall row per (cell, metric): category null."""
    if not len(metrics):
        return metrics
    m = metrics[metrics[store.COL_CATEGORY].isna()]
    return m.drop_duplicates([store.COL_CELL_ID, store.COL_METRIC], keep="last")


def category_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    if not len(metrics):
        return metrics
    m = metrics[metrics[store.COL_CATEGORY].notna()]
    return m.drop_duplicates([store.COL_CELL_ID, store.COL_METRIC, store.COL_CATEGORY], keep="last")


def latest_spec_metrics(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The metric rows of the spec the study ran last (a study extended with other prompts holds rows of each
    spec for the same cells); rows written before specs were told apart are kept."""
    col = store.COL_PROMPTS_HASH
    if not len(metrics) or col not in metrics or col not in runs or not runs[col].notna().any():
        return metrics
    last = runs[col].dropna().iloc[-1]
    return metrics[metrics[col].isna() | (metrics[col] == last)]


def summary_table(samples: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its settings, images, seconds per image, and every overall metric with its interval."""
    if not len(samples):
        raise UserError("the study has no images yet; run `imagen-bench grid run SPEC --out STUDY` first")
    cols = [c for c in SETTINGS if c in samples]
    grouped = samples.groupby(store.COL_CELL_ID, sort=False)
    table = grouped[cols].first()
    table["images"] = grouped.size()
    table["seconds_per_image"] = grouped[store.COL_SECONDS].mean()
    if store.COL_FLAGGED in samples:  # blacked out by the model's safety checker, left out of the metrics
        table["flagged"] = grouped[store.COL_FLAGGED].agg(lambda f: int(f.fillna(False).astype(bool).sum()))
    overall = overall_metrics(metrics)
    for name in (sorted(overall[store.COL_METRIC].unique()) if len(overall) else []):
        m = overall[overall[store.COL_METRIC] == name].set_index(store.COL_CELL_ID)
        table[name] = m[store.COL_VALUE]
        if m[store.COL_LOW].notna().any():
            table[f"{name}_ci_low"] = m[store.COL_LOW]
            table[f"{name}_ci_high"] = m[store.COL_HIGH]
        table[f"{name}_n"] = m[store.COL_N]
    table = table.reset_index()
    table["_t"] = table[store.COL_THRESHOLD].map(_threshold_rank)
    return table.sort_values(["_t", store.COL_GUIDANCE]).drop(columns="_t").reset_index(drop=True)


def _threshold_rank(t) -> float:
    """none, static, then dynamic by percentile: the order of the paper's figure legends (no setting: last)."""
    if not isinstance(t, str):
        return 4.0
    first = t.split(",")[0]  # per-stage settings ("static,dynamic:0.99") sort by the base stage's
    rank = {"none": 0.0, "static": 1.0}.get(first, 2.0 + float(first.split(":")[1]) if ":" in first else 3.0)
    return rank + (0.0005 if "," in t else 0.0)  # just after the same base-stage setting alone


def _first(names, prefix: str) -> str | None:
    return next((n for n in names if n.startswith(prefix)), None)


def _write_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))  # a unique temp name: two builds never collide


def _save_figure(fig, path: Path, dpi: int) -> None:
    """A matplotlib figure as a PNG file, written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    _write_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------- figures


def _curves(summary: pd.DataFrame):
    """One curve per thresholding setting (and per other setting that varies), sorted by guidance weight."""
    keys = [store.COL_THRESHOLD] + [c for c in (store.COL_SAMPLER, store.COL_STEPS, store.COL_AUG_LEVEL,
                                                store.COL_DISTILLED_GUIDANCE)
                                    if c in summary and summary[c].nunique() > 1]
    for key, df in summary.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        yield ", ".join(_label(c, k) for c, k in zip(keys, key)), df.sort_values(store.COL_GUIDANCE)


def _label(column: str, value) -> str:
    """A curve's setting as a legend shows it: the model's own where a setting was left out (a diffusers pipeline's
    scheduler as it ships), the distilled guidance named as such."""
    if value is None or (isinstance(value, float) and value != value):
        return "model's own" if column == store.COL_THRESHOLD else f"{column}: own"
    return f"distilled {value:g}" if column == store.COL_DISTILLED_GUIDANCE else str(value)


def pareto_plot(summary: pd.DataFrame, path: Path) -> bool:
    """Figure A.11: x = CLIP score (or alignment), y = FID, one curve per thresholding, points labelled by w."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary.columns)
    fid = _first(names, "fid_")
    xs = [n for n in (_first([c for c in names if not c.endswith(("_n", "_ci_low", "_ci_high"))], "clip_score_"),
                      "align_overall" if "align_overall" in names else None) if n]
    if fid:
        fid = fid if not fid.endswith(("_n", "_ci_low", "_ci_high")) else None
    if not xs and not fid:
        return False
    # FID against each score (FID against guidance when there is no score); a score against guidance without FID
    panels = ([(x, fid) for x in xs] or [(None, fid)]) if fid else [(x, None) for x in xs]
    if store.COL_GUIDANCE not in summary or summary[store.COL_GUIDANCE].isna().all():
        panels = [(x, y) for x, y in panels if x and y]  # no guidance weights (an image set): metric pairs only
        if not panels:
            return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, (x, y) in zip(axes[0], panels):
        for label, df in _curves(summary):
            xv = df[x] if x else df[store.COL_GUIDANCE]
            yv = df[y] if y else df[store.COL_GUIDANCE]
            ax.plot(xv, yv, marker="o", label=label)
            if x and f"{x}_ci_low" in df:
                ax.errorbar(xv, yv, xerr=[xv - df[f"{x}_ci_low"], df[f"{x}_ci_high"] - xv], fmt="none",
                            alpha=0.35, color=ax.lines[-1].get_color())
            for xi, yi, w in zip(xv, yv, df[store.COL_GUIDANCE_STAGES]):
                if w is None or (isinstance(w, float) and np.isnan(w)) or not np.isfinite([xi, yi]).all():
                    continue
                ax.annotate(f"w={w}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(x or "guidance weight")
        ax.set_ylabel(y or "guidance weight")
        ax.set_title(f"{y or 'guidance'} vs {x or 'guidance'} (lower FID, higher score: better)")
        ax.grid(alpha=0.3)
        ax.legend(title="thresholding", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path, dpi=110)
    return True


def category_plot(summary: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> bool:
    """Accuracy by category: one panel per thresholding, bars per guidance weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = category_metrics(metrics)
    if not len(cats):
        return False
    name = "align_overall" if (cats[store.COL_METRIC] == "align_overall").any() else cats[store.COL_METRIC].iloc[0]
    settings = [c for c in SETTINGS if c in summary]
    cats = cats[cats[store.COL_METRIC] == name].merge(summary[[store.COL_CELL_ID] + settings], on=store.COL_CELL_ID)
    curves = list(_curves(summary))
    fig, axes = plt.subplots(len(curves), 1, figsize=(11, 2.8 * len(curves)), squeeze=False, sharey=True)
    categories = sorted(cats[store.COL_CATEGORY].unique())
    for ax, (label, cell_df) in zip(axes[:, 0], curves):
        sub = cats[cats[store.COL_CELL_ID].isin(cell_df[store.COL_CELL_ID])]
        weights = list(cell_df[store.COL_GUIDANCE_STAGES])
        width = 0.8 / max(len(weights), 1)
        for j, (cid, w) in enumerate(zip(cell_df[store.COL_CELL_ID], weights)):
            vals = sub[sub[store.COL_CELL_ID] == cid].set_index(store.COL_CATEGORY)[store.COL_VALUE]
            ax.bar(np.arange(len(categories)) + j * width, [vals.get(c, np.nan) for c in categories], width,
                   label=f"w={w}")
        ax.set_xticks(np.arange(len(categories)) + 0.4 - width / 2, categories, fontsize=8)
        ax.set_title(f"{name} by category, thresholding {label}", fontsize=10)
        ax.legend(fontsize=7, ncol=len(weights))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path, dpi=100)
    return True


BENCHMARKS = ("geneval", "t2i-compbench", "partiprompts", "drawbench")  # published suites whose categories are skills


def skills_by_suite(samples: pd.DataFrame) -> dict:
    """{suite: its categories} for each suite whose prompts have categories that no other suite of the study shares
    (GenEval's tags, T2I-CompBench's and PartiPrompts' categories, DrawBench's): a benchmark's skills."""
    if not len(samples) or store.COL_CATEGORY not in samples:
        return {}
    rows = samples[samples[store.COL_CATEGORY].notna() & (samples[store.COL_CATEGORY] != "")]
    suites = rows.groupby(store.COL_CATEGORY)[store.COL_SUITE].agg(set)
    out: dict = {}
    for cat, names in suites.items():
        if len(names) == 1:
            out.setdefault(next(iter(names)), []).append(cat)
    return {k: sorted(v) for k, v in sorted(out.items())}


def skill_plots(summary: pd.DataFrame, metrics: pd.DataFrame, samples: pd.DataFrame, out: Path) -> list:
    """One figure per benchmark suite with skills and per score of it (GenEval's score on its tags; VQAScore, CLIP
    score on T2I-CompBench's, PartiPrompts' or DrawBench's categories): each skill's value per cell with its
    95% interval. Returns [(title, path)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = category_metrics(metrics)
    made = []
    if not len(cats):
        return made
    for suite, skills in skills_by_suite(samples).items():
        if suite not in BENCHMARKS:
            continue  # a prompt file's own categories, the shapes worlds' fact types: the accuracy-by-category figure
        rows = cats[cats[store.COL_CATEGORY].isin(skills)]
        for name in sorted(rows[store.COL_METRIC].unique()):
            if suite == "geneval" and not str(name).startswith("geneval_"):
                continue  # GenEval's tags are its own score's skills
            sub = rows[rows[store.COL_METRIC] == name]
            cells = [c for c in summary[store.COL_CELL_ID] if c in set(sub[store.COL_CELL_ID])]
            if not cells:
                continue
            fig, ax = plt.subplots(figsize=(11, 1.2 + 0.32 * len(skills) * min(len(cells), 4)))
            height = 0.8 / len(cells)
            for j, cid in enumerate(cells):
                v = sub[sub[store.COL_CELL_ID] == cid].set_index(store.COL_CATEGORY)
                vals = np.array([v[store.COL_VALUE].get(c, np.nan) for c in skills], dtype=float)
                lo = np.array([v[store.COL_LOW].get(c, np.nan) if store.COL_LOW in v else np.nan for c in skills],
                              dtype=float)
                hi = np.array([v[store.COL_HIGH].get(c, np.nan) if store.COL_HIGH in v else np.nan for c in skills],
                              dtype=float)
                err = np.vstack([np.nan_to_num(vals - lo), np.nan_to_num(hi - vals)])
                cell = summary[summary[store.COL_CELL_ID] == cid].iloc[0]
                label = ", ".join(fmt.format(cell[k]) for k, fmt in (
                    (store.COL_GUIDANCE_STAGES, "w={}"), (store.COL_THRESHOLD, "{}"), (store.COL_SAMPLER, "{}"),
                    (store.COL_STEPS, "{} steps")) if k in cell and not pd.isna(cell[k])) or cid
                ax.barh(np.arange(len(skills)) + j * height, vals, height, xerr=err, capsize=2, label=label)
            ax.set_yticks(np.arange(len(skills)) + 0.4 - height / 2, skills, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(str(name))
            ax.set_title(f"{suite}: {name} per skill (95% intervals clustered by prompt)", fontsize=10)
            ax.grid(axis="x", alpha=0.3)
            if len(cells) > 1:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            fig.tight_layout()
            path = out / f"skills-{suite}-{name}.png"
            _save_figure(fig, path, dpi=100)
            made.append((f"{suite}: {name}", path))
    return made


def contact_sheet(study: Path, rows: pd.DataFrame, path: Path) -> None:
    """The cell's images of the first prompts in one row of thumbnails (uint8 PNG)."""
    tiles = [Image.open(study / p).convert("RGB").resize((THUMB, THUMB), Image.NEAREST)
             for p in rows[store.COL_IMAGE_PATH]]
    sheet = Image.new("RGB", (THUMB * max(len(tiles), 1) + 2 * max(len(tiles) - 1, 0), THUMB), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * (THUMB + 2), 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    _write_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------- HTML


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if np.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def _summary_html(summary: pd.DataFrame) -> str:
    shown = [c for c in summary.columns if not c.endswith(("_ci_low", "_ci_high", "_n"))]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    body = []
    for _, r in summary.iterrows():
        cells = []
        for c in shown:
            v = _fmt(r[c])
            if f"{c}_ci_low" in summary and not pd.isna(r[f"{c}_ci_low"]):
                v += f' <span class="ci">[{r[f"{c}_ci_low"]:.3g}, {r[f"{c}_ci_high"]:.3g}]</span>'
            cells.append(f"<td>{v}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div style='overflow-x:auto'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            "</table></div>")


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f0f0f0}.ci{color:#777;font-size:11px}img{max-width:100%}pre{background:#f6f6f6;padding:1em;
overflow:auto;font-size:12px}.sheet{margin:0.4em 0}.sheet b{display:inline-block;width:22em;font-size:13px;
vertical-align:top}ol{font-size:13px}"""


def protocol_notes(samples: pd.DataFrame) -> list[str]:
    """One line per published suite whose cells hold another number of images per prompt than its protocol
    generates (GenEval 4, T2I-CompBench 10, DPG-Bench 4): their scores are not the published protocol's."""
    from bench.published import protocol_images

    notes = []
    if not len(samples) or store.COL_SUITE not in samples:
        return notes
    for suite, rows in samples.groupby(store.COL_SUITE):
        want = protocol_images(str(suite))
        if want is None:
            continue
        per = rows.groupby([store.COL_CELL_ID, store.COL_PROMPT_ID]).size()
        got = sorted(set(int(v) for v in per))
        if got != [want]:
            notes.append(f"{suite}: {', '.join(map(str, got))} image(s) per prompt where its protocol makes {want}; "
                         f"set samples_per_prompt = {want} to score it as published")
    return notes


def build_report(study: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report folder (default STUDY/report) and return the path of its index.html."""
    study = Path(study)
    if not (study / "tables").is_dir():
        raise UserError(f"{study} is not a study folder (no tables/); run `imagen-bench grid run` first")
    out = Path(out) if out else study / "report"
    out.mkdir(parents=True, exist_ok=True)
    samples = store.read_table(study, store.SAMPLES, key=store.COL_SAMPLE_ID)
    metrics = store.read_table(study, store.METRICS)
    runs = store.read_table(study, store.STUDY)
    metrics = latest_spec_metrics(metrics, runs)
    summary = summary_table(samples, metrics)

    buf = io.BytesIO()
    summary.to_csv(buf, index=False)
    _write_atomic(out / "summary.csv", buf.getvalue())
    buf = io.BytesIO()
    summary.to_parquet(buf, index=False)
    _write_atomic(out / "summary.parquet", buf.getvalue())
    has_pareto = pareto_plot(summary, out / "pareto.png")
    has_cats = category_plot(summary, metrics, out / "categories.png")
    skills = skill_plots(summary, metrics, samples, out)

    # contact sheets: the same first prompts (by prompt id, sample 0) in every cell
    first = sorted(samples[samples[store.COL_SAMPLE_INDEX] == 0][store.COL_PROMPT_ID].unique())[:SHEET_PROMPTS]
    prompts = samples.drop_duplicates(store.COL_PROMPT_ID).set_index(store.COL_PROMPT_ID)[store.COL_PROMPT]
    sheets = []
    for _, cell in summary.iterrows():
        rows = samples[(samples[store.COL_CELL_ID] == cell[store.COL_CELL_ID])
                       & (samples[store.COL_SAMPLE_INDEX] == 0) & samples[store.COL_PROMPT_ID].isin(first)]
        rows = rows.sort_values(store.COL_PROMPT_ID)
        path = out / f"sheet-{cell[store.COL_CELL_ID]}.png"
        contact_sheet(study, rows, path)
        label = f"w={cell[store.COL_GUIDANCE_STAGES]}, {cell[store.COL_THRESHOLD]}, {cell[store.COL_SAMPLER]} " \
                f"{cell[store.COL_STEPS]} steps ({cell[store.COL_CELL_ID]})"
        sheets.append(f'<div class="sheet"><b>{html.escape(label)}</b>{_img(path, label)}</div>')

    last = runs.iloc[-1] if len(runs) else {}
    title = html.escape(str(last.get(store.COL_NAME, study.name)) if len(runs) else study.name)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style>"
             f"</head><body><h1>{title}</h1>",
             f"<p>Study <code>{html.escape(str(study.resolve()))}</code>: model <b>"
             f"{html.escape(str(last.get(store.COL_MODEL, '?')) if len(runs) else '?')}</b> (checkpoint "
             f"{html.escape(str(last.get(store.COL_CHECKPOINT_HASH, ''))[:12]) if len(runs) else ''}), "
             f"{len(summary)} cells, {len(samples)} images. Tables: summary.csv, summary.parquet.</p>"]
    for note in protocol_notes(samples):
        parts.append(f"<p class='note'><b>Not the published protocol:</b> {html.escape(note)}</p>")
    if has_pareto:
        parts.append("<h2>Fidelity against alignment (paper Figure A.11)</h2>" + _img(out / "pareto.png", "pareto"))
    parts.append("<h2>Summary per cell</h2><p>95% bootstrap intervals over images in grey.</p>"
                 + _summary_html(summary))
    if has_cats:
        parts.append("<h2>Accuracy by category</h2>" + _img(out / "categories.png", "categories"))
    if skills:
        parts.append("<h2>Per skill, by benchmark</h2>" + "".join(f"<h3>{html.escape(t)}</h3>" + _img(p, t)
                                                                   for t, p in skills))
    parts.append("<h2>Contact sheets</h2><p>Each row is a cell; columns are the same prompts and seeds:</p><ol>"
                 + "".join(f"<li>{html.escape(str(prompts[p]))}</li>" for p in first) + "</ol>" + "".join(sheets))
    if len(runs):
        parts.append("<h2>Spec</h2><pre>" + html.escape(str(last.get(store.COL_SPEC, ""))) + "</pre>")
        parts.append("<h2>Software and hardware</h2><pre>" + html.escape(json.dumps(
            {"versions": json.loads(last.get(store.COL_VERSIONS) or "{}"),
             "hardware": json.loads(last.get(store.COL_HARDWARE) or "{}")}, indent=1)) + "</pre>")
    parts.append("</body></html>")
    _write_atomic(out / "index.html", "\n".join(parts).encode("utf-8"))
    return out / "index.html"


__all__ = ["build_report", "summary_table", "pareto_plot", "category_plot", "skill_plots", "skills_by_suite",
           "contact_sheet"]
