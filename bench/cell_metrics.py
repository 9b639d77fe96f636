"""The metrics stage of a grid: FID, CLIP score and caption alignment per cell (and per category), stored once.

A cell's metrics use exactly the images of the spec's work items (never other samples stored beside them), less
those a safety checker blacked out (counted in the row's `n_flagged`, never fed into FID or CLIP score). A metric
row records a hash of its inputs (the images' sha256, the settings, the reference's fingerprint), so a metric
already stored for the same inputs is never recomputed. Shards that finish together compute it once (a lock).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import image_scores, store
from bench.generate import load_images
from bench.suites import WORLD_SUITES
from bench.work import GridSpec, HpsTable, ImageRewardTable, now
from imagen.errors import UserError
from imagen.fileio import sha256_file


ALIGNMENT = "align_overall"  # = bench.metrics.alignment.ALIGN_OVERALL: images whose every tested fact holds
ALIGN_PREFIX = "align_"  # + fact type: accuracy of one fact type (color, shape, count, position)
FLAGGED = "flagged_share"  # the share of a cell's images its model's safety checker blacked out (n: all of them)


@dataclass(frozen=True)
class MetricFns:
    """The metric functions the stage calls (injectable; defaults use bench.metrics and the shapes scorer)."""

    fid: object = None  # (images uint8 [N,H,W,3], fid spec dict, reference images or None) -> (name, value)
    clip: object = None  # (images [N,H,W,3], prompts list[str], clip spec {"model", "pretrained"}) -> (name, [N])
    alignment: object = None  # (image [H,W,3], facts JSON text) -> {fact_type: bool}
    # (images, metric key "kid" | "prc" | "cmmd" | "fd_clip", its table, reference images or None) -> fidelity.Values
    distribution: object = None
    # (images, GenEval metadata dicts, geneval table) -> (metric name, [correct per image])
    geneval: object = None
    # (images, prompts, vqascore table) -> (metric name, [P(answer) per image])
    vqascore: object = None
    # (images, diversity table) -> (the embedding's name part, embeddings [N, D])
    embed: object = None
    # ("pickscore" | "hpsv2" | "imagereward", images, prompts, its table) -> (metric name, [score per image])
    preference: object = None


class Networks:
    """The feature extractors and CLIP models of one metrics run, each loaded once, by name (and weights), and
    shared by FID, CLIP score, KID, precision/recall, CMMD and FD-CLIP."""

    def __init__(self, device: str = "cpu"):
        self.device, self._nets = device, {}

    def extractor(self, name: str):
        if ("ext", name) not in self._nets:
            from bench.metrics.features import load_extractor

            self._nets[("ext", name)] = load_extractor(name, self.device)
        return self._nets[("ext", name)]

    def clip(self, spec: dict):
        key = ("clip", spec["model"], spec.get("pretrained"))
        if key not in self._nets:
            from bench.metrics import clip_score as C

            self._nets[key] = C.load_clip(spec["model"], spec.get("pretrained"), device=self.device)
        return self._nets[key]


def make_default_fid(device: str = "cpu", nets: Networks | None = None):
    """bench.metrics.fid with the extractor loaded once and the reference statistics computed once per run."""
    nets = nets or Networks(device)
    state: dict = {}

    def fid_fn(images, fid_spec: dict, reference_images):
        from bench.metrics import fid as F
        from bench.metrics.features import parse_protocol

        name = fid_spec["extractor"]
        protocol = parse_protocol(fid_spec.get("protocol", "clean"))
        ext = nets.extractor(name)
        key = (name, protocol.id, fid_spec["reference"], reference_images is None)  # FID and FD-DINOv2 apart
        if key not in state:
            state[key] = (F.stats_from_images(list(reference_images), ext, protocol)
                          if reference_images is not None else F.resolve_stats(fid_spec["reference"], ext, protocol))
        value = F.fid_images(list(images), state[key], extractor=ext, protocol=protocol)
        return F.fid_metric_name(name, protocol), float(value)

    return fid_fn


def make_default_clip(device: str = "cpu", nets: Networks | None = None):
    """bench.metrics.clip_score with the CLIP model loaded once per run."""
    nets = nets or Networks(device)

    def clip_fn(images, prompts, spec: dict):
        from bench.metrics import clip_score as C

        clip = nets.clip(spec)
        return clip.metric, np.asarray(C.clip_scores(clip, list(images), list(prompts)))

    clip_fn.load = nets.clip
    return clip_fn


def make_default_geneval(device: str = "cpu", nets: Networks | None = None):
    """GenEval's rules with the table's detector (bench.metrics.detectors) and its CLIP as the colour classifier,
    each loaded once per run."""
    nets = nets or Networks(device)
    loaded: dict = {}

    def fn(images, metas, table):
        from bench.metrics import geneval as G
        from bench.metrics.detectors import Mask2FormerDetector, detector_slug
        from bench.metrics.clip_score import clip_score_metric_name

        if table["detector"] not in loaded:
            loaded[table["detector"]] = Mask2FormerDetector(table["detector"], device)
        detect = loaded[table["detector"]]
        key = ("colors", table["clip"], table.get("pretrained"))
        if key not in loaded:  # one classifier per CLIP: its colour prompts are embedded once per class, not per cell
            clip = nets.clip({"model": table["clip"], "pretrained": table.get("pretrained")})
            loaded[key] = G.ClipColors(clip.model, clip.preprocess, clip.tokenizer, device)
        colors = loaded[key]
        name = (f"geneval_{detector_slug(table['detector'])}_"
                f"{clip_score_metric_name(table['clip'], table.get('pretrained'))[len('clip_score_'):]}")
        return name, [G.score_image(np.asarray(im), m, detect, colors)[0] for im, m in zip(images, metas)]

    return fn


def make_default_vqascore(device: str = "cpu"):
    """bench.metrics.vqascore with each vision-language model (and dtype, question, answer) loaded once per run."""
    loaded: dict = {}

    def fn(images, prompts, table):
        from bench.metrics.vqascore import VQAScore

        key = (table["model"], table.get("dtype", "auto"), table["template"], table["answer"])
        if key not in loaded:
            loaded[key] = VQAScore(table["model"], device, table.get("dtype", "auto"), table["template"],
                                   table["answer"])
        scorer = loaded[key]
        return scorer.name, scorer(list(images), list(prompts), batch_size=table.get("batch_size", 8))

    return fn


def load_preference(key: str, table, device: str = "cpu"):
    """The learned human-preference scorer a [metrics] table names (bench.metrics.pickscore, hpsv2, imagereward)."""
    dtype = table.get("dtype", "auto")
    if key == "pickscore":
        from bench.metrics.pickscore import PickScore

        return PickScore(table["model"], device, dtype, table["processor"])
    if key == "hpsv2":
        from bench.metrics.hpsv2 import HPSv2

        return HPSv2(table.get("weights"), device, dtype, table["version"], table.get("architecture", "ViT-H-14"))
    from bench.metrics.imagereward import ImageReward

    return ImageReward(table.get("weights"), device, dtype, table.get("med_config"), table["tokenizer"])


def make_default_preference(device: str = "cpu"):
    """PickScore, HPS and ImageReward, each table's scorer loaded once per run."""
    loaded: dict = {}

    def fn(key, images, prompts, table):
        ident = (key, json.dumps({k: v for k, v in dict(table).items() if k != "batch_size"}, sort_keys=True))
        if ident not in loaded:
            loaded[ident] = load_preference(key, table, device)
        scorer = loaded[ident]
        return scorer.name, scorer(list(images), list(prompts), batch_size=table.get("batch_size", 8))

    return fn


