"""A tiny random-weight vision-language model for VQAScore, built offline and saved with save_pretrained.

``make_qwen2_5_vl(root)`` builds a Qwen2.5-VL (transformers' Qwen2_5_VLForConditionalGeneration) from a shrunk config,
with a byte-level BPE tokenizer generated in memory (Qwen's special tokens at their places in the vocabulary), the
Qwen2-VL image processor and a chat template of Qwen's format, and saves model and processor into one folder, which
``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained(folder)`` load back like a downloaded checkpoint.
Nothing here touches the network.
"""

from __future__ import annotations

from pathlib import Path

# Qwen's chat format, written for these fixtures: a user turn holds images and text, the generation prompt opens the
# assistant's turn.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: the 256 characters a byte-level BPE spells bytes with."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tokenizer():
    """A Qwen2 tokenizer (tokenizers-backed): byte-level BPE over single bytes plus a few merges (so "Yes" is one
    token, as in the real vocabulary), then Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import Qwen2TokenizerFast

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    merges = [("Y", "e"), ("Ye", "s"), ("N", "o")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = Qwen2TokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                             unk_token=None, bos_token=None)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    return tok


def make_qwen2_5_vl(root, seed: int = 0) -> str:
    """Saves a tiny random Qwen2.5-VL with its processor into root/qwen2_5_vl_tiny; returns the folder."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    folder = Path(root) / "qwen2_5_vl_tiny"
    tok = build_tokenizer()
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    hidden = 32
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [1, 1, 2]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=hidden,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # a small image budget: 28 px patches merged 2x2, at most 8x8 of them (the real processor allows 12.8 MP)
    images = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                   temporal_patch_size=2)
    videos = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                   temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                                    chat_template=CHAT_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
