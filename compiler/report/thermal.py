"""Lumped RC thermal model of a phone and its throttling: sustained images/s over minutes.

One thermal node (the body/skin: the slow node that sets sustained performance) with the SoC
registry's sourced/derived constants: ambient, skin limit, time constant ``tau_body_s`` and
resistance ``r_body_k_per_w``:  C dT/dt = P - (T - T_amb) / R,  C = tau / R.
While T is below the skin limit the SoC runs at full clock; at the limit the governor caps power
to what holds T there, and performance follows the clock with P ~ f^3 (dynamic power C V^2 f
with V roughly proportional to f in the upper DVFS range: ``DVFS_EXPONENT``, stated).
Power of a workload = static + energy per op x ops/s + energy per DRAM byte x bytes/s
(``ENERGY``: stated constants with their basis). Everything here is a prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from banana.compiler.report.machine import Constant
from banana.targets.soc import Soc

DVFS_EXPONENT = Constant(3.0, 2.0, 3.0, "P ~ f^x", "dynamic power C V^2 f with V ~ f near the top of the DVFS "
                                                    "curve (textbook CMOS scaling; static power ignored)")
ENERGY: dict[str, Constant] = {
    "cpu_fp32_pj_per_op": Constant(
        59.0, 30.0, 90.0, "pJ/op",
        "derived: the registry's single big-core power (8 Gen 3 Cortex-X4, SPECint06: 6.27 W, meterpreter.org) "
        "over that core's fp32 peak (3.3 GHz x 4 pipes x 8 op = 105.6 Gop/s) = 59 pJ per op at full load"),
    "cpu_fp16_pj_per_op": Constant(30.0, 15.0, 45.0, "pJ/op", "assumption: half of fp32 (twice the lanes per "
                                                             "instruction at about the same instruction energy)"),
    "cpu_int8_pj_per_op": Constant(15.0, 7.0, 25.0, "pJ/op", "assumption: a quarter of fp32 (sdot: 4x the ops "
                                                            "per instruction)"),
    "accel_pj_per_op": Constant(2.0, 0.5, 5.0, "pJ/op", "assumption, unverified: GPU/DSP fp16/int8 MACs cost a "
                                                        "few pJ/op including data movement inside the unit"),
    "dram_pj_per_byte": Constant(40.0, 20.0, 60.0, "pJ/B", "assumption: LPDDR5/5X interface + array about "
                                                          "4-8 pJ/bit (public DRAM energy surveys; unverified)"),
    "static_w": Constant(0.5, 0.3, 1.0, "W", "assumption: SoC + DRAM idle/leakage power while active"),
}


def _fact(soc: Soc, key: str, default: float) -> float:
    fact = soc.thermal.get(key)
    return float(fact.value) if fact is not None else default  # type: ignore[arg-type]


@dataclass(frozen=True)
class ThermalParams:
    ambient_c: float
    limit_c: float
    tau_s: float
    r_k_per_w: float

    @property
    def capacity_j_per_k(self) -> float:
        return self.tau_s / self.r_k_per_w

    @property
    def sustainable_power_w(self) -> float:
        """Power that holds the node exactly at its limit in steady state."""
        return (self.limit_c - self.ambient_c) / self.r_k_per_w

    def steady_state_c(self, power_w: float) -> float:
        """Analytic steady state of the node at constant power (no throttling)."""
        return self.ambient_c + power_w * self.r_k_per_w

    def to_json(self) -> dict[str, Any]:
        return {"ambient_c": self.ambient_c, "limit_c": self.limit_c, "tau_s": self.tau_s,
                "r_k_per_w": self.r_k_per_w, "sustainable_power_w": self.sustainable_power_w}


def thermal_params(soc: Soc) -> ThermalParams:
    """The registry's body-node constants (defaults only for SoCs without a thermal table: the host)."""
    return ThermalParams(
        ambient_c=_fact(soc, "ambient_temp_c", 25.0),
        limit_c=_fact(soc, "skin_limit_temp_c", 45.0),
        tau_s=_fact(soc, "tau_body_s", 540.0),
        r_k_per_w=_fact(soc, "r_body_k_per_w", 5.0),
    )


