"""`imagen-bench drawbench ...`: rating sessions, the rating app, vote export and statistics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from imagen.errors import UserError

PAIRS_EPILOG = """examples:
  imagen-bench drawbench pairs --study runs/imagen --study runs/baseline --names imagen baseline \\
      --codes 10 --out sessions/imagen-vs-baseline          # asks for the organiser password
  DRAWBENCH_ORGANISER_PASSWORD=... imagen-bench drawbench pairs --study runs/grid:c3f1a2 \\
      --study runs/grid:9b0e77 --per-set 2 --attention-rate 0.05 --codes-file codes.txt --seed 7 --out sessions/g
  imagen-bench drawbench pairs --study runs/a --study runs/b --open --out sessions/pilot   # no codes, on purpose
  imagen-bench drawbench pairs --study runs/a --study runs/b --crowd prolific --quota 40 --attention-rate 0.05 \\
      --completion-code C1A2B3 --completion-url 'https://app.prolific.com/submissions/complete?cc=C1A2B3' \\
      --out sessions/prolific              # raters arrive by ?PROLIFIC_PID=...&STUDY_ID=...&SESSION_ID=...
"""
PASSWORD_ENV = "DRAWBENCH_ORGANISER_PASSWORD"
PLAN_DESCRIPTION = """Power by simulation, under the analysis `drawbench stats` runs: the share difference
prefer_a - prefer_b with its 95% prompt x rater cluster-robust t interval, which must exclude 0.

Simulated studies have prompt and rater random effects on the A-versus-B log-odds (--prompt-sd, --rater-sd) and an
indifferent share (--ties). With --effect: the fewest prompts that reach --power (checked again on a fresh
simulation); with --prompts: the smallest effect detected with --power. Few raters who differ cap the power that
more prompts can buy."""
APP_EPILOG = """examples:
  imagen-bench drawbench app sessions/imagen-vs-baseline                 # http://localhost:8501
  imagen-bench drawbench app sessions/imagen-vs-baseline --port 8600 --address 0.0.0.0
"""
EXPORT_EPILOG = """examples:
  imagen-bench drawbench export sessions/imagen-vs-baseline              # SESSION/export/votes.{parquet,csv}
  imagen-bench drawbench export sessions/imagen-vs-baseline --out results/ --current-only
"""
STATS_EPILOG = """examples:
  imagen-bench drawbench stats sessions/imagen-vs-baseline
  imagen-bench drawbench stats sessions/imagen-vs-baseline --min-attention 0.8 --json > stats.json
