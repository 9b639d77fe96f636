"""Write the findings report (docs/findings.md + figures) from findings.run's measurements, with verdicts.

A verdict compares intervals, never bare numbers: alignment is a proportion with a 95% Wilson interval, and a claim
"A beats B" holds when A's interval lies above B's, does not hold when B's lies above A's, and is inconclusive at
this n when they overlap. FID has no interval here; it is reported beside alignment and enters a verdict only where
the paper's claim is about it (finding 1's trade-off: the weight with the best FID is below the weight with the
best alignment, and FID is worse there).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from bench import store
from imagen.fileio import atomic_write

HOLDS, FAILS, OPEN = "holds", "does not hold", "inconclusive at this n"
FIG_DIR = "findings"
PARTS = {"guidance": 1, "dynamic": 2, "sr_aug": 3, "text": 4}  # results key -> finding number


def _beats(a: dict, b: dict) -> str:
    """HOLDS if a's interval lies above b's, FAILS if below, else OPEN (a, b: {"value", "low", "high"})."""
    if a["low"] > b["high"]:
        return HOLDS
    if b["low"] > a["high"]:
        return FAILS
    return OPEN


def _fmt(acc: dict) -> str:
    return f"{acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]"


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def _row_acc(row: dict, metric: str = "align_overall") -> dict:
    """A grid cell's alignment with its 95% Wilson interval (from its value and n, as findings 3-4 give theirs; the
    grid's stored interval is a prompt bootstrap, which collapses to a point at 0 or 1)."""
    from bench.metrics.alignment import wilson

    n = int(row.get(f"{metric}_n") or 0)
    low, high = wilson(int(round(row[metric] * n)), n) if n else (0.0, 1.0)  # no count: no information
    return {"value": row[metric], "low": low, "high": high}


def study_rows(study: str | Path) -> tuple[list[dict], str | None]:
    """A grid study's summary rows (reports.build.summary_table: one per cell, overall metrics with intervals) and
    the name of its FID column."""
    from reports.build import latest_spec_metrics, summary_table

    samples = store.read_table(study, store.SAMPLES, key=store.COL_SAMPLE_ID)
    metrics = latest_spec_metrics(store.read_table(study, store.METRICS), store.read_table(study, store.STUDY))
    rows = json.loads(summary_table(samples, metrics).to_json(orient="records"))
    fid = next((k for k in (rows[0] if rows else {}) if k.startswith("fid_")
                and not k.endswith(("_n", "_ci_low", "_ci_high"))), None)
    return rows, fid


def with_rows(results: dict) -> dict:
    """The results with each grid part's summary rows read from its study (finding 1 and 2)."""
    out = dict(results)
    for key in ("guidance", "dynamic"):
        if key in out and "rows" not in out[key]:
            rows, fid = study_rows(out[key]["study"])
            out[key] = {**out[key], "rows": rows, "fid_metric": fid}
    return out


# ----------------------------------------------------------------------------- finding 1


def guidance_verdict(part: dict) -> tuple[str, list[str]]:
    """Per thresholding curve: holds when the best alignment at a weight above the lowest beats the lowest weight's
    (intervals apart) and FID is worse there than at the curve's best-FID weight, which lies below it; does not hold
    when the lowest weight's alignment beats every larger weight's; otherwise inconclusive. Overall: holds when every
    curve holds, does not hold when any does not, else inconclusive (no curve of two weights: inconclusive)."""
    rows, fid = part["rows"], part["fid_metric"]
    lines, verdicts = [], []
    for t in sorted({r["threshold"] for r in rows}, key=_t_rank):
        curve = sorted([r for r in rows if r["threshold"] == t], key=lambda r: r["guidance"])
        if len(curve) < 2:
            continue
        first, rest = curve[0], curve[1:]
        best_a = max(rest, key=lambda r: r["align_overall"])
        best_f = min(curve, key=lambda r: r[fid]) if fid else None
        gain = _beats(_row_acc(best_a), _row_acc(first))
        trade = (best_f is not None and best_f["guidance"] < best_a["guidance"] and best_a[fid] > best_f[fid])
        if gain == HOLDS and trade:
            v = HOLDS
        elif all(_beats(_row_acc(first), _row_acc(r)) == HOLDS for r in rest):
            v = FAILS  # guidance only hurts alignment
        else:
            v = OPEN
        verdicts.append(v)
        lines.append(f"| {t} | w = {first['guidance']:g}: {_fmt(_row_acc(first))} | w = {best_a['guidance']:g}: "
                     f"{_fmt(_row_acc(best_a))} | "
                     + (f"w = {best_f['guidance']:g}: {best_f[fid]:.2f} | {best_a[fid]:.2f} |" if best_f else "- | - |")
                     + f" {v} |")
    if not verdicts:
        return OPEN, lines
    verdict = HOLDS if all(v == HOLDS for v in verdicts) else FAILS if FAILS in verdicts else OPEN
    return verdict, lines


