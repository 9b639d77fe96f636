"""Tiny random-weight diffusers pipelines for today's model families, built offline and saved with save_pretrained.

Companion to ``diffusers_fixtures``: each ``make_X(root)`` builds one family's pipeline from configs, seeding
torch before every component, saves it with the pipeline's own ``save_pretrained`` under ``root`` and returns
the folder, which loads back through ``DiffusionPipeline.from_pretrained(folder)`` like a downloaded checkpoint.
Schedulers are configured the way the real checkpoints ship them; the networks are shrunk so that a 2-step
generation at each pipeline's *default* size runs in about a second on a CPU. Nothing here touches the network.

Default output sizes (``height``/``width`` left to the pipeline):

* sdxl, sd3, lumina2: 32x32 (``sample_size * vae_scale_factor`` with an 8x VAE, as the real models have).
* flux-dev, flux-schnell: 128x128 (FluxPipeline hard-codes ``default_sample_size = 128``; the tiny VAE does
  not downsample, so 128 is the smallest default possible).
* pixart-sigma: 256x256 (resolution binning is on by default and keyed on ``transformer.sample_size``; 32,
  the smallest allowed, bins to ASPECT_RATIO_256_BIN).
* sana-dpm-flow, sana-flow-euler: 1024x1024 (SanaPipeline defaults height=width=1024; with sample_size 16 it
  denoises at the 512 px bin and resizes the decoded image back up to 1024).
* kandinsky3: 128x128 (Kandinsky3Pipeline defaults height=width=1024 and hard-codes 8x for the latent size,
  so the latents are 128x128; the tiny MoVQ does not upsample).
"""

from __future__ import annotations

import string
from pathlib import Path

import diffusers_fixtures as F
from diffusers_fixtures import _build_clip_tokenizer, _build_t5_tokenizer, _seeded

# Gemma's special-token ids (the real tokenizer's: <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4).
_GEMMA_PAD, _GEMMA_EOS, _GEMMA_BOS, _GEMMA_UNK, _GEMMA_MASK = 0, 1, 2, 3, 4
_GEMMA_VOCAB = 384  # >= the 356 ids _build_gemma_tokenizer uses
_T5_VOCAB = 128  # >= the 98 ids of diffusers_fixtures' T5 tokenizer
_T5_MAX_LENGTH = 512  # what the real T5 tokenizers of SD3, Flux, PixArt and Kandinsky 3 declare


# ----------------------------------------------------------------------------------------------- tokenizers


def _build_gemma_tokenizer():
    """An in-memory Gemma tokenizer: BPE over single characters (no merges) with byte fallback.

    Ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4, then the 256 byte tokens <0x00>..<0xFF>, "\u2581" and the
    printable ASCII characters; anything else falls back to its UTF-8 bytes. Like the real Gemma tokenizer it
    turns spaces into "\u2581", prepends <bos> (no <eos>) and pads on the left (Sana and Lumina2 switch it to the
    right themselves before encoding).
    """
    import transformers
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581"]
    pieces += [c for c in string.printable if not c.isspace()]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    assert (vocab["<pad>"], vocab["<eos>"], vocab["<bos>"], vocab["<unk>"], vocab["<mask>"]) == (
        _GEMMA_PAD, _GEMMA_EOS, _GEMMA_BOS, _GEMMA_UNK, _GEMMA_MASK,
    )
    assert len(vocab) <= _GEMMA_VOCAB

    backend = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", _GEMMA_BOS)]
    )
    # transformers 4.x: GemmaTokenizerFast; 5.x: GemmaTokenizer is tokenizers-backed (GemmaTokenizerFast aliases it)
    cls = getattr(transformers, "GemmaTokenizerFast", None) or transformers.GemmaTokenizer
    return cls(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        mask_token="<mask>", add_bos_token=True, add_eos_token=False, padding_side="left",
    )


def _build_t5_tokenizer_512():
    """diffusers_fixtures' offline T5 tokenizer, declaring model_max_length 512 like the real T5-XXL one."""
    tokenizer = _build_t5_tokenizer()
    tokenizer.model_max_length = _T5_MAX_LENGTH
    return tokenizer


