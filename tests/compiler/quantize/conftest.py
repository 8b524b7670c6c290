"""Shared, module-cached calibration of the trained nano DiT (short budgets for the default run)."""

from __future__ import annotations

import pytest
import torch

from banana.compiler.quantize.calibrate import Calibration, calibrate
from banana.compiler.zoo import build_reference


@pytest.fixture(scope="session")
def nano() -> torch.nn.Module:
    torch.set_num_threads(1)
    return build_reference("nano-dit")


@pytest.fixture(scope="session")
def nano_cal(nano: torch.nn.Module) -> Calibration:
    return calibrate(nano, steps=4, seeds=range(1000, 1032))