"""
AUTO_DESCRIPTION = """A machine rater: a judge model answers every comparison of a session the way a person does (the
left set, the right set, or indifferent), for the question it can answer: alignment (vqascore, pickscore,
clip_score) or quality (hpsv2, imagereward). A set's score is the mean of its images' scores against the prompt;
the judge is indifferent when the two means differ by no more than --margin (in the judge's own units; each judge
has a stated default). The answers go to SESSION/machine/<metric>.parquet as a rater of kind machine, never into
the people's votes; `drawbench stats` sets them beside the people's, with their agreement (share of comparisons both
decided on which they agree, Cohen's kappa) per category, with 95% intervals."""
AUTO_EPILOG = """examples:
  imagen-bench drawbench auto sessions/imagen-vs-baseline --judge pickscore --device cuda
  imagen-bench drawbench auto sessions/imagen-vs-baseline --judge hpsv2 --model ~/w/HPS_v2.1_compressed.pt
  imagen-bench drawbench auto sessions/imagen-vs-baseline --judge vqascore --model Qwen/Qwen2.5-VL-7B-Instruct
  imagen-bench drawbench stats sessions/imagen-vs-baseline          # people, and each machine rater beside them
"""


def register(subparsers) -> None:
    from imagen_bench import HelpFormatter

    grp = subparsers.add_parser("drawbench", help="human evaluation on DrawBench: sessions, rating app, stats",
                                description="Human evaluation as in the Imagen paper (Sec. 4.2): raters choose "
                                            "between two systems' images per DrawBench prompt.",
                                formatter_class=HelpFormatter,
                                epilog="examples:\n  imagen-bench drawbench pairs --help\n"
                                       "  imagen-bench drawbench app SESSION\n  imagen-bench drawbench stats SESSION\n")
    sub = grp.add_subparsers(dest="drawbench_command", metavar="SUBCOMMAND")
    grp.set_defaults(func=lambda args: (grp.print_help(), 2)[1])

    p = sub.add_parser("pairs", help="build a blinded rating session from two or more studies",
                       description="Build a rating session: one comparison per prompt (and pair of systems) that "
                                   "all studies share, N images per side with the same sample indices, sides "
                                   "randomised with a recorded seed, system names hidden from raters. Prints the "
                                   "access codes once: hand them out, they are stored only hashed.",
                       formatter_class=HelpFormatter, epilog=PAIRS_EPILOG)
    p.add_argument("--study", action="append", required=True, metavar="DIR[:CELL]",
                   help="a study folder of the grid runner, optionally one cell of it (repeat, 2 or more)")
    p.add_argument("--names", nargs="+", help="one name per --study, shown only in results (default A, B, ...)")
    p.add_argument("--per-set", type=int, default=4, help="images per side of a comparison")
    p.add_argument("--attention-rate", type=float, default=0.0,
                   help="share of attention checks mixed in (noise images against a real set), e.g. 0.05")
    codes = p.add_mutually_exclusive_group()
    codes.add_argument("--codes", type=int, default=0, metavar="N",
                       help="generate N access codes, one per rater: 10 characters from 31 letters and digits, "
                            "drawn with Python's secrets module (49.5 bits each; not from --seed)")
    codes.add_argument("--codes-file", type=Path, metavar="F", help="a text file with one access code per line")
    codes.add_argument("--open", action="store_true",
                       help="no access codes on purpose: anyone with the app's URL rates under any name (the "
                            "sign-in page says so)")
    codes.add_argument("--crowd", metavar="PLATFORM",
                       help="raters arrive from a crowd platform by its link: prolific (PROLIFIC_PID, STUDY_ID, "
                            "SESSION_ID), mturk (workerId, ...), or the URL parameter that carries the participant id")
    p.add_argument("--completion-code", help="shown to each rater when their comparisons are done (crowd studies)")
    p.add_argument("--completion-url", help="the platform's completion link, offered as a button at the end")
    p.add_argument("--quota", type=int, default=None, metavar="N",
                   help="comparisons per rater: the first N of each rater's own random order (default: all)")
    p.add_argument("--organiser-password", help=argparse_suppress())
    p.add_argument("--seed", type=int, default=0, help="seed of sides, attention checks and rater orders")
    p.add_argument("--out", type=Path, required=True, help="the new session folder")
    p.add_argument("--json", action="store_true", help="print a JSON summary (with the codes) instead of text")
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("plan", help="how many prompts a study needs (or what effect it can detect), by simulation",
                       description=PLAN_DESCRIPTION,
                       formatter_class=HelpFormatter,
                       epilog="examples:\n  imagen-bench drawbench plan --effect 0.10 --raters 20\n"
                              "  imagen-bench drawbench plan --prompts 200 --raters 5 --json\n"
                              "  imagen-bench drawbench plan --effect 0.2 --raters 30 --per-rater 50 --ties 0.3\n")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--effect", type=float, help="the preference to detect: prefer_a - prefer_b (e.g. 0.10)")
    goal.add_argument("--prompts", type=int, help="the prompts you have: report the detectable effect")
    p.add_argument("--raters", type=int, default=5, help="raters (each judges every prompt, or --per-rater of them)")
    p.add_argument("--per-rater", type=int, default=None, help="comparisons per rater (default: every prompt)")
    p.add_argument("--ties", type=float, default=0.2, help="share of indifferent votes")
    p.add_argument("--prompt-sd", type=float, default=0.5, help="sd of prompt effects on the A-vs-B log-odds")
    p.add_argument("--rater-sd", type=float, default=0.3, help="sd of rater effects on the A-vs-B log-odds")
    p.add_argument("--power", type=float, default=0.8, help="the power to reach")
    p.add_argument("--sims", type=int, default=200, help="simulated studies per power estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print only JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("app", help="run the Streamlit rating app on a session",
                       description="Serve the rating app. Raters sign in (with their access code when the session "
                                   "has codes), and vote; the organiser view (sidebar) shows progress and results.",
                       formatter_class=HelpFormatter, epilog=APP_EPILOG)
    p.add_argument("session", type=Path, metavar="SESSION")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="localhost", help="interface to listen on (0.0.0.0 for a lab network)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("export", help="write the votes as Parquet and CSV",
                       description="Write every vote joined to prompts, categories, systems, sides, raters and "
                                   "times, as votes.parquet and votes.csv (vote history included, `current` marks "
                                   "each rater's latest answer).",
                       formatter_class=HelpFormatter, epilog=EXPORT_EPILOG)
    p.add_argument("session", type=Path, metavar="SESSION")
    p.add_argument("--out", type=Path, help="output folder (default SESSION/export)")
    p.add_argument("--current-only", action="store_true", help="only each rater's latest vote per comparison")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("auto", help="a judge model answers every comparison (a machine rater, kept apart)",
                       description=AUTO_DESCRIPTION, formatter_class=HelpFormatter, epilog=AUTO_EPILOG)
    p.add_argument("session", type=Path, metavar="SESSION")
    p.add_argument("--judge", required=True, choices=["vqascore", "pickscore", "clip_score", "hpsv2", "imagereward"])
    p.add_argument("--model", default=None,
                   help="the judge's weights: a hub id or folder (vqascore, pickscore), a checkpoint file or folder "
                        "(hpsv2 v2.1, imagereward), MODEL[:PRETRAINED] (clip_score); default: the published one")
    p.add_argument("--margin", type=float, default=None, help="indifference margin in the judge's units")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.set_defaults(func=cmd_auto)

    p = sub.add_parser("stats", help="preference shares, Bradley-Terry, agreement, position bias",
                       description="Per category and overall, per question: shares preferring A, B or neither with "
                                   "95% intervals clustered by prompt and rater (two-way cluster-robust, "
                                   "Student's t with Satterthwaite's degrees of freedom); Bradley-Terry-Davidson "
                                   "strengths (prompt x rater bootstrap intervals) with more than two systems; Krippendorff's alpha; the order (position) "
                                   "effect inside the Davidson model (Davidson & Beaver 1977; sides are drawn per "
                                   "rater) with the plain left share beside it; attention-check pass rate per rater.",
                       formatter_class=HelpFormatter, epilog=STATS_EPILOG)
    p.add_argument("session", type=Path, metavar="SESSION")
    p.add_argument("--min-attention", type=float, help="drop raters whose attention-check pass rate is below this")
    p.add_argument("--html", nargs="?", const="", default=None, metavar="DIR",
                   help="also write the human-results report (the paper's DrawBench figure per category, tables) "
                        "to DIR (default SESSION/report)")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="bootstrap replicates of the model fits; the order effect uses at most 500 of them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.set_defaults(func=cmd_stats)


