"""A study folder's identity, status and provenance: what it is of (seed, prompt set, model, call options), what is
done in it, and what made its metrics; the checks that refuse mixing another study into it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from bench import store
from bench.suites import WORLD_SUITES, Prompt, world_suite
from bench.work import GridSpec
from imagen.errors import UserError

def status(study: str | os.PathLike) -> dict:
    """What is done in a study: per cell, images stored against planned, and metric rows."""
    study = Path(study)
    if not store.is_study(study) and not (study / "tables" / store.STUDY).is_dir():
        raise UserError(f"{study} is not a study folder (no tables/); run `imagen-bench grid run SPEC --out "
                        f"{study}` first")
    runs = store.read_table(study, store.STUDY)
    samples = store.read_table(study, store.SAMPLES, key=store.COL_SAMPLE_ID)
    metrics = store.read_table(study, store.METRICS)
    planned: dict = {}  # every run's cells (a study may have been run, or extended, with several specs)
    if store.COL_PLAN in runs:
        for text in runs[store.COL_PLAN].dropna():
            planned.update(json.loads(text))
    done = samples.groupby(store.COL_CELL_ID).size().to_dict() if len(samples) else {}
    nmet = metrics.groupby(store.COL_CELL_ID).size().to_dict() if len(metrics) else {}
    cells = []
    for cid in list(planned) + [c for c in done if c not in planned]:
        p = planned.get(cid, {})
        cells.append({"cell_id": cid, "guidance": p.get(store.COL_GUIDANCE_STAGES),
                      "threshold": p.get(store.COL_THRESHOLD), "sampler": p.get(store.COL_SAMPLER),
                      "steps": p.get(store.COL_STEPS), "aug_level": p.get(store.COL_AUG_LEVEL),
                      "distilled_guidance": p.get(store.COL_DISTILLED_GUIDANCE),
                      "planned": p.get("items"), "done": int(done.get(cid, 0)), "metric_rows": int(nmet.get(cid, 0))})
    total = sum(c["planned"] or 0 for c in cells)
    n_done = sum(min(c["done"], c["planned"] or c["done"]) for c in cells)
    return {"study": str(study), "name": runs[store.COL_NAME].iloc[-1] if len(runs) else None,
            "runs": int(len(runs)), "planned": total, "done": n_done, "complete": bool(total) and n_done >= total,
            "metric_rows": int(len(metrics)), "cells": cells}


def format_status(st: dict) -> str:
    lines = [f"study {st['study']} ({st['name']}): {st['done']}/{st['planned']} images, "
             f"{st['metric_rows']} metric rows, {st['runs']} run(s)" + (" - complete" if st["complete"] else "")]
    distilled = any(c.get("distilled_guidance") is not None for c in st["cells"])  # FLUX.1-dev's embedded guidance
    lines.append(f"{'cell':12}  {'guidance':>8}  " + (f"{'distilled':>9}  " if distilled else "")
                 + f"{'threshold':14} {'sampler':9} {'steps':>5}  {'done':>9}  metrics")
    for c in st["cells"]:
        dg = f"{str(c.get('distilled_guidance')):>9}  " if distilled else ""
        lines.append(f"{c['cell_id']:12}  {str(c['guidance']):>8}  {dg}{str(c['threshold']):14} {str(c['sampler']):9} "
                     f"{str(c['steps']):>5}  {c['done']:>4}/{str(c['planned']):<4}  {c['metric_rows']}")
    return "\n".join(lines)


def environment(device: str) -> tuple[dict, dict]:
    """(package versions, hardware) recorded with every run."""
    import platform

    import torch

    from bench.filehash import package_versions

    versions = package_versions()
    hardware = {"device": device, "machine": platform.machine(), "processor": platform.processor(),
                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda"
                else None}
    return versions, hardware


def provenance(spec: GridSpec) -> dict:
    """What made the study's metrics besides the images: each feature extractor's weights sha256 (None: not on this
    machine yet) and protocol, each CLIP model's weights."""
    m = spec.metrics
    feats = [t for t in (m.fid, m.fd_dinov2, m.kid, m.prc) if t]
    if m.diversity and m.diversity["embedding"] != "clip":
        feats.append({"extractor": m.diversity["embedding"], "protocol": "clean"})
    clips = [t for t in (m.clip_score, m.cmmd, m.fd_clip) if t]
    if m.diversity and m.diversity["embedding"] == "clip":
        clips.append(m.diversity)
    out: dict = {}
    if feats:
        from bench.metrics.features import weights_sha256

        out["extractors"] = {t["extractor"]: weights_sha256(t["extractor"]) for t in feats}
        out["protocols"] = sorted({t.get("protocol", "clean") for t in feats})
    if clips:
        out["clip"] = sorted({f"{t['model']}:{t.get('pretrained') or 'shipped'}" for t in clips})
    if m.geneval:
        out["geneval"] = {"detector": m.geneval["detector"],
                          "clip": f"{m.geneval['clip']}:{m.geneval.get('pretrained') or 'shipped'}"}
    if m.vqascore:
        from bench.metrics.hub import fingerprint

        out["vqascore"] = {k: m.vqascore.get(k) for k in ("model", "template", "answer", "dtype")}
        out["vqascore"]["weights"] = fingerprint(m.vqascore["model"])
    if m.pickscore:
        from bench.metrics.hub import fingerprint

        out["pickscore"] = {**dict(m.pickscore), "weights": fingerprint(m.pickscore["model"])}
    if m.hpsv2 or m.imagereward:
        from bench.image_scores import checkpoint_sha256

        for key, t in (("hpsv2", m.hpsv2), ("imagereward", m.imagereward)):
            if t:
                out[key] = {**dict(t), "weights_sha256": checkpoint_sha256(t)}
    return out


