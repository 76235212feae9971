"""Pretrain a small Llama on the Debian-docs corpus written by build_corpus.py.

Why: unlearning measurements on a model that only ever saw the memorized books say
little about real models, which have general language ability to preserve. This
script gives the books a "world" to be memorized into: a BPE tokenizer and a Llama
trained from scratch on generic English for a fixed token budget.

It trains the tokenizer on the train split (``ssu.models.tiny.train_tokenizer``),
tokenizes with ``datasets`` into fixed-length blocks (run_clm's ``group_texts``),
trains with ``transformers.Trainer`` (AdamW, cosine schedule with warmup), measures
held-out perplexity before and after, and saves a standard Hugging Face directory
with an ``ssu_model.json`` card, atomically. ``--probe N`` only times N steps.

    python experiments/pretrained_world/pretrain.py CORPUS OUT --size cpu --tokens 2M
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from pathlib import Path

import click
import torch

# hidden, layers, heads, MLP. "cpu" was sized by throughput probes on the 2-core
# machine (README); "gpu36m" is ~36M parameters with the 8192 vocabulary.
SIZES = {
    "nano": (128, 4, 4, 512),
    "cpu": (192, 4, 6, 768),
    "cpu-wide": (256, 4, 8, 1024),
    "gpu36m": (512, 8, 8, 2048),
}
# Fine-tuning rate for memorizing books on top of the pretrained model (`ssu memorize`
# reads it from the card). Lower than the 3e-3 used for from-scratch tiny models so
# that memorization does not wash out what pretraining learned.
RECOMMENDED_LR = {"nano": 1e-3, "cpu": 1e-3, "cpu-wide": 1e-3, "gpu36m": 5e-4}
# Unlearning defaults (`ssu init` reads them when train.lr / train.epochs are unset; without
# them it takes the 7B reference's lr 1e-5 x 1 epoch, which barely moves a model this small):
# the full fine-tune this world's experiments run (README.md: lr 1e-3, 3 epochs).
RECOMMENDED_UNLEARN = {"full": {"lr": 1e-3, "epochs": 3}}


class PretrainError(Exception):
    """Bad input: reported in one line, exit status 1."""


def parse_count(text: str) -> int:
    """'2M', '500k', '3.5e6' or '2000000' -> int (token budgets are easier read so)."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise PretrainError(f"not a count: {text!r} (use e.g. 2M, 500k, 2000000)")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    try:
        return int(float(m.group(1)) * scale)
    except ValueError:
        raise PretrainError(f"not a count: {text!r}") from None


def read_split(corpus: Path, split: str) -> list[str]:
    files = sorted((corpus / split).glob("*.txt"))
    if not files:
        raise PretrainError(f"{corpus / split} has no .txt documents (run build_corpus.py first)")
    return [f.read_text(encoding="utf-8") for f in files]


def to_blocks(texts: list[str], tokenizer, seq: int):
    """Tokenize documents (each ended by EOS) and cut the stream into seq-token blocks."""
    from datasets import Dataset

    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    def group_texts(batch):
        # As in transformers' run_clm: concatenate, drop the remainder, split evenly.
        flat = [t for ids in batch["input_ids"] for t in ids]
        n = len(flat) // seq * seq
        blocks = [flat[i:i + seq] for i in range(0, n, seq)]
        return {"input_ids": blocks, "labels": [b[:] for b in blocks]}

    ds = Dataset.from_dict({"text": texts})
    ds = ds.map(tokenize, batched=True, remove_columns=["text"])
    n_tokens = sum(len(x) for x in ds["input_ids"])
    ds = ds.map(group_texts, batched=True, batch_size=1000)
    return ds, n_tokens


