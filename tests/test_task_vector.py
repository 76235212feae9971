"""Task-vector algebra, file round trips, LoRA exactness and the stack, on tiny random models."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from ssu.errors import SSUError
from ssu.vectors import TaskVector, load_vector
from ssu.vectors.lora_vector import LoraTaskVector
from ssu.vectors.stack import StackEntry, VectorStack

ATOL = 1e-6
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft ↔ transformers


def tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64,
                         bos_token_id=0, eos_token_id=0)
    else:
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=2, vocab_size=100, bos_token_id=0, eos_token_id=0,
                          pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def perturbed(model, seed: int, std: float = 0.01):
    """A 'fine-tuned' copy: every parameter moved by small Gaussian noise."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return out


def max_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


@pytest.fixture(params=["gpt2", "llama"])
def arch(request):
    return request.param


def test_apply_then_negate_restores_base(arch):
    base = tiny(arch)
    ft = perturbed(base, 1)
    v = TaskVector.from_models(ft, base)
    target = copy.deepcopy(base)
    v.apply_to(target)
    assert max_diff(target, ft) <= ATOL  # GPT-2's tied lm_head/wte is updated once, not twice
    (-v).apply_to(target)
    assert max_diff(target, base) <= ATOL
    sd = {k: t.clone() for k, t in base.state_dict().items()}  # a plain state dict works too
    v.apply_to(sd, scale=-2.0)
    v.apply_to(sd, scale=2.0)
    assert max(float((sd[k] - t).abs().max()) for k, t in base.state_dict().items()) <= ATOL


def test_sum_equals_sequential_application(arch):
    base = tiny(arch)
    vs = [TaskVector.from_models(perturbed(base, s), base) for s in (1, 2, 3)]
    at_once, one_by_one = copy.deepcopy(base), copy.deepcopy(base)
    sum(vs).apply_to(at_once)
    for v in vs:
        v.apply_to(one_by_one)
    assert max_diff(at_once, one_by_one) <= ATOL


def test_arithmetic_is_entrywise():
    base = tiny("llama")
    a, b = (TaskVector.from_models(perturbed(base, s), base) for s in (1, 2))
    k = a.keys()[0]
    assert torch.equal((a - b)[k], a[k] + (-b[k]))
    assert torch.equal((2 * a)[k], a[k] * 2) and torch.equal((a * 2)[k], a[k] * 2)
    assert torch.equal((-a)[k], -a[k])
    assert torch.all(~torch.signbit((-TaskVector({"z": torch.zeros(3)}))["z"]))  # no -0.0
    assert abs(a.norm() - float(torch.cat([t.double().flatten() for _, t in a.items()]).norm())) < 1e-9
    assert a.density() == 1.0 and a.numel() == sum(t.numel() for _, t in a.items())


def test_in_place_scaling_is_the_product_without_a_copy():
    """A step's vector is negated in place (one float32 copy of the weights while it is taken)."""
    g = torch.Generator().manual_seed(0)
    deltas = {"w": torch.randn(64, 32, generator=g) * 1e-5, "z": torch.zeros(7)}  # a step's size of change
    v = TaskVector({k: t.clone() for k, t in deltas.items()})
    ptrs = {k: v[k].data_ptr() for k in v.keys()}
    out = v.mul_(-1.0)
    assert out is v and all(v[k].data_ptr() == ptrs[k] for k in v.keys())
    expected = TaskVector(deltas) * -1.0
    assert all(torch.equal(v[k].view(torch.int32), expected[k].view(torch.int32)) for k in v.keys())  # bits
    assert not torch.signbit(v["z"]).any()  # no -0.0, as with *


def test_mismatched_keys_raise():
    base = tiny("llama")
    v = TaskVector.from_models(perturbed(base, 1), base)
    dropped = v.keys()[3]
    partial = TaskVector({k: t for k, t in v.items() if k != dropped})
    with pytest.raises(ValueError, match=dropped):
        v + partial
    with pytest.raises(ValueError, match="only left"):
        TaskVector.from_state_dicts(base.state_dict(), {k: t for k, t in base.state_dict().items() if k != dropped})
    with pytest.raises(ValueError, match="not_a_param"):
        TaskVector({"not_a_param": torch.zeros(2)}).apply_to(copy.deepcopy(base))
    wrong = TaskVector({k: torch.zeros(7) if k == dropped else t for k, t in v.items()})
    with pytest.raises(ValueError, match="shape"):
        wrong.apply_to(copy.deepcopy(base))
    with pytest.raises(ValueError, match="floating"):
        TaskVector({"i": torch.zeros(2, dtype=torch.int64)})