# ------------------------------------------------------------------------------------------- text encoders


def _clip_with_projection(seed: int = 0):
    """A 2-layer, 32-wide CLIPTextModelWithProjection (projection 32) matching the offline CLIP tokenizer's ids."""
    from transformers import CLIPTextModelWithProjection

    config = F._clip_text_encoder().config  # same ids and sizes as diffusers_fixtures' CLIPTextModel
    return _seeded(lambda: CLIPTextModelWithProjection(config).eval(), seed)


def _t5(d_model: int):
    """A 2-layer T5EncoderModel of width d_model over the offline T5 tokenizer's ids."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=_T5_VOCAB, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=d_model // 8,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    return _seeded(lambda: T5EncoderModel(config).eval())


def _gemma2(hidden_size: int = 16):
    """A 2-layer Gemma2Model over _build_gemma_tokenizer's ids (long max_position_embeddings, as the real one)."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=_GEMMA_VOCAB, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=8192,
        pad_token_id=_GEMMA_PAD, eos_token_id=_GEMMA_EOS, bos_token_id=_GEMMA_BOS,
    )
    return _seeded(lambda: Gemma2Model(config).eval())


# ---------------------------------------------------------------------------------------------------- VAEs


def _kl_vae(blocks: int, latent_channels: int, scaling_factor: float, shift_factor: float | None = None,
            quant_conv: bool = True, channels: int = 8):
    """A narrow AutoencoderKL that downsamples by 2 ** (blocks - 1)."""
    from diffusers import AutoencoderKL

    return _seeded(lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(channels,) * blocks,
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, norm_num_groups=4, sample_size=32,
        scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    ).eval())


# -------------------------------------------------------------------------------------------------- families


def make_sdxl(root) -> str:
    """A tiny StableDiffusionXLPipeline (two CLIP encoders, text_time UNet, 8x VAE): default 32x32 px."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    folder = Path(root) / "sdxl-tiny"
    text_encoder, text_encoder_2 = F._clip_text_encoder(), _clip_with_projection(seed=1)
    # cross-attention sees both encoders' penultimate states side by side; the added time embedding sees
    # 6 size/crop numbers (addition_time_embed_dim each) plus text_encoder_2's pooled projection
    cross_dim = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    time_dim = 8
    unet = _seeded(lambda: UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=cross_dim, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + text_encoder_2.config.projection_dim,
        norm_num_groups=8,
    ).eval())
    scheduler = EulerDiscreteScheduler(  # as stabilityai/stable-diffusion-xl-base-1.0 ships it
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False,
        timestep_spacing="leading", steps_offset=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_kl_vae(4, 4, scaling_factor=0.13025), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=_build_clip_tokenizer(), tokenizer_2=_build_clip_tokenizer(), unet=unet, scheduler=scheduler,
        image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    pipe.save_pretrained(str(folder))
    return str(folder)


def make_sd3(root) -> str:
    """A tiny StableDiffusion3Pipeline (MMDiT, 2 CLIP + T5, 16-channel 8x VAE): default 32x32 px."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    folder = Path(root) / "sd3-tiny"
    text_encoder, text_encoder_2 = _clip_with_projection(seed=0), _clip_with_projection(seed=1)
    # as in SD3, the T5 width exceeds the two CLIP widths side by side (the CLIP states are zero-padded to it)
    text_encoder_3 = _t5(d_model=64)
    pooled_dim = text_encoder.config.projection_dim + text_encoder_2.config.projection_dim
    transformer = _seeded(lambda: SD3Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=text_encoder_3.config.d_model, caption_projection_dim=32,
        pooled_projection_dim=pooled_dim, pos_embed_max_size=96,
    ).eval())
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),  # as SD3-medium ships it
        vae=_kl_vae(4, 16, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False),
        text_encoder=text_encoder, tokenizer=_build_clip_tokenizer(),
        text_encoder_2=text_encoder_2, tokenizer_2=_build_clip_tokenizer(),
        text_encoder_3=text_encoder_3, tokenizer_3=_build_t5_tokenizer_512(),
    )
    pipe.save_pretrained(str(folder))
    return str(folder)


