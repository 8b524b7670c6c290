"""Count HVX vs scalar instructions in LLVM's Hexagon assembly, to show how vectorised a build is.

Syntax handled (LLVM's Hexagon printer): packets are ``{`` ... ``}`` (optionally ``} :endloop0``),
one instruction per line; assignments ``v1 = vmem(r1+#1)``, ``v4.qf32 = vadd(v2.sf,v4.sf)``,
``r4 += sfmpy(r12,r11)``; stores ``vmem(r7+#0) = v4``; predication ``if (!p0.new) v1 = ...``;
``#`` marks immediates (not comments); comments are ``//`` and ``/* */``.

Keys of the result: ``hvx.<mnemonic>`` and ``scalar.<mnemonic>`` per mnemonic (loads and stores
share the mnemonic, e.g. ``hvx.vmem``; a register-to-register vector assignment is ``hvx.vmov``, or
``hvx.vconv`` when the element types differ as in ``v4.sf = v4.qf32``; scalar ``r1 = #0`` is
``scalar.mov``), and totals ``hvx_total``, ``hvx_loads``, ``hvx_stores``, ``qfloat_ops``,
``scalar_total``, ``instructions``, ``packets``.
"""

from __future__ import annotations

import re
from collections import Counter

_VREG = re.compile(r"\b(?:v\d+(?::\d+)?|q[0-3])\b")
_ASSIGN = re.compile(r"^(?P<lhs>[^=]+?)\s*(?P<op>[-+|&^]?=)\s*(?P<rhs>.+)$")
_CALL = re.compile(r"^([a-z_][a-z0-9_.]*)\s*\(", re.IGNORECASE)
_TYPE_SUFFIX = re.compile(r"\.(qf32|qf16|sf|hf|bf|w|h|b|uw|uh|ub|tmp|cur|new)\b")
_LOADSTORE = ("vmem", "vmemu", "vgather", "vscatter")


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def _split_line(line: str) -> tuple[int, list[str]]:
    """Return (packets opened on this line, instructions on this line)."""
    opened = line.count("{")
    body = re.sub(r"\}\s*(:endloop\d+|:mem_noshuf)*", "", line.replace("{", ""))
    return opened, [part.strip() for part in body.split(";") if part.strip()]


def _is_instruction(line: str) -> bool:
    return not (line.startswith(".") or re.fullmatch(r"[\w.$]+:", line) is not None)


def _strip_predicate(instr: str) -> str:
    """Drop ``if (p0)`` / ``if (!cmp.eq(r1.new,#0))`` so the predicated instruction remains."""
    if not re.match(r"^if\s*\(", instr):
        return instr
    depth = 0
    for pos, char in enumerate(instr):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return instr[pos + 1 :].strip()
    return instr


def _classify(instr: str) -> tuple[str, bool, int]:
    """(mnemonic, is_hvx, +1 load / -1 store / 0) for one instruction."""
    is_hvx = _VREG.search(instr) is not None
    body = _strip_predicate(instr)
    match = _ASSIGN.match(body)
    if match is None:
        word = re.match(r"^([a-z_][a-z0-9_.]*)", body, re.IGNORECASE)
        return (word.group(1).lower() if word else body.split()[0].lower()), is_hvx, 0
    lhs, rhs = match.group("lhs").strip(), match.group("rhs").strip()
    store = _CALL.match(lhs)
    if store is not None:  # memory on the left: a store
        name = store.group(1).lower()
        return name, is_hvx or name in _LOADSTORE, -1
    call = _CALL.match(rhs)
    if call is not None:
        name = call.group(1).lower()
        direction = 1 if name.startswith("mem") or name in _LOADSTORE else 0
        return name, is_hvx, direction
    if is_hvx:
        lhs_t = _TYPE_SUFFIX.findall(lhs)
        rhs_t = _TYPE_SUFFIX.findall(rhs)
        return ("vconv" if lhs_t and rhs_t and lhs_t != rhs_t else "vmov"), True, 0
    return "mov", False, 0


def hvx_instruction_stats(asm_text: str) -> dict[str, int]:
    """Count instructions of Hexagon assembly text by mnemonic, split into HVX and scalar."""
    counts: Counter[str] = Counter()
    totals = {k: 0 for k in ("hvx_total", "hvx_loads", "hvx_stores", "qfloat_ops", "scalar_total",
                             "instructions", "packets")}
    in_packet = False
    for raw in _strip_comments(asm_text).splitlines():
        line = raw.strip()
        if not line:
            continue
        opened, instrs = _split_line(line)
        if opened:
            totals["packets"] += opened
            in_packet = "}" not in line
        elif line.startswith("}"):
            in_packet = False
        for instr in instrs:
            if not _is_instruction(instr):
                continue
            if not in_packet and not opened:
                totals["packets"] += 1  # an instruction outside braces is a packet of its own
            name, is_hvx, direction = _classify(instr)
            totals["instructions"] += 1
            if is_hvx:
                counts[f"hvx.{name}"] += 1
                totals["hvx_total"] += 1
                totals["hvx_loads"] += direction == 1
                totals["hvx_stores"] += direction == -1
                totals["qfloat_ops"] += ".qf32" in instr or ".qf16" in instr
            else:
                counts[f"scalar.{name}"] += 1
                totals["scalar_total"] += 1
    return {**totals, **dict(sorted(counts.items()))}