# ----------------------------------------------------------------------------- commands
def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def organiser_password(args) -> str | None:
    """The organiser password: $DRAWBENCH_ORGANISER_PASSWORD, else asked for (twice) on a terminal; never an argument
    (it would be visible in `ps` and the shell history). None: the session has no organiser view."""
    if args.organiser_password is not None:
        raise UserError(f"--organiser-password on the command line is visible in `ps` and the shell history; set "
                        f"{PASSWORD_ENV} or let the command ask for it")
    pw = os.environ.get(PASSWORD_ENV)
    if pw is not None:
        if not pw.strip():
            raise UserError(f"{PASSWORD_ENV} is set but empty; give a password, or unset it for no organiser view")
        return pw
    if not sys.stdin.isatty():
        return None  # cmd_pairs says so once the session is written
    import getpass

    pw = getpass.getpass("organiser password (empty: no organiser view): ")
    if pw and getpass.getpass("again: ") != pw:
        raise UserError("the two passwords differ; run the command again")
    return pw or None


def cmd_pairs(args) -> int:
    from drawbench.pairs import build_session

    from drawbench.pairs import crowd_settings

    if (args.completion_code or args.completion_url) and not args.crowd:
        raise UserError("--completion-code and --completion-url are for a crowd session: add --crowd PLATFORM")
    crowd = crowd_settings(args.crowd, args.completion_code, args.completion_url) if args.crowd else None
    password = organiser_password(args)  # before any work
    session, codes = build_session(args.study, args.out, names=args.names, per_set=args.per_set,
                                   attention_rate=args.attention_rate, n_codes=args.codes, codes_file=args.codes_file,
                                   organiser_password=password, seed=args.seed, progress=True,
                                   open_access=args.open, crowd=crowd, quota=args.quota)
    n_checks = sum(c.attention is not None for c in session.comparisons)
    summary = {"session": str(args.out), "comparisons": len(session.comparisons), "attention_checks": n_checks,
               "prompts": len({c.prompt_id for c in session.comparisons if c.attention is None}),
               "dropped_prompts": session.dropped_prompts, "systems": [s.name for s in session.systems],
               "codes": {f"rater-{i + 1:02d}": c for i, c in enumerate(codes)} if not args.codes_file else {}}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"wrote {args.out}: {summary['comparisons']} comparisons ({n_checks} attention checks) on "
          f"{summary['prompts']} prompts, systems {', '.join(summary['systems'])}")
    if session.dropped_prompts:
        print(f"dropped {session.dropped_prompts} prompts not shared by every study (or with too few images)")
    if codes and not args.codes_file:
        print("access codes (shown once, stored only hashed; give one to each rater):")
        for rater, code in summary["codes"].items():
            print(f"  {rater}  {code}")
    if session.open_access:
        print("open session (--open): anyone who can open the app can rate, under any name")
    if session.crowd:
        c = session.crowd
        print(f"crowd session ({c['platform']}): give the platform the app's URL with ?{c['param']}={{...}}"
              + "".join(f"&{k}={{...}}" for k in c["extra"]) + (f"; each rater does {session.quota} comparisons"
                                                                 if session.quota else ""))
    if password is None:
        print(f"no organiser view: set {PASSWORD_ENV} (or run on a terminal to be asked) to protect one",
              file=sys.stderr)
    print(f"next: imagen-bench drawbench app {args.out}")
    return 0