def make_default_embed(device: str = "cpu", nets: Networks | None = None):
    """The diversity table's embedding of a cell's images: a feature extractor's features (the clean protocol,
    cached like FID's) or a CLIP model's image embeddings; each network loaded once per run."""
    nets = nets or Networks(device)

    def fn(images, table):
        from bench.metrics import fid as F
        from bench.metrics import fidelity as M
        from bench.metrics.features import metric_key, parse_protocol

        if table["embedding"] == "clip":
            clip = nets.clip(table)
            return clip.metric[len("clip_score_"):], M.clip_embeddings(clip, list(images))
        ext = nets.extractor(table["embedding"])
        return metric_key(table["embedding"]), F.features_from_images(list(images), ext, parse_protocol("clean"))

    return fn


def make_default_distribution(device: str = "cpu", nets: Networks | None = None):
    """KID, precision/recall (the FID extractor's features) and CMMD, FD-CLIP (CLIP embeddings) of a cell against
    its reference; each network loaded once per run, a reference's features and embeddings cached by its files'
    remembered hashes (rendered shapes references: by their pixels)."""
    nets = nets or Networks(device)
    state: dict = {}

    def fn(images, key: str, table: dict, given_reference):
        from bench.metrics import fid as F
        from bench.metrics import fidelity as M
        from bench.metrics.features import parse_protocol

        ref_key = (key in M.CLIP_METRICS, json.dumps(dict(table), sort_keys=True, default=str), given_reference is None)
        if key in M.CLIP_METRICS:
            clip = nets.clip(table)
            if ref_key not in state:  # a folder or study: embedded once, cached by the files' remembered hashes
                state[ref_key] = (M.clip_embeddings(clip, list(given_reference)) if given_reference is not None
                                  else M.clip_embeddings_of_files(clip, F.image_paths(table["reference"])))
            return M.clip_values(M.clip_embeddings(clip, images), state[ref_key], clip.metric, {key})
        name, protocol = table["extractor"], parse_protocol(table["protocol"])
        ext = nets.extractor(name)
        if ref_key not in state:  # a folder or study: its features cached by the files' remembered hashes
            state[ref_key] = (F.features_from_images(list(given_reference), ext, protocol)
                              if given_reference is not None
                              else F.features_from_files(F.image_paths(table["reference"]), ext, protocol)[0])
        fa = F.features_from_images(list(images), ext, protocol)
        return M.feature_values(fa, state[ref_key], name, protocol, {key}, table.get("subset_size"))

    return fn


