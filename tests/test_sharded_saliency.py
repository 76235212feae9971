"""The saliency mask on FSDP-style sharded gradients equals the one-process mask.

Two gloo processes each hold a shard of every gradient (the rows FSDP2's
``fully_shard`` gives a process: ``torch.chunk`` along dim 0, uneven for odd sizes),
merge the threshold's statistics through :class:`ssu.engine.distributed.Processes`
and mask their own shards. Put back together, the shards must be the gradients the
one-process masker leaves, for both thresholds (mean + k·std and exact top-k).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssu.engine.saliency import SaliencyMasker

SHAPES = {"embed.weight": (301, 48), "layer.weight": (48, 48), "layer.bias": (48,), "head.weight": (7, 48)}

WORKER = textwrap.dedent("""
    import sys
    import torch
    from safetensors.torch import load_file, save_file
    from ssu.engine.distributed import Processes, leave_process_group
    from ssu.engine.saliency import SaliencyMasker

    grads_path, out_path, mode = sys.argv[1:4]
    procs = Processes("cpu")
    grads = load_file(grads_path)
    params = []
    for name, g in grads.items():
        shard = torch.chunk(g, procs.world, dim=0)[procs.rank].clone()
        p = torch.nn.Parameter(torch.zeros_like(shard))
        p.grad = shard
        params.append((name, p))
    density = 0.05 if mode == "topk" else None
    stats = SaliencyMasker("step", k=1.0, density=density, shards=procs)(params)
    save_file({n: p.grad for n, p in params} | {"threshold": torch.tensor([stats["threshold"]], dtype=torch.float64),
              "selected": torch.tensor([stats["selected"]])}, out_path)
    leave_process_group()
""")


@pytest.mark.parametrize("mode", ["std", "topk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sharded_mask_equals_single_process_mask(tmp_path, free_port, mode, dtype):
    gen = torch.Generator().manual_seed(0)
    # Gradient-like magnitudes: 1e-5 with a heavy tail, so the threshold falls inside the data.
    grads = {n: (torch.randn(s, generator=gen) * 1e-5 * torch.rand(s, generator=gen).pow(-0.5)).to(dtype)
             for n, s in SHAPES.items()}
    save_file(grads, tmp_path / "grads.safetensors")
    params = []
    for name, g in grads.items():
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append((name, p))
    single = SaliencyMasker("step", k=1.0, density=0.05 if mode == "topk" else None)(params)

    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "grads.safetensors"),
                               str(tmp_path / f"out{r}.safetensors"), mode],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    outs = [load_file(tmp_path / f"out{r}.safetensors") for r in range(2)]
    for r in range(2):
        assert float(outs[r]["threshold"]) == pytest.approx(single["threshold"], rel=1e-12)
        assert int(outs[r]["selected"]) == single["selected"]  # every process reports the global count
    for name, p in params:
        joined = torch.cat([outs[0][name], outs[1][name]], dim=0)
        assert torch.equal(joined, p.grad), name
    assert 0 < single["selected"] < single["total"]
