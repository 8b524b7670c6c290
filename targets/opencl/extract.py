"""Read a launch plan out of a module from :func:`lower_for_opencl`.

Two halves:

* kernels -- the scheduled PrimFuncs go through TVM's own TIR pipeline (the one ``tvm.compile``
  uses), ``split_host_device_mods`` and the OpenCL codegen, so ``kernels.cl`` is byte-for-byte
  what TVM would ship. Each PrimFunc's host stub is then read for its ``tirx.call_ffi_kernel``
  calls: kernel name, operands (mapped back to the PrimFunc's parameter positions through the
  ``MakePackedAPI`` argument unpacking) and launch values (``launch_params`` tags such as
  ``blockIdx.y``/``threadIdx.x``). One PrimFunc may launch several kernels; buffers the host stub
  allocates between them become ``workspace`` buffers.
* program -- Relax ``main`` is walked binding by binding: ``R.call_tir`` becomes the launches of
  its PrimFunc, ``R.reshape`` a view, tuples are unpacked.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.ir import IRModule
from tvm.tirx.build import codegen_build, split_host_device_mods

from banana.compiler.errors import BadModelError, ToolchainError, UnsupportedOpError

from .lowering import SCHEDULE_RULE_ATTR
from .plan import Kernel, KernelArg, KernelParam, LaunchPlan, LaunchStep, PlanBuffer
from .target import as_tvm_target

log = logging.getLogger(__name__)

_AXES = ("x", "y", "z")
_ARRAY_DATA_FIELD = 1  # tvm_struct_get(handle, 0, 1): DLTensor::data (kArrData)


@dataclass(frozen=True)
class _Operand:
    """Where a kernel operand comes from inside its PrimFunc."""

    param: int | None = None  # PrimFunc parameter position
    workspace: int | None = None  # index into _PrimFuncLaunches.workspaces
    scalar: int | float | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class _Launch:
    kernel: str
    operands: tuple[_Operand, ...]
    global_work_size: tuple[int, ...]
    local_work_size: tuple[int, ...]


@dataclass(frozen=True)
class _PrimFuncLaunches:
    launches: tuple[_Launch, ...]
    workspaces: tuple[tuple[tuple[int, ...], str], ...]  # (shape, dtype)


def extract_launch_plan(mod: IRModule, target: dict) -> LaunchPlan:
    """Compile every kernel of a lowered module and describe ``main`` as a launch plan."""
    tgt = as_tvm_target(target)
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise BadModelError("module: no Relax function 'main' to build a launch plan from")
    source, kernels, per_func = _compile_kernels(mod, tgt)
    plan = _ProgramBuilder(mod, kernels, per_func).build(source, _target_json(target))
    plan.check("extract_launch_plan")
    log.info("launch plan: %d kernels, %d launches, %d buffers", len(kernels), len(plan.steps), len(plan.buffers))
    return plan


def _target_json(target: dict | tvm.target.Target) -> dict:
    if isinstance(target, dict):
        return target
    return dict(target.export())


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
def _compile_kernels(mod: IRModule, tgt: tvm.target.Target):
    prim_funcs = {
        gv: func.with_attr("global_symbol", gv.name_hint)
        for gv, func in mod.functions_items()
        if isinstance(func, tirx.PrimFunc)
    }
    if not prim_funcs:
        raise BadModelError("module: no PrimFuncs; run lower_for_opencl first")
    for gv, func in prim_funcs.items():
        if not bool(func.attrs.get("tirx.is_scheduled", False)):
            raise UnsupportedOpError(f"PrimFunc {gv.name_hint} is not scheduled; run lower_for_opencl first")
    tir_mod = tirx.transform.BindTarget(tgt)(IRModule(prim_funcs))
    pipeline, _finalize_host, finalize_device = tirx.get_tir_pipeline("default")
    try:
        with tgt:
            lowered = pipeline(tir_mod)
        host_mod, device_mods = split_host_device_mods(lowered)
    except (RuntimeError, ValueError) as err:  # TVM 0.27 raises these (tvm.error has no TVMError)
        raise ToolchainError(f"TVM TIR lowering for OpenCL failed: {str(err).splitlines()[-1]}") from err
    device_mods = {t: m for t, m in device_mods.items() if len(m.functions) > 0}
    if len(device_mods) != 1:
        kinds = sorted(t.kind.name for t in device_mods)
        raise ToolchainError(f"expected one OpenCL device module, TVM produced {kinds or 'none'}")
    (dev_target, dev_mod), = device_mods.items()
    dev_mod = finalize_device()(dev_mod)
    source = str(codegen_build(dev_mod, dev_target).inspect_source())

    schedule_rule = {
        gv.name_hint: (str(f.attrs[SCHEDULE_RULE_ATTR]) if SCHEDULE_RULE_ATTR in f.attrs else None)
        for gv, f in prim_funcs.items()
    }
    kernel_params: dict[str, tuple[KernelParam, ...]] = {}
    for gv, func in dev_mod.functions_items():
        name = str(func.attrs.get("global_symbol", gv.name_hint))
        kernel_params[name] = tuple(_kernel_param(p) for p in func.params)

    per_func: dict[str, _PrimFuncLaunches] = {}
    kernels: dict[str, Kernel] = {}
    for gv, host_func in host_mod.functions_items():
        launches = _read_host_stub(gv.name_hint, host_func, kernel_params)
        per_func[gv.name_hint] = launches
        for launch in launches.launches:
            kernels[launch.kernel] = Kernel(
                name=launch.kernel, prim_func=gv.name_hint, params=kernel_params[launch.kernel],
                schedule_rule=schedule_rule.get(gv.name_hint),
            )
    return source, kernels, per_func


def _kernel_param(var: tirx.Var) -> KernelParam:
    ty = var.ty
    if isinstance(ty, tvm.ir.PointerType):
        elem = ty.element_type
        if not isinstance(elem, tvm.ir.PrimType):
            raise ToolchainError(f"kernel parameter {var.name}: pointer to {elem}, not to a scalar type")
        return KernelParam(name=var.name, kind="buffer", dtype=str(elem.dtype))
    if isinstance(ty, tvm.ir.PrimType):
        return KernelParam(name=var.name, kind="scalar", dtype=str(ty.dtype))
    raise ToolchainError(f"kernel parameter {var.name}: unexpected type {ty}")


def _op_name(expr) -> str | None:
    if isinstance(expr, tvm.ir.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def _int(expr, what: str) -> int:
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    raise UnsupportedOpError(f"{what} is not a constant ({expr}); banana needs static shapes")


def _packed_arg_indices(expr, args_var: tirx.Var) -> list[int]:
    """Positions ``i`` of every ``tvm_struct_get(args, i, ...)`` inside ``expr``."""
    found: list[int] = []

    def on_call(c) -> None:
        if _op_name(c) == "tirx.tvm_struct_get" and c.args[0].same_as(args_var):
            found.append(int(c.args[1].value))

    tvm_ffi.structural_walk(expr, [(tvm.ir.Call, on_call)])
    return found


def _read_host_stub(
    func_name: str, func: tirx.PrimFunc, kernel_params: dict[str, tuple[KernelParam, ...]]
) -> _PrimFuncLaunches:
    """Find the kernel launches of one PrimFunc's host stub (after MakePackedAPI)."""
    binds: dict[int, object] = {}
    decls: dict[int, object] = {}
    allocs: dict[int, tirx.Var] = {}
    calls: list[tvm.ir.Call] = []
    nested: list[str] = []

    def on_call(call):
        if _op_name(call) == "tirx.call_ffi_kernel":
            calls.append(call)

    def in_control_flow(node):
        tvm_ffi.structural_walk(
            node.body if isinstance(node, tirx.For) else node,
            [(tvm.ir.Call, lambda c: nested.append(func_name) if _op_name(c) == "tirx.call_ffi_kernel" else None)],
        )

    tvm_ffi.structural_walk(
        func.body,
        [
            (tirx.Bind, lambda b: binds.__setitem__(b.var.id_, b.value)),
            (tirx.DeclBuffer, lambda d: decls.__setitem__(d.buffer.id_, d.data)),
            (tirx.AllocBuffer, lambda a: allocs.__setitem__(a.buffer.id_, a.buffer)),
            (tvm.ir.Call, on_call),
            ((tirx.For, tirx.While), in_control_flow),
        ],
        order="pre",
    )
    if nested:
        raise UnsupportedOpError(f"PrimFunc {func_name}: kernel launches inside host loops are not supported")
    args_var = func.params[1]  # MakePackedAPI signature: (self_handle, args, num_args, result)
    workspace_ids: dict[int, int] = {}
    workspaces: list[tuple[tuple[int, ...], str]] = []

    def resolve(expr, what: str) -> _Operand:
        for _ in range(64):
            name = _op_name(expr)
            if name == "tirx.buffer_data":
                var = expr.args[0]
                if var.id_ in allocs:
                    if var.id_ not in workspace_ids:
                        workspace_ids[var.id_] = len(workspaces)
                        bty = var.ty
                        shape = tuple(_int(s, f"{func_name}: workspace {var.name} extent") for s in bty.shape)
                        workspaces.append((shape, str(bty.dtype)))
                    return _Operand(workspace=workspace_ids[var.id_])
                if var.id_ not in decls:
                    break
                expr = decls[var.id_]
            elif name == "tirx.reinterpret":
                expr = expr.args[0]
            elif name == "tirx.tvm_struct_get" and _int(expr.args[2], "field") == _ARRAY_DATA_FIELD:
                handle = expr.args[0]
                if handle.id_ not in binds:
                    break
                found = _packed_arg_indices(binds[handle.id_], args_var)
                if len(set(found)) == 1:
                    return _Operand(param=found[0])
                break
            elif isinstance(expr, tirx.Var) and expr.id_ in binds:
                expr = binds[expr.id_]
            else:
                break
        raise ToolchainError(f"PrimFunc {func_name}: cannot trace kernel operand {what} to a parameter")

    launches = []
    for call in calls:
        kernel = str(call.args[0].value)
        params = kernel_params.get(kernel)
        if params is None:
            raise ToolchainError(f"PrimFunc {func_name}: host launches {kernel}, which the device module lacks")
        operand_exprs = call.args[1 : 1 + len(params)]
        launch_values = list(call.args[1 + len(params) :])
        operands = []
        for p, e in zip(params, operand_exprs, strict=True):
            if p.kind == "buffer":
                operands.append(resolve(e, f"{kernel}.{p.name}"))
            elif isinstance(e, (tirx.IntImm, tirx.FloatImm)):
                value = int(e.value) if isinstance(e, tirx.IntImm) else float(e.value)
                operands.append(_Operand(scalar=value, dtype=p.dtype))
            else:
                raise UnsupportedOpError(f"kernel {kernel}: scalar argument {p.name} is not constant ({e})")
        groups, local = [1, 1, 1], [1, 1, 1]
        tags = [str(t) for t in call.attrs.launch_params]
        if len(tags) != len(launch_values):
            raise UnsupportedOpError(f"kernel {kernel}: launch tags {tags} need values TVM did not give")
        for tag, value in zip(tags, launch_values, strict=True):
            scope, _, axis = tag.partition(".")
            if scope not in ("blockIdx", "threadIdx") or axis not in _AXES:
                raise UnsupportedOpError(f"kernel {kernel}: launch parameter {tag} has no OpenCL equivalent")
            (groups if scope == "blockIdx" else local)[_AXES.index(axis)] = _int(value, f"{kernel} {tag}")
        dims = max([i + 1 for i in range(3) if groups[i] != 1 or local[i] != 1] + [1])
        launches.append(
            _Launch(
                kernel=kernel,
                operands=tuple(operands),
                global_work_size=tuple(groups[i] * local[i] for i in range(dims)),
                local_work_size=tuple(local[:dims]),
            )
        )
    if not launches:
        raise ToolchainError(f"PrimFunc {func_name}: TVM produced no OpenCL kernel for it")
    return _PrimFuncLaunches(tuple(launches), tuple(workspaces))