def check_metric_inputs(spec: GridSpec, prompts: list[Prompt], metrics: bool = True) -> None:
    """What the spec alone cannot check about its metrics: the references and the number of images per cell."""
    if not metrics:
        return
    for key, table in spec.metrics.distribution().items():
        check_reference(spec, prompts, table["reference"], f"metrics.{key}", need_images=True)
    for key in ("fid", "fd_dinov2"):
        table = getattr(spec.metrics, key)
        if table:
            check_reference(spec, prompts, table["reference"], f"metrics.{key}")
    feats = [t["extractor"] for t in (spec.metrics.fid, spec.metrics.fd_dinov2, spec.metrics.kid, spec.metrics.prc)
             if t]
    if spec.metrics.diversity:
        if spec.samples_per_prompt < 2:
            raise UserError(f"metrics.diversity compares the images of one prompt: set samples_per_prompt >= 2 "
                            f"(it is {spec.samples_per_prompt})")
        feats.append(spec.metrics.diversity["embedding"])
    if feats:  # a network that only the network can bring (DINOv2's), here or one line before any image
        from bench.metrics.features import check_weights

        for name in feats:
            check_weights(name)
    if spec.metrics.geneval:  # the judge is here (detector files, CLIP weights), or one line before any image
        from bench.metrics.clip_score import load_clip
        from bench.metrics.detectors import resolve

        g = spec.metrics.geneval
        resolve(g["detector"])
        load_clip(g["clip"], g.get("pretrained"))
    _check_preference_judges(spec)
    if spec.metrics.vqascore:  # the vision-language model is here, or one line before any image
        from bench.metrics.vqascore import check_model

        check_model(spec.metrics.vqascore["model"])


def _check_preference_judges(spec: GridSpec) -> None:
    """PickScore's model and processor, HPS's and ImageReward's checkpoint files: here, or one line before any image
    naming what to download and where."""
    m = spec.metrics
    if m.pickscore:
        from bench.metrics import pickscore as P
        from bench.metrics.hub import hub_folder

        folder = hub_folder(m.pickscore["model"], "PickScore's model", P.EXAMPLE)
        P.processor_folder(m.pickscore["processor"], folder)
    if m.hpsv2:
        from bench.metrics.hpsv2 import checked_file

        checked_file(m.hpsv2.get("weights"), m.hpsv2["version"])
    if m.imagereward:
        from bench.metrics.imagereward import load_tokenizer, weights_files

        weights_files(m.imagereward.get("weights"), m.imagereward.get("med_config"))
        load_tokenizer(m.imagereward["tokenizer"])


