"""fp32 erf/exp/tanh/sigmoid -> polynomial forms: which calls are rewritten, the built module against
float64 references (math.erf, numpy), and that the vector loop no longer calls libm per element."""

from __future__ import annotations

import math
import re

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R
from tvm.target import codegen

from banana.compiler.lowering import compile_llvm
from banana.compiler.passes.fast_math import rewrite_fast_math

HOST = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2}


@tvm.script.ir_module
class Model:
    @R.function
    def main(x: R.Tensor((64, 256), "float32"), e: R.Tensor((64, 256), "float32"), h: R.Tensor((8, 8), "float16")):
        with R.dataflow():
            a = R.erf(x)
            b = R.exp(e)
            c = R.tanh(x)
            d = R.sigmoid(x)
            g = R.multiply(x, R.add(R.erf(R.divide(x, R.const(1.4142135, "float32"))), R.const(1.0, "float32")))
            f = R.erf(h)  # fp16: left to the stock lowering
            R.output(a, b, c, d, g, f)
        return (a, b, c, d, g, f)


@tvm.script.ir_module
class Fp32Only:
    @R.function
    def main(x: R.Tensor((64, 256), "float32")):
        with R.dataflow():
            g = R.multiply(x, R.add(R.erf(R.divide(x, R.const(1.4142135, "float32"))), R.const(1.0, "float32")))
            y = R.add(R.add(R.exp(g), R.tanh(g)), R.sigmoid(g))
            R.output(y)
        return y


def test_rewrites_fp32_calls_only() -> None:
    text = rewrite_fast_math(Model)["main"].script()
    assert text.count("R.call_tir") == 5
    assert text.count("R.erf") == 1  # the fp16 one
    assert "R.exp(" not in text and "R.tanh(" not in text and "R.sigmoid(" not in text


def test_built_module_matches_float64_references() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-12, 12, 8192), rng.standard_normal(64 * 256 - 8192) * 3]).astype(np.float32)
    x = x.reshape(64, 256)
    e = np.linspace(-87, 87, 64 * 256, dtype=np.float32).reshape(64, 256)
    h = rng.standard_normal((8, 8)).astype(np.float16)
    vm = relax.VirtualMachine(compile_llvm(Model, HOST), tvm.cpu())
    a, b, c, d, g, f = (o.numpy() for o in vm["main"](*[tvm.runtime.tensor(v) for v in (x, e, h)]))
    x64 = x.astype(np.float64)
    erf64 = np.vectorize(math.erf)(x64)
    np.testing.assert_allclose(a, erf64, rtol=0, atol=1e-6)
    np.testing.assert_allclose(b, np.exp(e.astype(np.float64)), rtol=2e-6, atol=0)
    np.testing.assert_allclose(c, np.tanh(x64), rtol=0, atol=1e-6)
    np.testing.assert_allclose(d, 1 / (1 + np.exp(-x64)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(g, x64 * (np.vectorize(math.erf)(x64 / math.sqrt(2)) + 1), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(f, np.vectorize(math.erf)(h.astype(np.float64)), rtol=0, atol=2e-3)


def test_vector_loop_has_no_libm_calls() -> None:
    lib = compile_llvm(Fp32Only, HOST)
    mods = [lib.mod, *lib.mod.imports]
    asm = "".join(m.inspect_source("asm") for m in mods if m.kind == "llvm")
    calls = set(re.findall(r"call\w*\s+\*?(\w+)", asm))
    assert not {"expf", "erff", "tanhf"} & calls, calls
    assert re.search(r"^\s*vfmadd\w+ps\s+%ymm", asm, flags=re.M) or re.search(r"^\s*v\w+ps\s+%ymm", asm, flags=re.M)