def cmd_plan(args) -> int:
    from drawbench.plan import Design, detectable_effect, prompts_needed

    if not 0 < args.power < 1 or args.sims < 20:
        raise UserError("--power must be in (0, 1) and --sims at least 20")
    design = Design(raters=args.raters, per_rater=args.per_rater, ties=args.ties, prompt_sd=args.prompt_sd,
                    rater_sd=args.rater_sd)
    design.check()
    if args.prompts is not None:
        if args.prompts < 2:
            raise UserError("--prompts must be at least 2")
        out = detectable_effect(design, args.prompts, args.power, args.sims, seed=args.seed)
        text = (f"{args.prompts} prompts x {args.raters} raters detect a preference of {out['effect']:.3f} "
                f"(prefer_a - prefer_b) with {args.power:.0%} power")
    else:
        out = prompts_needed(design, args.effect, args.power, args.sims, seed=args.seed)
        text = (f"{out['prompts']} prompts ({out['votes']} votes from {args.raters} raters) detect a preference of "
                f"{args.effect:g} with {args.power:.0%} power (checked on a fresh simulation: {out['power']:.0%})")
    print(json.dumps(out) if args.json else text)
    return 0


def cmd_app(args) -> int:
    import logging

    # importing the app outside `streamlit run` only builds its command line; silence the "no runtime" warning
    import streamlit  # noqa: F401  (configures streamlit's loggers; quiet one of them below)

    logging.getLogger("streamlit.runtime.caching.cache_data_api").setLevel(logging.ERROR)
    from drawbench import app
    from drawbench.pairs import load_session

    load_session(args.session)  # fail here, with a clear message, rather than inside the browser
    env = {**os.environ, app.SESSION_ENV: str(args.session.resolve())}
    cmd = app.streamlit_command(args.port, args.address)
    print(f"rating app for {args.session} on http://{args.address}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    return subprocess.call(cmd, env=env)


def cmd_export(args) -> int:
    from drawbench.pairs import load_session
    from drawbench.votes import export

    pq, csv = export(load_session(args.session), args.out, history=not args.current_only)
    if args.json:
        print(json.dumps({"parquet": str(pq), "csv": str(csv)}))
    else:
        print(f"wrote {pq}\nwrote {csv}")
    return 0


def cmd_auto(args) -> int:
    from drawbench import auto
    from drawbench.pairs import load_session

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.margin is not None and not args.margin >= 0:
        raise UserError(f"--margin {args.margin}: an indifference margin is >= 0, in the judge's units "
                        f"({auto.JUDGES[args.judge].units})")
    session = load_session(args.session)
    scorer = auto.load_scorer(args.judge, args.model, args.device, args.dtype)
    path = auto.rate_session(session, args.judge, scorer, args.margin, args.batch_size, progress=not args.json)
    import pandas as pd

    df = pd.read_parquet(path)
    counts = df["choice"].value_counts().to_dict()
    result = {"path": str(path), "rater": df["rater"].iloc[0] if len(df) else None, "metric": scorer.name,
              "question": auto.JUDGES[args.judge].question, "margin": float(df["margin"].iloc[0]) if len(df) else None,
              "comparisons": int(len(df)), "answers": {k: int(v) for k, v in counts.items()}}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['rater']} answered {result['comparisons']} comparisons on {result['question']} (margin "
              f"{result['margin']}): {result['answers']}\nwrote {path}")
    return 0


