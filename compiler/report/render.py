"""report.md and a self-contained report.html (inline SVG plots, no scripts, no external files)."""

from __future__ import annotations

import html
import math
from typing import Any


def _ms(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _claims_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| SoC | backend | plan | res | tokens | bound ms/step | predicted ms/step [low-high] | bound ms/image |"
             " predicted ms/image | limited by | 30 fps@512 possible | <500 ms possible |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r.get("claims", {})
        lines.append(
            f"| {r['soc']} | {r['backend']} | {r['plan']} | {r['resolution']} | {r['tokens']} | "
            f"{_ms(r['bound_ms_per_step'])} | {_ms(r['predicted_ms_per_step'])} "
            f"[{_ms(r['predicted_low_ms_per_step'])}-{_ms(r['predicted_high_ms_per_step'])}] | "
            f"{_ms(r['bound_ms_per_image'])} | {_ms(r['predicted_ms_per_image'])} | {r['limited_by']}"
            f"{'' if r['peak_kind'] in ('sourced', 'derived') else ' (peak: estimate)'} | "
            f"{'yes' if c.get('30fps_at_512_physically_possible') else 'no'} | "
            f"{'yes' if c.get('sub_500ms_physically_possible') else 'no'} |")
    return lines


def _comparison_md(comp: dict[str, Any] | None) -> list[str]:
    if not comp or not comp.get("rows"):
        return []
    res = comp["resolution"] if comp["resolution"] == "native" else f"{comp['resolution']} px"
    out = ["", f"## Configurations side by side (predicted by shape: DiT '{comp['config']}', {res}, "
               f"{comp['steps']} steps, {comp['duration_s'] / 60:.0f} min back to back on {comp['soc']})", "",
           f"Model: {comp['why']}. {comp['method']}.", "",
           "| configuration | heads q/kv | per image ms | power W | time to throttle | steady images/s | "
           "peak images/s | K/V MB/step | limited by |", "|---|---|---|---|---|---|---|---|---|"]
    dur = comp["duration_s"]
    for r in comp["rows"]:
        ttt = r["time_to_throttle_s"]
        throttle = "n/a" if r["power_w"] is None else f"not within {dur:.0f} s" if ttt is None else f"{ttt:.0f} s"
        peak_note = {"sourced": "", "derived": "", "estimate": " (peak: estimate)"}.get(r["peak_kind"],
                                                                                      " (peak: unknown)")
        out.append(
            f"| {r['config']} | {r['q_heads']}/{r['kv_heads']} | {_ms(r['per_image_ms'])} | "
            f"{_num(r['power_w'], '.2f')} | {throttle} | {_num(r['steady_images_per_s'], '.3g')} | "
            f"{_num(r['peak_images_per_s'], '.3g')} | {r['kv_bytes_per_step'] / 1e6:.3g} | "
            f"{'n/a' if r['power_w'] is None else r['limited_by']}{peak_note} |")
    return out


def render_markdown(report: dict[str, Any]) -> str:
    lat = report["latency"]
    ps, pi = lat["per_step"], lat["per_image"]
    out = [f"# banana report: {report['model'].get('name', 'model')} on {report['soc']['name']} "
           f"({report['soc']['id']}), backend {report['backend']}", "", f"> {report['note']}", "",
           "## Latency (predicted)", "",
           f"- per step: **{_ms(ps['predicted_ms'])} ms** predicted "
           f"(range {_ms(ps['low_ms'])}-{_ms(ps['high_ms'])} ms);"
           f" physical lower bound {_ms(ps['bound_ms'])} ms",
           f"- per image ({lat['steps']} steps): **{_ms(pi['predicted_ms'])} ms** predicted "
           f"(range {_ms(pi['low_ms'])}-{_ms(pi['high_ms'])} ms); bound {_ms(pi['bound_ms'])} ms",
           f"- {lat['calls']} kernel calls, {lat['total_flops']:.4g} ops, {lat['total_bytes']:.4g} bytes per step"]
    m = report.get("measured")
    if m:
        where = f"rpc ({m['rpc']}, device key '{m['device_key']}')" if m.get("where") == "rpc" else "the host"
        out.append(f"- **measured** on {where}: {_ms(m['latency_ms'])} ms per call (median of {m['repeats']}, "
                   f"min {_ms(m['latency_min_ms'])}, max {_ms(m['latency_max_ms'])}) vs "
                   f"{_ms(ps['predicted_ms'])} ms predicted per step")
    for key, t in report["targets"].items():
        out.append(f"- target {key}: physically possible **{t['physically_possible']}**, predicted feasible "
                   f"**{t['predicted_feasible']}** (best case {t['feasible_at_best_case']})")
    out += ["", "| kernel | calls | ops | bytes | precision | limited by (roofline) | bound ms | "
            "predicted ms [low-high] |"
            + (" measured ms |" if m else ""), "|---|---|---|---|---|---|---|---|" + ("---|" if m else "")]
    meas_k = (m or {}).get("per_kernel_ms", {})
    for k in lat["kernels"][:40]:
        out.append(f"| {k['name']} | {k['calls']} | {k['flops']:.3g} | {k['bytes']:.3g} | {k['precision']} | "
                   f"{k['limited_by']} ({k.get('roofline_limited_by', '?')}) | {_ms(k['bound_ms'])} | "
                   f"{_ms(k['predicted_ms'])} "
                   f"[{_ms(k['low_ms'])}-{_ms(k['high_ms'])}] |"
                   + (f" {_ms(meas_k.get(k['name'], 0) / max(1, k['calls']))} |" if m else ""))
    mem = report["memory"]
    out += ["", "## Memory", "", "- weights by precision: " + ", ".join(
        f"{p} {b / 1e6:.2f} MB" for p, b in mem["weights_bytes_by_precision"].items()),
        f"- peak activation memory (compiled memory plan): {mem['peak_activation_bytes']} bytes"]
    for res, kv in mem.get("kv_traffic_by_resolution", {}).items():
        out.append(f"- {report['dit_projection']['config']} K/V traffic per step at {res}: GQA "
                   f"{kv['kv_bytes_gqa'] / 1e6:.1f} MB vs MHA {kv['kv_bytes_mha'] / 1e6:.1f} MB (predicted, fp16)")
    th = report["thermal"]
    sim = th["simulation"]
    ttt = sim["time_to_throttle_s"]
    throttle = "never" if ttt is None else f"{ttt:.0f} s"
    out += ["", "## Thermal (predicted, lumped RC)", "",
            f"- workload power {th['power_w']:.2f} W; unthrottled steady state "
            f"{th['steady_state_unthrottled_c']:.1f} C "
            f"vs limit {th['params']['limit_c']} C (sustainable {th['params']['sustainable_power_w']:.2f} W)",
            f"- images back to back for 10 min: time to throttle "
            f"{throttle}, "
            f"steady {sim['steady_images_per_s']:.3g} images/s (peak {sim['peak_images_per_s']:.3g}), "
            f"mean clock {sim['mean_retained_fraction']:.2f}"]
    out += _comparison_md(report.get("comparison"))
    rows = report["dit_projection"]["rows"]
    if rows:
        out += ["", f"## {report['dit_projection']['config']} DiT by shape (predicted; INT8 = W8A8, INT4 = W4A8)", ""]
        out += _claims_table(rows)
    out += ["", "## Cost-model constants (stated)", ""]
    for k, c in report["constants"].items():
        out.append(f"- `{k}` = {c['value']} {c['unit']} (range {c['low']}-{c['high']}): {c['basis']}")
    return "\n".join(out) + "\n"


# ---- SVG ----------------------------------------------------------------------------------------

def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">'
            f'<rect width="100%" height="100%" fill="#fff"/>'
            f'<text x="10" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>' + "".join(body)
            + "</svg>")