def fact_table(part: dict) -> list[str]:
    rows, fid = part["rows"], part["fid_metric"]
    facts = [k for k in ("color", "shape", "count", "size", "style", "position")
             if any(f"align_{k}" in r for r in rows)]
    out = ["| thresholding | w | " + " | ".join(facts) + " | overall | FID |",
           "|---|---|" + "---|" * (len(facts) + 2)]
    for r in sorted(rows, key=lambda r: (_t_rank(r["threshold"]), r["guidance"])):
        cells = [f"{r[f'align_{k}']:.2f}" if r.get(f"align_{k}") is not None else "-" for k in facts]
        out.append(f"| {r['threshold']} | {r['guidance']:g} | " + " | ".join(cells)
                   + f" | {r['align_overall']:.2f} | " + (f"{r[fid]:.1f}" if fid else "-") + " |")
    return out


def _t_rank(t: str) -> float:
    from reports.build import _threshold_rank

    return _threshold_rank(t)


def guidance_figure(part: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, fid = part["rows"], part["fid_metric"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for t in sorted({r["threshold"] for r in rows}, key=_t_rank):
        curve = sorted([r for r in rows if r["threshold"] == t], key=lambda r: r["guidance"])
        ws = [r["guidance"] for r in curve]
        acc = [r["align_overall"] for r in curve]
        err = [[r["align_overall"] - _row_acc(r)["low"] for r in curve],
               [_row_acc(r)["high"] - r["align_overall"] for r in curve]]
        axes[0].errorbar(ws, acc, yerr=err, marker="o", capsize=3, label=t)
        if fid:
            axes[1].plot(acc, [r[fid] for r in curve], marker="o", label=t)
            for r in curve:
                axes[1].annotate(f"{r['guidance']:g}", (r["align_overall"], r[fid]), fontsize=7,
                                 textcoords="offset points", xytext=(3, 3))
    axes[0].set(xlabel="guidance weight w", ylabel="alignment (every fact right)", title="alignment vs w")
    axes[1].set(xlabel="alignment", ylabel=fid or "FID", title="FID vs alignment (labels: w), cf. Fig. A.11")
    for ax in axes:
        ax.legend(title="thresholding", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------- finding 2


def dynamic_verdict(part1: dict, part2: dict) -> tuple[str, str, list[str]]:
    """(dynamic beats static and none at large w, the percentile matters, table lines)."""
    rows = part1["rows"] + part2["rows"]
    fid = part1["fid_metric"]
    large = part2["large_guidance"]
    lines, beat, spread = [], [], []
    for w in large:
        at = {r["threshold"]: r for r in rows if r["guidance"] == w}
        dyn = {t: r for t, r in at.items() if t.startswith("dynamic")}
        if not dyn or "static" not in at or "none" not in at:
            continue
        d = at.get("dynamic:0.995") or max(dyn.values(), key=lambda r: r["align_overall"])
        others = [_beats(_row_acc(d), _row_acc(at[t])) for t in ("static", "none")]
        beat.append(HOLDS if all(o == HOLDS for o in others) else FAILS if FAILS in others else OPEN)
        lo = min(dyn.values(), key=lambda r: r["align_overall"])
        hi = max(dyn.values(), key=lambda r: r["align_overall"])
        spread.append(_beats(_row_acc(hi), _row_acc(lo)))
        cells = " | ".join(f"{_fmt(_row_acc(at[t]))}" + (f" / {at[t][fid]:.2f}" if fid else "")
                           for t in ("none", "static", d["threshold"]))
        lines.append(f"| {w:g} | {cells} | {hi['threshold']} ({hi['align_overall']:.3f}) vs {lo['threshold']} "
                     f"({lo['align_overall']:.3f}) | {beat[-1]} |")
    v_beat = HOLDS if beat and all(b == HOLDS for b in beat) else FAILS if FAILS in beat else OPEN
    v_p = HOLDS if HOLDS in spread else OPEN
    return v_beat, v_p, lines


def dynamic_figure(part1: dict, part2: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = part1["rows"] + part2["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for w in part2["large_guidance"]:
        dyn = sorted([r for r in rows if r["guidance"] == w and r["threshold"].startswith("dynamic")],
                     key=lambda r: float(r["threshold"].split(":")[1]))
        line = ax.plot([float(r["threshold"].split(":")[1]) for r in dyn], [r["align_overall"] for r in dyn],
                       marker="o", label=f"dynamic, w = {w:g}")[0]
        for t, style in (("static", "--"), ("none", ":")):
            ref = [r for r in rows if r["guidance"] == w and r["threshold"] == t]
            if ref:
                ax.axhline(ref[0]["align_overall"], color=line.get_color(), linestyle=style, linewidth=1,
                           label=f"{t}, w = {w:g}")
    ax.set(xlabel="dynamic thresholding percentile p", ylabel="alignment", title="the percentile at large guidance")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------- finding 3


def sr_verdict(part: dict) -> tuple[str, list[str]]:
    curves = part["curves"]
    best = {}
    for sr in ("with augmentation", "without augmentation"):
        on_base = [c for c in curves if c["sr"] == sr and c["input"] == "base samples"]
        if on_base:
            best[sr] = max(on_base, key=lambda c: c["alignment"]["overall"]["value"])
    lines = []
    for c in curves:
        lines.append(f"| {c['sr']} | {c['input']} | {c['aug_level']:g} | {_fmt(c['alignment']['overall'])} | "
                     f"{c['fid']:.2f} |")
    if len(best) < 2:
        return OPEN, lines
    return _beats(best["with augmentation"]["alignment"]["overall"],
                  best["without augmentation"]["alignment"]["overall"]), lines


def sr_figure(part: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for sr in ("with augmentation", "without augmentation"):
        for source, style in (("base samples", "-"), ("oracle low-res", "--")):
            c = sorted([c for c in part["curves"] if c["sr"] == sr and c["input"] == source],
                       key=lambda c: c["aug_level"])
            if not c:
                continue
            xs = [x["aug_level"] for x in c]
            axes[0].plot(xs, [x["alignment"]["overall"]["value"] for x in c], style, marker="o",
                         label=f"SR {sr}, {source}")
            axes[1].plot(xs, [x["fid"] for x in c], style, marker="o", label=f"SR {sr}, {source}")
    axes[0].set(xlabel="aug level at sampling", ylabel="alignment at 64 px", title="SR stage: alignment")
    axes[1].set(xlabel="aug level at sampling", ylabel=part.get("fid_metric") or "FID", title="SR stage: FID")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------- finding 4


def text_verdicts(part: dict) -> tuple[str, str, list[str], float]:
    res = part["results"]
    w = max(r["guidance"] for r in res)
    at = {r["base"]: r for r in res if r["guidance"] == w}
    lines = [f"| {r['base']} | {r['guidance']:g} | {_fmt(r['alignment']['overall'])} | {r['fid']:.2f} |" for r in res]
    p, rnd, pooled = (at.get("pretrained MiniLM, cross-attention"), at.get("random-init MiniLM, cross-attention"),
                      at.get("pretrained MiniLM, pooled vector only"))
    v_enc = _beats(p["alignment"]["overall"], rnd["alignment"]["overall"]) if p and rnd else OPEN
    v_xattn = _beats(p["alignment"]["overall"], pooled["alignment"]["overall"]) if p and pooled else OPEN
    return v_enc, v_xattn, lines, w


def text_figure(part: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = part["results"]
    bases = list(dict.fromkeys(r["base"] for r in res))
    ws = sorted({r["guidance"] for r in res})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(ws), 1)
    for j, w in enumerate(ws):
        vals = [next(r for r in res if r["base"] == b and r["guidance"] == w)["alignment"]["overall"] for b in bases]
        xs = [i + (j - (len(ws) - 1) / 2) * width for i in range(len(bases))]
        ax.bar(xs, [v["value"] for v in vals], width,
               yerr=[[v["value"] - v["low"] for v in vals], [v["high"] - v["value"] for v in vals]], capsize=3,
               label=f"w = {w:g}")
    ax.set_xticks(range(len(bases)))
    ax.set_xticklabels([b.replace(", ", "\n") for b in bases], fontsize=8)
    ax.set(ylabel="alignment at the base's resolution", title="text conditioning (same recipe and budget)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------- the report


def _cost(part: dict, kept: bool = False) -> str:
    extra = ""
    rows = part.get("rows") or []
    if rows and all(r.get("seconds_per_image") is not None for r in rows):
        images = sum(int(r.get("images") or 0) for r in rows)
        minutes = sum(float(r["seconds_per_image"]) * int(r.get("images") or 0) for r in rows) / 60
        extra = (f" Generation as recorded in the study (a resumed grid reuses its images): {images} images, "
                 f"{minutes:.1f} wall minutes.")
    if part.get("training"):
        tr = "; ".join(f"{k}: {v.get('wall_minutes', '?')} wall / "
                       + (f"{v['cpu_minutes']} CPU minutes" if v.get("cpu_minutes") is not None else "CPU not recorded")
                       for k, v in part["training"].items())
        extra += (f" Training, as recorded when each model was trained (a model reused from the cache costs nothing "
                 f"in this run): {tr}.")
    which = "Cost when it was measured" if kept else "Cost of this run's part"
    return f"{which}: {part['wall_minutes']} wall minutes, {part['cpu_minutes']} CPU minutes.{extra}"


def _run_info(results: dict, command: str) -> dict:
    """Where a run's parts come from: its model, world, settings and command."""
    return {"model": results["model"], "world": results["world"], "config": results["config"], "command": command}


def keep_earlier(results: dict, out: Path, command: str, log=print) -> dict:
    """The results with `provenance` per part, and the parts this run did not measure kept from OUT/findings.json
    (with the provenance they had), so `--only 1 2` updates those findings and leaves the others as they were
    measured. Only parts of the same world are kept; finding 2 is kept only with the finding 1 it was measured with
    (its verdict reads finding 1's cells). An unreadable earlier file keeps nothing (said), never loses this run."""
    results = dict(results)
    ran = {key for key in PARTS if key in results}
    prov = dict(results.get("provenance") or {})
    here = _run_info(results, command)
    for key in ran:
        prov.setdefault(key, here)
    src = out / "findings.json"
    try:
        earlier = json.loads(src.read_text(encoding="utf-8")) if src.is_file() else {}
        before = _run_info({k: earlier.get(k) for k in ("model", "world", "config")}, earlier.get("command")) \
            if earlier else None
        for key in PARTS:
            if key in ran or key not in earlier:
                continue
            if key == "dynamic" and "guidance" in ran:
                log("findings: not keeping finding 2 of the earlier run: it compares with the finding 1 measured then")
                continue
            kept = (earlier.get("provenance") or {}).get(key) or before
            config = kept.get("config")
            if not (isinstance(config, dict) and {"n", "seed"} <= set(config) and kept.get("model")):
                log(f"findings: not keeping finding {PARTS[key]} of {src}: it does not say what measured it")
                continue
            if kept.get("world") != results["world"]:
                log(f"findings: not keeping finding {PARTS[key]} of {src}: it was measured on the "
                    f"{kept.get('world')!r} world, this run on {results['world']!r}")
                continue
            results[key], prov[key] = earlier[key], kept
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        log(f"findings: {src} could not be read ({exc}); the report holds this run's findings only")
        for key in set(PARTS) - ran:
            results.pop(key, None)
            prov.pop(key, None)
    results["provenance"] = prov
    return results


def _kept(results: dict, key: str) -> dict | None:
    """The provenance of a part kept from an earlier run (None when this run measured it)."""
    def same(info: dict) -> str:  # tuples and lists alike (one side may have been through JSON)
        return json.dumps({k: info.get(k) for k in ("model", "world", "config")}, sort_keys=True, default=str)

    prov = results["provenance"][key]
    return None if same(prov) == same(results) else prov


def _kept_line(prov: dict | None) -> list[str]:
    if prov is None:
        return []
    c = prov["config"]
    return [f"*Kept from an earlier run, not measured by this one:* model `{prov['model']}` on the `{prov['world']}` "
            f"world, {c['n']} held-out captions per setting (seed {c['seed']}), by "
            f"`{prov.get('command') or 'imagen-bench findings'}`.", ""]


def write_findings(results: dict, out: str | Path, command: str, log=print) -> Path:
    """docs/findings.md (or OUT/findings.md), OUT/findings/*.png and OUT/findings.json from run_findings' dict."""
    out = Path(out)
    results = with_rows(keep_earlier(results, out, command, log))
    kept = {key: _kept(results, key) for key in PARTS if key in results}
    measured = [PARTS[k] for k, v in kept.items() if v is None]
    figs = out / FIG_DIR
    figs.mkdir(parents=True, exist_ok=True)
    cfg = results["config"]
    md = [
        "# The paper's findings, measured by the harness", "",
        f"Regenerate: `{command}`", "",
        f"Model `{results['model']}` on its world `{results['world']}`: {cfg['n']} held-out captions drawn per "
        f"setting (seed {cfg['seed']}; {_distinct(results)} distinct, the grids keep each caption once), scored by "
        "the world's scorer. Alignment = the share of images whose every stated fact is right, with a 95% Wilson "
        "interval (n = the images); FID is `" + str(_first_fid(results)) + "` against clean renders "
        "of the same scenes (no interval: at this n it is biased upwards, so compare it between settings only).",
        "",
        "A verdict compares intervals: *holds* when ours lies on the paper's side of the comparison with "
        "non-overlapping intervals, *does not hold* when it lies on the other side, *inconclusive at this n* when "
        "they overlap.", "",
        f"Total: {results['total']['wall_minutes']} wall minutes, {results['total']['cpu_minutes']} CPU minutes "
        "(CPU minutes count every thread of the process)"
        + (f", measuring finding{'s' if len(measured) > 1 else ''} {', '.join(map(str, measured))}; the others are "
           "kept from earlier runs, each section says which." if len(measured) < len(kept) else "."), ""]
    verdicts = {}
    if "guidance" in results:
        part = results["guidance"]
        v, lines = guidance_verdict(part)
        verdicts[1] = v
        guidance_figure(part, figs / "guidance.png")
        md += ["## 1. Guidance trades fidelity against alignment", "",
               "Paper (section 4.1, Figure A.11): increasing the guidance weight improves image-text alignment and "
               "worsens fidelity (FID); the curves of CLIP score against FID bend away from each other.", "",
               *_kept_line(kept["guidance"]),
               f"**Verdict: {v}.** Per thresholding: alignment at the lowest weight and at the best larger one, the "
               "best FID and FID at the best-alignment weight. A curve holds when its alignment gain is beyond the "
               "intervals and FID is worse there than at a lower weight.", "",
               "| thresholding | alignment at the lowest w | best alignment above it | best FID | FID there | "
               "verdict |",
               "|---|---|---|---|---|---|", *lines, "", "Every cell, per fact type (share of the images whose caption "
               "states the fact that get it right) and FID:", "", *fact_table(part), "",
               f"![guidance]({FIG_DIR}/guidance.png)", "", _cost(part, kept["guidance"] is not None), ""]
    if "guidance" in results and "dynamic" in results:
        part = results["dynamic"]
        v_beat, v_p, lines = dynamic_verdict(results["guidance"], part)
        verdicts[2] = f"{v_beat} (dynamic vs static and none); {v_p} (the percentile matters)"
        dynamic_figure(results["guidance"], part, figs / "percentile.png")
        md += ["## 2. Dynamic thresholding at large guidance, and its percentile", "",
               "Paper (section 2.3, Figures 4 and A.11): at large guidance weights dynamic thresholding gives better "
               "photorealism and alignment than static thresholding or none; the percentile p is a setting that "
               "matters.", "",
               *_kept_line(kept["dynamic"]),
               f"**Verdict: dynamic beats static and none: {v_beat}; the percentile matters: {v_p}.** Alignment "
               "[interval] / FID at each large weight; the dynamic column is p = 0.995 (the paper's default).", "",
               "| w | none | static | dynamic | p spread (best vs worst) | dynamic beats both |",
               "|---|---|---|---|---|---|", *lines, "", f"![percentile]({FIG_DIR}/percentile.png)", "",
               _cost(part, kept["dynamic"] is not None), ""]
    if "sr_aug" in results:
        part = results["sr_aug"]
        v, lines = sr_verdict(part)
        verdicts[3] = v
        sr_figure(part, figs / "sr_aug.png")
        ref = part["reference_inputs"]
        pcfg = results["provenance"]["sr_aug"]["config"]
        base_in, oracle_in = ref["base_samples"], ref["oracle"]
        md += ["## 3. Noise-conditioning augmentation for the SR stage", "",
               "Paper (section 2.4, appendix): noise-conditioning augmentation is critical for the super-resolution "
               "stages: an SR model trained without it copes badly with the base's imperfect samples.", "",
               *_kept_line(kept["sr_aug"]),
               f"**Verdict: {v}** (the SR trained with augmentation, at its best aug level on the base's samples, "
               "against the SR trained without it at its best level). Both SR stages were trained by "
               f"`{pcfg['sr_config']}` for {part['sr_steps']} steps; the second with `--ablation no-aug`.", "",
               f"The inputs alone, upsampled bilinearly: the base's samples {_fmt(base_in['alignment']['overall'])} "
               f"(FID {base_in['fid']:.2f}); clean low-res renders {_fmt(oracle_in['alignment']['overall'])} "
               f"(FID {oracle_in['fid']:.2f}).", "",
               "The augmented SR stage was trained with levels up to noise_aug_max = "
               f"{part.get('noise_aug_max', 0.3):g}; a larger sampling level is outside its training range (and "
               "every level above 0 is outside the unaugmented one's).", "",
               "| SR stage | input | aug level | alignment at 64 px | FID |", "|---|---|---|---|---|", *lines, "",
               f"![sr]({FIG_DIR}/sr_aug.png)", "", _cost(part, kept["sr_aug"] is not None), ""]
    if "text" in results:
        part = results["text"]
        v_enc, v_x, lines, w = text_verdicts(part)
        verdicts[4] = f"{v_enc} (pretrained vs random encoder); {v_x} (cross-attention vs pooled)"
        text_figure(part, figs / "text.png")
        pcfg = results["provenance"]["text"]["config"]
        md += ["## 4. Text conditioning: a pretrained encoder, and cross-attention", "",
               "Paper (section 4.4): a pretrained text encoder is what makes text-to-image alignment work, and "
               "\"text conditioning method is critical\": cross-attention on the text tokens beats a pooled text "
               "embedding alone.", "",
               *_kept_line(kept["text"]),
               f"**Verdicts at w = {w:g}: pretrained beats random-init: {v_enc}; cross-attention beats pooled: "
               f"{v_x}.** Three bases, each trained by `{pcfg['base_config']}` for {part['base_steps']} steps "
               "(the second with `--ablation random-text`, the third with `--ablation pooled-text`), sampled at the "
               "base's resolution and scored there (the scorer is 98-99% right per fact on clean renders at 32 px).",
               "", "| base | w | alignment | FID |", "|---|---|---|---|", *lines, "", f"![text]({FIG_DIR}/text.png)",
               "", _cost(part, kept["text"] is not None), ""]
    md += ["## Summary", "", "| finding | verdict | measured on |", "|---|---|---|",
           *[f"| {k} | {v} | {_measured_on(results, kept, k)} |" for k, v in verdicts.items()], ""]
    path = out / "findings.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(md), encoding="utf-8"))
    atomic_write(out / "findings.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {**results, "command": command, "verdicts": verdicts}, indent=1, default=str), encoding="utf-8"))
    return path


def _measured_on(results: dict, kept: dict, number: int) -> str:
    key = next(k for k, n in PARTS.items() if n == number)
    prov = results["provenance"][key]
    return (f"`{prov['model']}`, n = {prov['config']['n']}"
            + ("" if kept[key] is None else " (kept from an earlier run)"))


def _distinct(results: dict) -> str:
    for key in ("guidance", "dynamic"):
        if key in results and _kept(results, key) is not None:
            continue
        rows = results.get(key, {}).get("rows")
        if rows and rows[0].get("align_overall_n"):
            return str(int(rows[0]["align_overall_n"]))
    return "not counted"


def _first_fid(results: dict) -> str | None:
    for key in ("guidance", "sr_aug", "text"):
        if key in results and results[key].get("fid_metric") and _kept(results, key) is None:
            return results[key]["fid_metric"]
    return None


def rewrite(out: Path) -> Path:
    """findings.md and the figures again from OUT/findings.json (a changed write-up, no new measurement)."""
    from imagen.errors import UserError

    src = out / "findings.json"
    if not src.is_file():
        raise UserError(f"{src} not found: run `imagen-bench findings --out {out}` first")
    data = json.loads(src.read_text(encoding="utf-8"))
    data.pop("verdicts", None)
    return write_findings(data, out, data.get("command") or "imagen-bench findings")


__all__ = ["write_findings", "rewrite", "HOLDS", "FAILS", "OPEN"]