def cmd_stats(args) -> int:
    from drawbench.pairs import load_session
    from drawbench.stats import summarize
    from drawbench.votes import votes_table

    if args.min_attention is not None and not 0 <= args.min_attention <= 1:
        raise UserError("--min-attention is a pass rate in [0, 1], e.g. 0.8")
    session = load_session(args.session)
    votes = votes_table(session)
    if len(votes) == 0:
        raise UserError(f"{args.session} has no votes yet; run `imagen-bench drawbench app {args.session}` first")
    out = summarize(votes, n_boot=args.bootstrap, seed=args.seed, min_attention=args.min_attention,
                    systems=[x.name for x in session.systems])
    from drawbench import auto

    machine = auto.machine_votes(session)
    if len(machine):  # machine raters beside the people (the people's kept votes, no attention checks)
        kept = votes[~votes.rater.isin(out["dropped_raters"]) & votes.attention.isna()]
        out["machine"] = auto.agreement(kept, machine, out["systems"], n_boot=min(args.bootstrap, 1000),
                                        seed=args.seed)
    if args.html is not None:
        from drawbench.report import build_human_report

        index = build_human_report(args.session, args.html or None, n_boot=args.bootstrap, seed=args.seed,
                                   min_attention=args.min_attention)
        print(f"report: {index}", file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return 0
    print(format_summary(out))
    return 0


def _pct(x) -> str:
    return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:4.1f}%"