# ---------------------------------------------------------------- hot loops and MAC accounting

_LABEL = re.compile(r"^\s*([.\w$]+):")
_LOOP_SETUP = re.compile(r"\bloop([01])\s*\(\s*([.\w$]+)\s*,")
_BACK_JUMP = re.compile(r"\bjump(?::[a-z]+)?\s+#*([.\w$]+)")


def innermost_loops(asm_text: str, branch_loops: bool = False) -> list[str]:
    """Assembly text of each innermost loop body (hot loops), in program order.

    A loop is a hardware loop (``loopN(.L, ...)`` ... packet ending ``:endloopN``: LLVM's form for
    counted loops) or, with ``branch_loops``, a backward ``jump`` to a label (off by default: block
    layout makes backward jumps that are no loops, e.g. in argument checks); innermost means its line
    range holds no other loop.
    """
    lines = _strip_comments(asm_text).splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    hw_starts: dict[str, list[int]] = {"0": [], "1": []}
    spans: list[tuple[int, int]] = []
    for i, line in enumerate(lines):
        for kind, label in _LOOP_SETUP.findall(line):
            if label in labels:
                hw_starts[kind].append(labels[label])
        for kind in ("0", "1"):
            if f":endloop{kind}" in line or (kind == "0" and ":endloop01" in line):
                starts = [s for s in hw_starts[kind] if s <= i]
                if starts:
                    spans.append((max(starts), i))
        jump = _BACK_JUMP.search(line)
        if branch_loops and jump and jump.group(1) in labels and labels[jump.group(1)] <= i:
            spans.append((labels[jump.group(1)], i))
    spans = sorted(set(spans))
    inner = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    return ["\n".join(lines[a : b + 1]) for a, b in inner]


# MACs one instruction issues, by mnemonic, for 128-byte HVX vectors (a vector-pair result doubles it).
# vrmpy: 32 word lanes x 4 products; vdmpy: 2 products per lane (32 word or 64 halfword lanes);
# vmpy/vmpyi*/vmpye/vmpyo: 1 product per result lane; vmpa: 2; vtmpy: 3.
_HVX_MACS_PER_LANE = {"vrmpy": 4, "vdmpy": 2, "vmpa": 2, "vtmpy": 3}
_LANES_BY_TYPE = {"w": 32, "uw": 32, "sf": 32, "qf32": 32, "h": 64, "uh": 64, "hf": 64, "qf16": 64,
                  "b": 128, "ub": 128}
# Scalar multiply-accumulate forms and their products per instruction.
_SCALAR_MACS = {"mpy": 1, "mpyi": 1, "mpyu": 1, "sfmpy": 1, "vmpyh": 2, "vdmpy": 2, "vrmpyh": 4,
                "vrmpybu": 4, "vrmpybsu": 4, "vrmpyu": 4}


def instruction_macs(instr: str) -> tuple[str, int]:
    """(``hvx.<mnemonic>``/``scalar.<mnemonic>``, multiply-accumulates issued) of one instruction; 0 if none."""
    name, is_hvx, _ = _classify(instr)
    key = f"{'hvx' if is_hvx else 'scalar'}.{name}"
    if not is_hvx:
        return key, _SCALAR_MACS.get(name, 0)
    base = next((b for b in ("vrmpy", "vdmpy", "vmpa", "vtmpy", "vmpy") if name.startswith(b)), None)
    if base is None:
        return key, 0
    match = _ASSIGN.match(_strip_predicate(instr))
    lhs = match.group("lhs").strip() if match else ""
    dest_type = (_TYPE_SUFFIX.findall(lhs) or ["w"])[-1]
    lanes = _LANES_BY_TYPE.get(dest_type, 32) * (2 if re.match(r"^v\d+:\d+", lhs) else 1)
    return key, lanes * _HVX_MACS_PER_LANE.get(base, 1)


def mac_share(asm_text: str, mnemonics: tuple[str, ...] = ("hvx.vrmpy",)) -> dict[str, float]:
    """MACs issued by each instruction kind in ``asm_text`` (one pass over the text, i.e. static counts).

    Returns ``{"macs.<key>": n, ..., "macs_total": n, "share": fraction issued by ``mnemonics``}``.
    """
    macs: Counter[str] = Counter()
    for raw in _strip_comments(asm_text).splitlines():
        _, instrs = _split_line(raw.strip())
        for instr in instrs:
            if not _is_instruction(instr):
                continue
            key, n = instruction_macs(instr)
            if n:
                macs[key] += n
    total = sum(macs.values())
    chosen = sum(v for k, v in macs.items() if k in mnemonics)
    return {**{f"macs.{k}": float(v) for k, v in sorted(macs.items())}, "macs_total": float(total),
            "share": chosen / total if total else 0.0}