def check_reference(spec: GridSpec, prompts: list[Prompt], ref, key: str, need_images: bool = False) -> None:
    """A metric's reference exists and the grid makes at least 2 images per cell to compare with it."""
    if need_images and isinstance(ref, str) and ref.endswith(".npz"):
        raise UserError(f"{key}.reference: {ref} is a statistics file; this metric needs the reference images "
                        f"(\"shapes\", a folder of images or a study folder)")
    if not isinstance(ref, str) or not ref.strip():
        raise UserError(f"{key}.reference: {ref!r}; use \"shapes\", a folder of images, a study folder or a "
                        f"statistics .npz file")
    if ref == "shapes":
        if world_suite(spec.suites) is None:
            raise UserError(f"{key}.reference = \"shapes\" needs the shapes suite in suites, e.g. "
                            "\"shapes:64\" (or \"shapes-hard:64\"); or give a folder of reference images")
        n_images = sum(p.suite in WORLD_SUITES for p in prompts) * spec.samples_per_prompt
    else:
        if not Path(ref).exists():
            raise UserError(f"{key}.reference: {ref} not found; give \"shapes\", a folder of images, a study "
                            f"folder or a statistics .npz file")
        n_images = len(prompts) * spec.samples_per_prompt
    if n_images < 2:
        raise UserError(f"{key}: needs at least 2 images per cell, this grid makes {n_images}; add prompts "
                        f"or raise samples_per_prompt")


def study_identity(spec: GridSpec, prompts: list[Prompt], model_hash: str | None = None) -> dict:
    """What a study folder is of: the spec seed, the suites' prompt ids (a hash), the model's checkpoint hash
    (None: not known yet, not checked)."""
    ids = sorted(p.prompt_id for p in prompts)
    out = {store.COL_SEED: int(spec.seed), store.COL_PROMPTS_HASH: hashlib.sha256("\n".join(ids).encode()).hexdigest(),
           store.COL_OPTIONS_HASH: hashlib.sha256(json.dumps([spec.negative_prompt, spec.call]).encode()).hexdigest()}
    if model_hash is not None:
        out[store.COL_CHECKPOINT_HASH] = model_hash
    return out


def check_same_study(out: Path, identity: dict, extend: bool) -> None:
    """A study is exactly its spec: a rerun into a folder made with another seed, prompt set or model is refused
    (its images would be reused or mixed into the metrics). `extend` adds other prompts or another model to it on
    purpose; never another seed, since an image is keyed by (cell, prompt, sample index) and would be reused."""
    if not (out / "tables" / store.STUDY).is_dir():
        return
    runs = store.read_table(out, store.STUDY)
    if not len(runs):
        return
    stored = {store.COL_SEED: {str(int(v)) for v in runs[store.COL_SEED].dropna()} if store.COL_SEED in runs
              else set(),
              store.COL_PROMPTS_HASH: set(runs[store.COL_PROMPTS_HASH].dropna()) if store.COL_PROMPTS_HASH in runs
              else set(),
              store.COL_CHECKPOINT_HASH: set(runs[store.COL_CHECKPOINT_HASH].dropna())
              if store.COL_CHECKPOINT_HASH in runs else set(),
              store.COL_OPTIONS_HASH: set(runs[store.COL_OPTIONS_HASH].dropna()) if store.COL_OPTIONS_HASH in runs
              else set()}
    names = {store.COL_SEED: "seed", store.COL_PROMPTS_HASH: "prompt set (suites)",
             store.COL_CHECKPOINT_HASH: "model (checkpoint hash)",
             store.COL_OPTIONS_HASH: "negative prompt or [call] options"}
    for col, what in names.items():
        if col not in identity or (extend and col != store.COL_SEED):
            continue
        now_value = str(identity[col])
        before = sorted(str(v) for v in stored[col])
        if before and now_value not in before:  # a spec the study ran (or was extended with) resumes as before
            fix = "" if col == store.COL_SEED else ", or pass --extend to add it to that study on purpose"
            raise UserError(f"{out} is a study of another {what} ({before[-1][:16]}, now {now_value[:16]}); give "
                            f"another --out for this spec{fix}")


__all__ = ["status", "format_status", "environment", "provenance", "check_metric_inputs", "check_reference",
           "study_identity", "check_same_study"]