def latency_bars_svg(kernels: list[dict[str, Any]], measured: dict[str, float] | None, top: int = 15) -> str:
    rows = kernels[:top]
    vmax = max([k["total_predicted_ms"] for k in rows] + [measured.get(k["name"], 0) for k in rows]
               if measured else [k["total_predicted_ms"] for k in rows] or [1.0]) or 1.0
    w, bar, left = 820, 16, 330
    body = []
    for i, k in enumerate(rows):
        y = 30 + i * (bar * 2 + 6)
        pw = (w - left - 80) * k["total_predicted_ms"] / vmax
        body.append(f'<text x="5" y="{y + 12}" font-size="11">{html.escape(k["name"][:48])}</text>')
        body.append(f'<rect x="{left}" y="{y}" width="{pw:.1f}" height="{bar}" fill="#e0a800"/>')
        body.append(f'<text x="{left + pw + 4:.1f}" y="{y + 12}" font-size="10">{k["total_predicted_ms"]:.3g} ms '
                    f'predicted</text>')
        if measured and k["name"] in measured:
            mw = (w - left - 80) * measured[k["name"]] / vmax
            body.append(f'<rect x="{left}" y="{y + bar}" width="{mw:.1f}" height="{bar}" fill="#2b6cb0"/>')
            body.append(f'<text x="{left + mw + 4:.1f}" y="{y + bar + 12}" font-size="10">'
                        f'{measured[k["name"]]:.3g} ms measured</text>')
    height = 40 + len(rows) * (bar * 2 + 6)
    return _svg(w, height, body, "Latency per kernel (all calls of one step)")