def workload_power_w(ops_per_s: float, bytes_per_s: float, backend: str, precision: str) -> float:
    """Power at full clock: static + ops x energy/op + DRAM bytes x energy/byte."""
    if backend in ("cpu", "host"):
        key = {"fp32": "cpu_fp32_pj_per_op", "fp16": "cpu_fp16_pj_per_op"}.get(precision, "cpu_int8_pj_per_op")
    else:
        key = "accel_pj_per_op"
    return ENERGY["static_w"].value + ops_per_s * ENERGY[key].value * 1e-12 + bytes_per_s * ENERGY[
        "dram_pj_per_byte"].value * 1e-12


@dataclass
class Simulation:
    """Time series (every ``dt_s``) and headline figures of a sustained workload."""

    time_s: list[float]
    temp_c: list[float]
    clock_fraction: list[float]
    latency_ms: list[float]
    time_to_throttle_s: float | None
    steady_images_per_s: float
    peak_images_per_s: float
    mean_retained_fraction: float

    def to_json(self, every: int = 1) -> dict[str, Any]:
        return {"time_s": self.time_s[::every], "temp_c": self.temp_c[::every],
                "clock_fraction": self.clock_fraction[::every], "latency_ms": self.latency_ms[::every],
                "time_to_throttle_s": self.time_to_throttle_s, "steady_images_per_s": self.steady_images_per_s,
                "peak_images_per_s": self.peak_images_per_s, "mean_retained_fraction": self.mean_retained_fraction,
                "kind": "predicted"}


def simulate(params: ThermalParams, power_w: float, image_latency_ms: float, duration_s: float = 600.0,
             dt_s: float = 1.0, target_fps: float | None = None, exponent: float = DVFS_EXPONENT.value,
             start_c: float | None = None) -> Simulation:
    """Run images back to back (or at ``target_fps``, idling between) for ``duration_s``.

    Explicit Euler on the RC node with step ``dt_s`` (tau >> dt). At full clock the workload
    draws ``power_w`` and takes ``image_latency_ms``; at the limit the clock fraction is
    ``(P_allowed / P_needed)^(1/exponent)`` and latency scales with 1 / clock.
    """
    temp = params.ambient_c if start_c is None else start_c
    cap = params.capacity_j_per_k
    peak_ips = 1000.0 / image_latency_ms
    duty = 1.0 if target_fps is None else min(1.0, target_fps / peak_ips)
    times, temps, clocks, lats = [], [], [], []
    throttle_at = None
    retained_sum = 0.0
    steps = int(round(duration_s / dt_s))
    for i in range(steps + 1):
        needed = power_w * duty
        allowed = needed
        if temp >= params.limit_c - 1e-9 and needed > params.sustainable_power_w:
            allowed = params.sustainable_power_w
            if throttle_at is None:
                throttle_at = i * dt_s
        clock = min(1.0, (allowed / needed) ** (1.0 / exponent)) if needed > 0 else 1.0
        # at a lower clock the same work takes longer; with a fps target the duty cycle absorbs it
        power = allowed if clock < 1.0 else needed
        times.append(i * dt_s)
        temps.append(temp)
        clocks.append(clock)
        lats.append(image_latency_ms / clock)
        retained_sum += clock
        temp = temp + dt_s * (power - (temp - params.ambient_c) / params.r_k_per_w) / cap
        if needed > params.sustainable_power_w:
            temp = min(temp, params.limit_c)  # the governor reacts within one step: no overshoot
    achieved_ips = min(peak_ips * clocks[-1], target_fps if target_fps is not None else math.inf)
    return Simulation(times, temps, clocks, lats, throttle_at, achieved_ips, peak_ips, retained_sum / (steps + 1))
