"""bench/metrics: FID (torch-fidelity, Inception or EfficientNet-Lite0 features), CLIP score (open_clip), COCO.

Importing this package registers the `effnet-lite0` feature extractor with torch-fidelity, so
`torch_fidelity.calculate_metrics(input1=A, input2=B, fid=True, feature_extractor="effnet-lite0")` works.
Metric names are constants that double as result-table values (bench.store.COL_METRIC); each carries the model
that made it, so numbers from different extractors or CLIP models are never compared by mistake.
"""

from bench.metrics.features import DEFAULT_EXTRACTOR, EFFNET_LITE0, EXTRACTORS, INCEPTION, register_extractors

from bench.metrics.fid import KEY_FID_EFFNET_LITE0, KEY_FID_INCEPTION, fid_metric_name

register_extractors()

KEY_CLIP_SCORE_PREFIX = "clip_score_"


def clip_score_metric_name(model: str, pretrained: str | None = None) -> str:
    """bench.metrics.clip_score's name (loaded lazily): the model and its weights, 'ViT-L-14' + 'openai' ->
    'clip_score_vit_l_14_openai'."""
    from bench.metrics.clip_score import clip_score_metric_name as _name

    return _name(model, pretrained)


__all__ = [
    "DEFAULT_EXTRACTOR", "EFFNET_LITE0", "EXTRACTORS", "INCEPTION", "KEY_FID_INCEPTION", "KEY_FID_EFFNET_LITE0",
    "KEY_CLIP_SCORE_PREFIX", "fid_metric_name", "clip_score_metric_name", "register_extractors",
]