def roofline_svg(kernels: list[dict[str, Any]], peak_ops: float | None, bw: float) -> str:
    w, h, pad = 620, 380, 55
    pts = [(k["intensity_ops_per_byte"], k["flops"] / (k["predicted_ms"] * 1e-3), k["name"])
           for k in kernels if k["intensity_ops_per_byte"] and k["predicted_ms"] > 0]
    xs = [p[0] for p in pts] or [1.0]
    x0, x1 = math.log10(min(xs) / 2), math.log10(max(max(xs) * 2, (peak_ops or bw) / bw * 4))
    ys = [p[1] for p in pts] or [1e9]
    y0, y1 = math.log10(min(ys) / 2), math.log10(max(max(ys), peak_ops or bw) * 2)

    def px(x: float) -> float:
        return pad + (math.log10(x) - x0) / (x1 - x0) * (w - 2 * pad)

    def py(y: float) -> float:
        return h - pad - (math.log10(y) - y0) / (y1 - y0) * (h - 2 * pad)

    body = [f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#000"/>',
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#000"/>',
            f'<text x="{w / 2 - 80}" y="{h - 15}" font-size="11">intensity (op/byte, log)</text>',
            f'<text x="5" y="{pad - 10}" font-size="11">op/s (log)</text>']
    xa, xb = 10 ** x0, 10 ** x1
    roof = [(x, min(peak_ops or math.inf, x * bw)) for x in (xa, *(10 ** (x0 + i * (x1 - x0) / 40)
                                                                    for i in range(41)), xb)]
    path = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(max(y, 10 ** y0)):.1f}" for i, (x, y) in enumerate(roof))
    body.append(f'<path d="{path}" fill="none" stroke="#c53030" stroke-width="2"/>')
    for x, y, name in pts:
        body.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="#2b6cb0"><title>'
                    f'{html.escape(name)}</title></circle>')
    label = "roof: sourced peak and DRAM bandwidth" if peak_ops else "roof: DRAM bandwidth only (peak unknown)"
    body.append(f'<text x="{pad + 10}" y="{pad + 10}" font-size="11" fill="#c53030">{label}; dots: predicted</text>')
    return _svg(w, h, body, "Roofline (predicted op/s per kernel)")


def series_svg(t: list[float], ys: list[float], title: str, unit: str, limit: float | None = None) -> str:
    w, h, pad = 620, 260, 50
    lo, hi = min(ys + ([limit] if limit else [])), max(ys + ([limit] if limit else []))
    hi = hi if hi > lo else lo + 1.0
    tmax = max(t) or 1.0

    def px(x: float) -> float:
        return pad + x / tmax * (w - 2 * pad)

    def py(y: float) -> float:
        return h - pad - (y - lo) / (hi - lo) * (h - 2 * pad)

    path = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(zip(t, ys,
                                                                                                       strict=True)))
    body = [f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#000"/>',
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#000"/>',
            f'<path d="{path}" fill="none" stroke="#2b6cb0" stroke-width="2"/>',
            f'<text x="{w / 2 - 30}" y="{h - 15}" font-size="11">time (s), 0-{tmax:.0f}</text>',
            f'<text x="5" y="{pad - 8}" font-size="11">{html.escape(unit)}: {lo:.3g}-{hi:.3g}</text>']
    if limit is not None:
        body.append(f'<line x1="{pad}" y1="{py(limit):.1f}" x2="{w - pad}" y2="{py(limit):.1f}" stroke="#c53030" '
                    f'stroke-dasharray="4"/>')
    return _svg(w, h, body, title)


_PALETTE = ("#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#319795", "#d53f8c", "#4a5568",
            "#dd6b20", "#38a169", "#3182ce", "#805ad5")


