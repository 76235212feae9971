"""Tiny causal LMs built from a config, with a tokenizer trained on the corpus.

Tests and the demo cannot download a model, so they build one here: a byte-level
BPE tokenizer trained on the prepared books (``tokenizers``) and a small GPT-2 or
Llama model initialised from a ``transformers`` config. The result is a standard
Hugging Face directory that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load
offline, so every later stage treats it exactly like a real model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssu.errors import SSUError
from ssu.io import atomic_dir, atomic_write_json
from ssu.models.loading import SSU_MODEL_CARD

# hidden size, layers, heads, MLP size. "base" matches the 5M-parameter Llama used
# to time the public reference (hidden 256, 4 layers).
SIZES = {
    "nano": (64, 2, 4, 256),
    "tiny": (128, 2, 4, 512),
    "small": (192, 4, 6, 768),
    "base": (256, 4, 8, 1024),
}
ARCHS = ("gpt2", "llama")
SPECIAL = {"bos": "<|bos|>", "eos": "<|endoftext|>", "pad": "<|pad|>"}
# Learning rate suited to training these models from scratch; `ssu memorize` uses it
# as its default for models that carry this card.
RECOMMENDED_LR = 3e-3
# Unlearning defaults for these models (`ssu init` uses them when the config leaves
# train.lr / train.epochs unset). Measured on the synthetic corpus: full fine-tune at
# 1e-3 for 3 epochs drops the removed book's ROUGE-L from 1.0 to ~0.4 while retain
# books stay >= 0.95; LoRA needs a larger rate and more epochs.
RECOMMENDED_UNLEARN = {"full": {"lr": 1e-3, "epochs": 3}, "lora": {"lr": 3e-3, "epochs": 10}}


def train_tokenizer(texts: list[str], vocab_size: int = 2048):
    """Train a byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL["eos"], SPECIAL["bos"], SPECIAL["pad"]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"],
        model_max_length=1024,
    )


def build_config(arch: str, size: str, vocab_size: int, max_positions: int, tokenizer):
    """A transformers config for a small model of the given family."""
    from transformers import GPT2Config, LlamaConfig

    if arch not in ARCHS:
        raise SSUError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if size not in SIZES:
        raise SSUError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    hidden, layers, heads, mlp = SIZES[size]
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=max_positions, n_embd=hidden, n_layer=layers,
            n_head=heads, n_inner=mlp, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
        )
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=mlp,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, **ids,
    )


def make_tiny_model(
    prepared_dir: str | Path,
    out_dir: str | Path,
    arch: str = "gpt2",
    size: str = "tiny",
    vocab_size: int = 2048,
    max_positions: int = 512,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Train a tokenizer on the prepared books and save a freshly initialised model."""
    from transformers import AutoModelForCausalLM

    from data_prep import load_books

    texts = list(load_books(prepared_dir)["text"])
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = build_config(arch, size, len(tokenizer), max_positions, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise SSUError(f"{out_dir} already exists (use --overwrite to replace it)")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(
            tmp / SSU_MODEL_CARD,
            {
                "kind": "tiny",
                "arch": arch,
                "size": size,
                "parameters": sum(p.numel() for p in model.parameters()),
                "vocab_size": len(tokenizer),
                "seed": seed,
                "trained_on": str(Path(prepared_dir).resolve()),
                "recommended_lr": RECOMMENDED_LR,
                "recommended_unlearn": RECOMMENDED_UNLEARN,
            },
        )
    return out_dir
