"""The attention fusion pass on every export pattern: fused (asserted on the IR) and matching
onnxruntime on the unfused original (through compile_model's verify) on host and arm64/qemu."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from banana.compiler.frontend.importer import import_onnx
from banana.compiler.passes import fuse_attention
from banana.compiler.pipeline import compile_model

HQ, HKV, D = 8, 2, 16


# ---------------------------------------------------------------------------------------------
# Models built by the test: torch modules (both exporters) and hand-built ONNX graphs.


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    b, hkv, length, d = x.shape
    x = x[:, :, None, :, :].expand(b, hkv, n_rep, length, d)
    return x.reshape(b, hkv * n_rep, length, d)


class _EagerGqa(torch.nn.Module):
    """transformers-style GQA: projections, repeat_kv, scale, optional additive mask."""

    def __init__(self, hidden: int, q_heads: int, kv_heads: int, masked: bool) -> None:
        super().__init__()
        self.hq, self.hkv, self.d = q_heads, kv_heads, hidden // q_heads
        self.q = torch.nn.Linear(hidden, hidden)
        self.k = torch.nn.Linear(hidden, kv_heads * self.d)
        self.v = torch.nn.Linear(hidden, kv_heads * self.d)
        self.masked = masked

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, lq, _ = x.shape
        lkv = ctx.shape[1]
        q = self.q(x).view(b, lq, self.hq, self.d).transpose(1, 2)
        k = self.k(ctx).view(b, lkv, self.hkv, self.d).transpose(1, 2)
        v = self.v(ctx).view(b, lkv, self.hkv, self.d).transpose(1, 2)
        k, v = _repeat_kv(k, self.hq // self.hkv), _repeat_kv(v, self.hq // self.hkv)
        w = torch.matmul(q, k.transpose(2, 3)) / (self.d**0.5)
        if self.masked:
            w = w + mask
        o = torch.matmul(torch.softmax(w, dim=-1), v)
        return o.transpose(1, 2).reshape(b, lq, self.hq * self.d)


def _export_torch(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, *, dynamo: bool,
                  opset: int) -> Path:
    names = ["x", "ctx", "mask"][: len(args)]
    module = module.eval()
    with torch.no_grad():
        if dynamo:
            prog = torch.onnx.export(module, args, dynamo=True, input_names=names, opset_version=opset,
                                     optimize=True, verify=False, report=False)
            onnx.save_model(prog.model_proto, str(path))
        else:
            buf = io.BytesIO()
            torch.onnx.export(module, args, buf, dynamo=False, input_names=names, opset_version=opset)
            path.write_bytes(buf.getvalue())
    return path


def _torch_model(tmp: Path, *, dynamo: bool, opset: int, q_heads: int = HQ, kv_heads: int = HKV, lq: int = 24,
                 lkv: int = 24, masked: bool = True) -> Path:
    torch.manual_seed(0)
    hidden = q_heads * D
    module = _EagerGqa(hidden, q_heads, kv_heads, masked)
    args = (torch.randn(1, lq, hidden), torch.randn(1, lkv, hidden), torch.randn(1, 1, lq, lkv))
    name = f"eager_{'dynamo' if dynamo else 'ts'}{opset}_{q_heads}x{kv_heads}_{lq}x{lkv}.onnx"
    return _export_torch(module, args, tmp / name, dynamo=dynamo, opset=opset)


def _repeat_nodes(kind: str, src: str, out: str, n: int, hkv: int) -> tuple[list[onnx.NodeProto], list]:
    """ONNX nodes repeating ``src`` [1, hkv, L, D] to ``out`` [1, hkv*n, L, D]."""
    c = f"{out}_c"
    if kind == "expand":  # transformers' repeat_kv: Unsqueeze(2) -> Expand -> Reshape
        inits = [numpy_helper.from_array(np.array([2], np.int64), c + "_ax"),
                 numpy_helper.from_array(np.array([1, hkv, n, 1, 1], np.int64), c + "_shape"),
                 numpy_helper.from_array(np.array([1, hkv * n, -1, D], np.int64), c + "_rs")]
        nodes = [helper.make_node("Unsqueeze", [src, c + "_ax"], [c + "_u"]),
                 helper.make_node("Expand", [c + "_u", c + "_shape"], [c + "_e"]),
                 helper.make_node("Reshape", [c + "_e", c + "_rs"], [out])]
        return nodes, inits
    if kind == "tile":
        inits = [numpy_helper.from_array(np.array([1, n, 1, 1], np.int64), c + "_reps")]
        return [helper.make_node("Tile", [src, c + "_reps"], [out])], inits
    if kind == "concat":
        return [helper.make_node("Concat", [src] * n, [out], axis=1)], []
    if kind == "gather":
        idx = np.arange(hkv * n) // n
        inits = [numpy_helper.from_array(idx.astype(np.int64), c + "_idx")]
        return [helper.make_node("Gather", [src, c + "_idx"], [out], axis=1)], inits
    raise AssertionError(kind)


def _onnx_attention(tmp: Path, *, repeat: str | None, lq: int = 20, lkv: int = 20, hq: int = HQ, hkv: int = HKV,
                    mask: bool = True, scores_mask: bool = False, div: bool = True, name: str = "m") -> Path:
    """q/k/v inputs -> (repeat) -> Transpose -> MatMul -> Div|Mul -> (Add mask) -> Softmax -> MatMul."""
    n = hq // hkv
    nodes, inits = [], []
    if repeat:
        for t in ("k", "v"):
            ns, its = _repeat_nodes(repeat, t, f"{t}_rep", n, hkv)
            nodes += ns
            inits += its
        k, v = "k_rep", "v_rep"
    else:
        k, v = "k", "v"
    inits.append(numpy_helper.from_array(np.array(D**0.5 if div else D**-0.5, np.float32), "scale"))
    nodes += [helper.make_node("Transpose", [k], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["s"]),
              helper.make_node("Div" if div else "Mul", ["s", "scale"], ["s1"])]
    last = "s1"
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, hq, lq, D]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, hkv, lkv, D]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, hkv, lkv, D])]
    if mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, lq, lkv]))
        nodes.append(helper.make_node("Add", [last, "mask"], ["s2"]))
        last = "s2"
    if scores_mask:  # "mask" computed from the scores themselves: not a mask, must stay unfused
        inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
        nodes += [helper.make_node("Mul", [last, "half"], ["sm"]),
                  helper.make_node("Add", [last, "sm"], ["s3"])]
        last = "s3"
    nodes += [helper.make_node("Softmax", [last], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", v], ["y"])]
    graph = helper.make_graph(nodes, name, inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, hq, lq, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="banana-tests")
    onnx.checker.check_model(model, full_check=True)
    path = tmp / f"{name}.onnx"
    onnx.save_model(model, str(path))
    return path


# ---------------------------------------------------------------------------------------------


def _assert_fused(path: Path, sites: int, group: int) -> dict:
    fusion = fuse_attention(import_onnx(path).mod, num_cores=2)
    assert len(fusion.sites) == sites, fusion.to_json()
    text = fusion.mod["main"].script()
    assert text.count("R.call_tir(banana_attention_") == sites
    assert "R.nn.softmax" not in text and "R.broadcast_to" not in text and "R.tile" not in text
    assert all(s.group == group for s in fusion.sites)
    return fusion.to_json()


def _compile(path: Path, out: Path, backend: str) -> dict:
    soc = "SM8650" if backend == "cpu" else None
    result = compile_model(path, backend=backend, soc=soc, out=out, verify=True)
    assert result.verify is not None and result.verify.ok  # onnxruntime on the original, rtol 1e-4
    assert result.manifest["attention"]["unfused"] == 0
    return result.manifest["attention"]


@pytest.mark.parametrize("dynamo,opset", [(True, 18), (True, 17), (False, 17), (False, 18)],
                         ids=["dynamo18", "dynamo17", "torchscript17", "torchscript18"])
def test_torch_exported_gqa_fuses_and_matches(tmp_path: Path, dynamo: bool, opset: int) -> None:
    path = _torch_model(tmp_path, dynamo=dynamo, opset=opset)
    info = _assert_fused(path, 1, HQ // HKV)
    site = info["sites"][0]
    assert (site["q_heads"], site["kv_heads"], site["head_dim"], site["kv_repeat"]) == (HQ, HKV, D, "expand")
    assert site["mask"] == [1, 1, 24, 24]
    assert site["kv_bytes_fused"] * 4 < site["kv_bytes_unfused"]
    _compile(path, tmp_path / "out", "host")


@pytest.mark.parametrize("repeat,group_map", [("expand", "interleave"), ("tile", "tile"), ("concat", "tile"),
                                              ("gather", "interleave")])
def test_hand_built_repeats_fuse_and_match(tmp_path: Path, repeat: str, group_map: str) -> None:
    path = _onnx_attention(tmp_path, repeat=repeat, name=repeat)
    site = _assert_fused(path, 1, HQ // HKV)["sites"][0]
    assert (site["kv_repeat"], site["head_map"]) == (repeat, group_map)
    assert site["pattern"] == "matmul-scale-mask-softmax-matmul"
    assert site["scale"] == pytest.approx(D**-0.5)
    _compile(path, tmp_path / "out", "host")


def test_plain_mha_and_cross_attention(tmp_path: Path) -> None:
    mha = _onnx_attention(tmp_path, repeat=None, hq=4, hkv=4, mask=False, div=False, name="mha")
    site = _assert_fused(mha, 1, 1)["sites"][0]
    assert (site["q_heads"], site["kv_heads"], site["kv_repeat"], site["mask"]) == (4, 4, "none", None)
    _compile(mha, tmp_path / "mha_out", "host")
    cross = _torch_model(tmp_path, dynamo=True, opset=18, lq=33, lkv=7, masked=False)
    site = _assert_fused(cross, 1, HQ // HKV)["sites"][0]
    assert (site["q_len"], site["kv_len"]) == (33, 7)
    _compile(cross, tmp_path / "cross_out", "host")


def test_unsafe_site_is_left_alone_with_a_reason(tmp_path: Path) -> None:
    path = _onnx_attention(tmp_path, repeat="expand", scores_mask=True, name="unsafe")
    fusion = fuse_attention(import_onnx(path).mod)
    assert fusion.sites == []
    assert len(fusion.skipped) == 1 and "scores" in fusion.skipped[0].reason
    assert "R.nn.softmax" in fusion.mod["main"].script()
    info = _compile_unfused(path, tmp_path / "out")
    assert info["fused"] == 0 and info["unfused"] == 1


def _compile_unfused(path: Path, out: Path) -> dict:
    result = compile_model(path, backend="host", out=out, verify=True)
    assert result.verify is not None and result.verify.ok
    return result.manifest["attention"]


@pytest.mark.parametrize("model", ["dynamo-gqa", "torchscript-gqa", "expand", "tile", "concat", "gather", "mha",
                                   "cross"])
def test_arm64_under_qemu_matches(tmp_path: Path, model: str) -> None:
    if model == "dynamo-gqa":
        path = _torch_model(tmp_path, dynamo=True, opset=18)
    elif model == "torchscript-gqa":
        path = _torch_model(tmp_path, dynamo=False, opset=18)
    elif model in ("expand", "tile", "concat", "gather"):
        path = _onnx_attention(tmp_path, repeat=model, lq=37, lkv=45, name=model)
    elif model == "mha":
        path = _onnx_attention(tmp_path, repeat=None, hq=4, hkv=4, mask=False, div=False, name="mha")
    else:
        path = _torch_model(tmp_path, dynamo=False, opset=17, lq=40, lkv=9, masked=False)
    info = _compile(path, tmp_path / "out", "cpu")
    assert info["fused"] == 1


def test_tiny_llama_fuses_every_attention_site(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="eager", use_cache=False,
    )
    llama = transformers.LlamaModel(config).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.llama = llama

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.llama(inputs_embeds=x, use_cache=False).last_hidden_state

    path = _export_torch(Wrapper(), (torch.randn(1, 16, 128),), tmp_path / "llama.onnx", dynamo=True, opset=18)
    info = _compile(path, tmp_path / "out", "host")
    assert info["fused"] == 2 and info["skipped"] == []
    assert all((s["q_heads"], s["kv_heads"], s["group"]) == (8, 2, 4) for s in info["sites"])
    # transformers' causal mask (a constant folded into a weight) is recognised: no mask buffer.
    assert all(s["causal"] and s["mask"] is None for s in info["sites"])


def test_zoo_nano_dit_uses_the_fused_kernel_everywhere(tmp_path: Path) -> None:
    from banana.compiler.cli import main

    out = tmp_path / "nano"
    assert main(["compile", "zoo:nano-dit-random", "--backend", "host", "-o", str(out), "--verify"]) == 0
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    attention = manifest["attention"]
    # 4 blocks x (self-attention + cross-attention to text tokens), all GQA 8 q / 2 kv heads.
    assert attention["fused"] == 8 and attention["unfused"] == 0
    assert sorted({(s["q_len"], s["kv_len"]) for s in attention["sites"]}) == [(16, 4), (16, 16)]
    # Sites with equal shapes share one kernel: one self-attention and one cross-attention PrimFunc.
    assert len({s["kernel"] for s in attention["sites"]}) == 2


def test_adreno_fused_kernel_matches_on_pocl(tmp_path: Path) -> None:
    path = _torch_model(tmp_path, dynamo=True, opset=18, lq=20, lkv=20)
    result = compile_model(path, backend="adreno", soc="SM8650", out=tmp_path / "out", verify=True)
    assert result.verify is not None and result.verify.ok and result.verify.executed
    attention = result.manifest["attention"]
    assert attention["fused"] == 1 and attention["unfused"] == 0
    assert result.manifest["build"]["schedule_rules"].get("banana.attention") == 1


def test_fuse_stage_leaves_backends_without_a_schedule_unfused(tmp_path: Path) -> None:
    from banana.compiler.passes.stage import fuse_stage

    path = _onnx_attention(tmp_path, repeat="expand", name="npu")
    mod = import_onnx(path).mod
    fusion = fuse_stage(mod, "npu", {"kind": "llvm", "num-cores": 4})
    assert fusion.mod is mod and fusion.sites == []
    assert len(fusion.skipped) == 1 and "npu" in fusion.skipped[0].reason
    fused = fuse_stage(mod, "cpu", {"kind": "llvm", "num-cores": 4})
    assert len(fused.sites) == 1
    tile_q = fused.sites[0].knobs["tile_q"]
    assert HKV * -(-20 // tile_q) >= 4  # enough (batch, kv head, q tile) tasks for the 4 cores


def test_hexagon_builds_the_fused_kernel_with_hvx(tmp_path: Path) -> None:
    path = _onnx_attention(tmp_path, repeat="expand", lq=64, lkv=64, name="hexagon")
    result = compile_model(path, backend="hexagon", soc="SM8650", out=tmp_path / "out")
    attention = result.manifest["attention"]
    assert attention["fused"] == 1 and attention["sites"][0]["knobs"]["parallel"] == 0
    assert result.manifest["build"]["hvx_instructions"] > 100