def comparison_bars_svg(rows: list[dict[str, Any]]) -> str:
    """Peak vs steady-state images/s per configuration (log scale: configurations span decades)."""
    rows = [r for r in rows if r.get("peak_images_per_s")]
    w, bar, left = 820, 12, 200
    vals = [v for r in rows for v in (r["peak_images_per_s"], r["steady_images_per_s"]) if v and v > 0] or [1.0]
    lo, hi = math.log10(min(vals) / 2), math.log10(max(vals) * 2)

    def width(v: float) -> float:
        return max(1.0, (w - left - 90) * (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo))

    body = [f'<text x="{left}" y="34" font-size="10">images/s (log {10 ** lo:.3g}-{10 ** hi:.3g}); '
            'light: peak (cool), dark: steady state after throttling</text>']
    for i, r in enumerate(rows):
        y = 44 + i * (bar * 2 + 8)
        body.append(f'<text x="5" y="{y + 15}" font-size="11">{html.escape(r["config"])}</text>')
        for j, (key, colour) in enumerate((("peak_images_per_s", "#90cdf4"), ("steady_images_per_s", "#2b6cb0"))):
            v = r[key]
            body.append(f'<rect x="{left}" y="{y + j * bar}" width="{width(v):.1f}" height="{bar - 1}" '
                        f'fill="{colour}"/>')
            body.append(f'<text x="{left + width(v) + 4:.1f}" y="{y + j * bar + 10}" font-size="9">{v:.3g}</text>')
    return _svg(w, 54 + len(rows) * (bar * 2 + 8), body, "Configurations: peak vs sustained images/s (predicted)")


def multi_series_svg(series: list[tuple[str, list[float], list[float]]], title: str, unit: str) -> str:
    """Several time series on one log-scale chart, with a legend."""
    w, h, pad, legend = 820, 320, 50, 230
    ys = [y for _, _, s in series for y in s if y > 0] or [1.0]
    lo, hi = math.log10(min(ys) / 1.2), math.log10(max(ys) * 1.2)
    tmax = max((max(t) for _, t, _ in series if t), default=1.0) or 1.0

    def px(x: float) -> float:
        return pad + x / tmax * (w - 2 * pad - legend)

    def py(y: float) -> float:
        return h - pad - (math.log10(max(y, 10 ** lo)) - lo) / (hi - lo) * (h - 2 * pad)

    body = [f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad - legend}" y2="{h - pad}" stroke="#000"/>',
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#000"/>',
            f'<text x="{pad}" y="{h - 15}" font-size="11">time (s), 0-{tmax:.0f}</text>',
            f'<text x="5" y="{pad - 8}" font-size="11">{html.escape(unit)} (log): {10 ** lo:.3g}-{10 ** hi:.3g}</text>']
    for i, (name, t, ys_) in enumerate(series):
        colour = _PALETTE[i % len(_PALETTE)]
        path = " ".join(f"{'M' if k == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for k, (x, y) in enumerate(zip(t, ys_,
                                                                                                          strict=True)))
        body.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        ly = pad + i * 16
        body.append(f'<rect x="{w - legend}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>')
        body.append(f'<text x="{w - legend + 14}" y="{ly}" font-size="10">{html.escape(name)}</text>')
    return _svg(w, h, body, title)


def _comparison_html(comp: dict[str, Any] | None) -> list[str]:
    if not comp or not comp.get("rows"):
        return []
    rows = comp["rows"]
    series = [(r["config"], r["series"]["time_s"], r["series"]["latency_ms"]) for r in rows if r.get("series")]
    return [comparison_bars_svg(rows),
            multi_series_svg(series, "Per-image latency over a sustained run, by configuration (predicted)",
                             "latency_ms")]


def render_html(report: dict[str, Any]) -> str:
    lat = report["latency"]
    measured = (report.get("measured") or {}).get("per_kernel_ms")
    peak = report["machine"]["peaks"].get(lat["kernels"][0]["precision"] if lat["kernels"] else "fp32", {})
    sim = report["thermal"]["simulation"]
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>banana report: {html.escape(report['soc']['id'])} {html.escape(report['backend'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em}"
        "pre{white-space:pre-wrap;background:#f6f6f6;padding:1em;font-size:12px}svg{margin:8px 0}</style>",
        "</head><body>",
        f"<h1>banana report — {html.escape(report['soc']['name'])} ({html.escape(report['soc']['id'])}), "
        f"backend {html.escape(report['backend'])}</h1>",
        f"<p><b>{html.escape(report['note'])}</b></p>",
        latency_bars_svg(lat["kernels"], measured),
        roofline_svg(lat["kernels"], peak.get("value"), report["machine"]["dram_bytes_per_s"]),
        series_svg(sim["time_s"], sim["temp_c"], "Temperature, images back to back (predicted)", "temp_c",
                   report["thermal"]["params"]["limit_c"]),
        series_svg(sim["time_s"], sim["latency_ms"], "Latency per image over time (predicted)", "latency_ms"),
        *_comparison_html(report.get("comparison")),
        "<h2>Full report</h2><pre>", html.escape(render_markdown(report)), "</pre></body></html>",
    ]
    return "\n".join(parts) + "\n"
