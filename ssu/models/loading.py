"""Loading models and tokenizers through the Hugging Face Auto classes.

Nothing here knows a model family: any causal LM that ``AutoModelForCausalLM`` loads
works, from a local directory or a hub id (hub ids need network access; the tests
and the demo only use local directories). ``trust_remote_code`` stays off unless
the user asks for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ssu.errors import SSUError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Written by `ssu tiny-model`; lets later commands pick defaults suited to a model
# trained from scratch (a much larger learning rate than a pre-trained 7B model wants).
SSU_MODEL_CARD = "ssu_model.json"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Map a config string to a torch dtype; "auto" is float32 on CPU, bf16 on GPUs that have it."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise SSUError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """Load a tokenizer and make sure it can pad (left padding, for batched generation)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise SSUError(f"cannot load tokenizer from {name_or_path}: {_first_line(e)}") from e
    if tok.pad_token is None:
        # Many causal LMs ship without a pad token; padding positions are masked out
        # everywhere, so reusing EOS is safe.
        if tok.eos_token is None:
            raise SSUError(f"tokenizer {name_or_path} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(
    name_or_path: str,
    device: str | torch.device = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
):
    """Load a causal LM in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device) if isinstance(device, str) else device
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path), dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise SSUError(f"cannot load model from {name_or_path}: {_first_line(e)}") from e
    return model.to(dev).eval()


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or "\\" in name or name.count("/") > 1


def check_model(name_or_path: str, trust_remote_code: bool = False) -> None:
    """Refuse, in one line, a model that cannot be loaded later: a path that does not exist
    or is not a model directory, or a hub id that resolves neither from the local cache nor
    (with network access) from the hub. Reads the model's config only, never its weights."""
    from transformers import AutoConfig

    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise SSUError(f"--model {name_or_path}: not a model directory (no config.json)")
        return
    if _looks_like_path(name_or_path):
        raise SSUError(f"--model {name_or_path}: no such directory")
    try:  # the local cache first: no network needed for a model downloaded before
        AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, local_files_only=True)
        return
    except (OSError, ValueError):
        pass
    try:  # one request to the hub (a file download would retry with back-off for half a minute offline)
        from huggingface_hub import HfApi

        HfApi().model_info(name_or_path, timeout=10)
    except Exception as e:  # noqa: BLE001 - offline, not found, gated: all one line at the door
        raise SSUError(f"--model {name_or_path}: not a local directory, not in the local cache, and the hub "
                       f"does not resolve it (offline, or no such model): {_first_line(e)}") from None


def model_card(name_or_path: str) -> dict[str, Any]:
    """The ssu model card of a local model directory ({} for other models)."""
    path = Path(name_or_path) / SSU_MODEL_CARD
    if path.is_file():
        return json.loads(path.read_text())
    return {}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def model_identity(name_or_path: str) -> dict[str, Any]:
    """What the takedown record names as the base model: a local directory's files and their
    sha256 (weights and config), or a hub id and the revision (commit) it resolved to --
    from the local cache when the model is there, else one request to the hub."""
    from ssu.io import sha256_file

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        files += [path / "config.json"] if (path / "config.json").is_file() else []
        return {"kind": "local", "files": {f.name: sha256_file(f) for f in files}}
    revision = None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if isinstance(cached, str):
            revision = Path(cached).parent.name  # .../snapshots/<commit>/config.json
        else:
            from huggingface_hub import HfApi

            revision = HfApi().model_info(name_or_path, timeout=10).sha
    except Exception:  # noqa: BLE001 - offline after `ssu init` accepted it: recorded as unknown
        revision = None
    return {"kind": "hub", "id": name_or_path, "revision": revision}