def default_alignment(image, facts_json: str) -> dict:
    from bench.metrics.alignment import as_facts, score  # the facts say their world

    return score(image, as_facts(facts_json))


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, clusters=None) -> tuple[float | None, float | None]:
    """Percentile 95% interval of the mean. Resamples images with replacement, or, with `clusters` (e.g. the prompt
    of each image), whole clusters: the samples of one prompt are not independent, so they go in or out together
    (the mean of a draw is its images' sum over its images' count). Fewer than 2 clusters: no interval."""
    v = np.asarray(values, dtype=np.float64)
    if clusters is None:
        groups = np.arange(len(v))
    else:
        _, groups = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    k = int(groups.max()) + 1 if len(v) else 0
    if k < 2:
        return None, None
    sums, counts = np.bincount(groups, weights=v, minlength=k), np.bincount(groups, minlength=k)  # [k], [k]
    idx = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _inputs_hash(family: str, settings, shas) -> str:
    canon = json.dumps([family, settings, sorted(shas)], sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _reference_fingerprint(ref: str) -> str | None:
    """What a FID reference path holds, for the metric's inputs hash: a reference whose content changes must not
    leave the old FID looking current. A file: its sha256; a study: its images' sha256s; a folder: each image's
    name, size and mtime (cheap: the folder may hold 30,000 photos)."""
    path = Path(ref)
    if path.is_file():
        return sha256_file(path)
    if store.is_study(path):
        df = store.read_table(path, store.SAMPLES, key=store.COL_SAMPLE_ID)
        shas = sorted(df[store.COL_SHA256]) if store.COL_SHA256 in df else []
        return hashlib.sha256("\n".join(shas).encode()).hexdigest()
    if path.is_dir():
        from bench.metrics.features import list_images

        files = [(f.name, st.st_size, st.st_mtime_ns) for f in list_images(path) for st in [f.stat()]]
        return hashlib.sha256(json.dumps(files).encode()).hexdigest()
    return None


def _with_inputs(table: dict | None) -> dict | None:
    """A metric's table with what else its value depends on: the reference's content (a path), the extractor's
    weights sha256, the CLIP weights file's hash; so a stored row never looks current once any of them changed."""
    if not table:
        return table
    out = {k: v for k, v in dict(table).items() if k != "batch_size"}  # the batch size changes speed, not values
    if table.get("embedding") not in (None, "clip"):  # diversity on a feature extractor
        from bench.metrics.features import weights_sha256

        out["extractor_weights"] = weights_sha256(table["embedding"])
    if table.get("reference") not in (None, "shapes"):
        out["reference_content"] = _reference_fingerprint(table["reference"])
    if "extractor" in table:
        from bench.metrics.features import weights_sha256

        out["extractor_weights"] = weights_sha256(table["extractor"])
    if table.get("pretrained"):
        from bench.metrics.clip_score import weights_tag

        out["clip_weights"] = weights_tag(table["pretrained"])
    judge = table.get("detector") or (table["model"] if "template" in table or "processor" in table else None)
    if judge:  # GenEval's detector, VQAScore's or PickScore's model
        from bench.metrics.hub import fingerprint

        out["judge_weights"] = fingerprint(judge)
    if isinstance(table, (HpsTable, ImageRewardTable)):
        out["judge_weights"] = image_scores.checkpoint_sha256(table)  # HPS's or ImageReward's checkpoint file
    return out


def _shapes_reference(spec: GridSpec, size: int):
    """Clean renders of the held-out scenes the shapes suite captions describe, at the model's resolution."""
    from bench.suites import world_suite
    from imagen.worlds import get_world

    found = world_suite(spec.suites)
    if found is None:
        raise UserError("metrics.fid.reference = \"shapes\" needs the shapes suite in suites, e.g. \"shapes:64\"")
    world = get_world(found[0])
    data = world.dataset(spec.seed, "heldout")
    return np.stack([world.render(data.item(i)[0], size) for i in range(found[1])])


def _value_row(cell_id, name, value, n, ihash, details: dict | None = None) -> dict:
    """One overall value of a cell without an interval (FID, KID, ..., the flagged share)."""
    return {store.COL_CELL_ID: cell_id, store.COL_METRIC: name, store.COL_CATEGORY: None, store.COL_VALUE: float(value),
            store.COL_LOW: None, store.COL_HIGH: None, store.COL_N: int(n), store.COL_INPUTS_HASH: ihash,
            store.COL_DETAILS: json.dumps(details, sort_keys=True) if details else None}


def _mean_rows(cell_id, name, values, categories, ihash, clusters) -> list[dict]:
    """An overall row and one row per category: mean with a bootstrap interval clustered by prompt."""
    rows = []
    groups = [(None, np.arange(len(values)))]
    cats = np.asarray([c if isinstance(c, str) else "" for c in categories], dtype=object)
    for c in sorted(set(cats) - {""}):
        groups.append((c, np.flatnonzero(cats == c)))
    for cat, idx in groups:
        v = np.asarray(values, dtype=np.float64)[idx]
        low, high = bootstrap_ci(v, clusters=np.asarray(clusters, dtype=object)[idx])
        rows.append({store.COL_CELL_ID: cell_id, store.COL_METRIC: name, store.COL_CATEGORY: cat,
                     store.COL_VALUE: float(v.mean()), store.COL_LOW: low, store.COL_HIGH: high,
                     store.COL_N: int(len(v)), store.COL_INPUTS_HASH: ihash})
    return rows


def _store_rows(study: Path, rows: list[dict], n_flagged: int, prefix: str, prompts_hash: str | None) -> None:
    if rows:
        for r in rows:
            r.setdefault(store.COL_DETAILS, None)  # every row has every column (from_pylist reads the first's keys)
            r[store.COL_PROMPTS_HASH] = prompts_hash  # which spec's prompt set (an extended study holds several)
            r[store.COL_STUDY] = study.name
            r[store.COL_N_FLAGGED] = n_flagged
            r[store.COL_CREATED] = now()
        store.write_part(study, store.METRICS, rows, prefix=prefix)


def compute_metrics(study: Path, spec: GridSpec, prompts=None, *, items=None, metric_fns: MetricFns | None = None,
                    device: str = "cpu", progress: bool = True, prefix: str = "metrics", log=print,
                    prepared: Prepared | None = None) -> int:
    """The spec's metrics for every cell; a metric already stored for the same images is skipped. Rows written.

    Shards that finish together would each see a complete grid: the study's metrics lock makes the later one wait
    and then find the rows stored, instead of computing and writing every metric twice."""
    with store.locked(study, "metrics"):
        run = prepared or prepare(spec, metric_fns, device, log)
        return _compute_metrics(Path(study), spec, items=items, run=run, progress=progress, prefix=prefix, log=log)


@dataclass
class CellImages:
    """What a scorer sees of one cell: its sample rows (flagged images left out), their images (read on first use)
    and categories, the inputs already scored (cell, inputs hash), the per-image values stored for the run
    (bench.image_scores) and the shapes reference, rendered once per run on first use."""

    cell_id: str
    df: object  # pandas rows of the cell, by sample id
    cats: list
    have: set
    spec: GridSpec
    refs: dict  # {"shapes": renders}, shared by every cell of the run
    study: Path
    scores: dict  # bench.image_scores.stored(): {(sample id, settings hash, sha256): (name, value)}

    @functools.cached_property
    def images(self) -> np.ndarray:
        """[N, H, W, 3] uint8 (an object array when sizes differ)."""
        return load_images(self.study, list(self.df[store.COL_IMAGE_PATH]))

    def shapes_reference(self):
        if "shapes" not in self.refs:
            self.refs["shapes"] = _shapes_reference(self.spec, self.images[0].shape[0])
        return self.refs["shapes"]

    def against(self, table: dict):
        """(the images a metric with this reference scores, their sha256s, the reference images or None)."""
        if table["reference"] != "shapes":
            return self.images, self.df[store.COL_SHA256], None
        sel = self.df[store.COL_SUITE].isin(WORLD_SUITES).to_numpy()  # only the world's captions are its renders
        return self.images[sel], self.df[store.COL_SHA256][sel], self.shapes_reference()


# ----------------------------------------------------------------------------- the scorers, one per [metrics] key
# Each takes (the run's functions, a cell, the metric's table, its settings with their inputs) and returns the rows
# to store; a metric whose inputs hash is stored for the cell is skipped. A new metric is one entry of SCORERS.


def _score_frechet(key: str):
    """FID, FD-DINOv2: the Frechet distance of the cell's features from the reference's."""
    def score(fns, cell: CellImages, table: dict, settings: dict) -> list[dict]:
        images, shas, reference = cell.against(table)
        ihash = _inputs_hash(key, settings, shas)
        if (cell.cell_id, ihash) in cell.have:
            return []
        name, value = fns.fid(images, table, reference)
        return [_value_row(cell.cell_id, name, value, len(shas), ihash)]

    return score


def _score_distribution(key: str):
    """KID, precision/recall, CMMD, FD-CLIP: values of the cell's images against the reference set."""
    def score(fns, cell: CellImages, table: dict, settings: dict) -> list[dict]:
        images, shas, reference = cell.against(table)
        ihash = _inputs_hash(key, settings, shas)
        if (cell.cell_id, ihash) in cell.have:
            return []
        got = fns.distribution(images, key, table, reference)
        return [_value_row(cell.cell_id, name, value, len(shas), ihash, got.details.get(name))
                for name, value in got.metrics.items()]

    return score


def _per_image_means(key: str):
    """CLIP score, VQAScore: the stored per-image values (bench.image_scores) of the cell's images, as an overall row
    and a row per category, each a mean with an interval clustered by prompt."""
    def score(fns, cell: CellImages, table: dict, settings: dict) -> list[dict]:
        ihash = _inputs_hash(key, settings, cell.df[store.COL_SHA256])
        if (cell.cell_id, ihash) in cell.have:
            return []
        name, values = image_scores.values(cell.scores, key, settings, cell.df)
        rows = _mean_rows(cell.cell_id, name, values, cell.cats, ihash, list(cell.df[store.COL_PROMPT_ID]))
        for r in rows:  # which stored per-image values made the row (imagen-bench table's per-suite columns)
            r[store.COL_DETAILS] = json.dumps({"settings_hash": image_scores.settings_hash(key, settings)})
        return rows

    return score


def _score_alignment(fns, cell: CellImages, table, settings) -> list[dict]:
    df = cell.df
    if store.COL_FACTS not in df or not df[store.COL_FACTS].notna().any():
        return []  # no prompt of the cell has facts to check (not a shapes-world suite)
    sel = df[store.COL_FACTS].notna().to_numpy()
    ihash = _inputs_hash("alignment", True, df[store.COL_SHA256][sel])
    if (cell.cell_id, ihash) in cell.have:
        return []
    checks = [fns.alignment(img, f) for img, f in zip(cell.images[sel], df[store.COL_FACTS][sel])]
    sub_cats = [c for c, keep in zip(cell.cats, sel) if keep]
    pids = list(df[store.COL_PROMPT_ID][sel])
    rows = _mean_rows(cell.cell_id, ALIGNMENT, [float(all(c.values())) for c in checks], sub_cats, ihash, pids)
    for fact in sorted({k for c in checks for k in c}):
        keep = [fact in c for c in checks]
        vals = [float(c[fact]) for c in checks if fact in c]
        rows += _mean_rows(cell.cell_id, ALIGN_PREFIX + fact, vals, [None] * len(vals), ihash,
                           [p for p, k in zip(pids, keep) if k])[:1]
    return rows


def _score_geneval(fns, cell: CellImages, table, settings) -> list[dict]:
    """GenEval on the cell's prompts that carry its metadata: a row per tag (the share of correct images, with its
    interval) and the overall score, the mean of the tags' (GenEval's summary), without an interval."""
    df = cell.df
    sel = image_scores.PER_IMAGE["geneval"].applies(df)
    if not sel.any():
        return []  # no prompt of the cell is a GenEval prompt
    ihash = _inputs_hash("geneval", settings, df[store.COL_SHA256][sel])
    if (cell.cell_id, ihash) in cell.have:
        return []
    name, correct = image_scores.values(cell.scores, "geneval", settings, df[sel])
    tags = [json.loads(m)["tag"] for m in df[store.COL_META][sel]]
    rows = _mean_rows(cell.cell_id, name, correct, tags, ihash, list(df[store.COL_PROMPT_ID][sel]))
    per_tag = [r for r in rows if r[store.COL_CATEGORY] is not None]
    overall = rows[0]  # the mean over images: replaced by the mean over tags, as GenEval's overall score
    overall.update({store.COL_VALUE: float(np.mean([r[store.COL_VALUE] for r in per_tag])), store.COL_LOW: None,
                    store.COL_HIGH: None})
    return rows


def _score_diversity(fns, cell: CellImages, table, settings) -> list[dict]:
    """Diversity within each prompt of the cell (bench.metrics.diversity): the mean pairwise distance and the Vendi
    score of its images' embeddings, as the mean over prompts with a bootstrap interval over prompts."""
    from bench.metrics import diversity as D

    ihash = _inputs_hash("diversity", settings, cell.df[store.COL_SHA256])
    if (cell.cell_id, ihash) in cell.have:
        return []
    slug, emb = fns.embed(cell.images, table)
    pids = list(cell.df[store.COL_PROMPT_ID])
    got = D.per_prompt(emb, pids)
    if not got:
        return []  # no prompt has two images left (a safety checker blacked the others out)
    prompts = list(got)
    cat_of = dict(zip(pids, cell.cats))
    cats = [cat_of[p] for p in prompts]
    pairwise, vendi = D.metric_names(slug)
    return (_mean_rows(cell.cell_id, pairwise, [got[p][0] for p in prompts], cats, ihash, prompts)
            + _mean_rows(cell.cell_id, vendi, [got[p][1] for p in prompts], cats, ihash, prompts))


SCORERS = {"fid": _score_frechet("fid"), "fd_dinov2": _score_frechet("fd_dinov2"), "kid": _score_distribution("kid"),
           "prc": _score_distribution("prc"),
           "cmmd": _score_distribution("cmmd"), "fd_clip": _score_distribution("fd_clip"),
           "clip_score": _per_image_means("clip_score"), "alignment": _score_alignment, "geneval": _score_geneval,
           "vqascore": _per_image_means("vqascore"), "diversity": _score_diversity,
           **{k: _per_image_means(k) for k in ("pickscore", "hpsv2", "imagereward")}}


@dataclass(frozen=True)
class Prepared:
    """A metrics run's tables (the spec's, less any whose model is not installed), each table with what else its
    values depend on (weights' hashes, a reference's content), and the functions that score them."""

    tables: dict
    settings: dict
    fns: MetricFns


def prepare(spec: GridSpec, given: MetricFns | None = None, device: str = "cpu", log=print) -> Prepared:
    """The run's metric functions (the given ones, else bench.metrics', sharing one network per name), made once for
    a shard's scoring and the metrics stage after it: each judge is loaded once per process."""
    m = spec.metrics
    given = given or MetricFns()
    nets = Networks(device)  # one extractor / CLIP model per name for every metric of the run
    fns = MetricFns(fid=given.fid or make_default_fid(device, nets), clip=given.clip or make_default_clip(device, nets),
                    alignment=given.alignment or default_alignment,
                    distribution=given.distribution or make_default_distribution(device, nets),
                    geneval=given.geneval or make_default_geneval(device, nets),
                    vqascore=given.vqascore or make_default_vqascore(device),
                    embed=given.embed or make_default_embed(device, nets),
                    preference=given.preference or make_default_preference(device))
    if m.clip_score and given.clip is None and not _importable("bench.metrics.clip_score"):
        log("warning: CLIP score skipped: bench.metrics.clip_score is not installed")
        m = dataclasses.replace(m, clip_score=None)
    if m.clip_score and given.clip is None:
        try:  # the CLIP model may not be installed yet: the other metrics still run, with a warning
            fns.clip.load(m.clip_score)
        except UserError as exc:
            log(f"warning: CLIP score skipped: {exc}")
            m = dataclasses.replace(m, clip_score=None)
    tables = m.tables()
    # what a metric depends on besides the images: a reference path's content, the network's weights
    settings = {k: _with_inputs(t) if not isinstance(t, bool) else t for k, t in tables.items()}
    for k, t in tables.items():  # "auto" is bfloat16 on a GPU and float32 on a CPU: the values differ
        if not isinstance(t, bool) and t.get("dtype") is not None:
            settings[k]["dtype_resolved"] = _resolved_dtype(k, t["dtype"], device)
    return Prepared(tables, settings, fns)


def _resolved_dtype(key: str, dtype: str, device: str) -> str:
    """The precision a judge runs in for a table's dtype on this device (its own rule for "auto")."""
    if key == "vqascore":
        from bench.metrics.vqascore import resolve_dtype

        return str(resolve_dtype(dtype, device))
    if key == "hpsv2":
        from bench.metrics.hpsv2 import resolve_dtype as hps_dtype

        return f"autocast {hps_dtype(dtype, device)}"
    if dtype == "auto":
        return "torch.float32"  # PickScore and ImageReward run in float32 wherever they run, as their authors do
    return f"torch.{dtype}"


def _samples(study: Path, items) -> object:
    """The study's sample rows; with `items`, exactly those work items' (in the spec's cell order)."""
    samples = store.read_table(study, store.SAMPLES, key=store.COL_SAMPLE_ID)
    if items is not None and len(samples):
        wanted = {it.sample_id for it in items}
        samples = samples[samples[store.COL_SAMPLE_ID].isin(wanted)]
        order = {c: k for k, c in enumerate(dict.fromkeys(it.cell.id for it in items))}
        samples = samples.assign(_o=samples[store.COL_CELL_ID].map(order)).sort_values("_o", kind="stable")
    return samples


def _unflagged(samples):
    if store.COL_FLAGGED not in samples or not len(samples):
        return samples
    return samples[~samples[store.COL_FLAGGED].fillna(False).astype(bool).to_numpy()]


def score_shard(study: Path, run: Prepared, mine, items, *, progress: bool = True, prefix: str = "metrics") -> bool:
    """The per-image scores (bench.image_scores) of this shard's work items `mine` not stored yet: what one shard of
    a grid scores where it made its images, its judges loaded once. Returns whether every image of the grid's
    `items` now has every per-image score (the other shards' included)."""
    tables = {k: t for k, t in run.tables.items() if k in image_scores.PER_IMAGE}
    if not tables:
        return True
    settings = run.settings
    image_scores.score_images(study, _unflagged(_samples(Path(study), mine)), tables, settings, run.fns, prefix=prefix,
                              load_images=load_images, progress=progress)
    everything = _samples(Path(study), items)
    if set(everything[store.COL_SAMPLE_ID]) != {it.sample_id for it in items}:
        return False  # another shard is still making images: it scores them, and the last one aggregates
    return not image_scores.missing(_unflagged(everything), tables, settings, image_scores.stored(study))


def _compute_metrics(study: Path, spec: GridSpec, *, items, run: Prepared, progress: bool, prefix: str, log) -> int:
    tables, settings, fns = run.tables, run.settings, run.fns
    samples = _samples(study, items)
    if not len(samples) or not tables:
        return 0
    prompts_hash = None
    if items is not None:  # = the study table's prompts_hash
        prompts_hash = hashlib.sha256("\n".join(sorted({it.prompt.prompt_id for it in items})).encode()).hexdigest()
    # the per-image scores first (those another shard has not stored), then each cell's values from them
    scores = image_scores.score_images(study, _unflagged(samples), tables, settings, fns, prefix=prefix,
                                       load_images=load_images, progress=progress)
    stored = store.read_table(study, store.METRICS)
    have = set()
    if len(stored) and store.COL_INPUTS_HASH in stored:
        have = set(zip(stored[store.COL_CELL_ID], stored[store.COL_INPUTS_HASH]))
    refs: dict = {}
    written = 0
    cells = list(dict.fromkeys(samples[store.COL_CELL_ID]))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), unit="cell", desc="metrics")
    for cell_id in cells:
        df = samples[samples[store.COL_CELL_ID] == cell_id].sort_values(store.COL_SAMPLE_ID)
        rows, df, n_flagged = _flagged(cell_id, df, have, log)
        if len(df):
            cell = CellImages(cell_id, df, [c if isinstance(c, str) and c else None for c in df[store.COL_CATEGORY]],
                              have, spec, refs, study, scores)
            for key, table in tables.items():
                rows += SCORERS[key](fns, cell, table, settings[key])
        _store_rows(study, rows, n_flagged, prefix, prompts_hash)
        written += len(rows)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return written


