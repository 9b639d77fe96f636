"""VQAScore (Lin et al., "Evaluating Text-to-Visual Generation with Image-to-Text Generation", ECCV 2024): the
probability that a vision-language model answers "Yes" when asked whether an image shows the prompt.

The question is `Does this figure show "{prompt}"? Please answer yes or no.` (the paper's; configurable, and stored
with every score). The model is any image-text-to-text model `transformers` loads with `AutoProcessor` and
`AutoModelForImageTextToText` (Qwen2.5-VL / Qwen3-VL, LLaVA-OneVision, Idefics3, Gemma 3, ...), from a folder or the
Hugging Face cache. The question goes through the processor's own chat template as one user turn (the image, then
the text) with the assistant's turn opened, and the score is read from the model's next-token distribution at the
end of that prompt: P(first answer token), times the teacher-forced probability of the answer's further tokens when
the tokenizer splits it. One forward pass per batch, no generation; left padding, so the last position of every row
is its own answer position. The metric is named by the model (`vqascore_qwen2_5_vl_7b_instruct`): numbers from
different models are different metrics.
"""

from __future__ import annotations

import inspect

import numpy as np

from bench.metrics.hub import hub_folder, slug
from imagen.errors import UserError

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_TEMPLATE = 'Does this figure show "{prompt}"? Please answer yes or no.'
DEFAULT_ANSWER = "Yes"
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: bfloat16 on a GPU, float32 on a CPU


def metric_name(model: str) -> str:
    return f"vqascore_{slug(model)}"


def check_template(template: str, where: str = "metrics.vqascore.template") -> None:
    """The question template holds `{prompt}` and nothing else to fill in."""
    try:
        filled = template.format(prompt="\0")
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"{where}: {template!r} cannot be filled ({type(exc).__name__}: {exc}); use {{prompt}} "
                        f"for the prompt and {{{{ }}}} for literal braces") from None
    if "\0" not in filled:
        raise UserError(f"{where}: {template!r} has no {{prompt}}; e.g. {DEFAULT_TEMPLATE!r}")


def answer_probability(logits, answer_ids: list[int]) -> np.ndarray:
    """P(answer) per row from the logits [B, k, V] at the k positions that predict the answer's k tokens: the product
    of each token's softmax probability (for a one-token answer, its next-token probability)."""
    import torch

    logp = torch.log_softmax(logits.double(), dim=-1)
    idx = torch.as_tensor(answer_ids, device=logits.device).view(1, -1, 1).expand(logits.shape[0], -1, 1)
    return logp.gather(-1, idx).squeeze(-1).sum(-1).exp().cpu().numpy().astype(np.float64)


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise UserError(f"metrics.vqascore.dtype: {dtype!r}; use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def check_model(model: str) -> str:
    """The model's folder, if it is here and its config is an image-text-to-text model transformers knows; else one
    line (a grid checks this before any image)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    folder = hub_folder(model, "VQAScore's model", 'vqascore = { model = "/path/to/model" }')
    try:
        kind = AutoConfig.from_pretrained(folder).model_type
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"VQAScore's model {model!r}: cannot read its config in {folder} ({type(exc).__name__})"
                        ) from None
    if kind not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise UserError(f"VQAScore's model {model!r} is a {kind!r} model, not an image-text-to-text model "
                        f"(e.g. Qwen2.5-VL, LLaVA-OneVision, Idefics3, Gemma 3)")
    return folder


class VQAScore:
    """One vision-language model loaded once; `scorer(images, prompts)` -> P(answer) per image."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "auto",
                 template: str = DEFAULT_TEMPLATE, answer: str = DEFAULT_ANSWER):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from imagen.text import quiet_loading

        check_template(template)
        folder = check_model(model)
        self.torch_dtype = resolve_dtype(dtype, device)
        try:
            with quiet_loading():
                self.processor = AutoProcessor.from_pretrained(folder)
                self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=self.torch_dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"VQAScore's model {model!r}: cannot load it from {folder} as an image-text-to-text model "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        self.model = self.model.to(device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise UserError(f"VQAScore's model {model!r}: its processor has no tokenizer")
        self.tokenizer.padding_side = "left"  # every row's last position is its own answer position
        self.answer_ids = list(self.tokenizer.encode(answer, add_special_tokens=False))
        if not self.answer_ids:
            raise UserError(f"metrics.vqascore.answer: {answer!r} is no token of {model!r}'s tokenizer")
        self.source, self.device, self.template, self.answer, self.torch = model, device, template, answer, torch
        self.dtype = str(self.torch_dtype).removeprefix("torch.")
        self._keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    @property
    def name(self) -> str:
        return metric_name(self.source)

    def texts(self, prompts: list[str]) -> list[str]:
        """The model's input text for each prompt: the question in the processor's chat template, one user turn with
        the image first, and the assistant's turn opened (a processor without a chat template, e.g. PaliGemma's,
        takes the bare question and places the image tokens itself)."""
        questions = [self.template.format(prompt=p) for p in prompts]
        if not getattr(self.processor, "chat_template", None):
            return questions
        return [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True, tokenize=False) for q in questions]

    def __call__(self, images, prompts: list[str], batch_size: int = 8) -> np.ndarray:
        """P(answer) for each (image uint8 [H, W, 3], prompt), in batches of batch_size."""
        from PIL import Image

        out = []
        texts = self.texts(list(prompts))
        for start in range(0, len(texts), batch_size):
            pil = [Image.fromarray(np.asarray(im)) for im in images[start:start + batch_size]]
            out.append(self._batch(pil, texts[start:start + batch_size]))
        return np.concatenate(out) if out else np.zeros(0)

    def _batch(self, images, texts: list[str]) -> np.ndarray:
        torch = self.torch
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        k = len(self.answer_ids)
        if k > 1:  # teacher forcing: the answer's tokens but its last follow the prompt, in every row
            inputs = _append(inputs, self.answer_ids[:-1])
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.torch_dtype)
        with torch.inference_mode():
            kw = {"logits_to_keep": k} if self._keep else {}
            logits = self.model(**inputs, **kw).logits[:, -k:, :]
        return answer_probability(logits, self.answer_ids)


def _append(inputs, ids: list[int]):
    """The batch with `ids` appended to every row (left padding: they follow each row's prompt); the attention mask
    and other per-token tensors (token types) are extended with 1s and their last column."""
    import torch

    n_rows, length = inputs["input_ids"].shape
    extra = torch.as_tensor(ids, dtype=inputs["input_ids"].dtype).expand(n_rows, -1)
    for key, value in list(inputs.items()):
        if not torch.is_tensor(value) or value.shape[:2] != (n_rows, length) or value.dim() != 2:
            continue
        if key == "input_ids":
            inputs[key] = torch.cat([value, extra], dim=1)
        elif key == "attention_mask":
            inputs[key] = torch.cat([value, torch.ones_like(extra, dtype=value.dtype)], dim=1)
        else:
            inputs[key] = torch.cat([value, value[:, -1:].expand(-1, len(ids))], dim=1)
    return inputs


__all__ = ["VQAScore", "check_model", "DEFAULT_MODEL", "DEFAULT_TEMPLATE", "DEFAULT_ANSWER", "DTYPES", "metric_name",
           "check_template", "answer_probability", "resolve_dtype"]
