"""Tiny random-weight diffusers pipelines, built offline from configs and saved with save_pretrained.

Each builder seeds torch before every component, so the saved folders are bit-identical run to run,
and each folder loads back through ``DiffusionPipeline.from_pretrained(folder)`` like a downloaded
checkpoint. Nothing here touches the network: the tokenizers are generated in memory.
"""

from __future__ import annotations

import inspect
import json
import string
import tempfile
from pathlib import Path

import torch

# Token ids shared by the tokenizers and the text-encoder configs below.
_CLIP_VOCAB = 2 * 256 + 2  # byte chars, byte chars + "</w>", <|startoftext|>, <|endoftext|>
_CLIP_BOS, _CLIP_EOS = 512, 513
_T5_PAD, _T5_EOS, _T5_UNK = 0, 1, 2


def _seeded(build, seed: int = 0):
    """Call build() right after seeding torch, so each component's random init is reproducible."""
    torch.manual_seed(seed)
    return build()


def _byte_level_chars() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for the bytes 0..255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    table, extra = dict(zip(keep, keep)), 0
    for b in range(256):
        if b not in table:
            table[b], extra = 256 + extra, extra + 1
    return [chr(table[b]) for b in range(256)]


def _build_clip_tokenizer():
    """An in-memory byte-level CLIPTokenizer (single-character vocab, no merges), max length 77."""
    from transformers import CLIPTokenizer

    chars = _byte_level_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == _CLIP_VOCAB and vocab["<|endoftext|>"] == _CLIP_EOS
    if "vocab_file" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers 4.x (slow class)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
            (Path(tmp) / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
            return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)
    # transformers 5.x: the class is tokenizers-backed and takes the vocab and merges directly
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def clip_tokenizer(folder) -> str:
    """Saves the offline byte-level CLIPTokenizer (max length 77) into folder; returns folder."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    _build_clip_tokenizer().save_pretrained(str(folder))
    return str(folder)


def _build_t5_tokenizer():
    """An in-memory T5-style (Unigram, char-level) tokenizer with <pad>=0, </s>=1, <unk>=2, max length 77."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    chars = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in chars]
    backend = Tokenizer(Unigram(pieces, unk_id=_T5_UNK, byte_fallback=False))
    metaspace = dict(replacement="\u2581", prepend_scheme="always", split=True)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(**metaspace)]
    )
    backend.decoder = decoders.Metaspace(**metaspace)
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", _T5_EOS)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        extra_ids=0, model_max_length=77,
    )


def t5_tokenizer(folder) -> str:
    """Saves the offline T5-style tokenizer (T5TokenizerFast; T5Tokenizer in transformers 5) into folder."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    _build_t5_tokenizer().save_pretrained(str(folder))
    return str(folder)


def _t5_encoder(vocab_size: int):
    """A 2-layer, 32-wide T5EncoderModel (the IF text encoder, shrunk)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=_T5_PAD, eos_token_id=_T5_EOS,
        decoder_start_token_id=_T5_PAD,
    )
    return _seeded(lambda: T5EncoderModel(config).eval())


def _if_unet(sample_size: int, in_channels: int, superres: bool):
    """An IF-style pixel-space U-Net: 6 output channels (epsilon + learned-range variance), T5 text input."""
    from diffusers import UNet2DConditionModel

    extra = dict(
        class_embed_type="timestep", mid_block_scale_factor=1.414, time_embedding_act_fn="gelu",
        time_embedding_dim=32,
    ) if superres else {}
    return _seeded(lambda: UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=6, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32, encoder_hid_dim=32, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift", act_fn="gelu", **extra,
    ).eval())


def _if_scheduler(sample_max_value: float):
    """A DDPMScheduler configured like DeepFloyd IF's (learned-range variance, dynamic thresholding)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02,
        variance_type="learned_range", prediction_type="epsilon", clip_sample=True, thresholding=True,
        dynamic_thresholding_ratio=0.95, sample_max_value=sample_max_value,
    )


def make_if_cascade(root) -> tuple[str, str]:
    """A tiny IF cascade: stage I IFPipeline (16 px) and stage II IFSuperResolutionPipeline (16 -> 32 px)."""
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline

    root = Path(root)
    stage1_dir, stage2_dir = root / "if-stage-1", root / "if-stage-2"
    tokenizer = _build_t5_tokenizer()
    text_encoder = _t5_encoder(vocab_size=128)
    assert len(tokenizer) <= text_encoder.config.vocab_size
    no_safety = dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    stage1 = IFPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=_if_unet(16, 3, superres=False),
        scheduler=_if_scheduler(1.5), **no_safety,
    )
    stage1.save_pretrained(str(stage1_dir))
    stage2 = IFSuperResolutionPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=_if_unet(32, 6, superres=True),
        scheduler=_if_scheduler(1.0),
        image_noising_scheduler=DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02,
        ),
        **no_safety,
    )
    stage2.save_pretrained(str(stage2_dir))
    return str(stage1_dir), str(stage2_dir)


def _clip_text_encoder():
    """A 2-layer, 32-wide CLIPTextModel matching clip_tokenizer's ids."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=_CLIP_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, bos_token_id=_CLIP_BOS, eos_token_id=_CLIP_EOS,
        pad_token_id=_CLIP_EOS,
    )
    return _seeded(lambda: CLIPTextModel(config).eval())


