"""report.html opens in a real browser (headless Chromium) without console errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from banana.compiler.pipeline import compile_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _screenshot(page: Path, png: Path, profile: Path) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--window-size=1280,2000",
         f"--screenshot={png}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return proc.returncode, console


def test_console_errors_are_detected(tmp_path: Path) -> None:
    """The check below can fail: a page with a script error is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console = _screenshot(page, tmp_path / "bad.png", tmp_path / "profile")
    assert any("Uncaught" in line for line in console)


def test_report_html_renders_without_errors(mlp_onnx: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run scripts/bootstrap.sh")
    out = tmp_path / "artifact"
    compile_model(mlp_onnx, backend="host", out=out)
    png = tmp_path / "report.png"
    code, console = _screenshot(out / "report.html", png, tmp_path / "profile")
    assert code == 0
    assert console == []
    assert png.is_file() and png.stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org", "")