def _flagged(cell_id: str, df, have: set, log):
    """(rows, the cell's rows less the images a safety checker blacked out, how many): the share is stored even
    when no image is left to score."""
    if store.COL_FLAGGED not in df:
        return [], df, 0
    bad = df[store.COL_FLAGGED].fillna(False).astype(bool)
    n_flagged = int(bad.sum())
    rows = []
    if n_flagged:
        log(f"warning: cell {cell_id}: {n_flagged} of {len(df)} images were blacked out by the model's safety "
            f"checker; its metrics leave them out (n_flagged in the metric rows)")
        ihash = _inputs_hash("flagged", None, df[store.COL_SHA256])
        if (cell_id, ihash) not in have:
            rows.append(_value_row(cell_id, FLAGGED, n_flagged / len(df), len(df), ihash))
    return rows, df[~bad.to_numpy()], n_flagged


__all__ = ["MetricFns", "Networks", "CellImages", "SCORERS", "compute_metrics", "prepare", "Prepared", "score_shard",
           "bootstrap_ci", "make_default_fid", "make_default_clip", "make_default_distribution", "make_default_geneval",
           "make_default_vqascore", "make_default_embed", "make_default_preference", "load_preference",
           "default_alignment", "ALIGNMENT", "ALIGN_PREFIX"]
