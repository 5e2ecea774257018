"""Helpers for the tests that open the explorer in a real browser (Debian's Chromium, driven by Playwright): the
browser's flags, ``streamlit run app.py`` on a free port, and the plotly charts of a page and of its chart frames.
The ``browser`` fixture is in conftest.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from needs import require

ROOT = Path(__file__).resolve().parents[1]


CHROMIUM = Path(os.environ.get("GISP_CHROMIUM", "/usr/bin/chromium"))


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(cache: Path, log_path: Path, *args: str, env: dict[str, str] | None = None):
    """``streamlit run app.py`` in the repository (its .streamlit/config.toml applies), on a free port, with
    ``cache`` as its cache (and ``env`` added to the environment): (url, process). The benchmarks use it too."""
    examples = ROOT / "cache" / "examples"
    if not any((p / "trajectory.json").is_file() for p in examples.glob("*")):
        require(f"an example trajectory in {examples}")
    port = free_port()
    env = dict(os.environ, GISP_CACHE_DIR=str(cache), **(env or {}))
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app.py"),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"streamlit did not start: {log_path.read_text()}")
                time.sleep(0.5)
        yield url, proc
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


# plotly charts of the page and of its chart frames (explorer_ui.plotly_chart: an iframe per chart, same origin)
PLOTS = """() => [document, ...Array.from(document.querySelectorAll('iframe')).map(f => {
  try { return f.contentDocument; } catch (e) { return null; } })]
  .filter(Boolean).flatMap(d => Array.from(d.querySelectorAll('.js-plotly-plot')))"""