def make_flux(root, dev: bool = True) -> str:
    """A tiny FluxPipeline, FLUX.1-dev style (guidance-distilled, dynamic shifting) or schnell: default 128x128 px."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    folder = Path(root) / ("flux-dev-tiny" if dev else "flux-schnell-tiny")
    text_encoder, text_encoder_2 = F._clip_text_encoder(), F._t5_encoder(_T5_VOCAB)
    latent_channels = 16
    transformer = _seeded(lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels,  # latents are packed into 2x2 patches
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=text_encoder_2.config.d_model, pooled_projection_dim=text_encoder.config.hidden_size,
        guidance_embeds=dev, axes_dims_rope=(4, 4, 8),
    ).eval())
    if dev:  # as black-forest-labs/FLUX.1-dev ships it
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
    else:  # as black-forest-labs/FLUX.1-schnell ships it
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
    # FluxPipeline's default size is 128 * vae_scale_factor: a VAE that does not downsample keeps it at 128 px
    vae = _kl_vae(1, latent_channels, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False)
    pipe = FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
        tokenizer=_build_clip_tokenizer(), text_encoder_2=text_encoder_2, tokenizer_2=_build_t5_tokenizer_512(),
        image_encoder=None, feature_extractor=None,
    )
    pipe.save_pretrained(str(folder))
    return str(folder)


def make_pixart_sigma(root) -> str:
    """A tiny PixArtSigmaPipeline (T5, 8x VAE, sample_size 32 -> 256 px bin): default 256x256 px."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    folder = Path(root) / "pixart-sigma-tiny"
    text_encoder = F._t5_encoder(_T5_VOCAB)
    transformer = _seeded(lambda: PixArtTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=8, num_layers=2, attention_head_dim=8,
        num_attention_heads=3, cross_attention_dim=24, caption_channels=text_encoder.config.d_model,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    ).eval())
    scheduler = DPMSolverMultistepScheduler(  # as PixArt-alpha/PixArt-Sigma-XL-2-1024-MS ships it
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
        algorithm_type="dpmsolver++", solver_type="midpoint", solver_order=2, prediction_type="epsilon",
        thresholding=False, lower_order_final=True, use_karras_sigmas=False, timestep_spacing="linspace",
        steps_offset=0,
    )
    pipe = PixArtSigmaPipeline(
        tokenizer=_build_t5_tokenizer_512(), text_encoder=text_encoder,
        vae=_kl_vae(4, 4, scaling_factor=0.13025), transformer=transformer, scheduler=scheduler,
    )
    pipe.save_pretrained(str(folder))
    return str(folder)


def make_sana(root, scheduler: str = "dpm-flow") -> str:
    """A tiny SanaPipeline (Gemma2, DC-AE 32x, sample_size 16 -> 512 px bin): default 1024x1024 px output.

    scheduler "dpm-flow": DPMSolverMultistepScheduler with flow sigmas, as Sana_1600M_1024px ships it;
    "flow-euler": FlowMatchEulerDiscreteScheduler(shift=3.0).
    """
    from diffusers import (
        AutoencoderDC, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, SanaPipeline,
        SanaTransformer2DModel,
    )

    if scheduler == "dpm-flow":
        sched = DPMSolverMultistepScheduler(
            num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
            algorithm_type="dpmsolver++", solver_type="midpoint", solver_order=2, prediction_type="flow_prediction",
            use_flow_sigmas=True, flow_shift=3.0, thresholding=False, lower_order_final=True,
            final_sigmas_type="zero", timestep_spacing="linspace", steps_offset=0,
        )
    elif scheduler == "flow-euler":
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    else:
        raise ValueError(f"scheduler must be 'dpm-flow' or 'flow-euler', not {scheduler!r}")
    folder = Path(root) / f"sana-{scheduler}-tiny"
    text_encoder = _gemma2(hidden_size=16)
    latent_channels = 8
    transformer = _seeded(lambda: SanaTransformer2DModel(
        in_channels=latent_channels, out_channels=latent_channels, num_layers=2, num_attention_heads=2,
        attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8,
        caption_channels=text_encoder.config.hidden_size, sample_size=16, patch_size=1,
    ).eval())
    # 6 stages = 32x, as the real DC-AE f32c32: the 512 px bin gives 16x16 latents
    vae = _seeded(lambda: AutoencoderDC(
        in_channels=3, latent_channels=latent_channels, attention_head_dim=2,
        encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        encoder_block_out_channels=(4, 4, 8, 8, 8, 8), decoder_block_out_channels=(4, 4, 8, 8, 8, 8),
        encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6,
        encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)), decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
        downsample_block_type="Conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41407,
    ).eval())
    pipe = SanaPipeline(
        tokenizer=_build_gemma_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=sched,
    )
    pipe.save_pretrained(str(folder))
    return str(folder)


