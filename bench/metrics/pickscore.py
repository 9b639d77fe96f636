"""PickScore (Kirstain et al., "Pick-a-Pic: An Open Dataset of User Preferences for Text-to-Image Generation",
NeurIPS 2023): a CLIP-H fine-tuned on Pick-a-Pic's human choices; an image's score for a prompt is the CLIP logit,
exp(logit_scale) * cos(text embedding, image embedding), as the authors' README computes it.

The model is a `transformers` CLIPModel from a folder or the Hugging Face cache (`yuvalkirstain/PickScore_v1`), with
the processor the authors pair it with (`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`'s: shortest side to 224 bicubic, centre
crop, CLIP mean/std; texts truncated to 77 tokens). Scores are only comparable between images of one prompt; the
probability that people prefer image A to B for a prompt is the softmax of the two scores (`preference_probability`),
which a machine rater uses. The metric is named by the weights: `pickscore_v1` for the published ones, another model
`pickscore_<its name>`. float32 everywhere by default, as the authors run it (also on a GPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.metrics.hub import hub_folder, slug
from imagen.errors import UserError

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
KEY_PICKSCORE_V1 = "pickscore_v1"
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: float32 on a CPU and on a GPU (the authors' setting)
EXAMPLE = 'pickscore = { model = "/path/to/PickScore_v1" }'


def metric_name(model: str) -> str:
    """`pickscore_v1` for the published weights, else `pickscore_<slug of the hub id or folder>`."""
    return KEY_PICKSCORE_V1 if model == DEFAULT_MODEL else f"pickscore_{slug(model)}"


def resolve_dtype(dtype: str, where: str = "metrics.pickscore.dtype"):
    import torch

    if dtype not in DTYPES:
        raise UserError(f"{where}: {dtype!r}; use one of {', '.join(DTYPES)}")
    return torch.float32 if dtype == "auto" else getattr(torch, dtype)


def preference_probability(scores_a, scores_b) -> np.ndarray:
    """P(A is preferred to B) per pair: the softmax of the two scores of one prompt, exp(a) / (exp(a) + exp(b)),
    written as the logistic of a - b (no overflow for large logits)."""
    diff = np.asarray(scores_a, dtype=np.float64) - np.asarray(scores_b, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * diff))


PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")  # transformers 4's, 5's


def processor_folder(processor: str, model_folder: str) -> str:
    """The processor's folder (its config beside the tokenizer's files) or its hub snapshot; a model folder that
    holds its own processor files stands in for the default processor when that is not here."""
    where = 'pickscore = { model = "...", processor = "/path/to/CLIP-ViT-H-14-laion2B-s32B-b79K" }'
    try:
        return hub_folder(processor, "PickScore's processor", where, marker=PROCESSOR_FILES)
    except UserError:
        if processor == DEFAULT_PROCESSOR and any((Path(model_folder) / f).is_file() for f in PROCESSOR_FILES):
            return model_folder
        raise


class PickScore:
    """One PickScore model loaded once; `scorer(images, prompts)` -> exp(logit_scale) * cos(text, image) per image."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "auto",
                 processor: str = DEFAULT_PROCESSOR):
        import torch
        from transformers import AutoProcessor, CLIPModel

        from imagen.text import quiet_loading

        self.torch_dtype = resolve_dtype(dtype)
        folder = hub_folder(model, "PickScore's model", EXAMPLE)
        proc_folder = processor_folder(processor, folder)
        try:
            with quiet_loading():
                self.model = CLIPModel.from_pretrained(folder, dtype=self.torch_dtype)
                self.processor = AutoProcessor.from_pretrained(proc_folder)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"PickScore {model!r} (processor {processor!r}): cannot load it as a CLIP model with its "
                            f"processor ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                            ) from None
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.source, self.processor_source, self.device, self.torch = model, processor, device, torch
        self.dtype = str(self.torch_dtype).removeprefix("torch.")

    @property
    def name(self) -> str:
        return metric_name(self.source)

    def image_embeddings(self, images):
        """uint8 [H, W, 3] images -> unit-norm embeddings [N, E] (the model's dtype, on its device)."""
        from PIL import Image

        pixels = self.processor(images=[Image.fromarray(np.asarray(im)) for im in images], return_tensors="pt")
        pixels = pixels["pixel_values"].to(self.device, self.torch_dtype)
        emb = self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)
        return emb / emb.norm(dim=-1, keepdim=True)

    def text_embeddings(self, prompts: list[str]):
        """Prompts -> unit-norm embeddings [N, E]; padded to the batch's longest, truncated at 77 tokens (the CLIP
        text model pools at each row's own end-of-text token, so padding changes nothing)."""
        tokens = self.processor(text=list(prompts), padding=True, truncation=True, max_length=77,
                                return_tensors="pt").to(self.device)
        emb = self.model.text_projection(self.model.text_model(input_ids=tokens["input_ids"],
                                                               attention_mask=tokens["attention_mask"]).pooler_output)
        return emb / emb.norm(dim=-1, keepdim=True)

    def __call__(self, images, prompts: list[str], batch_size: int = 8) -> np.ndarray:
        """PickScore for each (image uint8 [H, W, 3], prompt), in batches of batch_size."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out = []
        with self.torch.inference_mode():
            scale = self.model.logit_scale.exp().double()
            for start in range(0, len(prompts), batch_size):
                img = self.image_embeddings(images[start:start + batch_size])
                txt = self.text_embeddings(prompts[start:start + batch_size])
                out.append((scale * (img.double() * txt.double()).sum(-1)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def pair_probability(self, images_a, images_b, prompts: list[str], batch_size: int = 8) -> np.ndarray:
        """P(people prefer image A to image B) for each prompt: the softmax of the pair's two PickScores."""
        return preference_probability(self(images_a, prompts, batch_size), self(images_b, prompts, batch_size))


__all__ = ["PickScore", "DEFAULT_MODEL", "DEFAULT_PROCESSOR", "KEY_PICKSCORE_V1", "DTYPES", "metric_name",
           "resolve_dtype", "preference_probability"]