def _vae(blocks: int, scaling_factor: float):
    """A small AutoencoderKL with 4 latent channels; it downsamples by 2 ** (blocks - 1)."""
    from diffusers import AutoencoderKL

    return _seeded(lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32,) * blocks, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        sample_size=32, scaling_factor=scaling_factor,
    ).eval())


def _safety_checker(flag_all: bool):
    """A tiny StableDiffusionSafetyChecker whose thresholds flag every image (or none) whatever it sees."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(
            hidden_size=16, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    checker = _seeded(lambda: StableDiffusionSafetyChecker(config).eval())
    with torch.no_grad():
        # A concept fires when cosine(image, concept) - threshold > 0; cosines lie in [-1, 1].
        checker.concept_embeds_weights.fill_(-2.0 if flag_all else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    return checker


def make_sd_pipeline(root, safety_checker: str | None = None) -> str:
    """A tiny latent StableDiffusionPipeline (32x32 px); safety_checker None, "flag-all" or "flag-none"."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor

    if safety_checker not in (None, "flag-all", "flag-none"):
        raise ValueError(f"safety_checker must be None, 'flag-all' or 'flag-none', not {safety_checker!r}")
    folder = Path(root) / ("sd-tiny" if safety_checker is None else f"sd-tiny-{safety_checker}")
    tokenizer = _build_clip_tokenizer()
    unet = _seeded(lambda: UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4,
    ).eval())
    scheduler = PNDMScheduler(  # as Stable Diffusion v1's checkpoints ship it
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000,
    )
    checker = extractor = None
    if safety_checker is not None:
        checker = _safety_checker(flag_all=safety_checker == "flag-all")
        extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = StableDiffusionPipeline(
        vae=_vae(2, 0.18215), text_encoder=_clip_text_encoder(), tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=checker, feature_extractor=extractor, image_encoder=None,
        requires_safety_checker=checker is not None,
    )
    pipe.save_pretrained(str(folder))
    return str(folder)


def make_sd_upscaler(root) -> str:
    """A tiny StableDiffusionUpscalePipeline (x4: 8 px in, 32 px out) with low_res_scheduler, max_noise_level 350."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel
    folder = Path(root) / "sd-upscaler-tiny"
    tokenizer = _build_clip_tokenizer()
    unet = _seeded(lambda: UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, num_class_embeds=1000,
    ).eval())
    pipe = StableDiffusionUpscalePipeline(
        vae=_vae(3, 0.08333), text_encoder=_clip_text_encoder(), tokenizer=tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, prediction_type="v_prediction",
            clip_sample=False, set_alpha_to_one=False,
        ),
        safety_checker=None, feature_extractor=None, watermarker=None, max_noise_level=350,
    )
    pipe.save_pretrained(str(folder))
    return str(folder)


def recorded_calls(gen, s, prompts=("a red circle", "two blue squares"), seeds=(1, 2)):
    """Generate with a loaded diffusers generator (a Contract), recording each stage's first call: every kwarg it was
    called with and the scheduler it ran (the harness's dry-run probe, output_type "latent", is not a call)."""
    from bench.generators import Request

    logs = []
    for pipe in gen.impl.pipes:
        cls = type(pipe)
        log: list = []

        def wrapper(self, *a, _real=cls.__call__, _log=log, **kw):
            if kw.get("output_type") != "latent":  # the probe's dry call is not a run
                _log.append({**kw, "_scheduler": self.scheduler})
            return _real(self, *a, **kw)

        pipe.__class__ = type(cls.__name__, (cls,), {"__call__": wrapper})
        logs.append(log)
    try:
        out = gen.generate([Request(p, sd) for p, sd in zip(prompts, seeds)], s)
    finally:
        for pipe in gen.impl.pipes:
            pipe.__class__ = pipe.__class__.__mro__[1]
    return out, [log[0] for log in logs]
