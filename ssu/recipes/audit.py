"""``ssu audit RUN [--verify]``: the takedown log of a run, and a check that nothing in it changed.

A model owner who removes a book answers to the rights holder: what was removed, when,
from which model, by which change, and with what evidence that the model no longer
reproduces it. Everything needed is already in the run directory; this recipe puts it
in one record per request, ``RUN/audit.json``, and a readable ``RUN/audit.md``:

- the request (id and note, ``ssu step --request-id/--note`` or the books layout's
  ``time_step_T/request.json``) and the UTC time the step completed;
- what was removed: each book's sha256 of its raw file, cleaned text and prepared windows;
- from which model: the base model's files and hashes, or hub id and revision;
- by which change: the vector's sha256, α as recorded and as the stack applies it now,
  how α was chosen (calibrated: target, score before, whether reached), the config's
  digest and the package versions;
- the evidence: each removed book's memorization before (the step before) and after,
  greedy ROUGE-L on its audit windows and the worst case over the probes run, with 95 %
  intervals, beside the never-seen level (held-out text, same probes); the cost on
  retained and not-yet-removed books and on held-out perplexity;
- what happened since: later re-weightings or undoings of the step (the log's events).

``verify`` re-hashes every artifact -- the log's chain of digests, each vector, the
config, the prepared data of every removed book, the base model -- and raises one
line naming the first thing that changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssu.errors import SSUError
from ssu.eval.probes import WORST
from ssu.io import atomic_write_json, atomic_write_text, read_jsonl, sha256_file
from ssu.recipes.run_dir import CONFIG, MANIFEST, RESULTS, VECTOR, RunDir, model_fingerprint

AUDIT_JSON, AUDIT_MD = "audit.json", "audit.md"
GREEDY = "rougeL_f"


def _open(run_dir) -> RunDir:
    """The run, with a manifest that is not valid JSON said in one line."""
    import json

    try:
        return RunDir(run_dir)
    except json.JSONDecodeError as e:
        raise SSUError(f"{run_dir}: {CONFIG} is not valid JSON (changed or damaged): {e.msg}") from None


def _manifest(run: RunDir) -> dict:
    import json

    try:
        return run.manifest
    except json.JSONDecodeError as e:
        raise SSUError(f"{run.path / MANIFEST} is not valid JSON (changed or damaged): {e.msg}") from None


def verify(run_dir) -> dict[str, int]:
    """Re-hash every artifact of the run; raise naming the first change. Returns what was checked."""
    run = _open(run_dir)
    manifest = _manifest(run)
    checked = {"log_records": run.verify_chain(), "vectors": 0, "books": 0, "base_model_files": 0}
    digest = run.config_digest()
    for step, entry in sorted(manifest["steps"].items(), key=lambda kv: int(kv[0])):
        path = run.vector_path(int(step))
        if not path.is_file():
            raise SSUError(f"step {step}: {path} is missing")
        if sha256_file(path) != entry["artifacts"][VECTOR]["sha256"]:
            raise SSUError(f"step {step}: the vector {path} changed since it was recorded (sha256 differs)")
        checked["vectors"] += 1
        if entry.get("config_sha256") not in (None, digest):
            raise SSUError(f"step {step}: the run's config ({run.path / CONFIG}) changed since the step ran")
        removed = entry.get("removed") or {}
        if removed:
            from data_prep import book_digests

            try:
                now = book_digests(run.config.data, sorted(removed))
            except SSUError as e:
                raise SSUError(f"step {step}: the prepared data changed: {e}") from None
            for book, recorded in removed.items():
                for key in ("windows_sha256", "text_sha256", "raw_sha256"):
                    if recorded.get(key) is not None and now[book][key] != recorded[key]:
                        what = {"windows_sha256": "prepared windows", "text_sha256": "cleaned text",
                                "raw_sha256": "raw file hash in the schedule"}[key]
                        raise SSUError(f"step {step}: the prepared data changed: book {book!r}'s {what} "
                                       f"({run.config.data})")
                checked["books"] += 1
    checked["base_model_files"] = _verify_base(run)
    return checked


def _verify_base(run: RunDir) -> int:
    identity = run.record.get("base_model")
    model = Path(run.config.model)
    if identity is None:  # a run from before identities were recorded: the one fingerprint
        if model_fingerprint(run.config.model) != run.record.get("base_model_sha256"):
            raise SSUError(f"the base model {run.config.model} changed since `ssu init` (fingerprint differs)")
        return 1
    if identity["kind"] != "local":
        return 0  # a hub revision is immutable; nothing local to re-hash
    for name, digest in identity["files"].items():
        f = model / name
        if not f.is_file():
            raise SSUError(f"the base model changed: {f} is missing")
        if sha256_file(f) != digest:
            raise SSUError(f"the base model changed: {f} (sha256 differs from `ssu init`'s)")
    return len(identity["files"])


# --- the record ------------------------------------------------------------------------------


def _value(rows: dict, step: int, book: str, set_: str, metric: str) -> dict | None:
    r = rows.get((step, book, set_, metric))
    return None if r is None else {k: r[k] for k in ("value", "ci_low", "ci_high", "n")}


def _mean(rows: dict, step: int, set_: str, metric: str) -> float | None:
    vals = [r["value"] for (s, _, st, m), r in rows.items() if s == step and st == set_ and m == metric]
    return None if not vals else sum(vals) / len(vals)


def audit_record(run_dir) -> dict[str, Any]:
    """The takedown log of the run as one JSON-ready dict (see the module docstring)."""
    run = _open(run_dir)
    manifest = _manifest(run)
    rows = {(r["step"], r["book"], r["set"], r["metric"]): r for r in read_jsonl(run.path / RESULTS)}
    evaluated = sorted({k[0] for k in rows})
    alphas = run.effective_alphas()
    events = manifest.get("events", [])
    requests = []
    for step_s, e in sorted(manifest["steps"].items(), key=lambda kv: int(kv[0])):
        t = int(step_s)
        books = list(e.get("books", []))
        memo = {}
        for b in books:
            later = [s for s in evaluated if s > t and (s, b, "removed-earlier", GREEDY) in rows]
            memo[b] = {
                "before": _value(rows, t - 1, b, "future", GREEDY),
                "after": _value(rows, t, b, "removed-now", GREEDY),
                "after_worst_case": _value(rows, t, b, "removed-now", WORST),
                "after_all_windows": _value(rows, t, b, "removed-now:all", GREEDY),
                "latest": None if not later else {"step": later[-1], **_value(rows, later[-1], b, "removed-earlier",
                                                                                GREEDY)},
                "latest_worst_case": None if not later else _value(rows, later[-1], b, "removed-earlier", WORST),
                "split": (e.get("split") or {}).get(b),
            }
        cal = e.get("calibration")
        requests.append({
            "step": t, "request": e.get("request"), "utc": e.get("utc"), "books": books,
            "removed": e.get("removed"), "vector_sha256": e["artifacts"][VECTOR]["sha256"],
            "alpha": e["alpha"], "alpha_now": alphas.get(t), "alpha_source": e.get("alpha_source", "config"),
            "calibration": None if cal is None else {k: cal.get(k) for k in ("target", "score_at_0", "reached",
                                                                             "windows")},
            "method": e.get("method"), "config_sha256": e.get("config_sha256"),
            "entry_sha256": e.get("entry_sha256"),
            "memorization": memo,
            "never_seen": {"greedy": _mean(rows, t, "heldout", GREEDY), "worst_case": _mean(rows, t, "heldout", WORST)},
            "cost": {"retain": {"before": _mean(rows, 0, "retain", GREEDY), "after": _mean(rows, t, "retain", GREEDY)},
                     "not_yet_removed": {"before": _mean(rows, 0, "future", GREEDY),
                                         "after": _mean(rows, t, "future", GREEDY)},
                     "heldout_perplexity": {"before": _mean(rows, 0, "heldout", "perplexity"),
                                            "after": _mean(rows, t, "heldout", "perplexity")}},
            "changed_later": [{k: ev.get(k) for k in ("kind", "alpha", "previous_alpha", "utc", "note")}
                              for ev in events if ev.get("step") == t],
        })
    return {"run": str(run.path), "base_model": run.record.get("base_model") or
            {"fingerprint": run.record.get("base_model_sha256")},
            "model": run.config.model, "data": run.config.data, "versions": run.record.get("environment"),
            "requests": requests}


def write_audit(run_dir) -> tuple[Path, Path, dict]:
    """Write ``audit.json`` and ``audit.md`` into the run directory; return their paths and the record."""
    run = _open(run_dir)
    record = audit_record(run_dir)
    atomic_write_json(run.path / AUDIT_JSON, record)
    atomic_write_text(run.path / AUDIT_MD, to_markdown(record))
    return run.path / AUDIT_JSON, run.path / AUDIT_MD, record


def _f(v: dict | float | None, ci: bool = True) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):
        s = f"{v['value']:.2f}"
        return s + (f" [{v['ci_low']:.2f}, {v['ci_high']:.2f}]" if ci else "")
    return f"{v:.2f}"


def to_markdown(record: dict) -> str:
    """The takedown log for people: one section per request."""
    base = record["base_model"]
    base_s = (f"hub {base['id']} @ {base.get('revision') or 'unknown revision'}" if base.get("kind") == "hub" else
              ", ".join(f"{n} {d[:12]}" for n, d in base.get("files", {}).items()) or str(base))
    lines = [f"# Takedown log of {Path(record['run']).name}", "",
             f"Base model: {record['model']} ({base_s}).  ",
             f"Versions: {', '.join(f'{k} {v}' for k, v in (record.get('versions') or {}).items())}.", ""]
    for r in record["requests"]:
        req = r["request"] or {}
        title = f"Step {r['step']}: request {req.get('id', '(no id)')}"
        lines += [f"## {title}", ""]
        if req.get("note"):
            lines += [f"> {req['note']}", ""]
        lines += [f"- completed {r['utc'] or '(time not recorded)'}; method {r['method']}",
                  f"- vector sha256 {r['vector_sha256']}; α {r['alpha']:g} ({r['alpha_source']})"
                  + (f", now {r['alpha_now']:g}" if r["alpha_now"] != r["alpha"] else ""),
                  f"- config sha256 {r['config_sha256'] or '(not recorded)'}"]
        if r["calibration"]:
            c = r["calibration"]
            lines.append(f"- calibration: target ROUGE-L {c['target']}, before {c['score_at_0']}, "
                         f"{'reached' if c['reached'] else 'NOT reached'} on {c['windows']} calibration windows")
        for ev in r["changed_later"]:
            what = "undone (α 0)" if ev["alpha"] == 0 else f"re-weighted {ev['previous_alpha']:g} → {ev['alpha']:g}"
            lines.append(f"- later: {what} at {ev['utc']}" + (f" ({ev['note']})" if ev.get("note") else ""))
        lines += ["", "| book | raw sha256 | windows sha256 | before | after (greedy) | after (worst case) | "
                      "latest (greedy / worst) | audit windows |", "|---|---|---|---|---|---|---|---|"]
        for b in r["books"]:
            h = (r["removed"] or {}).get(b, {})
            m = r["memorization"][b]
            sp = m["split"]
            split_s = "all (untuned)" if sp is None else (f"all ({len(sp['audit'])}; too short to split)"
                                                          if sp["short"] else f"{len(sp['audit'])} of "
                                                          f"{len(sp['audit']) + len(sp['calibration'])}")
            latest = "–" if m["latest"] is None else \
                f"{_f(m['latest'], False)} / {_f(m['latest_worst_case'], False)} (step {m['latest']['step']})"
            lines.append(f"| {b} | {(h.get('raw_sha256') or '–')[:12]} | {(h.get('windows_sha256') or '–')[:12]} | "
                         f"{_f(m['before'])} | {_f(m['after'])} | {_f(m['after_worst_case'])} | {latest} | "
                         f"{split_s} |")
        ns, c = r["never_seen"], r["cost"]
        lines += ["", f"Never-seen level (held-out text): greedy {_f(ns['greedy'])}, worst case "
                      f"{_f(ns['worst_case'])}. Cost: retained {_f(c['retain']['before'])} → "
                      f"{_f(c['retain']['after'])}, not yet removed {_f(c['not_yet_removed']['before'])} → "
                      f"{_f(c['not_yet_removed']['after'])}, held-out perplexity "
                      f"{_f(c['heldout_perplexity']['before'])} → {_f(c['heldout_perplexity']['after'])}.", ""]
    lines += ["ROUGE-L F1 of greedy continuations from the training prompt, on each book's audit windows "
              "(those its step did not tune α on), with 95 % bootstrap intervals; worst case: per window the "
              "maximum over greedy and the probes run (`ssu eval RUN T --probe ...`). `ssu audit RUN --verify` "
              "re-hashes every artifact named here.", ""]
    return "\n".join(lines)
