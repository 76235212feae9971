"""The engine of one time step: loss maths, masked fine-tune, the stack, the run directory.

Runs on the session's synthetic world (nano GPT-2 that memorized 3 books of 6 windows).
A step here is a full fine-tune of 2 epochs over 3 micro-batches (about a second).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import forget_set_of, make_method, train_settings
from transformers import AutoModelForCausalLM

from data_prep import load_schedule, load_windows
from ssu.engine.encoding import IGNORE_INDEX, encode_pair
from ssu.engine.finetune import Hooks, finetune
from ssu.engine.forget_set import random_label_partners
from ssu.engine.losses import LEARN, RANDOM, make_batch
from ssu.engine.saliency import SaliencyMasker
from ssu.errors import SSUError
from ssu.io import sha256_file
from ssu.methods.ssu import SSUArgs
from ssu.models.loading import load_tokenizer
from ssu.recipes.compose import load_composed, stack_of
from ssu.recipes.run_dir import RunDir
from ssu.recipes.step import run_step
from ssu.vectors import load_vector

SEED = 7  # forget-set seed used by the loss tests


# --- helpers -----------------------------------------------------------------------


def load_base(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def params(model) -> dict[str, torch.Tensor]:
    """named_parameters (a tied tensor once), detached."""
    return {k: v.detach() for k, v in model.named_parameters()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def add_dense(model, vector, scale: float = 1.0) -> None:
    """Add a stored vector to ``model`` by hand: p += scale * dense delta, parameter by parameter."""
    vector = vector.to_dense() if vector.kind == "lora" else vector
    named = dict(model.named_parameters())
    with torch.no_grad():
        for k in vector.keys():
            named[k].add_(vector[k] * scale)


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under ``root``."""
    return {str(p.relative_to(root)): (sha256_file(p), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def debris(root: Path) -> list[str]:
    """Temporary or half-replaced entries that atomic writes must not leave behind."""
    return sorted(p.name for p in root.iterdir() if p.name.endswith((".tmp", ".old")))


def vector_sha(run: Path, step: int) -> str:
    return sha256_file(RunDir(run).vector_path(step))


class CaptureLogits(torch.nn.Module):
    """Wrap a causal LM so the loss sees its logits as a leaf tensor we can inspect.

    ``edit(logits)`` (optional) changes the logits before the loss sees them.
    """

    def __init__(self, model, edit=None):
        super().__init__()
        self.model, self.edit, self.logits = model, edit, None

    def forward(self, input_ids, attention_mask):
        with torch.no_grad():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        if self.edit is not None:
            logits = self.edit(logits)
        self.logits = logits.clone().requires_grad_(True)
        return SimpleNamespace(logits=self.logits)


# --- module fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(synthetic_world):
    return load_tokenizer(str(synthetic_world.memorized))


@pytest.fixture(scope="module")
def forget_set(synthetic_world, tokenizer):
    return forget_set_of(synthetic_world.prepared, 1, tokenizer, k_random=3, seed=SEED)


@pytest.fixture(scope="module")
def done_run(init_test_run, tmp_path_factory) -> Path:
    """A run with steps 1 and 2 complete (SSU, full fine-tune). Tests must not modify it."""
    run = init_test_run(tmp_path_factory.mktemp("done") / "run")
    assert run_step(run, 1, progress=False) is not None
    assert run_step(run, 2, progress=False) is not None
    return run


# --- random labels: the loss covers continuation tokens only ---------------------------


def test_random_partners_are_other_windows_of_the_same_book():
    books = ["a"] * 5 + ["b"] * 4 + ["c"] * 2
    for seed in range(5):
        partners = random_label_partners(books, k=3, seed=seed)
        assert len(partners) == len(books)
        for i, js in enumerate(partners):
            assert len(js) == 3
            assert i not in js
            assert all(books[j] == books[i] for j in js)
            if books.count(books[i]) - 1 >= 3:  # enough other windows: drawn without replacement
                assert len(set(js)) == 3
    assert random_label_partners(books, 3, seed=1) == random_label_partners(books, 3, seed=1)
    assert random_label_partners(books, 3, seed=1) != random_label_partners(books, 3, seed=2)
    with pytest.raises(SSUError, match="at least two windows"):
        random_label_partners(["solo"], 3, seed=0)


def test_random_label_rows_are_prompt_plus_partner_continuation(forget_set, tokenizer):
    fs = forget_set
    partners = random_label_partners([w["book"] for w in fs.windows], 3, SEED)
    for i, rows in enumerate(fs.random):
        assert len(rows) == 3
        for enc, j in zip(rows, partners[i]):
            assert j != i and fs.windows[j]["book"] == fs.windows[i]["book"]
            assert enc.prompt_ids == fs.learn[i].prompt_ids  # the window's own prompt ...
            assert enc.continuation_ids == fs.learn[j].continuation_ids  # ... the partner's continuation
            assert tokenizer.decode(enc.continuation_ids) == " " + fs.windows[j]["continuation"]


def test_batch_labels_are_continuation_tokens_only(forget_set, tokenizer):
    fs = forget_set
    partners = random_label_partners([w["book"] for w in fs.windows], 3, SEED)
    idx = [0, 3]  # one micro-batch, laid out as finetune.micro_batches does
    rows = [(fs.learn[i], LEARN) for i in idx] + [(e, RANDOM) for i in idx for e in fs.random[i]]
    batch = make_batch(rows, tokenizer.pad_token_id)
    assert batch.group.tolist() == [LEARN] * 2 + [RANDOM] * 6
    # Random rows: the labelled tokens are exactly the partner window's continuation.
    for r, j in zip(range(2, 8), [j for i in idx for j in partners[i]]):
        labelled = batch.labels[r][batch.labels[r] != IGNORE_INDEX].tolist()
        assert labelled == fs.learn[j].continuation_ids
        assert batch.labels[r, : fs.learn[idx[(r - 2) // 3]].n_prompt].eq(IGNORE_INDEX).all()
    for r, (enc, _) in enumerate(rows):
        n, length = enc.n_prompt, len(enc.ids)
        labels = batch.labels[r]
        assert (labels[:n] == IGNORE_INDEX).all()  # prompt positions
        assert labels[n:length].tolist() == enc.continuation_ids  # continuation positions
        assert (labels[length:] == IGNORE_INDEX).all()  # padding
        assert batch.input_ids[r, :length].tolist() == enc.ids
        assert batch.attention_mask[r].sum() == length


def test_random_label_loss_gradient_vanishes_at_prompt_positions(synthetic_world, forget_set, tokenizer):
    fs = forget_set
    model = load_base(synthetic_world.memorized)
    method = make_method("ssu", epsilon=0.5)
    idx = [1, 4]
    rows = [(fs.learn[i], LEARN) for i in idx] + [(e, RANDOM) for i in idx for e in fs.random[i]]
    batch = make_batch(rows, tokenizer.pad_token_id)

    wrapped = CaptureLogits(model)
    loss, parts = method.loss(wrapped, batch)
    loss.backward()
    grad = wrapped.logits.grad
    # Logit position p predicts token p + 1, so the continuation tokens n..len-1 are
    # predicted from positions n-1..len-2; every other position must get no gradient.
    for r, (enc, _) in enumerate(rows):
        n, length = enc.n_prompt, len(enc.ids)
        per_pos = grad[r].abs().amax(dim=-1)
        assert (per_pos[: n - 1] == 0).all(), f"row {r}: gradient at prompt positions"
        assert (per_pos[length - 1 :] == 0).all(), f"row {r}: gradient at the last token / padding"
        assert (per_pos[n - 1 : length - 1] > 0).all(), f"row {r}: continuation token without gradient"

    # An independent computation: mean CE over continuation tokens, per group.
    logits = wrapped.logits.detach()

    def group_ce(group: int) -> torch.Tensor:
        nll, count = 0.0, 0
        for r, (enc, g) in enumerate(rows):
            if g != group:
                continue
            n, length = enc.n_prompt, len(enc.ids)
            target = torch.tensor(enc.continuation_ids)
            nll = nll + F.cross_entropy(logits[r, n - 1 : length - 1], target, reduction="sum")
            count += len(target)
        return nll / count

    learn, rand = group_ce(LEARN), group_ce(RANDOM)
    assert parts["learn"] == pytest.approx(float(learn), rel=1e-5)
    assert parts["random"] == pytest.approx(float(rand), rel=1e-5)
    assert loss.item() == pytest.approx(float(learn + 0.5 * rand), rel=1e-5)

    # Scrambling every prompt-position prediction (and the padding's) leaves the loss unchanged.
    def scramble(lg: torch.Tensor) -> torch.Tensor:
        lg = lg.clone()
        gen = torch.Generator().manual_seed(0)
        for r, (enc, _) in enumerate(rows):
            lg[r, : enc.n_prompt - 1] = torch.randn(lg[r, : enc.n_prompt - 1].shape, generator=gen) * 50
            lg[r, len(enc.ids) - 1 :] = torch.randn(lg[r, len(enc.ids) - 1 :].shape, generator=gen) * 50
        return lg

    scrambled, _ = method.loss(CaptureLogits(model, edit=scramble), batch)
    assert torch.equal(scrambled.detach(), loss.detach())

    # epsilon = 0 (ablation) drops the random rows' term entirely.
    no_rand, parts0 = make_method("ssu-no-random-labels", epsilon=0.5).loss(CaptureLogits(model), batch)
    assert "random" not in parts0 and float(no_rand) == pytest.approx(float(learn), rel=1e-5)


# --- encode_pair: the prompt/continuation boundary --------------------------------------


def test_encode_pair_boundary_is_exact(synthetic_world, tokenizer):
    windows = load_windows(synthetic_world.prepared).to_list()
    for w in windows:
        enc = encode_pair(tokenizer, w["prompt"], w["continuation"])
        assert enc.prompt_ids + enc.continuation_ids == enc.ids
        assert enc.ids == tokenizer(w["prompt"] + " " + w["continuation"])["input_ids"]
        assert tokenizer.decode(enc.prompt_ids) == w["prompt"]
        assert tokenizer.decode(enc.continuation_ids) == " " + w["continuation"]
        assert 0 < enc.n_prompt < len(enc.ids)


def test_encode_pair_truncation(synthetic_world, tokenizer):
    w = load_windows(synthetic_world.prepared).to_list()[0]
    full = encode_pair(tokenizer, w["prompt"], w["continuation"])
    n_p, n_c = full.n_prompt, len(full.continuation_ids)
    assert n_p > 15 and n_c > 15

    # Long enough: untouched.
    assert encode_pair(tokenizer, w["prompt"], w["continuation"], max_length=len(full.ids)) == full

    # Both halves long: the continuation keeps its head (at least half the budget), the
    # prompt keeps its tail (the text next to the continuation).
    m = 30
    cut = encode_pair(tokenizer, w["prompt"], w["continuation"], max_length=m)
    assert len(cut.ids) == m
    assert len(cut.continuation_ids) >= m // 2
    assert cut.continuation_ids == full.continuation_ids[: len(cut.continuation_ids)]
    assert cut.prompt_ids == full.prompt_ids[n_p - cut.n_prompt :]
    assert cut.n_prompt == m - len(cut.continuation_ids)

    # A short prompt is kept whole; only the continuation's end is cut.
    short = "Once"
    long_cont = " ".join(x["continuation"] for x in load_windows(synthetic_world.prepared).to_list()[:3])
    ref = encode_pair(tokenizer, short, long_cont)
    cut = encode_pair(tokenizer, short, long_cont, max_length=40)
    assert len(cut.ids) == 40 and cut.prompt_ids == ref.prompt_ids
    assert cut.continuation_ids == ref.continuation_ids[: 40 - ref.n_prompt]


# --- the saliency mask in the fine-tune ---------------------------------------------------


def _finetune(world, forget_set, tokenizer, method_name: str):
    model = load_base(world.memorized)
    before = {k: v.clone() for k, v in params(model).items()}
    method = make_method(method_name, epsilon=0.5, saliency="step")
    torch.manual_seed(0)
    stats = finetune(model, method, forget_set, train_settings(lr=1e-3, epochs=2, batch_size=2))
    changed = {k: v != before[k] for k, v in params(model).items()}
    return stats, changed


def test_masked_finetune_moves_only_selected_weights(synthetic_world, forget_set, tokenizer, monkeypatch):
    """The masker keeps no union of masks (8 GB at 8B scale), so a spy re-derives each step's
    mask from the gradient it receives and the threshold it reports, checks that the gradient
    AdamW then sees is exactly m * g, and keeps the union here in the test."""
    ever: dict[str, torch.Tensor] = {}
    per_step: list[dict[str, int]] = []

    class SpyMasker(SaliencyMasker):
        def __call__(self, named_params):
            named_params = list(named_params)
            grads = {n: p.grad.clone() for n, p in named_params if p.grad is not None}
            out = super().__call__(named_params)
            if not out:  # mode "none" (the ablation run below)
                return out
            for n, p in named_params:
                m = grads[n].abs() >= out["threshold"]
                assert torch.equal(p.grad.view(torch.int32), (grads[n] * m).view(torch.int32)), n  # bit for bit
                ever[n] = ever[n] | m if n in ever else m
            assert self.selected == {n: int((g.abs() >= out["threshold"]).sum()) for n, g in grads.items()}
            per_step.append(dict(self.selected))
            return out

    monkeypatch.setattr("ssu.engine.finetune.SaliencyMasker", SpyMasker)
    calls = []
    model = load_base(synthetic_world.memorized)
    before = {k: v.clone() for k, v in params(model).items()}
    method = make_method("ssu", epsilon=0.5, saliency="step")
    stats = finetune(model, method, forget_set, train_settings(lr=1e-3, epochs=2, batch_size=2),
                     Hooks(on_step=calls.append))
    masker = stats.masker
    assert isinstance(masker, SpyMasker) and len(per_step) == 6
    assert stats.optimizer_steps == 6 and calls == [1, 2, 3, 4, 5, 6]  # 6 windows / batch 2 x 2 epochs
    assert len(stats.mask_fraction) == 6 and all(0 < f < 0.2 for f in stats.mask_fraction)
    n_changed = n_selected = total = 0
    for k, p in params(model).items():
        changed = p != before[k]
        selected = ever[k]
        # Bit-for-bit: a weight that was never in the mask did not move at all.
        assert not (changed & ~selected).any(), f"{k}: unmasked weights moved"
        assert torch.equal(p[~selected], before[k][~selected])
        # ...and per parameter, no more entries moved than the steps selected in total.
        assert int(changed.sum()) <= sum(step[k] for step in per_step), k
        n_changed += int(changed.sum())
        n_selected += int(selected.sum())
        total += p.numel()
    assert n_changed > 0
    assert n_selected / total < 0.5  # the union of six masks is still a minority of the weights
    # What the fine-tune leaves behind: counts and a threshold, no tensor.
    assert masker.masks is None and not any(isinstance(v, torch.Tensor) for v in vars(masker).values())

    # Without the mask (SSU's ablation) far more weights move.
    _, changed_all = _finetune(synthetic_world, forget_set, tokenizer, "ssu-no-saliency")
    n_changed_all = sum(int(c.sum()) for c in changed_all.values())
    assert n_changed_all > 2 * n_changed


def test_stored_vector_sparse_with_saliency_dense_without(done_run, run_dir, synthetic_world):
    masked, _ = load_vector(RunDir(done_run).vector_path(1))
    run = run_dir("ssu-no-saliency", name="nosal")
    run_step(run, 1, progress=False)
    unmasked, _ = load_vector(RunDir(run).vector_path(1))
    assert masked.kind == unmasked.kind == "dense"
    assert 0 < masked.density() < 0.3
    assert unmasked.density() > 2 * masked.density()
    assert RunDir(run).manifest["steps"]["1"]["hyperparameters"]["saliency"] == "none"
    assert RunDir(done_run).manifest["steps"]["1"]["hyperparameters"]["saliency"] == "step"
    # Where the stored vector is zero, the model after the step is the memorized one, bit for bit.
    base, after = params(load_base(synthetic_world.memorized)), params(load_composed(RunDir(done_run), upto=1))
    for k in masked.keys():
        zero = masked[k] == 0
        assert torch.equal(after[k][zero], base[k][zero])


# --- composing the stack ---------------------------------------------------------------


def test_stack_composes_like_sequential_application(done_run, synthetic_world):
    run = RunDir(done_run)
    v1, meta1 = load_vector(run.vector_path(1))
    v2, _ = load_vector(run.vector_path(2))
    schedule = load_schedule(synthetic_world.prepared)
    assert meta1["books"] == list(schedule["steps"][1]) and meta1["sign"] == -1

    manual = load_base(synthetic_world.memorized)
    add_dense(manual, v1)
    add_dense(manual, v2)
    composed = load_composed(run, upto=2)
    assert max_abs_diff(params(composed), params(manual)) <= 1e-6
    assert max_abs_diff(params(load_composed(run)), params(manual)) <= 1e-6  # upto=None: the whole stack

    base = load_base(synthetic_world.memorized)
    at0 = load_composed(run, upto=0)
    sd0, sd_base = at0.state_dict(), base.state_dict()
    assert sd0.keys() == sd_base.keys()
    assert all(torch.equal(sd0[k], sd_base[k]) for k in sd_base)  # the base, bit for bit

    manual2 = load_base(synthetic_world.memorized)
    add_dense(manual2, v2)
    assert max_abs_diff(params(load_composed(run, alphas={1: 0})), params(manual2)) <= 1e-6

    half = load_base(synthetic_world.memorized)
    add_dense(half, v1, 0.5)
    add_dense(half, v2)
    assert max_abs_diff(params(load_composed(run, alphas={1: 0.5})), params(half)) <= 1e-6
    assert max_abs_diff(params(composed), params(base)) > 1e-4  # the steps did change the model


def test_manifest_entry_describes_the_step(done_run, synthetic_world):
    run = RunDir(done_run)
    assert run.completed_steps() == [1, 2]
    schedule = load_schedule(synthetic_world.prepared)
    for step in (1, 2):
        e = run.step_record(step)
        assert e["books"] == list(schedule["steps"][step])
        assert e["n_windows"] == 6 and e["method"] == "ssu" and e["alpha"] == 1.0
        art = e["artifacts"]["vector.safetensors"]
        assert art["sha256"] == vector_sha(done_run, step)
        assert art["bytes"] == run.vector_path(step).stat().st_size
        assert e["hyperparameters"]["lr"] == 1e-3 and e["hyperparameters"]["method"]["epsilon"] == 0.5
        assert e["timings"]["train_seconds"] > 0
        step_json = json.loads((run.step_dir(step) / "step.json").read_text())
        assert step_json["train"]["optimizer_steps"] == 6
    assert [e.step for e in stack_of(run).entries] == [1, 2]


def test_tampered_vector_is_refused(done_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(done_run, copy)
    path = RunDir(copy).vector_path(1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SSUError, match="sha256"):
        load_composed(RunDir(copy), upto=2)
    load_composed(RunDir(copy), upto=0)  # the base needs no vector


# --- LoRA --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False")
def test_lora_step_stores_exact_factors(run_dir, synthetic_world, done_run):
    from peft import LoraConfig, get_peft_model

    run = run_dir(name="lora", train={"finetune": "lora", "lr": 3e-3, "lora": {"r": 4, "alpha": 8}})
    entry = run_step(run, 1, progress=False)
    assert entry["finetune"] == "lora"
    rd = RunDir(run)
    vector, _ = load_vector(rd.vector_path(1))
    assert vector.kind == "lora"
    factors = [vector[k] for k in vector.keys()]
    assert {f.scale for f in factors} == {-2.0}  # negated lora_alpha / r
    assert all(f.A.shape[0] == 4 and f.B.shape[1] == 4 for f in factors)

    # Rebuild the fine-tuned model from the stored factors with peft and merge it.
    lora = rd.config.train.lora
    ft = get_peft_model(load_base(synthetic_world.memorized), LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    n_set = 0
    for name, mod in ft.get_base_model().named_modules():
        key = f"{name}.weight"
        if hasattr(mod, "lora_A") and "default" in mod.lora_A and key in vector:
            with torch.no_grad():
                mod.lora_A["default"].weight.copy_(vector[key].A)
                mod.lora_B["default"].weight.copy_(vector[key].B)
            n_set += 1
    assert n_set == len(vector) > 0
    theta_ft = params(ft.merge_and_unload())
    theta_0 = params(load_base(synthetic_world.memorized))
    expected = {k: theta_0[k] - (theta_ft[k] - theta_0[k]) for k in theta_0}  # theta_0 - tau
    composed = params(load_composed(rd, upto=1))
    assert max_abs_diff(composed, expected) <= 1e-6
    untouched = [k for k in theta_0 if k not in vector]
    assert untouched and all(torch.equal(composed[k], theta_0[k]) for k in untouched)
    assert any(not torch.equal(composed[k], theta_0[k]) for k in vector.keys())

    lora_bytes = rd.vector_path(1).stat().st_size
    full_dense_bytes = 4 * sum(p.numel() for p in theta_0.values())
    assert lora_bytes < full_dense_bytes / 10
    assert lora_bytes < RunDir(done_run).vector_path(1).stat().st_size


# --- order, re-runs, --force, crashes, determinism ----------------------------------------


def test_steps_must_run_in_order(run_dir):
    run = run_dir()
    with pytest.raises(SSUError, match=r"missing: 1$"):
        run_step(run, 2, progress=False)
    with pytest.raises(SSUError, match="start at 1"):
        run_step(run, 0, progress=False)
    with pytest.raises(SSUError, match=r"missing: 1, 2$"):
        run_step(run, 3, progress=False)
    assert RunDir(run).completed_steps() == [] and not RunDir(run).step_dir(2).exists()


def test_rerun_of_completed_step_is_a_noop(done_run):
    before = tree_state(done_run)
    assert run_step(done_run, 1, progress=False) is None
    assert run_step(done_run, 2, progress=False) is None
    assert tree_state(done_run) == before  # same bytes, same mtimes


def test_force_redoes_step_and_drops_later_ones(done_run, tmp_path):
    run = tmp_path / "forced"
    shutil.copytree(done_run, run)
    rows = [{"step": s, "book": "b", "metric": "m", "value": 0.0} for s in (0, 1, 2)]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    v1_before = RunDir(run).vector_path(1).stat().st_mtime_ns

    entry = run_step(run, 1, force=True, progress=False)
    rd = RunDir(run)
    assert entry is not None and entry["step"] == 1
    assert rd.completed_steps() == [1]
    assert not rd.step_dir(2).exists()
    assert [json.loads(line)["step"] for line in (run / "results.jsonl").read_text().splitlines()] == [0]
    assert rd.vector_path(1).stat().st_mtime_ns != v1_before  # really redone ...
    assert vector_sha(run, 1) == vector_sha(done_run, 1)  # ... with the same result
    assert debris(run) == []


def test_crash_mid_step_leaves_no_trace_and_rerun_matches(run_dir, done_run):
    run = run_dir()
    seen = []

    def crash(step: int) -> None:
        seen.append(step)
        if step == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_step(run, 1, progress=False, on_step=crash)
    rd = RunDir(run)
    assert seen == [1, 2]
    assert not rd.step_dir(1).exists()
    assert rd.completed_steps() == []
    assert list(run.glob(".step_1.*")) == [] and debris(run) == []

    assert run_step(run, 1, progress=False) is not None
    assert vector_sha(run, 1) == vector_sha(done_run, 1)


def test_crash_before_manifest_update_is_repaired_by_rerun(run_dir, done_run, monkeypatch):
    run = run_dir()

    def boom(self, step, entry):
        raise OSError("simulated crash before the manifest update")

    with monkeypatch.context() as m:
        m.setattr(RunDir, "record_step", boom)
        with pytest.raises(OSError, match="simulated"):
            run_step(run, 1, progress=False)
    rd = RunDir(run)
    assert rd.vector_path(1).is_file()  # the step directory was written ...
    assert rd.completed_steps() == []  # ... but does not count
    assert len(stack_of(rd)) == 0
    with pytest.raises(SSUError, match="missing: 1"):
        run_step(run, 2, progress=False)

    assert run_step(run, 1, progress=False) is not None
    assert rd.completed_steps() == [1]
    assert vector_sha(run, 1) == vector_sha(done_run, 1)
    assert debris(run) == []


def test_clean_runs_are_deterministic(run_dir, done_run):
    run = run_dir(name="again")
    run_step(run, 1, progress=False)
    assert vector_sha(run, 1) == vector_sha(done_run, 1)
    losses = [json.loads((RunDir(r).step_dir(1) / "step.json").read_text())["train"]["losses"]
              for r in (run, done_run)]
    assert losses[0] == losses[1]


def test_vector_files_are_byte_identical_across_saves(done_run, tmp_path):
    # safetensors writes its metadata map in an order that varies between calls; the
    # vector file must not, or re-runs could not be checked by sha256.
    vector, meta = load_vector(RunDir(done_run).vector_path(1))
    shas = {vector.save(tmp_path / f"v{i}.safetensors", meta) for i in range(8)}
    assert len(shas) == 1
    assert {sha256_file(tmp_path / f"v{i}.safetensors") for i in range(8)} == shas
    assert shas == {vector_sha(done_run, 1)}
    again, meta_again = load_vector(tmp_path / "v0.safetensors")
    assert meta_again == meta and all(torch.equal(again[k], vector[k]) for k in vector.keys())


# --- chunked backward ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ssu", "gd", "npo-gdr"])
@pytest.mark.parametrize("share_prompts", [True, False])
def test_chunked_backward_gives_the_unchunked_gradient(synthetic_world, tokenizer, name, share_prompts):
    """One window per backward holds a quarter of the activations of a 4-window micro-batch;
    the loss and every gradient must be the single-backward ones, for window counts and
    token budgets alike."""
    import copy
    import random

    from ssu.engine.distributed import Processes
    from ssu.engine.finetune import _accumulate, micro_batches

    method = make_method(name, **({"epsilon": 0.5} if name == "ssu" else {}))
    fs = forget_set_of(synthetic_world.prepared, 1, tokenizer, k_random=3, seed=SEED,
                       with_random=method.uses_random_labels, retain=method.needs_retain)
    windows = next(micro_batches(fs, method, 4, random.Random(0)))
    assert len(windows) == 4
    model = load_base(synthetic_world.memorized)
    reference = copy.deepcopy(model).requires_grad_(False) if method.needs_reference else None
    if reference is not None:  # a reference different from the model, so the NPO ratio is not 0
        with torch.no_grad():
            for p in reference.parameters():
                p.add_(0.01 * torch.randn_like(p))
    results = []
    width = max(len(e.ids) for w in windows for e, _ in w)
    # whole, one window, 3 + 1 windows, and a token budget of about two windows' rows
    for per_chunk, tokens in ((4, None), (1, None), (3, None), (4, 2 * len(windows[0]) * width)):
        model.zero_grad(set_to_none=True)
        stats = {"losses": [], "tokens": 0}
        _accumulate(model, method, [windows], tokenizer.pad_token_id, share_prompts, per_chunk, "cpu",
                    reference, Processes("cpu"), stats, 0, tokens)
        results.append((stats["losses"][0], {k: p.grad.clone() for k, p in model.named_parameters()}))
    (loss_a, grads_a) = results[0]
    for loss_b, grads_b in results[1:]:
        assert loss_b.keys() == loss_a.keys()
        for k in loss_a:
            assert loss_b[k] == pytest.approx(loss_a[k], rel=1e-4, abs=1e-6), k
        for k, g in grads_a.items():
            torch.testing.assert_close(grads_b[k], g, rtol=1e-4, atol=1e-6)


def test_non_finite_gradient_with_a_finite_loss_is_a_one_line_error(synthetic_world, forget_set, tokenizer):
    """d/dx sqrt(x) at 0 is inf: the loss stays finite, the gradient does not; the fine-tune
    must stop with the lr hint instead of a traceback from the saliency threshold."""
    base = make_method("ssu", epsilon=0.5)

    class InfGradient(type(base)):
        def loss(self, model, batch, reference=None):
            loss, parts = super().loss(model, batch, reference)
            w = next(model.parameters())
            return loss + torch.sqrt(w.flatten()[0] * 0).sum(), parts

    model = load_base(synthetic_world.memorized)
    before = {k: v.clone() for k, v in params(model).items()}
    with pytest.raises(SSUError, match="gradient is not finite at optimizer step 1; lower train.lr"):
        finetune(model, InfGradient(SSUArgs(epsilon=0.5)), forget_set, train_settings(lr=1e-3, epochs=1, batch_size=2))
    assert all(torch.equal(v, before[k]) for k, v in params(model).items())  # no step was taken


# --- deterministic kernels ----------------------------------------------------------------


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_seeding_selects_deterministic_kernels_unless_asked_not_to(restore_determinism):
    from ssu.engine.seeding import seed_everything

    seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled()
    # The backward of prompt sharing's gather with repeated indices (x[idx]) accumulates
    # many rows into one; under deterministic kernels the sum has one order, every time.
    x = torch.randn(64, 512, requires_grad=True)
    idx = torch.randint(0, 4, (4096,))
    grads = []
    for _ in range(5):
        x.grad = None
        (x[idx] * torch.linspace(-1, 1, 512)).sum().backward()
        grads.append(x.grad.clone())
    assert all(torch.equal(g, grads[0]) for g in grads)


def test_the_run_config_records_the_choice(run_dir):
    assert json.loads((run_dir() / "config.json").read_text())["config"]["deterministic"] is True


def test_token_budget_chunks_hold_whole_windows_within_the_budget(forget_set):
    from ssu.engine.finetune import chunked

    windows = [[(e, LEARN)] + [(r, RANDOM) for r in rs] for e, rs in zip(forget_set.learn, forget_set.random)]
    width = max(len(e.ids) for w in windows for e, _ in w)
    for budget in (1, 2 * len(windows[0]) * width, 10**9):
        chunks = chunked(windows, 1, budget)
        assert [r for c in chunks for r in c] == [r for w in windows for r in w]  # every row once, in order
        assert all(len(c) % len(windows[0]) == 0 for c in chunks)  # whole windows only
        assert all(len(c) == len(windows[0]) or len(c) * max(len(e.ids) for e, _ in c) <= budget for c in chunks)
    assert len(chunked(windows, 1, 10**9)) == 1 and len(chunked(windows, 1, 1)) == len(windows)


def test_gradient_checkpointing_gives_the_same_step(run_dir):
    plain, ckpt = run_dir(name="plain"), run_dir(name="ckpt", train={"gradient_checkpointing": True})
    for r in (plain, ckpt):
        run_step(r, 1, progress=False)
    a, _ = load_vector(RunDir(plain).vector_path(1))
    b, _ = load_vector(RunDir(ckpt).vector_path(1))
    assert a.norm() > 0 and float((a - b).norm()) <= 1e-5 * float(a.norm())


def test_init_writes_device_aware_defaults(run_dir, monkeypatch):
    import ssu.recipes.init

    cpu = json.loads((run_dir(name="cpu") / "config.json").read_text())
    assert cpu["config"]["train"]["share_prompts"] is True and cpu["config"]["train"]["windows_per_backward"] == 1
    assert cpu["device_defaults"] == {"device": "cpu", "settings": {}}
    monkeypatch.setattr(ssu.recipes.init, "resolve_device", lambda _: torch.device("cuda"))
    gpu = json.loads((run_dir(name="gpu", train={"share_prompts": True}) / "config.json").read_text())
    chosen = {k: v for k, v in ssu.recipes.init.DEVICE_DEFAULTS["cuda"].items() if k != "share_prompts"}
    assert gpu["device_defaults"] == {"device": "cuda", "settings": chosen}
    assert gpu["config"]["train"]["share_prompts"] is True  # given: kept
    assert all(gpu["config"]["train"][k] == v for k, v in chosen.items())
