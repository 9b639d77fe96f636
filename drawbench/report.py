"""The human results as a report: the paper's DrawBench figure (Imagen, Figure 3) from a session's votes.

Per question (image quality, alignment with the text) and per category, with the overall share first: the share
of votes preferring each system with its 95% prompt x rater cluster-robust interval, and the indifferent share
between them. Beside the figure: the same numbers as a table, the order effect, agreement and attention checks.
Written to SESSION/report/ (drawbench.png, human.csv, stats.json, index.html), each file atomically.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path

import pandas as pd

from drawbench.pairs import QUESTIONS, load_session
from drawbench.stats import OVERALL, summarize
from drawbench.votes import votes_table
from imagen.errors import UserError
from imagen.fileio import atomic_write

QUESTION_TITLES = {"quality": "Image quality", "alignment": "Image-text alignment"}


def figure(pref: pd.DataFrame, a: str, b: str, path: Path) -> None:
    """The figure as a PNG file, written atomically."""
    png = figure_png(pref, a, b)
    atomic_write(path, lambda tmp: tmp.write_bytes(png))


def figure_png(pref: pd.DataFrame, a: str, b: str) -> bytes:
    """One panel per question: a horizontal bar per category, prefer a | indifferent | prefer b, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qs = [q for q, _ in QUESTIONS if (pref.question == q).any()]
    cats = [OVERALL] + sorted(set(pref.category) - {OVERALL})
    fig, axes = plt.subplots(1, len(qs), figsize=(6.4 * len(qs), 0.42 * len(cats) + 1.6), squeeze=False, sharey=True)
    for ax, q in zip(axes[0], qs):
        d = pref[pref.question == q].set_index("category").reindex(cats)
        y = range(len(cats))
        pa, pi, pb = d.prefer_a.fillna(0), d.indifferent.fillna(0), d.prefer_b.fillna(0)
        ax.barh(y, pa, color="#3b6fb6", label=f"prefer {a}")
        ax.barh(y, pi, left=pa, color="#c9c9c9", label="indifferent")
        ax.barh(y, pb, left=pa + pi, color="#d9822b", label=f"prefer {b}")
        ax.errorbar(pa, y, xerr=[pa - d.prefer_a_low.fillna(pa), d.prefer_a_high.fillna(pa) - pa], fmt="none",
                    color="black", capsize=2, lw=0.8)
        end = 1 - pb
        ax.errorbar(end, y, xerr=[d.prefer_b_high.fillna(pb) - pb, pb - d.prefer_b_low.fillna(pb)], fmt="none",
                    color="black", capsize=2, lw=0.8)
        ax.set_yticks(list(y), [f"{c} (n={int(n)})" if n == n else c for c, n in zip(cats, d.n)])
        ax.set_xlim(0, 1)
        ax.axvline(0.5, color="white", lw=0.6)
        ax.set_title(QUESTION_TITLES.get(q, q))
        ax.set_xlabel("share of votes")
    axes[0][0].invert_yaxis()  # overall on top (the axes share y: invert once)
    axes[0][0].legend(loc="lower left", bbox_to_anchor=(0, 1.08), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


LOWER_IS_BETTER = ("fid_", "kid_", "cmmd_", "fd_clip_")  # distances; the rest (CLIP score, alignment): higher


def metric_agreement(session, pref: pd.DataFrame, question: str = "alignment") -> pd.DataFrame:
    """Per automatic metric and category: whether the metric picks the same winner as people do, where both
    systems are grid cells with stored metrics. People's winner: the sign of prefer_a - prefer_b (ties, where the
    interval holds 0, are 'neither' and agree with nothing). Rows: metric, category, a, b, human difference and its
    interval, the metric's values for a and b, agree."""
    from bench import store

    by_name = {x.name: x for x in session.systems}
    rows = []
    for pair, g in pref[pref.question == question].groupby(["system_a", "system_b"], sort=False):
        sa, sb = by_name.get(pair[0]), by_name.get(pair[1])
        if sa is None or sb is None or not sa.study or not sb.study:
            continue
        tables = []
        for sys_ in (sa, sb):
            try:
                m = store.read_table(sys_.study, store.METRICS)
            except Exception:  # noqa: BLE001 - a study moved or unreadable: no automatic metrics for the pair
                m = pd.DataFrame()
            tables.append(m[m[store.COL_CELL_ID] == sys_.cell_id] if len(m) else m)
        if not all(len(t) for t in tables):
            continue
        for r in g.itertuples():
            human = 0 if r.difference_low <= 0 <= r.difference_high else (1 if r.difference > 0 else -1)
            for name in sorted(set(tables[0][store.COL_METRIC]) & set(tables[1][store.COL_METRIC])):
                vals = []
                for t in tables:
                    cat = t[(t[store.COL_METRIC] == name)
                            & ((t[store.COL_CATEGORY] == r.category) if r.category != OVERALL
                               else t[store.COL_CATEGORY].isna())]
                    vals.append(float(cat[store.COL_VALUE].iloc[-1]) if len(cat) else float("nan"))
                if any(v != v for v in vals) or vals[0] == vals[1]:
                    continue
                sign = 1 if vals[0] > vals[1] else -1
                if name.startswith(LOWER_IS_BETTER):
                    sign = -sign
                rows.append({"metric": name, "category": r.category, "system_a": pair[0], "system_b": pair[1],
                             "human_difference": r.difference, "human_low": r.difference_low,
                             "human_high": r.difference_high, "metric_a": vals[0], "metric_b": vals[1],
                             "agree": bool(human != 0 and human == sign), "people_decided": human != 0})
    return pd.DataFrame(rows)


def agreement_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per metric: the share of categories (where people decided) in which it picks their winner, with a 95% Wilson
    interval."""
    out = []
    for name, g in table[table.people_decided].groupby("metric") if len(table) else []:
        n, k = len(g), int(g.agree.sum())
        z = 1.959964
        centre = (k + z * z / 2) / (n + z * z)
        half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
        out.append({"metric": name, "categories": n, "agree": k, "share": k / n, "low": centre - half,
                    "high": centre + half})
    return pd.DataFrame(out)


def build_human_report(session_dir: Path | str, out: Path | str | None = None, n_boot: int = 2000,
                       seed: int = 0, min_attention: float | None = None) -> Path:
    """Write the human-results report of a session; returns its index.html."""
    session = load_session(session_dir)
    votes = votes_table(session)
    if len(votes) == 0:
        raise UserError(f"{session_dir} has no votes yet; run `imagen-bench drawbench app {session_dir}` first")
    systems = [x.name for x in session.systems]
    stats = summarize(votes, n_boot=n_boot, seed=seed, min_attention=min_attention, systems=systems)
    pref = pd.DataFrame(stats["preference"])
    out = Path(out) if out else Path(session_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    if not len(pref):
        raise UserError(f"{session_dir}: no votes on real comparisons yet (only attention checks)")
    a, b = pref.system_a.iloc[0], pref.system_b.iloc[0]
    first = pref[(pref.system_a == a) & (pref.system_b == b)]
    figure(first, a, b, out / "drawbench.png")
    atomic_write(out / "human.csv", lambda tmp: pref.to_csv(tmp, index=False))
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(str(r.system_a))} vs {esc(str(r.system_b))}</td><td>{esc(r.question)}</td>"
        f"<td>{esc(str(r.category))}</td><td>{r.prefer_a:.3f} [{r.prefer_a_low:.3f}, {r.prefer_a_high:.3f}]</td>"
        f"<td>{r.indifferent:.3f}</td><td>{r.prefer_b:.3f} [{r.prefer_b_low:.3f}, {r.prefer_b_high:.3f}]</td>"
        f"<td>{r.difference:+.3f} [{r.difference_low:+.3f}, {r.difference_high:+.3f}]</td><td>{int(r.n)}</td></tr>"
        for r in pref.itertuples())
    agreement = metric_agreement(session, pref)
    summary = agreement_summary(agreement)
    if len(agreement):
        atomic_write(out / "metric_agreement.csv", lambda tmp: agreement.to_csv(tmp, index=False))
    metric_rows = "".join(
        f"<tr><td>{esc(r.metric)}</td><td>{r.agree}/{r.categories}</td><td>{r.share:.2f} "
        f"[{r.low:.2f}, {r.high:.2f}]</td></tr>" for r in summary.itertuples()) if len(summary) else ""
    metrics_html = (f"<h2>Automatic metrics against people (alignment question)</h2><p>Per metric: the categories "
                    f"where people preferred one system (interval excluding 0) and the metric picked the same one "
                    f"(metric_agreement.csv has every category).</p><table><tr><th>metric</th><th>agree</th>"
                    f"<th>share [95% Wilson]</th></tr>{metric_rows}</table>" if metric_rows else "")
    machine_html = _machine_html(session, votes, stats, n_boot, seed)
    order = "".join(f"<li>{esc(o['question'])}: " + (esc(o["note"]) if o.get("note") else
                                                      f"log θ = {o['log_theta']:+.3f} [{o['low']:+.3f}, "
                                                      f"{o['high']:+.3f}]") + "</li>"
                    for o in stats["order_effect"] if o.get("note") or o["log_theta"] is not None)
    agree = "".join(f"<li>{esc(g['question'])}: Krippendorff's α = "
                    f"{'n/a' if g['alpha'] is None else format(g['alpha'], '.3f')} on {g['units']} comparisons</li>"
                    for g in stats["agreement"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>DrawBench: {esc(a)} vs {esc(b)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}td,th{{padding:2px 8px;text-align:left}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>DrawBench human evaluation: {esc(a)} vs {esc(b)}</h1>
<p>{stats['n_votes']} votes by {stats['n_raters']} raters on {stats['n_prompts']} prompts; 95% intervals clustered by
prompt and rater (two-way cluster-robust, Student's t); model fits by a prompt x rater bootstrap; raters dropped for attention: {esc(', '.join(stats['dropped_raters']) or 'none')}.</p>
<img src="drawbench.png" alt="preference per category" style="max-width:100%">
<h2>Preference</h2><table><tr><th>pair</th><th>question</th><th>category</th><th>prefer A</th><th>indifferent</th>
<th>prefer B</th><th>A - B</th><th>votes</th></tr>{rows}</table>
{metrics_html}
{machine_html}
<h2>Order effect (Davidson &amp; Beaver 1977)</h2><ul>{order}</ul>
<h2>Agreement</h2><ul>{agree}</ul>
<p>Statistics as JSON: <code>imagen-bench drawbench stats {esc(str(session_dir))} --json</code></p>
</body></html>"""
    atomic_write(out / "index.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
    atomic_write(out / "stats.json", lambda tmp: tmp.write_text(json.dumps(stats, indent=1, default=str)))
    return out / "index.html"


def _machine_html(session, votes: pd.DataFrame, stats: dict, n_boot: int, seed: int) -> str:
    """The machine raters (drawbench auto) beside the people: per rater, pair and category, their answer shares and
    agreement with the people's verdicts; stats["machine"] gets the same rows."""
    from drawbench import auto

    machine = auto.machine_votes(session)
    if not len(machine):
        return ""
    kept = votes[~votes.rater.isin(stats["dropped_raters"]) & votes.attention.isna()]
    rows = stats["machine"] = auto.agreement(kept, machine, stats["systems"], n_boot=min(n_boot, 1000), seed=seed)
    esc = html.escape

    def pct(x):
        return "-" if x is None else f"{100 * x:.0f}%"

    def ci(v, lo, hi, fmt):
        return "-" if v is None else f"{fmt(v)} [{'-' if lo is None else fmt(lo)}, {'-' if hi is None else fmt(hi)}]"

    body = "".join(
        f"<tr><td>{esc(r['rater'])}</td><td>{esc(r['question'])}</td><td>{esc(r['system_a'])} vs "
        f"{esc(r['system_b'])}</td><td>{esc(str(r['category']))}</td><td>{r['n']}</td>"
        f"<td>{pct(r['machine_a'])} / {pct(r['machine_same'])} / {pct(r['machine_b'])}</td>"
        f"<td>{pct(r['people_a'])} / {pct(r['people_same'])} / {pct(r['people_b'])}</td>"
        f"<td>{ci(r['agree'], r['agree_low'], r['agree_high'], pct)} of {r['decided']}</td>"
        f"<td>{ci(r['kappa'], r['kappa_low'], r['kappa_high'], lambda x: f'{x:+.2f}')}</td></tr>" for r in rows)
    return ("<h2>Machine raters against people</h2><p>Each judge answered every comparison from its images' scores "
            "(drawbench auto; indifferent within its margin), kept apart from the votes above. Shares: prefer A / "
            "indifferent / prefer B; people's: the answer most raters gave per comparison. Agreement: the share of "
            "comparisons both decided on which they agree; Cohen's κ over the three answers; 95% intervals by a "
            "bootstrap over prompts.</p><table><tr><th>rater</th><th>question</th><th>pair</th><th>category</th>"
            f"<th>n</th><th>machine</th><th>people</th><th>agreement</th><th>κ</th></tr>{body}</table>")
