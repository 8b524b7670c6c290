"""Standard ONNX Attention (opset 23/24) -> decomposed graph -> fused kernel, checked against
onnxruntime running the *original* Attention node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from banana.compiler.artifact import Artifact
from banana.compiler.frontend.importer import import_onnx
from banana.compiler.passes import fuse_attention
from banana.compiler.passes.onnx_attention import decompose_attention_ops
from banana.compiler.pipeline import compile_model


def _attention_model(path: Path, *, rank: int, hq: int, hkv: int, lq: int, lkv: int, d: int, causal: int,
                     mask: str | None, scale: float | None, opset: int) -> Path:
    if rank == 4:
        shapes = {"q": [1, hq, lq, d], "k": [1, hkv, lkv, d], "v": [1, hkv, lkv, d]}
        out_shape = [1, hq, lq, d]
    else:
        shapes = {"q": [1, lq, hq * d], "k": [1, lkv, hkv * d], "v": [1, lkv, hkv * d]}
        out_shape = [1, lq, hq * d]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    names = ["q", "k", "v"]
    if mask:
        inputs.append(helper.make_tensor_value_info(
            "mask", TensorProto.BOOL if mask == "bool" else TensorProto.FLOAT, [lq, lkv]))
        names.append("mask")
    attrs = {"is_causal": causal}
    if rank == 3:
        attrs.update(q_num_heads=hq, kv_num_heads=hkv)
    if scale is not None:
        attrs["scale"] = scale
    node = helper.make_node("Attention", names, ["y"], name="attn", **attrs)
    graph = helper.make_graph([node], "attention", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="banana-tests")
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == TensorProto.BOOL:
            value = rng.random(shape) > 0.3
            value[..., 0] = True  # every query row sees at least one key
            feeds[vi.name] = value
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


CASES = {
    "4d-gqa-causal": dict(rank=4, hq=8, hkv=2, lq=24, lkv=24, d=16, causal=1, mask=None, scale=None, opset=23),
    "3d-gqa-float-mask": dict(rank=3, hq=8, hkv=2, lq=20, lkv=20, d=16, causal=0, mask="float", scale=0.3, opset=23),
    "4d-mha-bool-mask-cross": dict(rank=4, hq=4, hkv=4, lq=17, lkv=9, d=8, causal=0, mask="bool", scale=None,
                                   opset=24),
}


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_attention_decomposes_fuses_and_matches_onnxruntime(tmp_path: Path, case: str) -> None:
    spec = CASES[case]
    original = _attention_model(tmp_path / "attn.onnx", **spec)
    model = onnx.load(str(original))
    decomposed, count = decompose_attention_ops(model)
    assert count == 1 and all(n.op_type != "Attention" for n in decomposed.graph.node)
    feeds = _inputs(model)
    want = ort.InferenceSession(str(original)).run(None, feeds)[0]
    got = ort.InferenceSession(decomposed.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # the rewrite alone is exact
    path = tmp_path / "decomposed.onnx"
    onnx.save_model(decomposed, str(path))
    imported = import_onnx(path)
    fusion = fuse_attention(imported.mod, params=dict(zip(imported.weight_names, imported.weights, strict=True)))
    assert len(fusion.sites) == 1, fusion.to_json()
    site = fusion.sites[0]
    assert (site.q_heads, site.kv_heads, site.causal) == (spec["hq"], spec["hkv"], bool(spec["causal"]))
    assert site.mask is None if spec["mask"] is None else site.mask == [1, 1, spec["lq"], spec["lkv"]]
    out = tmp_path / "out"
    compile_model(path, backend="host", out=out)
    _check_against_original(out, original, feeds)


def _check_against_original(out: Path, original: Path, feeds: dict[str, np.ndarray]) -> None:
    """Run the artifact here and compare with onnxruntime on the model holding the Attention op."""
    from banana.targets.backends import get_backend

    artifact = Artifact.open(out)
    names = [spec["name"] for spec in artifact.manifest["inputs"]]
    (got,) = get_backend("host").run(artifact, [feeds[n] for n in names])
    want = ort.InferenceSession(str(original)).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_unsupported_attention_is_left_alone(tmp_path: Path) -> None:
    path = _attention_model(tmp_path / "a.onnx", rank=4, hq=2, hkv=2, lq=4, lkv=4, d=8, causal=0, mask=None,
                            scale=None, opset=23)
    model = onnx.load(str(path))
    for attr in model.graph.node[0].attribute:
        if attr.name == "is_causal":
            attr.i = 0
    model.graph.node[0].attribute.append(helper.make_attribute("softcap", 30.0))
    decomposed, count = decompose_attention_ops(model)
    assert count == 0 and decomposed.graph.node[0].op_type == "Attention"


def _repeated_kv_attention_model(path: Path, repeat: str, *, hq: int = 8, hkv: int = 2, length: int = 24,
                                 d: int = 16) -> Path:
    """K/V heads repeated in the graph (transformers' ``repeat_kv`` and friends), then an opset-23
    ``Attention`` that sees equal head counts: the repeat must still be recovered as GQA."""
    from tests.compiler.passes.test_attention_fusion import _repeat_nodes

    nodes, inits = [], []
    for t in ("k", "v"):
        ns, its = _repeat_nodes(repeat, t, f"{t}_rep", hq // hkv, hkv)
        nodes += ns
        inits += its
    nodes.append(helper.make_node("Attention", ["q", "k_rep", "v_rep"], ["y"], name="attn", is_causal=1))
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("q", f, [1, hq, length, d]),
              helper.make_tensor_value_info("k", f, [1, hkv, length, d]),
              helper.make_tensor_value_info("v", f, [1, hkv, length, d])]
    graph = helper.make_graph(nodes, "repeat_attention", inputs,
                              [helper.make_tensor_value_info("y", f, [1, hq, length, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], producer_name="banana-tests")
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("repeat,backend", [("expand", "host"), ("gather", "host"), ("expand", "cpu")])
def test_repeat_in_front_of_attention_op_is_gqa(tmp_path: Path, repeat: str, backend: str) -> None:
    from tests.compiler.passes.test_attention_fusion import D

    assert D == 16  # _repeat_nodes reshapes to the fusion tests' head dim
    original = _repeated_kv_attention_model(tmp_path / f"{repeat}.onnx", repeat)
    soc = "SM8650" if backend == "cpu" else None
    result = compile_model(original, backend=backend, soc=soc, out=tmp_path / "out", verify=True)
    assert result.verify is not None and result.verify.ok  # onnxruntime on the file with the Attention op
    site = result.manifest["attention"]["sites"][0]
    assert result.manifest["attention"]["fused"] == 1
    assert (site["q_heads"], site["kv_heads"], site["group"], site["kv_repeat"], site["causal"]) == (
        8, 2, 4, repeat, True)


class _Sdpa(torch.nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal=self.causal)


def _sdpa_model(path: Path, opset: int, causal: bool = True) -> onnx.ModelProto:
    """torch 2.13's dynamo export of SDPA with ``enable_gqa``: ``Attention`` at 23+, decomposed below."""
    torch.manual_seed(0)
    args = (torch.randn(1, 8, 32, 16), torch.randn(1, 2, 32, 16), torch.randn(1, 2, 32, 16))
    prog = torch.onnx.export(_Sdpa(causal).eval(), args, dynamo=True, input_names=["q", "k", "v"],
                             opset_version=opset, optimize=True, verify=False, report=False)
    onnx.save_model(prog.model_proto, str(path))
    return prog.model_proto


def test_torch_sdpa_enable_gqa_at_opset_23(tmp_path: Path) -> None:
    original = tmp_path / "sdpa23.onnx"
    proto = _sdpa_model(original, 23)
    decomposed, count = decompose_attention_ops(proto)
    assert count == 1
    path = tmp_path / "decomposed.onnx"
    onnx.save_model(decomposed, str(path))
    out = tmp_path / "out"
    result = compile_model(path, backend="host", out=out)
    assert result.manifest["attention"]["fused"] == 1
    assert result.manifest["attention"]["sites"][0]["causal"] is True
    _check_against_original(out, original, _inputs(proto))


@pytest.mark.parametrize("opset", [17, 18])
def test_torch_sdpa_enable_gqa_decomposed_at_opsets_17_18(tmp_path: Path, opset: int) -> None:
    """Below opset 23 the exporter repeats K/V itself (with a 0-d Unsqueeze axes TVM cannot read)."""
    original = tmp_path / f"sdpa{opset}.onnx"
    proto = _sdpa_model(original, opset, causal=False)
    assert "Attention" not in {n.op_type for n in proto.graph.node}
    result = compile_model(original, backend="host", out=tmp_path / "out", verify=True)
    assert result.verify is not None and result.verify.ok  # onnxruntime on the exported file, rtol 1e-4
    attention = result.manifest["attention"]
    assert attention["fused"] == 1 and attention["unfused"] == 0
    site = attention["sites"][0]
    assert (site["q_heads"], site["kv_heads"], site["group"], site["kv_repeat"]) == (8, 2, 4, "expand")


ARM64_CASES = ["attention-4d-gqa-causal", "attention-3d-gqa-float-mask", "attention-4d-mha-bool-mask-cross",
               "sdpa23", "sdpa18"]


@pytest.mark.parametrize("case", ARM64_CASES)
def test_arm64_under_qemu_matches_onnxruntime_on_the_original(tmp_path: Path, case: str) -> None:
    """The files holding Attention ops (or torch's decomposed SDPA) on arm64, verified under qemu."""
    original = tmp_path / f"{case}.onnx"
    if case.startswith("sdpa"):
        _sdpa_model(original, int(case[4:]), causal=case == "sdpa23")
    else:
        _attention_model(original, **CASES[case.removeprefix("attention-")])
    result = compile_model(original, backend="cpu", soc="SM8650", out=tmp_path / "out", verify=True)
    assert result.verify is not None and result.verify.ok and result.verify.executed
    assert result.manifest["attention"]["fused"] == 1 and result.manifest["attention"]["unfused"] == 0


def _gqa_model(path: Path, *, packed: bool, present: bool, b: int = 2, s: int = 12, hq: int = 8, hkv: int = 2,
               d: int = 16) -> Path:
    ins = ["qkv", "", "", "", "", "seqlens_k", "total_len"] if packed else ["q", "k", "v", "", "", "seqlens_k",
                                                                             "total_len"]
    outs = ["y", "present_k", "present_v"]
    node = helper.make_node("GroupQueryAttention", ins, outs, domain="com.microsoft", num_heads=hq, kv_num_heads=hkv)
    f = TensorProto.FLOAT
    if packed:
        inputs = [helper.make_tensor_value_info("qkv", f, [b, s, (hq + 2 * hkv) * d])]
    else:
        inputs = [helper.make_tensor_value_info(n, f, [b, s, h * d]) for n, h in (("q", hq), ("k", hkv), ("v", hkv))]
    inputs += [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [b]),
               helper.make_tensor_value_info("total_len", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info("y", f, [b, s, hq * d])]
    if present:
        outputs += [helper.make_tensor_value_info(n, f, [b, hkv, s, d]) for n in ("present_k", "present_v")]
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="banana-tests")
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("packed,present", [(False, True), (True, False)], ids=["separate-present", "packed"])
def test_microsoft_group_query_attention(tmp_path: Path, packed: bool, present: bool) -> None:
    original = _gqa_model(tmp_path / "gqa.onnx", packed=packed, present=present)
    model = onnx.load(str(original))
    decomposed, count = decompose_attention_ops(model)
    assert count == 1 and all(n.op_type != "GroupQueryAttention" for n in decomposed.graph.node)
    rng = np.random.default_rng(0)
    feeds = {vi.name: rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
             for vi in model.graph.input if vi.name not in ("seqlens_k", "total_len")}
    feeds["seqlens_k"] = np.array([11, 11], np.int32)  # prompt of 12 tokens: seqlens_k = length - 1
    feeds["total_len"] = np.array(12, np.int32)
    want = ort.InferenceSession(str(original)).run(None, feeds)
    got = ort.InferenceSession(decomposed.SerializeToString()).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    path = tmp_path / "decomposed.onnx"
    onnx.save_model(decomposed, str(path))
    imported = import_onnx(path)
    fusion = fuse_attention(imported.mod, params=dict(zip(imported.weight_names, imported.weights, strict=True)))
    assert len(fusion.sites) == 1 and fusion.sites[0].causal and fusion.sites[0].group == 4
    assert fusion.sites[0].mask == [2, 1, 1, 12]  # key padding from seqlens_k, broadcast in the kernel
    out = tmp_path / "out"
    compile_model(path, backend="host", out=out)
    # The VM directly: the host backend's run() turns the 0-d total_len input into 1-d.
    import tvm
    from tvm import relax

    artifact = Artifact.open(out)
    names = [spec["name"] for spec in artifact.manifest["inputs"]]
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), tvm.cpu())
    args = [tvm.runtime.tensor(feeds[n]) for n in names] + [tvm.runtime.tensor(w) for w in artifact.load_weights()]
    result = vm["main"](*args)
    outputs = [r.numpy() for r in result] if present else [result.numpy()]
    for g, w in zip(outputs, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_microsoft_group_query_attention_on_arm64_under_qemu(tmp_path: Path) -> None:
    original = _gqa_model(tmp_path / "gqa.onnx", packed=True, present=False, b=1, s=10)
    feeds = {"qkv": np.random.default_rng(1).standard_normal([1, 10, 12 * 16]).astype(np.float32),
             "seqlens_k": np.array([9], np.int32), "total_len": np.array(10, np.int32)}
    (want,) = ort.InferenceSession(str(original)).run(None, feeds)
    out = tmp_path / "out"
    result = compile_model(original, backend="cpu", soc="SM8650", out=out)
    assert result.manifest["attention"]["fused"] == 1
    from banana.targets.backends import get_backend

    artifact = Artifact.open(out)
    names = [spec["name"] for spec in artifact.manifest["inputs"]]
    (got,) = get_backend("cpu").run(artifact, [feeds[n] for n in names])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_banana_compile_takes_onnx_attention_directly(tmp_path: Path) -> None:
    """The original file holding the standard Attention op: import rewrites it, verify passes."""
    spec = CASES[sorted(CASES)[0]]
    original = _attention_model(tmp_path / "attn.onnx", **spec)
    result = compile_model(original, backend="host", out=tmp_path / "out", verify=True)
    assert result.verify is not None and result.verify.ok
    assert result.manifest["attention"]["fused"] == 1


def test_unrewritable_attention_is_reported_by_compile(tmp_path: Path) -> None:
    from banana.compiler.errors import UnsupportedOpError

    path = _attention_model(tmp_path / "a.onnx", rank=4, hq=2, hkv=2, lq=4, lkv=4, d=8, causal=0, mask=None,
                            scale=None, opset=23)
    model = onnx.load(str(path))
    model.graph.node[0].attribute.append(helper.make_attribute("softcap", 30.0))
    onnx.save_model(model, str(path))
    with pytest.raises(UnsupportedOpError, match="Attention"):
        compile_model(path, backend="host", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