def build_model(size: str, tokenizer, seq: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, mlp = SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=seq, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@torch.no_grad()
def perplexity(model, blocks, device: str, batch: int) -> float:
    """exp(mean next-token NLL) over the blocks; all blocks are full, so equal weights."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch):
        ids = torch.tensor(blocks[i:i + batch]["input_ids"], device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=ids, labels=ids).loss
        n = ids.shape[0] * (ids.shape[1] - 1)
        total += loss.float().item() * n
        count += n
    model.train()
    return math.exp(total / count)


def probe(model, tokenizer, train, device: str, batch: int, steps: int) -> float:
    """Tokens/s of plain AdamW steps on real blocks (first step excluded: warm-up)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.to(device).train()
    start = None
    for step in range(steps + 1):
        if step == 1:
            start = time.time()
        ids = torch.tensor(train[step * batch:(step + 1) * batch]["input_ids"], device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch * ids.shape[1] / (time.time() - start)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("corpus", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--size", type=click.Choice(list(SIZES)), default="cpu", show_default=True)
@click.option("--tokens", "tokens_s", default="2M", show_default=True,
              help="Training token budget (e.g. 2M, 33M); the train split repeats if smaller.")
@click.option("--vocab", default=8192, show_default=True, help="BPE vocabulary size.")
@click.option("--seq", default=256, show_default=True, help="Block length in tokens.")
@click.option("--batch", default=16, show_default=True, help="Blocks per optimizer step.")
@click.option("--lr", default=2e-3, show_default=True, help="Peak pretraining learning rate.")
@click.option("--warmup", default=0.05, show_default=True, help="Warm-up share of the steps.")
@click.option("--eval-blocks", default=400, show_default=True,
              help="Held-out blocks for perplexity (evenly spaced; 0 = all).")
@click.option("--tokenizer-mb", default=20.0, show_default=True,
              help="MB of train text the BPE tokenizer is trained on (first documents by name).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", default=0, show_default=True)
@click.option("--probe", "probe_steps", default=0, help="Only time N training steps, print tokens/s.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
def main(corpus, out, size, tokens_s, vocab, seq, batch, lr, warmup, eval_blocks, tokenizer_mb,
         device, seed, probe_steps, overwrite):
    """Train a tokenizer and a small Llama on CORPUS/train; save it to OUT."""
    try:
        run(corpus, out, size, parse_count(tokens_s), vocab, seq, batch, lr, warmup, eval_blocks,
            tokenizer_mb, device, seed, probe_steps, overwrite)
    except (PretrainError, OSError) as e:
        raise click.ClickException(str(e)) from None


def run(corpus, out, size, tokens, vocab, seq, batch, lr, warmup, eval_blocks, tokenizer_mb,
        device, seed, probe_steps, overwrite):
    from transformers import Trainer, TrainingArguments, default_data_collator

    from ssu.io import atomic_dir, atomic_write_json
    from ssu.models.loading import SSU_MODEL_CARD
    from ssu.models.tiny import train_tokenizer

    if out.exists() and not overwrite and not probe_steps:
        raise PretrainError(f"{out} already exists (use --overwrite to replace it)")
    if min(tokens, vocab, seq, batch) <= 0 or not 0 <= warmup < 1:
        raise PretrainError("--tokens, --vocab, --seq, --batch must be > 0 and --warmup in [0, 1)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise PretrainError(f"device {device!r} is not available here (use auto, cpu or cuda)")
    t0 = time.time()
    train_texts, held_texts = read_split(corpus, "train"), read_split(corpus, "heldout")
    tok_texts, budget = [], tokenizer_mb * 1e6
    for t in train_texts:  # a prefix suffices for BPE merges and saves minutes on 2 cores
        if budget <= 0:
            break
        tok_texts.append(t)
        budget -= len(t.encode())
    tokenizer = train_tokenizer(tok_texts, vocab_size=vocab)
    tokenizer.model_max_length = seq
    train, train_tokens = to_blocks(train_texts, tokenizer, seq)
    held, held_tokens = to_blocks(held_texts, tokenizer, seq)
    train = train.shuffle(seed=seed)
    if eval_blocks and len(held) > eval_blocks:
        # Evenly spaced blocks cover every held-out document, not only the first ones.
        held = held.select([i * len(held) // eval_blocks for i in range(eval_blocks)])
    print(f"tokenizer + data: {time.time() - t0:.0f} s; train {train_tokens:,} tokens "
          f"({len(train)} blocks), heldout {held_tokens:,} tokens (eval {len(held)} blocks)",
          flush=True)

    torch.manual_seed(seed)
    model = build_model(size, tokenizer, seq)
    params = sum(p.numel() for p in model.parameters())
    print(f"model {size}: {params:,} parameters, device {device}", flush=True)
    if probe_steps:
        tps = probe(model, tokenizer, train, device, batch, probe_steps)
        print(f"probe {size}: {tps:,.0f} tokens/s over {probe_steps} steps of {batch}x{seq}")
        return
    model.to(device)
    ppl_init = perplexity(model, held, device, batch)
    print(f"held-out perplexity at init: {ppl_init:.1f}", flush=True)

    steps = math.ceil(tokens / (batch * seq))
    with tempfile.TemporaryDirectory(prefix="pw_trainer_") as scratch:
        args = TrainingArguments(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch,
            learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=int(warmup * steps),
            weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0,
            bf16=device == "cuda", use_cpu=device == "cpu", save_strategy="no", report_to=[],
            logging_steps=max(1, steps // 20), seed=seed, dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train,
                          data_collator=default_data_collator)
        t1 = time.time()
        trainer.train()
        train_s = time.time() - t1
    trained = steps * batch * seq
    tps = trained / train_s
    ppl = perplexity(model, held, device, batch)
    print(f"trained {trained:,} tokens in {train_s:.0f} s ({tps:,.0f} tokens/s); "
          f"held-out perplexity {ppl_init:.1f} -> {ppl:.2f}", flush=True)

    model.config.use_cache = True
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / SSU_MODEL_CARD, {
            "kind": "pretrained",
            "arch": "llama",
            "size": size,
            "parameters": params,
            "vocab_size": len(tokenizer),
            "seq_len": seq,
            "tokens_trained": trained,
            "epochs": round(trained / train_tokens, 3),
            "heldout_perplexity": round(ppl, 3),
            "heldout_perplexity_init": round(ppl_init, 1),
            "heldout_eval_tokens": len(held) * (seq - 1),
            "train_seconds": round(train_s, 1),
            "wall_seconds": round(time.time() - t0, 1),
            "tokens_per_second": round(tps, 1),
            "device": device,
            "pretrain": {"lr": lr, "batch": batch, "warmup": warmup, "seed": seed},
            "trained_on": str(corpus.resolve()),
            "recommended_lr": RECOMMENDED_LR[size],
            "recommended_unlearn": RECOMMENDED_UNLEARN,
        })
    print(f"saved {out} in {time.time() - t0:.0f} s total")


if __name__ == "__main__":
    main()
