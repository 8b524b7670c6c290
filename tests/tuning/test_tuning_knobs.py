"""banana tune searches the fused attention kernel's knobs; banana compile --tuning-db uses them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from banana.kernels.attention import AttentionKnobs, AttentionSpec, default_knobs
from banana.tuning import knobs as knobs_mod
from banana.tuning.knobs import (
    KNOBS_FILE,
    LEGACY_KNOBS_FILE,
    KnobStore,
    candidates,
    knob_budget,
    spec_key,
    split_trials,
    store_key,
)
from tests.compiler.passes.test_attention_fusion import _onnx_attention
from tests.tuning.knob_tuning import tune_rejects_one_and_resumes

SPEC = AttentionSpec(batch=1, q_heads=4, kv_heads=2, q_len=64, kv_len=64, head_dim=16, scale=0.25)


def test_budget_and_candidates_are_bounded_and_start_with_the_default() -> None:
    assert knob_budget(0, 1) == 0 and knob_budget(10, 0) == 0
    assert knob_budget(4, 1) == 4 and knob_budget(2, 1) == 2  # never more than --trials
    assert knob_budget(1000, 2) == 32  # at most the whole grid per kernel
    listed = candidates(SPEC, 2, 5)
    assert listed[0] == default_knobs(SPEC, 2) and len(set(listed)) == 5
    assert spec_key(SPEC) != spec_key(dataclasses.replace(SPEC, causal=True))
    assert knob_budget(1000, 2, caps=[16, 5]) == 21  # a kernel never gets more than its candidate list
    assert split_trials(10, [16, 2, 16]) == [5, 2, 3] and split_trials(3, [1, 1]) == [1, 1]


def test_store_round_trips_and_is_schema_checked(tmp_path: Path) -> None:
    store = KnobStore.open(tmp_path, "HOST", "host")
    entry = store.entry(SPEC, default_knobs(SPEC, 1))
    entry["best"], entry["best_seconds"] = AttentionKnobs(16, 32).to_json(), 1e-3
    store.save()
    assert knobs_mod.load_tuned_knobs(tmp_path, "HOST", "host") == {spec_key(SPEC): AttentionKnobs(16, 32)}
    assert knobs_mod.load_tuned_knobs(tmp_path, "HOST", "adreno") == {}
    payload = json.loads(store.path.read_text())
    payload["kernels"][store_key("attention", SPEC.to_json())]["best"] = {"tile_q": "big"}
    store.path.write_text(json.dumps(payload))
    with pytest.raises(Exception, match="tile_q|best"):
        KnobStore.open(tmp_path, "HOST", "host")


def test_version_1_attention_store_is_read_and_migrated(tmp_path: Path) -> None:
    """A first-session attention_knobs.json (schema version 1, keyed by spec JSON) keeps working."""
    directory = KnobStore.open(tmp_path, "HOST", "host").path.parent
    entry = {"kernel": "attention", "spec": SPEC.to_json(), "default": default_knobs(SPEC, 1).to_json(),
             "measured": [], "best": AttentionKnobs(16, 32).to_json(), "best_seconds": 1e-3}
    legacy = directory / LEGACY_KNOBS_FILE
    legacy.write_text(json.dumps({"schema_version": 1, "soc": "HOST", "backend": "host",
                                  "kernels": {spec_key(SPEC): entry}}))
    assert knobs_mod.load_tuned_knobs(tmp_path, "HOST", "host") == {spec_key(SPEC): AttentionKnobs(16, 32)}
    assert legacy.is_file() and not (directory / KNOBS_FILE).exists()  # reading does not migrate
    store = KnobStore.open(tmp_path, "HOST", "host")
    store.save()
    assert not legacy.exists() and json.loads((directory / KNOBS_FILE).read_text())["schema_version"] == 2
    assert knobs_mod.load_tuned_knobs(tmp_path, "HOST", "host") == {spec_key(SPEC): AttentionKnobs(16, 32)}


def test_tune_rejects_wrong_knobs_resumes_and_compile_uses_stored_knobs(tmp_path: Path, monkeypatch: Any) -> None:
    from banana.compiler.pipeline import compile_model

    model = _onnx_attention(tmp_path, repeat="expand", lq=64, lkv=64, name="gqa")
    db = tmp_path / "db"
    real_kernel = knobs_mod.cpu_kernel
    wrong: list[AttentionKnobs] = []

    def broken_for_one_knob(spec: AttentionSpec, cores: int, knobs: AttentionKnobs | None = None) -> Any:
        if knobs is not None and knobs == candidates(spec, cores, 4)[1]:  # the first non-default candidate
            wrong.append(knobs)
            return real_kernel(dataclasses.replace(spec, scale=spec.scale * 2), cores, knobs)
        return real_kernel(spec, cores, knobs)

    monkeypatch.setattr(knobs_mod, "cpu_kernel", broken_for_one_knob)
    _, entry, store_path = tune_rejects_one_and_resumes(model, db, wrong, monkeypatch)
    monkeypatch.setattr(knobs_mod, "cpu_kernel", real_kernel)

    # force a non-default verified winner so the assertion below can tell stored from default knobs
    chosen = next(m["knobs"] for m in entry["measured"] if m["ok"] and m["knobs"] != entry["default"])
    payload = json.loads(store_path.read_text())
    (key,) = payload["kernels"]
    payload["kernels"][key]["best"] = chosen
    store_path.write_text(json.dumps(payload))
    result = compile_model(model, backend="host", out=tmp_path / "out", tuning_db=db, verify=True)
    (site,) = result.manifest["attention"]["sites"]
    assert site["knobs"] == chosen
    assert site["kernel"] in result.manifest["tuning"]["tuned_tasks"]
    assert result.verify is not None and result.verify.ok


@pytest.mark.parametrize(("challenger_s", "kept"), [(0.5, True), (0.95, False)])
def test_a_non_default_winner_is_re_timed_and_reverted_unless_it_holds_up(monkeypatch: Any, challenger_s: float,
                                                                         kept: bool) -> None:
    """One timing per candidate picks noise on a shared host: the winner must beat the default again,
    interleaved, by the replace margin; the confirmation is stored so a rerun does not repeat it."""
    default, other = AttentionKnobs(32, 32), AttentionKnobs(16, 16)
    kernel = knobs_mod.KnobKernel("attention", SPEC.to_json(), default, lambda n: [default, other][:n],
                                  lambda knobs: knobs)
    entry = {"best": other.to_json(), "best_seconds": 0.4}
    calls: list[Any] = []

    def retime(mods: list[Any], *_: Any) -> list[list[float]]:
        calls.append(mods)
        return [[1.0, 1.1, 0.9], [challenger_s] * 3]

    monkeypatch.setattr(knobs_mod, "_retime", retime)
    knobs_mod._confirm(kernel, entry, None, None, None, "local")
    assert calls == [[default, other]]
    assert entry["confirmation"]["kept"] is kept and entry["confirmation"]["default_seconds"] == 1.0
    assert entry["best"] == (other if kept else default).to_json()
    assert entry["best_seconds"] == (challenger_s if kept else 1.0)
    knobs_mod._confirm(kernel, entry, None, None, None, "local")
    assert len(calls) == 1  # stored: not re-timed again