def test_apply_to_bf16_computes_in_float32():
    base = tiny("llama").to(torch.bfloat16)
    v = TaskVector({k: torch.randn(t.shape) * 1e-2 for k, t in base.state_dict().items()})
    target = copy.deepcopy(base)
    v.apply_to(target, scale=0.5)
    for k, t in target.state_dict().items():
        assert t.dtype == torch.bfloat16
        assert torch.equal(t, (base.state_dict()[k].float() + v[k] * 0.5).to(torch.bfloat16))


def test_dense_and_sparse_round_trip_bit_identical(tmp_path):
    gen = torch.Generator().manual_seed(0)
    dense = TaskVector({"a.weight": torch.randn(64, 32, generator=gen), "b.bias": torch.randn(32, generator=gen)})
    sparse_a = torch.zeros(64, 32)
    idx = torch.randperm(64 * 32, generator=gen)[:40]
    sparse_a.view(-1)[idx] = torch.randn(40, generator=gen)
    sparse_a.view(-1)[idx[:3]] = torch.tensor([-0.0, float("nan"), float("-inf")])  # survive exactly
    sparse = TaskVector({"a.weight": sparse_a, "b.bias": torch.zeros(32)})
    meta = {"step": 2, "books": ["b1", "b2"], "nested": {"x": 1.5}}
    for name, v in (("dense", dense), ("sparse", sparse)):
        digest = v.save(tmp_path / f"{name}.safetensors", meta)
        assert len(digest) == 64
        w, m = TaskVector.load(tmp_path / f"{name}.safetensors")
        assert m == meta and w.keys() == v.keys()
        assert all(bits_equal(w[k], v[k]) for k in v)
        w2, _ = load_vector(tmp_path / f"{name}.safetensors")
        assert isinstance(w2, TaskVector)
    dense_size = (tmp_path / "dense.safetensors").stat().st_size
    sparse_size = (tmp_path / "sparse.safetensors").stat().st_size
    assert sparse_size < dense_size / 10
    assert sparse.nbytes_stored() == 40 * 8 and dense.nbytes_stored() == (64 * 32 + 32) * 4
    assert sparse.density() == pytest.approx(39 / (64 * 32 + 32))  # -0.0 counts as zero


def test_negated_sparse_vector_stays_sparse(tmp_path):
    t = torch.zeros(1000)
    t[::100] = 1.0
    (-TaskVector({"w": t})).save(tmp_path / "neg.safetensors")
    TaskVector({"w": t}).save(tmp_path / "pos.safetensors")
    assert (tmp_path / "neg.safetensors").stat().st_size == (tmp_path / "pos.safetensors").stat().st_size


def test_bad_files_raise_ssu_error(tmp_path):
    with pytest.raises(SSUError, match="not found"):
        load_vector(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SSUError):
        load_vector(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="JSON"):
        TaskVector({"w": torch.ones(2)}).save(tmp_path / "x.safetensors", {"bad": object()})


# ----------------------------------------------------------------------------- LoRA
TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn", "c_fc"]}


def lora_model(base, arch: str, seed: int):
    """peft-wrapped copy of ``base`` with random non-zero lora_B (it initialises to 0)."""
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch], fan_in_fan_out=arch == "gpt2")
    model = get_peft_model(copy.deepcopy(base), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape) * 0.1)
    return model


def test_lora_vector_matches_merge_and_unload(arch, tmp_path):
    base = tiny(arch)
    peft_model = lora_model(base, arch, seed=1)
    v = LoraTaskVector.from_peft_model(peft_model)
    assert len(v) == 4 and all(k.endswith(".weight") and "base_layer" not in k for k in v)
    merged = peft_model.merge_and_unload()
    target = v.apply_to(copy.deepcopy(base))
    assert max_diff(target, merged) <= 1e-5
    (-v).apply_to(target)
    assert max_diff(target, base) <= ATOL
    assert v.norm() == pytest.approx(v.to_dense().norm(), rel=1e-6)
    v.save(tmp_path / "lora.safetensors", {"kind_of": "test"})
    w, meta = load_vector(tmp_path / "lora.safetensors")
    assert isinstance(w, LoraTaskVector) and meta == {"kind_of": "test"}
    for k in v:
        assert bits_equal(w[k].A, v[k].A) and bits_equal(w[k].B, v[k].B)
        assert (w[k].scale, w[k].fan_in_fan_out) == (v[k].scale, v[k].fan_in_fan_out) == (2.0, arch == "gpt2")
    with pytest.raises(SSUError, match="load_vector"):
        TaskVector.load(tmp_path / "lora.safetensors")