def format_summary(s: dict) -> str:
    lines = [f"{s['n_votes']} votes by {s['n_raters']} raters on {s['n_prompts']} prompts; systems: "
             f"{', '.join(s['systems'])}"]
    if s["dropped_raters"]:
        lines.append(f"dropped raters (attention pass rate < {s['min_attention']}): {', '.join(s['dropped_raters'])}")
    for r in s["preference"]:
        if r["category"] == "overall":
            lines.append(f"\n{r['question']}: {r['system_a']} vs {r['system_b']}  (95% intervals, clustered by "
                         "prompt and rater)")
            lines.append(f"  {'category':<20} {'n':>4}  {'prefer ' + r['system_a']:>22}  "
                         f"{'indifferent':>22}  {'prefer ' + r['system_b']:>22}")
        lines.append(f"  {r['category']:<20} {r['n']:>4}  " + "  ".join(
            f"{_pct(r[k])} [{_pct(r[k + '_low'])},{_pct(r[k + '_high'])}]" for k in
            ("prefer_a", "indifferent", "prefer_b")))
    if s["bradley_terry"]:
        lines.append("\nBradley-Terry-Davidson log-strengths (95% intervals):")
        for r in s["bradley_terry"]:
            lines.append(f"  {r['question']:<10} {r['system']:<16} {r['log_strength']:+.2f} "
                         f"[{r['log_strength_low']:+.2f}, {r['log_strength_high']:+.2f}]")
    for r in s["agreement"]:
        a = r["alpha"]
        lines.append(f"agreement ({r['question']}): Krippendorff's alpha = "
                     f"{'n/a' if a is None or math.isnan(a) else f'{a:.3f}'} on {r['units']} comparisons")
    for r in s.get("order_effect", []):
        lt = r["log_theta"]
        if r.get("note"):
            lines.append(f"order effect ({r['question']}): {r['note']}")
        elif lt is not None and not math.isnan(lt):
            lines.append(f"order effect ({r['question']}, Davidson-Beaver): log theta = {lt:+.3f} "
                         f"[{r['low']:+.3f}, {r['high']:+.3f}] (0: none; > 0: the left set gains)")
    for r in s["position_bias"]:
        lines.append(f"position ({r['question']}, descriptive): left chosen in {_pct(r['left_share'])} "
                     f"[{_pct(r['low'])},{_pct(r['high'])}] of {r['n']} decided votes, p = {r['p_value']:.3g}")
    for r in s["attention"]:
        if r["checks"]:
            lines.append(f"attention {r['rater']}: {r['passed']}/{r['checks']} passed")
    last = None
    for r in s.get("machine", []):
        if (r["rater"], r["system_a"], r["system_b"]) != last:
            last = (r["rater"], r["system_a"], r["system_b"])
            lines.append(f"\n{r['rater']} ({r['question']}, margin {r['margin']:g}) against people: "
                         f"{r['system_a']} vs {r['system_b']}  (machine / people: prefer A, indifferent, prefer B; "
                         "agreement on comparisons both decided, Cohen's kappa; 95% intervals over prompts)")
        agree = "  -  " if r["agree"] is None else (f"{_pct(r['agree'])} [{_pct(r['agree_low'])},"
                                                    f"{_pct(r['agree_high'])}]")
        kappa = "n/a" if r["kappa"] is None else (f"{r['kappa']:+.2f} [{_num(r['kappa_low'])}, "
                                                  f"{_num(r['kappa_high'])}]")
        lines.append(f"  {r['category']:<20} {r['n']:>4}  machine {_pct(r['machine_a'])}/{_pct(r['machine_same'])}/"
                     f"{_pct(r['machine_b'])}  people {_pct(r['people_a'])}/{_pct(r['people_same'])}/"
                     f"{_pct(r['people_b'])}  agree {agree} of {r['decided']}  kappa {kappa}")
    return "\n".join(lines)


def _num(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.2f}"
