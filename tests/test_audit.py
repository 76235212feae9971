"""The takedown record: what each step removed, with which hashes and request ids; ``--verify``
finds a flipped byte in a vector, in the manifest and in the prepared data; calibration never
sees an audit window; re-weighting is an event in the log."""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from ssu.errors import SSUError
from ssu.recipes.audit import audit_record, to_markdown, verify, write_audit
from ssu.recipes.compose import reweight, stack_of
from ssu.recipes.run_dir import RunDir
from ssu.recipes.step import run_step


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def audited(tmp_path_factory, synthetic_world, init_test_run):
    """A 3-step run with calibration (so each step keeps audit windows apart), its own copy
    of the prepared data (the tests below damage it), a request per step."""
    root = tmp_path_factory.mktemp("audit")
    corpus = root / "corpus"
    shutil.copytree(synthetic_world.corpus, corpus)
    (corpus / "time_step_2" / "request.json").write_text(json.dumps({"id": "REQ-2", "note": "from the layout"}))
    from data_prep import prepare_books

    prepare_books(corpus, root / "prepared", prompt_words=20, continuation_words=20)
    run = init_test_run(root / "run", "ssu", data=str(root / "prepared"),
                        calibrate={"enabled": True, "iterations": 3, "windows": 4, "alpha_max": 8.0})
    run_step(run, 1, progress=False, request_id="REQ-1", note="rights holder A")
    run_step(run, 2, progress=False)
    run_step(run, 3, progress=False, request_id="REQ-3")
    return run, corpus, root / "prepared"


def test_record_names_every_removed_book_with_its_hashes_and_request(audited):
    run, corpus, prepared = audited
    record = audit_record(run)
    schedule = json.loads((prepared / "schedule.json").read_text())
    windows = [json.loads(line) for line in (prepared / "windows.jsonl").read_text().splitlines()]
    assert [r["step"] for r in record["requests"]] == [1, 2, 3]
    assert [(r["request"] or {}).get("id") for r in record["requests"]] == ["REQ-1", "REQ-2", "REQ-3"]
    assert record["requests"][0]["request"]["note"] == "rights holder A"
    assert record["requests"][1]["request"]["note"] == "from the layout"
    for r in record["requests"]:
        assert r["books"] == schedule["steps"][str(r["step"])]
        for book in r["books"]:
            h = r["removed"][book]
            raw = corpus / f"time_step_{r['step']}" / f"{book}.txt"
            assert h["raw_sha256"] == _sha(raw)
            lines = [json.dumps(w, ensure_ascii=False, sort_keys=True) for w in windows if w["book"] == book]
            assert h["windows_sha256"] == hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()
        assert r["vector_sha256"] == _sha(run / f"step_{r['step']}" / "vector.safetensors")
        assert r["alpha_source"] == "calibrated" and r["calibration"]["reached"] in (True, False)
    base = record["base_model"]
    assert base["kind"] == "local" and base["files"]["model.safetensors"] == _sha(
        Path(json.loads((run / "config.json").read_text())["config"]["model"]) / "model.safetensors")
    md = to_markdown(record)
    assert "request REQ-1" in md and "rights holder A" in md and record["requests"][2]["vector_sha256"] in md


def test_calibration_never_sees_an_audit_window(audited):
    run, _, _ = audited
    manifest = json.loads((run / "manifest.json").read_text())
    for step, entry in manifest["steps"].items():
        for split in entry["split"].values():
            assert not split["short"]
            assert set(split["calibration"]).isdisjoint(split["audit"]) and split["audit"]
        used = {tuple(x) for x in entry["calibration"]["window_ids"]}
        calibration = {(b, w) for b, s in entry["split"].items() for w in s["calibration"]}
        audit = {(b, w) for b, s in entry["split"].items() for w in s["audit"]}
        assert used and used <= calibration and not used & audit, step


@contextmanager
def flipped(path: Path, at: int):
    """One bit of ``path`` flipped at byte ``at`` while inside; restored after."""
    original = path.read_bytes()
    data = bytearray(original)
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    try:
        yield
    finally:
        path.write_bytes(original)


def test_verify_passes_untouched_and_names_a_flipped_byte(audited):
    run, _, prepared = audited
    checked = verify(run)
    assert checked["log_records"] == 3 and checked["vectors"] == 3 and checked["books"] == 3
    manifest = (run / "manifest.json").read_text()
    book = json.loads(manifest)["steps"]["1"]["books"][0]
    windows = (prepared / "windows.jsonl").read_text()
    cases = [
        (run / "step_2" / "vector.safetensors", -3, "step 2: the vector"),
        # a digit of an α inside valid JSON: that record no longer matches its digest
        (run / "manifest.json", manifest.index('"alpha": ') + len('"alpha": '), "was changed after it was recorded"),
        # a letter of the first removed book's first window
        (prepared / "windows.jsonl", windows.index('"continuation": "', windows.index(f'"book": "{book}"')) + 20,
         f"the prepared data changed: book {book!r}"),
    ]
    for path, at, message in cases:
        with flipped(path, at), pytest.raises(SSUError) as e:
            verify(run)
        assert message in str(e.value) and "\n" not in str(e.value), (path.name, str(e.value))
    verify(run)  # restored


def test_reweighting_is_recorded_and_composes(audited, tmp_path):
    run, _, _ = audited
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {e.step: e.alpha for e in stack_of(RunDir(copy))}
    event = reweight(copy, 2, 0.0, note="request withdrawn")
    assert event["previous_alpha"] == before[2] and event["seq"] == 4
    assert {e.step: e.alpha for e in stack_of(RunDir(copy))} == {**before, 2: 0.0}
    assert verify(copy)["log_records"] == 4
    _, md_path, record = write_audit(copy)
    assert record["requests"][1]["changed_later"][0]["kind"] == "reweight"
    assert "undone (α 0)" in md_path.read_text() and "request withdrawn" in md_path.read_text()
    # redoing step 2 drops steps 2-3 and the event made on the stack that held them; the log stays whole
    run_step(copy, 2, force=True, progress=False)
    assert RunDir(copy).events() == [] and verify(copy)["log_records"] == 2


def test_audit_split_is_seeded_disjoint_and_flags_short_books(capsys):
    from ssu.recipes.calibrate import audit_split, calibration_windows

    windows = [{"book": "long", "window": i} for i in range(10)] + [{"book": "short", "window": i} for i in range(3)]
    split = audit_split(windows, 0.5, seed=7)
    assert split == audit_split(windows, 0.5, seed=7) and split != audit_split(windows, 0.5, seed=8)
    long = split["long"]
    assert len(long["calibration"]) == 5 and sorted(long["calibration"] + long["audit"]) == list(range(10))
    assert split["short"] == {"calibration": [0, 1, 2], "audit": [0, 1, 2], "short": True}
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if "'short'" in line]) == 3 and "too few to keep calibration apart" in err[0]
    assert {w["window"] for w in calibration_windows(windows, split) if w["book"] == "long"} == set(long["calibration"])