def make_lumina2(root) -> str:
    """A tiny Lumina2Pipeline (Gemma2, 16-channel 8x VAE): default 32x32 px."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    folder = Path(root) / "lumina2-tiny"
    text_encoder = _gemma2(hidden_size=16)
    transformer = _seeded(lambda: Lumina2Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=16, hidden_size=16, num_layers=2, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
        scaling_factor=1.0, axes_dim_rope=(4, 2, 2), cap_feat_dim=text_encoder.config.hidden_size,
    ).eval())
    pipe = Lumina2Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0),  # as Lumina-Image-2.0
        # the pipeline hard-codes vae_scale_factor 8, so the VAE must really downsample 8x
        vae=_kl_vae(4, 16, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False),
        text_encoder=text_encoder, tokenizer=_build_gemma_tokenizer(),
    )
    pipe.save_pretrained(str(folder))
    return str(folder)


def make_kandinsky3(root) -> str:
    """A tiny Kandinsky3Pipeline (T5, Kandinsky3UNet, 1x MoVQ): default 128x128 px (128x128 latents)."""
    from diffusers import DDPMScheduler, Kandinsky3Pipeline, Kandinsky3UNet, VQModel

    folder = Path(root) / "kandinsky3-tiny"
    text_encoder = F._t5_encoder(_T5_VOCAB)
    # Kandinsky3UNet quirks: 4 levels, as the real one (with 2 or 3 the last up block self-attends at the full
    # 128x128 latent size); layers_per_block >= 2 (1 breaks its up-block channel bookkeeping); every attention
    # has channels // attention_head_dim heads, so attention_head_dim must divide block_out_channels[0] // 2,
    # time_embedding_dim and cross_attention_dim.
    unet = _seeded(lambda: Kandinsky3UNet(
        in_channels=4, time_embedding_dim=8, groups=2, attention_head_dim=4, layers_per_block=2,
        block_out_channels=(8, 16, 16, 16), cross_attention_dim=8, encoder_hid_dim=text_encoder.config.d_model,
    ).eval())
    # Kandinsky3Pipeline hard-codes the latent size to height // 8 whatever the MoVQ does, so with the 1024 px
    # default the latents are 128x128; a MoVQ that does not upsample keeps the decoded image at 128 px.
    movq = _seeded(lambda: VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(32,), layers_per_block=1, latent_channels=4,
        num_vq_embeddings=12, vq_embed_dim=4, norm_num_groups=8, norm_type="spatial",  # SpatialNorm: 32 groups
        mid_block_add_attention=False,  # 128x128 latents: self-attention there would dominate the run time
    ).eval())
    scheduler = DDPMScheduler(  # as kandinsky-community/kandinsky-3 ships it
        num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        thresholding=False, prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
    )
    pipe = Kandinsky3Pipeline(
        tokenizer=_build_t5_tokenizer_512(), text_encoder=text_encoder, unet=unet, scheduler=scheduler, movq=movq,
    )
    pipe.save_pretrained(str(folder))
    return str(folder)


FAMILIES = {
    "sdxl": make_sdxl,
    "sd3": make_sd3,
    "flux-dev": lambda root: make_flux(root, dev=True),
    "flux-schnell": lambda root: make_flux(root, dev=False),
    "pixart-sigma": make_pixart_sigma,
    "sana-dpm-flow": lambda root: make_sana(root, scheduler="dpm-flow"),
    "sana-flow-euler": lambda root: make_sana(root, scheduler="flow-euler"),
    "lumina2": make_lumina2,
    "kandinsky3": make_kandinsky3,
}
