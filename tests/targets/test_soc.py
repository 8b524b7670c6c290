"""SoC registry: data files, schema, lookup, and the arm64 targets they produce."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import jsonschema
import pytest
import tvm
from tvm import te
from tvm.target import codegen

from banana.compiler.errors import BadConfigError
from banana.targets.soc import DATA_DIR, SCHEMA_PATH, cpu_target, list_socs, load_soc

EXPECTED_IDS = ["SM7475", "SM8550", "SM8650", "SM8750"]
# Big (non-efficiency) cores per socs.md: 8 Gen 2 = X3 + 2 A715 + 2 A710, 8 Gen 3 = X4 + 5 A720,
# 8 Elite = 8 Oryon, 7+ Gen 2 = X2 + 3 A710.
EXPECTED_BIG_CORES = {"SM8550": 5, "SM8650": 6, "SM8750": 8, "SM7475": 4}
LLVM_REJECTIONS = ("not a recognized processor", "is not valid", "not a recognized feature")


def _raw(soc_id: str) -> dict:
    return tomllib.loads((DATA_DIR / f"{soc_id}.toml").read_text(encoding="utf-8"))


def _walk(node, path=""):
    """Yield (path, node) for every dict, list and scalar in a parsed TOML tree."""
    yield path, node
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _walk(child, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _walk(child, f"{path}[{i}]")


def test_data_dir_holds_the_four_required_socs():
    assert sorted(p.stem for p in DATA_DIR.glob("*.toml")) == EXPECTED_IDS
    assert list_socs() == EXPECTED_IDS


@pytest.mark.parametrize("soc_id", EXPECTED_IDS)
def test_file_validates_against_schema_and_loads(soc_id):
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(_raw(soc_id), schema)  # independent of load_soc's own validation
    soc = load_soc(soc_id)
    assert soc.id == soc_id
    assert soc.source_file == DATA_DIR / f"{soc_id}.toml"


@pytest.mark.parametrize("soc_id", EXPECTED_IDS)
def test_every_number_sits_in_a_fact_with_a_source(soc_id):
    raw = _raw(soc_id)
    fact_paths = set()
    for path, node in _walk(raw):
        if isinstance(node, dict) and "value" in node:
            assert isinstance(node.get("source"), str) and node["source"].strip(), path
            assert isinstance(node.get("verified"), bool), path
            fact_paths.add(path)
    for path, node in _walk(raw):
        if isinstance(node, (int, float)) and not isinstance(node, bool) and path != "schema_version":
            assert any(path == f"{f}.value" or path.startswith(f"{f}.value[") for f in fact_paths), (
                f"bare number at {path}"
            )
    soc = load_soc(soc_id)
    assert set(soc.facts) == fact_paths
    assert all(f.source.strip() for f in soc.facts.values())


@pytest.mark.parametrize("soc_id", EXPECTED_IDS)
def test_derived_and_unverified_facts_are_not_marked_verified(soc_id):
    for path, fact in load_soc(soc_id).facts.items():
        if fact.source.startswith(("derived", "unverified", "assumption")):
            assert fact.verified is False, path


@pytest.mark.parametrize(
    ("name", "soc_id"),
    [
        ("SM8550", "SM8550"),
        ("sm8550", "SM8550"),
        ("8gen2", "SM8550"),
        ("Snapdragon 8 Gen 2", "SM8550"),
        ("8GEN3", "SM8650"),
        ("snapdragon_8_gen_3", "SM8650"),
        ("8elite", "SM8750"),
        ("Snapdragon-8-Elite", "SM8750"),
        ("7+gen2", "SM7475"),
        ("Snapdragon 7+ Gen 2", "SM7475"),
    ],
)
def test_ids_and_aliases_resolve_case_insensitively(name, soc_id):
    assert load_soc(name).id == soc_id


def test_loaded_socs_are_cached():
    assert load_soc("8gen2") is load_soc("SM8550")


def test_unknown_soc_error_lists_known_ids():
    with pytest.raises(BadConfigError) as info:
        load_soc("SM9999")
    assert str(info.value) == "unknown SoC 'SM9999'; known: SM7475, SM8550, SM8650, SM8750"


def _write_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = (DATA_DIR / "SM8550.toml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "SM8550.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('value = 3.2, unit = "GHz"', 'value = -3.2, unit = "GHz"', "cpu.clusters[0].max_ghz.value"),
        ('value = 3.2, unit = "GHz"', 'value = "fast", unit = "GHz"', "cpu.clusters[0].max_ghz.value"),
        (
            'source = "derived: 4200 MHz x 2 (DDR) = 8400 MT/s x 8 B (64-bit bus assumed) = 67.2 GB/s (socs.md)", ',
            "",
            "memory.dram_bandwidth_bytes_per_s",
        ),
        ('llvm_mcpu = "cortex-x3"', "llvm_mcpu = 3", "cpu.llvm_mcpu"),
    ],
)
def test_malformed_file_is_rejected_naming_file_and_field(tmp_path, old, new, field):
    path = _write_variant(tmp_path, old, new)
    with pytest.raises(BadConfigError) as info:
        load_soc("SM8550", data_dir=tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{field}'" in message
    assert "\n" not in message


def test_invalid_toml_is_rejected_naming_file(tmp_path):
    path = _write_variant(tmp_path, "[hexagon]", "[hexagon")
    with pytest.raises(BadConfigError, match="invalid TOML") as info:
        list_socs(data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_alias_claimed_by_two_files_is_rejected(tmp_path):
    _write_variant(tmp_path, 'id = "SM8550"', 'id = "SM8550"')
    other = (DATA_DIR / "SM8650.toml").read_text(encoding="utf-8").replace('"8g3"', '"8gen2"')
    (tmp_path / "SM8650.toml").write_text(other, encoding="utf-8")
    with pytest.raises(BadConfigError, match="'8gen2' already names SM8550"):
        load_soc("SM8650", data_dir=tmp_path)


@pytest.mark.parametrize("soc_id", EXPECTED_IDS)
def test_cpu_peak_matches_cluster_arithmetic(soc_id):
    soc = load_soc(soc_id)
    pipe_ghz = sum(c.count * c.max_ghz * c.simd_pipes_128b for c in soc.clusters if not c.efficiency)
    # 128-bit pipe: 4 fp32 FMA, 8 fp16 FMA, or one int8 sdot (16 MAC) per cycle; MAC = 2 ops.
    for precision, ops_per_pipe_cycle in (("fp32", 8), ("fp16", 16), ("int8", 32)):
        expected = pipe_ghz * 1e9 * ops_per_pipe_cycle
        assert math.isclose(soc.peak_ops_per_s("cpu", precision), expected, rel_tol=1e-9), precision
    assert soc.peak_ops_per_s("adreno", "fp32") is None  # not published: unknown, not zero


@pytest.mark.parametrize("soc_id", EXPECTED_IDS)
def test_dram_bandwidth_matches_clock_and_64_bit_bus(soc_id):
    soc = load_soc(soc_id)
    clock_mhz = soc.facts["memory.dram_clock_mhz"].value
    assert math.isclose(soc.dram_bandwidth_bytes_per_s, clock_mhz * 1e6 * 2 * 8, rel_tol=1e-9)


def test_published_figures_from_socs_md():
    g2, g3 = load_soc("8gen2"), load_soc("8gen3")
    assert [(s.backend, s.retained_fraction) for s in g2.sustained] == [("adreno", 0.90)]
    assert {(s.backend, s.retained_fraction, s.bound) for s in g3.sustained} == {
        ("cpu", 0.82, "exact"),
        ("adreno", 0.5, "upper"),
    }
    unet = {r.device: r.latency_ms for s in (g2, g3) for r in s.reference_latencies if "UNet" in r.model}
    assert unet == {"Galaxy S23": 111.9, "Galaxy S24": 79.0}
    assert g3.thermal["skin_limit_temp_c"].value == 45.0


@pytest.mark.parametrize(
    ("soc_id", "arch"), [("SM8550", "v73"), ("SM8650", "v75"), ("SM8750", "v79"), ("SM7475", "v69")]
)
def test_hexagon_facts_and_llvm_knows_the_arch(soc_id, arch):
    hexagon = load_soc(soc_id).hexagon
    assert (hexagon.arch, hexagon.vtcm_bytes, hexagon.hvx_contexts, hexagon.hvx_vector_bytes) == (
        arch,
        8 * 2**20,
        4,
        128,
    )
    assert codegen.llvm_is_valid_cpu(hexagon.llvm_mcpu, "hexagon")


@pytest.mark.parametrize("soc_id", EXPECTED_IDS)
def test_cpu_target_builds_with_real_features_and_no_sve(soc_id):
    soc = load_soc(soc_id)
    spec = cpu_target(soc)
    assert spec["kind"] == "llvm" and spec["mtriple"] == "aarch64-linux-gnu"
    assert spec["mcpu"] != "native"
    assert spec["num-cores"] == EXPECTED_BIG_CORES[soc_id]
    assert {"+neon", "+dotprod", "+i8mm", "+fullfp16"} <= set(spec["mattr"])
    assert not [m for m in spec["mattr"] if m.startswith("+sve") or m.startswith("+sme")]
    target = tvm.target.Target(spec)
    enabled = set(codegen.llvm_get_cpu_features(target))
    assert {"neon", "dotprod", "i8mm", "fullfp16"} <= enabled
    assert not {f for f in enabled if f.startswith(("sve", "sme"))}
    assert {"dotprod", "i8mm", "fp16"} <= set(soc.cpu_features)
    assert "sve" in soc.cpu_features_absent and not soc.has_cpu_feature("sve")


def test_cpu_target_num_cores_override_and_range():
    soc = load_soc("8gen2")
    assert cpu_target(soc, num_cores=8)["num-cores"] == 8
    for bad in (0, 9):
        with pytest.raises(BadConfigError, match=f"num_cores {bad}"):
            cpu_target(soc, num_cores=bad)


def _compile_trivial(target_spec: dict) -> None:
    a = te.placeholder((64,), "float32", name="a")
    b = te.compute((64,), lambda i: a[i] * 2.0, name="b")
    tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b])}), target=tvm.target.Target(target_spec))


@pytest.mark.parametrize("soc_id", EXPECTED_IDS)
def test_llvm_accepts_mcpu_and_mattr(soc_id, capfd):
    capfd.readouterr()
    _compile_trivial(cpu_target(load_soc(soc_id)))
    err = capfd.readouterr().err
    assert not [m for m in LLVM_REJECTIONS if m in err], err


def test_llvm_rejection_is_detected_for_a_bogus_cpu(capfd):
    """Control for the test above: LLVM's complaint must reach the captured stderr."""
    capfd.readouterr()
    spec = dict(cpu_target(load_soc("8gen2")), mcpu="bogus-cpu")
    _compile_trivial(spec)
    err = capfd.readouterr().err
    assert any(m in err for m in LLVM_REJECTIONS), repr(err)
