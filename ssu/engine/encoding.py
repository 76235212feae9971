"""Tokenizing prompt/continuation windows and batching them.

A window is encoded as one sequence ``prompt + " " + continuation``; the boundary
between prompt and continuation tokens is found from the tokenizer's character
offsets, so it is exact for any fast tokenizer (BPE, SentencePiece, ...) instead
of relying on how a family tokenizes a leading space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # label value that cross-entropy skips


@dataclass(frozen=True)
class Encoded:
    """Token ids of one prompt/continuation pair; ``ids[:n_prompt]`` is the prompt."""

    ids: list[int]
    n_prompt: int

    @property
    def prompt_ids(self) -> list[int]:
        return self.ids[: self.n_prompt]

    @property
    def continuation_ids(self) -> list[int]:
        return self.ids[self.n_prompt :]

    @property
    def n_counted(self) -> int:
        """Continuation tokens a loss counts: all of them, except a first token at
        position 0 (nothing precedes it to predict it) when the prompt is empty."""
        return len(self.ids) - max(self.n_prompt, 1)


def encode_pair(tokenizer, prompt: str, continuation: str, max_length: int = 512) -> Encoded:
    """Encode ``prompt`` followed by ``continuation``.

    Over-long pairs lose continuation tokens from the end first, then prompt tokens
    from the start (the text nearest the continuation matters most).
    """
    text = prompt + " " + continuation
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        # Special tokens have (0, 0) offsets; a token belongs to the continuation when
        # it ends past the prompt (the joining space travels with the first word).
        n_prompt = 0
        for i, (start, end) in enumerate(offsets):
            if end > len(prompt) and end > start:
                break
            n_prompt = i + 1
    else:
        p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        c = tokenizer(" " + continuation, add_special_tokens=False)["input_ids"]
        ids, n_prompt = p + c, len(p)
    ids = list(ids)
    if len(ids) > max_length:
        n_cont = min(len(ids) - n_prompt, max(max_length - n_prompt, max_length // 2))
        keep_prompt = min(n_prompt, max_length - n_cont)
        ids = ids[n_prompt - keep_prompt : n_prompt] + ids[n_prompt : n_prompt + n_cont]
        n_prompt = keep_prompt
    return Encoded(ids=ids, n_prompt=n_prompt)


def collate(
    sequences: list[list[int]],
    label_from: list[int],
    pad_id: int,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (not to a fixed length).

    ``label_from[i]`` is the first position of sequence ``i`` that carries a label;
    earlier positions (the prompt) and padding get ``IGNORE_INDEX``.
    """
    width = max(len(s) for s in sequences)
    n = len(sequences)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, (seq, start) in enumerate(zip(sequences, label_from)):
        off = width - len(seq) if padding_side == "left" else 0
        t = torch.tensor(seq, dtype=torch.long)
        input_ids[i, off : off + len(seq)] = t
        attention[i, off : off + len(seq)] = 1
        labels[i, off + start : off + len(seq)] = t[start:]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