def test_two_lora_vectors_compose_exactly_without_cross_terms(arch):
    base = tiny(arch)
    m1, m2 = lora_model(base, arch, seed=1), lora_model(base, arch, seed=2)
    v1, v2 = LoraTaskVector.from_peft_model(m1), LoraTaskVector.from_peft_model(m2)
    both = v1 + v2
    assert isinstance(both, LoraTaskVector) and both[v1.keys()[0]].A.shape[0] == 8  # ranks concatenated
    got = both.apply_to(copy.deepcopy(base))
    d1, d2 = m1.merge_and_unload().state_dict(), m2.merge_and_unload().state_dict()
    expected = {k: t + (d1[k] - t) + (d2[k] - t) for k, t in base.state_dict().items()}
    assert max(float((got.state_dict()[k] - expected[k]).abs().max()) for k in expected) <= 1e-5
    assert max_diff((v1.to_dense() + v2).apply_to(copy.deepcopy(base)), got) <= 1e-5  # dense + LoRA
    (-v1 - v2).apply_to(got)
    assert max_diff(got, base) <= 1e-5
    assert (v1 - (-1.0) * v2 - both).norm() <= 1e-5  # a + b - (a + b) = 0
    # The naive linear combination (A1 + A2, B1 + B2) adds the cross term s·(B1A2 + B2A1).
    for k in v1:
        a, b = v1[k], v2[k]
        naive = LoraTaskVector({k: type(a)(a.A + b.A, a.B + b.B, a.scale, a.fan_in_fan_out)})[k].delta()
        cross = type(a)(torch.cat([a.A, b.A]), torch.cat([b.B, a.B], 1), a.scale, a.fan_in_fan_out).delta()
        assert float((naive - both[k].delta()).abs().max()) > 1e-3
        assert torch.allclose(naive - both[k].delta(), cross, atol=1e-5)


def test_lora_with_different_scales_adds_exactly():
    base = tiny("llama")
    v1 = LoraTaskVector.from_peft_model(lora_model(base, "llama", 1))
    v2 = 0.3 * LoraTaskVector.from_peft_model(lora_model(base, "llama", 2))
    k = v1.keys()[0]
    assert torch.allclose((v1 + v2)[k].delta(), v1[k].delta() + v2[k].delta(), atol=1e-6)
    with pytest.raises(ValueError, match="key sets differ"):
        v1 + LoraTaskVector({k: v1[k]})


# ----------------------------------------------------------------------------- stack
def make_stack(tmp_path, base):
    vectors = [-TaskVector.from_models(perturbed(base, s), base) for s in (1, 2)]
    vectors.append(-LoraTaskVector.from_peft_model(lora_model(base, "llama", 3)))
    entries = []
    for t, v in enumerate(vectors, start=1):
        path = tmp_path / f"step_{t}" / "vector.safetensors"
        v.save(path, {"step": t, "books": [f"book{t}"]})
        entries.append(StackEntry(step=t, path=path, alpha=1.0, metadata={"books": [f"book{t}"]}))
    return VectorStack(entries), vectors


def test_stack_compose(tmp_path):
    base = tiny("llama")
    stack, vectors = make_stack(tmp_path, base)
    untouched = stack.compose_into(copy.deepcopy(base), upto=0)
    assert all(torch.equal(t, base.state_dict()[k]) for k, t in untouched.state_dict().items())
    without_2 = stack.compose_into(copy.deepcopy(base), alphas={2: 0.0})
    manual = copy.deepcopy(base)
    vectors[0].apply_to(manual)
    vectors[2].apply_to(manual)
    assert max_diff(without_2, manual) <= ATOL
    assert max_diff(without_2, manual) == 0.0  # alpha 0 adds exact zeros
    full = stack.compose_into(copy.deepcopy(base))
    manual_full = sum(vectors[:2]).apply_to(copy.deepcopy(base))
    vectors[2].apply_to(manual_full)
    assert max_diff(full, manual_full) <= ATOL
    half = stack.compose_into(copy.deepcopy(base), upto=1, alphas={1: 0.5})
    assert max_diff(half, (0.5 * vectors[0]).apply_to(copy.deepcopy(base))) <= ATOL
    rows = stack.describe()
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["books"] == ["book3"]
    assert rows[2]["kind"] == "lora" and rows[0]["norm"] == pytest.approx(vectors[0].norm())
    assert all(r["bytes"] == (tmp_path / f"step_{r['step']}" / "vector.safetensors").stat().st_size for r in rows)


def test_stack_rejects_bad_input(tmp_path):
    entry = StackEntry(step=2, path=tmp_path / "x", alpha=1.0, metadata={})
    with pytest.raises(ValueError, match="1..T"):
        VectorStack([entry])
    stack, _ = make_stack(tmp_path, tiny("llama"))
    for kwargs in ({"upto": 4}, {"upto": -1}, {"alphas": {5: 1.0}}, {"alphas": {1: float("nan")}}):
        with pytest.raises(ValueError):
            stack.compose_into({}, **kwargs)
