"""Recognise decomposed attention in a Relax function (matching only; the rewrite is elsewhere).

Exporters hide attention in many shapes. After TVM's ONNX import they all reduce to

    out = matmul(softmax(mask_and_scale(matmul(q', k_t))), v')

where ``q'``/``k_t`` may carry scalar scale factors (SDPA exports split sqrt(scale) over both),
``k_t`` is a ``permute_dims`` of K (or K^T itself), and ``k_t``'s source and ``v'`` may be a K/V
*head repeat*: ``expand_dims -> broadcast_to -> reshape`` (transformers' ``repeat_kv``, ONNX
Unsqueeze/Expand/Reshape), ``tile``, ``concat`` of copies, ``take`` (Gather) or ``repeat``. The
matcher walks those producers backwards, recovers the group size and the head mapping, and says
exactly why a candidate (any ``matmul(softmax(...), ...)``) cannot be fused.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax


class NoMatch(Exception):
    """A candidate site cannot be fused; the message is the reason logged for it."""


@dataclass
class KvSource:
    """Where a (possibly repeated) K or V head tensor really comes from."""

    base: relax.Expr  # [B, Hkv, L, D] (or rank-3 [N, L, D])
    group: int
    head_map: str  # "interleave" (h // group) | "tile" (h % Hkv)
    pattern: str  # "none" | "expand" | "tile" | "concat" | "gather" | "repeat"
    needs_permute: tuple[int, ...] | None = None  # permute base to get [B, H, L, D]


@dataclass
class Match:
    out: relax.Var
    q: relax.Expr
    k: KvSource
    v: KvSource
    scale: float
    mask: relax.Expr | None
    mask_scale: float
    rank: int
    q_shape: tuple[int, ...]
    kv_shape: tuple[int, ...]
    dtype: str
    steps: list[str] = field(default_factory=list)
    causal: bool = False


def _op(expr: Any) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    ty = expr.ty if hasattr(expr, "ty") else None
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):
        return None


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _int_list(values: Any) -> list[int] | None:
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        return None


class Graph:
    """Bindings and use counts of one Relax function (enough to walk producers backwards)."""

    def __init__(self, func: relax.Function, params: dict[str, np.ndarray] | None = None) -> None:
        # Weight values by parameter: lets the matcher read constant masks kept as weights.
        self.params: dict[relax.Var, np.ndarray] = {
            var: params[var.name] for var in func.params if params and var.name in params
        }
        self.bindings: dict[relax.Var, relax.Expr] = {}
        self.uses: Counter[relax.Var] = Counter()
        body = func.body
        for block in body.blocks:
            for binding in block.bindings:
                value = binding.value
                self.bindings[binding.var] = value
                for var in relax.analysis.free_vars(value):
                    self.uses[var] += 1
        for var in relax.analysis.free_vars(body.body):
            self.uses[var] += 1

    def constant(self, expr: relax.Expr) -> np.ndarray | None:
        """The value of a Relax constant or of a weight parameter, else None."""
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Var) and expr in self.params:
            return self.params[expr]
        return None

    def scalar(self, expr: relax.Expr) -> float | None:
        """A one-element float constant or weight (SDPA exports keep sqrt(scale) as a weight)."""
        value = self.constant(expr)
        if value is not None and value.size == 1 and np.issubdtype(value.dtype, np.floating):
            return float(value.reshape(()))
        return None

    def value(self, expr: relax.Expr) -> relax.Expr | None:
        return self.bindings.get(expr) if isinstance(expr, relax.Var) else None

    def call(self, expr: relax.Expr, *ops: str) -> relax.Call | None:
        value = self.value(expr)
        return value if _op(value) in ops else None

    def depends_on(self, expr: relax.Expr, targets: set[relax.Var], limit: int = 100000) -> bool:
        """Whether ``expr`` is (transitively) computed from any var in ``targets``."""
        stack = list(relax.analysis.free_vars(expr)) if not isinstance(expr, relax.Var) else [expr]
        seen: set[relax.Var] = set()
        while stack and len(seen) < limit:
            var = stack.pop()
            if var in seen:
                continue
            seen.add(var)
            if var in targets:
                return True
            value = self.bindings.get(var)
            if value is not None:
                stack.extend(relax.analysis.free_vars(value))
        return False


def _unrepeat(graph: Graph, expr: relax.Expr) -> KvSource:
    """Undo a K/V head repeat on ``expr`` ([B, H, L, D]); group 1 when there is none."""
    shape = _shape(expr)
    none = KvSource(expr, 1, "interleave", "none")
    if shape is None or len(shape) != 4:
        return none
    b, h, length, d = shape
    reshape = graph.call(expr, "relax.reshape")
    if reshape is not None:
        return _unrepeat_5d(graph, reshape.args[0], shape) or none
    tile = graph.call(expr, "relax.tile")
    if tile is not None:
        reps = _int_list(tile.attrs.repeats)
        base = tile.args[0]
        if reps is not None and len(reps) == 4 and reps[0] == reps[2] == reps[3] == 1 and _shape(base) is not None:
            return KvSource(base, reps[1], "tile", "tile")
        return none
    lowered = graph.call(expr, "relax.call_tir")
    if lowered is not None and _is_importer_tile(lowered):
        base = lowered.args[1].fields[0]
        bshape = _shape(base)
        if bshape is not None and len(bshape) == 4 and h % bshape[1] == 0 and (b, length, d) == (
            bshape[0], bshape[2], bshape[3],
        ):
            return KvSource(base, h // bshape[1], "tile", "tile")
        return none
    concat = graph.call(expr, "relax.concat")
    if concat is not None:
        fields = list(concat.args[0].fields) if isinstance(concat.args[0], relax.Tuple) else None
        axis = int(concat.attrs.axis) if concat.attrs.axis is not None else 0
        if fields and axis in (1, -3) and all(f.same_as(fields[0]) for f in fields):
            return KvSource(fields[0], len(fields), "tile", "concat")
        return none
    take = graph.call(expr, "relax.take")
    indices = _constant_indices(graph, take.args[1]) if take is not None else None
    if take is not None and indices is not None:
        axis = int(take.attrs.axis) if take.attrs.axis is not None else 0
        idx = indices.reshape(-1).astype(np.int64)
        base = take.args[0]
        bshape = _shape(base)
        if axis in (1, -3) and bshape is not None and len(bshape) == 4 and len(idx) == h and h % bshape[1] == 0:
            hkv = bshape[1]
            n = h // hkv
            idx = np.where(idx < 0, idx + hkv, idx)
            if np.array_equal(idx, np.arange(h) // n):
                return KvSource(base, n, "interleave", "gather")
            if np.array_equal(idx, np.arange(h) % hkv):
                return KvSource(base, n, "tile", "gather")
        return none
    rep = graph.call(expr, "relax.repeat")
    if rep is not None:
        axis = int(rep.attrs.axis) if rep.attrs.axis is not None else None
        if axis in (1, -3):
            return KvSource(rep.args[0], int(rep.attrs.repeats), "interleave", "repeat")
    return none


def _unrepeat_5d(graph: Graph, src: relax.Expr, shape: tuple[int, ...]) -> KvSource | None:
    """``src`` [B, Hkv, n, L, D] (or [B, n, Hkv, L, D]) broadcast from K/V: the repeat behind a reshape to ``shape``."""
    b, h, length, d = shape
    s5 = _shape(src)
    bcast = graph.call(src, "relax.broadcast_to")
    if s5 is None or len(s5) != 5 or bcast is None:
        return None
    inner = bcast.args[0]
    i5 = _shape(inner)
    if i5 is None or len(i5) != 5:
        return None
    base = None
    exp = graph.call(inner, "relax.expand_dims")
    if exp is not None and _int_list(exp.attrs.axis) in ([1], [2]):
        base, axis = exp.args[0], _int_list(exp.attrs.axis)[0]
    else:
        rs = graph.call(inner, "relax.reshape")
        if rs is not None and _shape(rs.args[0]) is not None and len(_shape(rs.args[0])) == 4:
            bs = _shape(rs.args[0])
            if i5 == (bs[0], bs[1], 1, bs[2], bs[3]):
                base, axis = rs.args[0], 2
            elif i5 == (bs[0], 1, bs[1], bs[2], bs[3]):
                base, axis = rs.args[0], 1
    if base is None:
        return None
    bshape = _shape(base)
    if bshape is None or len(bshape) != 4 or s5[0] != b or (bshape[2], bshape[3]) != (length, d):
        return None
    hkv = bshape[1]
    n = s5[axis]
    expected = (b, hkv, n, length, d) if axis == 2 else (b, n, hkv, length, d)
    if s5 == expected and hkv * n == h and i5[axis] == 1:
        return KvSource(base, n, "interleave" if axis == 2 else "tile", "expand")
    return None


def _merged_head_transpose(graph: Graph, kt_expr: relax.Expr) -> KvSource | None:
    """K^T built as ``reshape4(permute_dims(reshape3(K), [0, 2, 1]))`` with batch and heads merged.

    torch's dynamo export of SDPA (``enable_gqa``, opsets 17/18) transposes K this way, after its
    own Unsqueeze/Expand repeat: reading through it recovers K [B, H, L, D] and the repeat.
    """
    kt_shape = _shape(kt_expr)
    outer = graph.call(kt_expr, "relax.reshape")
    if kt_shape is None or len(kt_shape) != 4 or outer is None:
        return None
    b, h, d, length = kt_shape
    permute = graph.call(outer.args[0], "relax.permute_dims")
    if permute is None or _int_list(permute.attrs.axes) != [0, 2, 1] or _shape(outer.args[0]) != (b * h, d, length):
        return None
    inner = graph.call(permute.args[0], "relax.reshape")
    if inner is None or _shape(permute.args[0]) != (b * h, length, d):
        return None
    src = inner.args[0]
    if _shape(src) == (b, h, length, d):
        return _unrepeat(graph, src)
    return _unrepeat_5d(graph, src, (b, h, length, d))


def _is_causal_constant(graph: Graph, expr: relax.Expr, scores_shape: tuple[int, ...]) -> bool:
    """A constant [.., Lq, Lkv] mask (leading axes 1) of 0 on/below the diagonal, <= -1e30 above."""
    value = graph.constant(expr)
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return False
    lq, lkv = scores_shape[-2:]
    if value.ndim < 2 or value.shape[-2:] != (lq, lkv) or any(d != 1 for d in value.shape[:-2]):
        return False
    value = value.reshape(lq, lkv).astype(np.float64)
    upper = np.triu(np.ones((lq, lkv), bool), 1)
    return bool(np.all(value[~upper] == 0.0) and np.all(value[upper] <= -1e30))


def _constant_indices(graph: Graph, expr: relax.Expr) -> np.ndarray | None:
    """Gather indices: a constant, or the importer's ``where(C < 0, C + dim, C)`` around one."""
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    where = graph.call(expr, "relax.where")
    if where is not None and isinstance(where.args[2], tvm.ir.GenericConst):
        less = graph.call(where.args[0], "relax.less")
        if less is not None and less.args[0].same_as(where.args[2]):
            return where.args[2].value.numpy()  # negatives are normalised by the caller
    return None