# ----------------------------------------------------------------------------------------------
# program
# ----------------------------------------------------------------------------------------------
def _static_tensor(sinfo, what: str) -> tuple[tuple[int, ...], str]:
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        raise UnsupportedOpError(f"{what}: not a tensor of known shape ({sinfo})")
    shape = []
    for dim in sinfo.shape.values:
        if not isinstance(dim, tirx.IntImm):
            raise UnsupportedOpError(f"{what}: symbolic dimension {dim}; banana needs static shapes")
        shape.append(int(dim.value))
    return tuple(shape), str(sinfo.dtype)


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class _ProgramBuilder:
    """Walks Relax main; values map to a buffer id or a tuple of values."""

    def __init__(self, mod: IRModule, kernels: dict[str, Kernel], per_func: dict[str, _PrimFuncLaunches]):
        self.mod = mod
        self.kernels = kernels
        self.per_func = per_func
        self.buffers: list[PlanBuffer] = []
        self.steps: list[LaunchStep] = []
        self.values: dict[int, object] = {}
        self.unsupported: list[str] = []

    def _add(self, name: str, kind: str, shape, dtype: str, **extra) -> int:
        bid = len(self.buffers)
        nbytes = _nbytes(shape, dtype)
        self.buffers.append(
            PlanBuffer(id=bid, name=name, kind=kind, shape=tuple(shape), dtype=dtype, bytes=nbytes, **extra)
        )
        return bid

    def build(self, source: str, target_json: dict) -> LaunchPlan:
        main = self.mod["main"]
        attrs = main.attrs if main.attrs is not None else {}
        num_input = int(attrs["num_input"]) if "num_input" in attrs else len(main.params)
        for i, param in enumerate(main.params):
            shape, dtype = _static_tensor(param.ty, f"main parameter {param.name}")
            kind, index = ("input", i) if i < num_input else ("param", i - num_input)
            self.values[param.id_] = self._add(param.name, kind, shape, dtype, index=index)
        body = main.body
        for block in body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    self.unsupported.append(f"match_cast {binding.var.name}")
                    continue
                try:
                    self.values[binding.var.id_] = self._value(binding.value, binding.var)
                except _Unsupported as err:
                    self.unsupported.append(str(err))
        if self.unsupported:
            raise UnsupportedOpError("OpenCL launch plan cannot express: " + "; ".join(sorted(set(self.unsupported))))
        outputs = self._flatten(self._value(body.body, None))
        return LaunchPlan(
            source=source,
            kernels=sorted(self.kernels.values(), key=lambda k: k.name),
            buffers=self.buffers,
            steps=self.steps,
            outputs=outputs,
            target=target_json,
            tvm_version=str(tvm.__version__),
        )

    def _flatten(self, value) -> list[int]:
        if isinstance(value, int):
            return [value]
        out: list[int] = []
        for v in value:  # type: ignore[union-attr]
            out.extend(self._flatten(v))
        return out

    def _value(self, expr, var):
        if isinstance(expr, relax.Var):
            if expr.id_ not in self.values:
                raise _Unsupported(f"unbound variable {expr.name}")
            return self.values[expr.id_]
        if isinstance(expr, relax.Tuple):
            return tuple(self._value(f, None) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return self._value(expr.tuple_value, None)[expr.index]
        if isinstance(expr, tvm.ir.GenericConst) and isinstance(expr.value, tvm.runtime.Tensor):
            arr = expr.value.numpy()
            data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            return self._add(
                "constant", "constant", arr.shape, str(arr.dtype), data_base64=base64.b64encode(data).decode("ascii")
            )
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            op = str(expr.op.name)
            if op == "relax.call_tir":
                return self._call_tir(expr, var)
            if op == "relax.reshape":
                base = self._value(expr.args[0], None)
                shape, dtype = _static_tensor(var.ty, f"reshape {var.name}")
                if self.buffers[base].bytes != _nbytes(shape, dtype):
                    raise _Unsupported(f"reshape {var.name} changes the byte size")
                return self._add(var.name, "view", shape, dtype, base=base)
            raise _Unsupported(f"op {op}")
        raise _Unsupported(f"expression {type(expr).__name__}")

    def _call_tir(self, call: relax.Call, var):
        gvar = call.args[0]
        if len(call.args) > 2:
            raise _Unsupported(f"call_tir {gvar.name_hint} with symbolic shape arguments")
        launches = self.per_func.get(gvar.name_hint)
        if launches is None:
            raise _Unsupported(f"call_tir of unknown PrimFunc {gvar.name_hint}")
        args = [self._value(a, None) for a in call.args[1].fields]
        if not all(isinstance(a, int) for a in args):
            raise _Unsupported(f"call_tir {gvar.name_hint} with a tuple argument")
        out_sinfo = call.ty_args[0]
        out_infos = list(out_sinfo.fields) if isinstance(out_sinfo, tvm.ir.TupleType) else [out_sinfo]
        outs = []
        for i, sinfo in enumerate(out_infos):
            shape, dtype = _static_tensor(sinfo, f"output of {gvar.name_hint}")
            name = var.name if len(out_infos) == 1 else f"{var.name}.{i}"
            outs.append(self._add(name, "intermediate", shape, dtype))
        params = args + outs
        workspaces = [
            self._add(f"{gvar.name_hint}.workspace{i}", "workspace", shape, dtype)
            for i, (shape, dtype) in enumerate(launches.workspaces)
        ]
        for launch in launches.launches:
            kargs = []
            for op in launch.operands:
                if op.param is not None:
                    if op.param >= len(params):
                        raise _Unsupported(f"{launch.kernel}: parameter {op.param} out of range")
                    kargs.append(KernelArg(buffer=params[op.param]))
                elif op.workspace is not None:
                    kargs.append(KernelArg(buffer=workspaces[op.workspace]))
                else:
                    kargs.append(KernelArg(scalar=op.scalar, dtype=op.dtype))
            self.steps.append(
                LaunchStep(
                    kernel=launch.kernel,
                    global_work_size=launch.global_work_size,
                    local_work_size=launch.local_work_size,
                    args=tuple(kargs),
                )
            )
        return outs[0] if len(outs) == 1 and not isinstance(out_sinfo, tvm.ir.TupleType) else tuple(outs)


class _Unsupported(Exception):
    """Collected while walking main so that all offending bindings are reported at once."""
