"""``quantized`` and ``rounded``: the composed model as it would be deployed -- 8-bit and 4-bit
weights, or a bf16/float16 export -- and re-evaluated greedily.

Zhang et al. (ICLR 2025) found 4-bit quantization brings back most of what gradient
unlearning removed: an unlearning change is small next to the rounding step of a 4-bit
grid, so rounding can land the weights back on the memorized model's grid points.

Why bitsandbytes: it is the quantizer behind transformers' ``BitsAndBytesConfig``
(``load_in_8bit`` / ``load_in_4bit``, QLoRA's nf4), the most common way a released
model is run in 4 bits, and since 0.45 it quantizes on the CPU as on the GPU without
building anything. torchao's int4 weight-only path needs a further kernel package on
the CPU (``mslk``, seen with torchao 0.18 and torch 2.13), and optimum-quanto compiles a
C++ extension on its first 4-bit use (about 40 s here) and is in maintenance mode.

Each linear weight of the transformer blocks (``nn.Linear`` and GPT-2's ``Conv1D``,
taken as out x in) is round-tripped through bitsandbytes' own quantizer --
``quantize_4bit``/``dequantize_4bit`` (``quant_type`` nf4 or fp4, ``blocksize``) or
``int8_vectorwise_quant``/``_dequant`` (LLM.int8's per-row absmax; without its outlier
decomposition, which would keep some input columns in 16 bits, so this is the harsher
rounding) -- and written back, so the model computes with exactly the values a
quantized deployment dequantizes to. Embeddings and the output layer stay as they are,
as transformers' integration leaves them. The probe gets a model of its own.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from ssu.errors import SSUError
from ssu.eval.probes import PROBES, Probe, ProbeContext, Score, greedy_scores

BITS = (8, 4)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def quantizable(model) -> list[tuple[str, torch.nn.Parameter, bool]]:
    """``(name, weight, transposed)`` of every linear weight but the output layer's."""
    from transformers.pytorch_utils import Conv1D

    out_layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = []
    for name, module in model.named_modules():
        if module is out_layer:
            continue
        if isinstance(module, torch.nn.Linear):
            found.append((name, module.weight, False))
        elif isinstance(module, Conv1D):  # weight is in x out
            found.append((name, module.weight, True))
    return found


@torch.no_grad()
def round_trip(weight: torch.Tensor, bits: int, quant_type: str = "nf4", blocksize: int = 64) -> torch.Tensor:
    """``weight`` (out x in) quantized by bitsandbytes and dequantized again, in its dtype."""
    with warnings.catch_warnings():  # its import uses torch.jit APIs torch marks deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        import bitsandbytes.functional as bnbf

    w = weight.float().contiguous()
    if bits == 8:
        codes, scales, _ = bnbf.int8_vectorwise_quant(w)
        back = bnbf.int8_vectorwise_dequant(codes, scales)
    elif bits == 4:
        packed, state = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
        back = bnbf.dequantize_4bit(packed, state)
    else:
        raise ValueError(f"bits must be one of {BITS}")
    return back.reshape(weight.shape).to(weight.dtype)


@torch.no_grad()
def quantize_weights(model, bits: int, quant_type: str = "nf4", blocksize: int = 64) -> int:
    """Round every quantizable weight of ``model`` in place; return how many tensors changed."""
    n = 0
    for _, weight, transposed in quantizable(model):
        w = weight.data.t() if transposed else weight.data
        back = round_trip(w, bits, quant_type, blocksize)
        weight.data.copy_(back.t() if transposed else back)
        n += 1
    return n


@PROBES.register("quantized", outputs={"probe:int8": True, "probe:int4": True}, needs_fresh_model=True,
                 description="weights rounded to 8 and 4 bits by bitsandbytes, then greedy")
class Quantized(Probe):
    @dataclass
    class Args:
        bits: list[int] = field(default_factory=lambda: [8, 4])
        quant_type: str = "nf4"  # 4-bit grid: nf4 (QLoRA's) or fp4
        blocksize: int = 64

        def __post_init__(self) -> None:
            if not self.bits or any(b not in BITS for b in self.bits):
                raise SSUError(f"quantized.bits: choose from {BITS} (got {self.bits})")
            if self.quant_type not in ("nf4", "fp4") or self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
                raise SSUError("quantized: quant_type nf4 or fp4, blocksize a power of two in 32..4096")

    def scores(self, model, tokenizer, ctx: ProbeContext) -> list[Score]:
        out = []
        for i, bits in enumerate(self.args.bits):  # each from the full-precision model
            m = model if i == 0 else ctx.load()
            quantize_weights(m, bits, self.args.quant_type, self.args.blocksize)
            out += greedy_scores(m, tokenizer, ctx, f"probe:int{bits}",
                                  {"quant_type": self.args.quant_type} if bits == 4 else None)
            del m
        return out


@PROBES.register("rounded", outputs={"probe:rounded": True}, needs_fresh_model=True,
                 description="the composed model exported in bf16 (or float16), then greedy")
class Rounded(Probe):
    @dataclass
    class Args:
        dtype: str = "bfloat16"

        def __post_init__(self) -> None:
            if self.dtype not in DTYPES:
                raise SSUError(f"rounded.dtype: choose from {', '.join(DTYPES)} (got {self.dtype!r})")

    def scores(self, model, tokenizer, ctx: ProbeContext) -> list[Score]:
        # what `ssu compose --dtype` writes: the float32 composition rounded once, to nearest
        model = model.to(DTYPES[self.args.dtype])
        return greedy_scores(model, tokenizer, ctx, "probe:rounded", {"dtype": self.args.dtype})