def _is_importer_tile(call: relax.Call) -> bool:
    """TVM's ONNX importer lowers ``Tile`` to ``call_tir(tile, (x,))`` (topi.tile) right away.

    Imported modules only hold PrimFuncs the importer made, so the name identifies topi.tile;
    the caller still checks that the shapes are a repeat of the head axis only.
    """
    gvar = call.args[0]
    args = call.args[1]
    name = getattr(gvar, "name_hint", "")
    return bool(re.fullmatch(r"tile\d*", name)) and isinstance(args, relax.Tuple) and len(args.fields) == 1


def _peel_scale(graph: Graph, expr: relax.Expr) -> tuple[relax.Expr, float]:
    """Strip multiplies/divides by scalar constants: (source, factor)."""
    factor = 1.0
    while True:
        call = graph.call(expr, "relax.multiply", "relax.divide")
        if call is None:
            return expr, factor
        a, c = call.args
        value = graph.scalar(c)
        if value is None and _op(call) == "relax.multiply":
            value, a = graph.scalar(a), c
        if value is None or value == 0.0:
            return expr, factor
        factor = factor * value if _op(call) == "relax.multiply" else factor / value
        expr = a


def match_site(graph: Graph, out: relax.Var, call: relax.Call) -> Match:
    """Match one ``matmul(softmax(...), v)``; raises :class:`NoMatch` with the reason."""
    probs, v_expr = call.args
    softmax = graph.call(probs, "relax.nn.softmax")
    if softmax is None:
        raise NoMatch("not softmax(...) @ V")
    p_shape = _shape(probs)
    if p_shape is None or len(p_shape) not in (3, 4):
        raise NoMatch(f"scores have rank {None if p_shape is None else len(p_shape)}; expected 3 or 4 (static)")
    rank = len(p_shape)
    if int(softmax.attrs.axis) not in (-1, rank - 1):
        raise NoMatch(f"softmax over axis {int(softmax.attrs.axis)}, not the key axis")
    chain: list[relax.Var] = [probs]
    steps: list[str] = []
    # Walk from the softmax input back to matmul(q, k^T): scalar scales and at most one mask.
    x = softmax.args[0]
    scale, mask, mask_scale, causal = 1.0, None, 1.0, False
    while True:
        if not isinstance(x, relax.Var) or x not in graph.bindings:
            raise NoMatch("softmax input is not computed from matmul(Q, K^T)")
        chain.append(x)
        op = _op(graph.value(x))
        value = graph.value(x)
        if op == "relax.matmul":
            break
        if op in ("relax.multiply", "relax.divide"):
            a, c = value.args
            factor, src = graph.scalar(c), a
            if factor is None and op == "relax.multiply":
                factor, src = graph.scalar(a), c
            if factor is None or factor == 0.0:
                raise NoMatch(f"scores are scaled by a non-constant or non-scalar tensor ({op})")
            factor = factor if op == "relax.multiply" else 1.0 / factor
            scale *= factor
            if mask is None:
                # Walking backwards: this scale is applied after any mask found further down.
                mask_scale *= factor
            steps.append("scale")
            x = src
            continue
        if op == "relax.add":
            a, b = value.args
            if not causal and (_is_causal_constant(graph, b, p_shape) or _is_causal_constant(graph, a, p_shape)):
                causal = True  # a constant 0 / -inf upper-triangle: the kernel skips those tiles
                x = a if _is_causal_constant(graph, b, p_shape) else b
                steps.append("causal")
                continue
            if mask is not None:
                raise NoMatch("more than one additive term on the scores")
            a_dep = isinstance(a, relax.Var) and _reaches_matmul(graph, a)
            b_dep = isinstance(b, relax.Var) and _reaches_matmul(graph, b)
            if a_dep == b_dep:
                raise NoMatch("mask depends on the scores (or neither add operand is the scores)")
            x, mask = (a, b) if a_dep else (b, a)
            steps.append("mask")
            continue
        raise NoMatch(f"unsupported op between matmul and softmax: {op}")
    qk = graph.value(x)
    for var in chain[:-1] + [x]:
        if graph.uses[var] > 1:
            raise NoMatch(f"intermediate scores '{var.name}' are used outside the attention")
    if mask is not None and graph.depends_on(mask, set(chain)):
        raise NoMatch("mask depends on the scores")
    q_expr, q_scale = _peel_scale(graph, qk.args[0])
    kt_expr, k_scale = _peel_scale(graph, qk.args[1])
    scale *= q_scale * k_scale
    q_shape, kt_shape, v_shape = _shape(q_expr), _shape(kt_expr), _shape(v_expr)
    if q_shape is None or kt_shape is None or v_shape is None:
        raise NoMatch("Q, K or V has no static shape")
    if not (len(q_shape) == len(kt_shape) == len(v_shape) == rank):
        raise NoMatch(f"Q/K/V ranks {len(q_shape)}/{len(kt_shape)}/{len(v_shape)} differ from the scores' {rank}")
    dtypes = {_dtype(q_expr), _dtype(kt_expr), _dtype(v_expr), _dtype(probs)}
    if len(dtypes) != 1 or next(iter(dtypes)) not in ("float32", "float16"):
        raise NoMatch(f"dtypes {sorted(dtypes)}; the kernel takes one of float32/float16")
    # K^T -> K in [.., L, D]: compose the transpose with a swap of the last two axes.
    permute = graph.call(kt_expr, "relax.permute_dims")
    swap = list(range(rank))
    swap[-2], swap[-1] = swap[-1], swap[-2]
    merged = _merged_head_transpose(graph, kt_expr) if rank == 4 else None
    if merged is not None:
        k_base, needs = merged.base, None
    elif permute is not None:
        axes = _int_list(permute.attrs.axes) or list(reversed(range(rank)))
        composed = tuple(axes[i] for i in swap)
        k_base = permute.args[0]
        needs = None if composed == tuple(range(rank)) else composed
    else:
        k_base, needs = kt_expr, tuple(swap)
    if merged is not None:
        k_src = merged
    elif needs is None and rank == 4:
        k_src = _unrepeat(graph, k_base)
    else:
        k_src = KvSource(k_base, 1, "interleave", "none")
    k_src.needs_permute = needs
    v_src = _unrepeat(graph, v_expr) if rank == 4 else KvSource(v_expr, 1, "interleave", "none")
    if (k_src.group, k_src.head_map) != (v_src.group, v_src.head_map):
        # Different repeats on K and V: fuse without sharing (each q head reads its own copy).
        steps.append(f"kv-repeat-mismatch(k={k_src.pattern}x{k_src.group},v={v_src.pattern}x{v_src.group})")
        if merged is not None:  # no unrepeated K var exists: read K^T through a swap instead
            k_base, needs = kt_expr, tuple(swap)
        k_src = KvSource(k_base, 1, "interleave", "none", needs)
        v_src = KvSource(v_expr, 1, "interleave", "none")
    k_shape = tuple(k_shape_after(k_src))
    vb_shape = _shape(v_src.base)
    head_dim = q_shape[-1]
    if k_shape[-1] != head_dim:
        raise NoMatch(f"K head dim {k_shape[-1]} != Q head dim {head_dim}")
    if vb_shape[-1] != head_dim:
        raise NoMatch(f"V head dim {vb_shape[-1]} != Q/K head dim {head_dim} (kernel needs equal)")
    if k_shape != vb_shape:
        raise NoMatch(f"K shape {k_shape} != V shape {vb_shape}")
    if k_shape[-2] != v_shape[-2] or p_shape[-1] != k_shape[-2]:
        raise NoMatch("key lengths of K and V differ")
    if q_shape[0] != k_shape[0]:
        raise NoMatch(f"batch of Q {q_shape} and K {k_shape} differ")
    if rank == 4 and q_shape[1] != k_shape[1] * k_src.group:
        raise NoMatch(f"{q_shape[1]} query heads vs {k_shape[1]} kv heads x group {k_src.group}")
    if mask is not None:
        m_shape = _shape(mask)
        if m_shape is None or len(m_shape) > rank:
            raise NoMatch("mask has no static shape or too many dimensions")
        if _dtype(mask) != _dtype(probs):
            raise NoMatch(f"mask dtype {_dtype(mask)} differs from the scores' {_dtype(probs)}")
        try:
            np.broadcast_shapes(m_shape, p_shape)
        except ValueError:
            raise NoMatch(f"mask shape {m_shape} does not broadcast to scores {p_shape}") from None
        if np.broadcast_shapes(m_shape, p_shape) != p_shape:
            raise NoMatch(f"mask shape {m_shape} widens the scores {p_shape}")
    steps = list(reversed(steps))
    return Match(
        out=out, q=q_expr, k=k_src, v=v_src, scale=scale, mask=mask, mask_scale=mask_scale,
        rank=rank, q_shape=q_shape, kv_shape=k_shape, dtype=_dtype(probs), steps=steps, causal=causal,
    )


def k_shape_after(src: KvSource) -> tuple[int, ...]:
    shape = _shape(src.base)
    if src.needs_permute is None:
        return shape
    return tuple(shape[i] for i in src.needs_permute)


def _reaches_matmul(graph: Graph, var: relax.Var) -> bool:
    """Whether ``var`` is the scores: matmul, possibly under scalar scales."""
    src, _ = _peel_scale(graph, var)
    return graph.call(src, "relax.matmul") is not None


def candidates(graph: Graph) -> list[tuple[relax.Var, relax.Call]]:
    """Every ``matmul(softmax(...), .)``: the sites that look like attention."""
    found = []
    for var, value in graph.bindings.items():
        if _op(value) == "relax.matmul" and graph.call(value.args[0], "relax.nn.softmax") is not None:
            found.append((var, value))
    return found
