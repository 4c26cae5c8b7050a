"""The step-size explorer in a real browser: JupyterLab + headless Chromium (driven by Playwright).

Starts JupyterLab on 127.0.0.1 (token, free port, fresh settings) serving a copy of
``notebooks/04_step_size.ipynb``, runs every cell, drags the λ slider to its left end and checks
that the plot and the prediction strip changed. Screenshots go to ``runs/browser/``. Every wait
is bounded. Run with ``make browser-test`` (which installs Debian's chromium when it can).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SLUGKIT_CHROMIUM", "/usr/bin/chromium")
OUT = ROOT / "runs" / "browser"
RUN_ALL_TIMEOUT_S = float(os.environ.get("SLUGKIT_BROWSER_RUN_TIMEOUT", 240))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
HOW_TO_INSTALL = ("Chromium is missing: install it with `sudo apt-get install -y chromium` (Debian/Ubuntu) and the "
                  "driver with `pip install -r requirements-lock.txt`, or run `make browser-test` as root")


def _missing_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found. {HOW_TO_INSTALL}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the Playwright Python package is missing. {HOW_TO_INSTALL}"
    return None


def require_browser() -> None:
    """Skip when Chromium or Playwright is missing, but fail under CI=true: there the browser tests may not skip."""
    reason = _missing_reason()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: the browser test may not skip. {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on loopback serving a copy of notebook 04; yields (base url, token)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "04_step_size.ipynb", work / "04_step_size.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    # no "get notified about official Jupyter news?" toast over the widget: answer it "never" beforehand
    notes = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notes.parent.mkdir(parents=True)
    notes.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    log = tmp_path / "lab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI and containers run as root
        cmd.append("--allow-root")
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/api/status?token={token}", 60, proc, log)
        yield base, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        OUT.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, OUT / "jupyterlab.log")


def test_step_size_slider_moves_the_plot_and_the_strip(lab, tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    base, token = lab
    OUT.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.monotonic()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{base}/lab/tree/04_step_size.ipynb?token={token}", timeout=60_000)
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.status === 'idle'); }", timeout=90_000, polling=500)
            timings["lab_ready_s"] = round(time.monotonic() - start, 1)
            # fire and forget: the command's promise resolves only when every cell ran; the wait below is bounded
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; }")
            # finished: the kernel is idle again and no cell shows the busy prompt [*]
            page.wait_for_function(
                "() => { const w = window.jupyterapp.shell.currentWidget; const k = w.sessionContext.session.kernel;"
                " const busy = [...document.querySelectorAll('.jp-InputArea-prompt')]"
                "   .some(p => p.textContent.includes('*'));"
                " const failed = [...document.querySelectorAll(\"[data-mime-type='application/vnd.jupyter.stderr']\")]"
                "   .some(e => e.textContent.includes('Traceback'));"
                " return failed || (k.status === 'idle' && !busy"
                "   && !!document.querySelector('.slugkit-step-size .noUi-handle')); }",
                timeout=RUN_ALL_TIMEOUT_S * 1000, polling=1000)
            timings["run_all_s"] = round(time.monotonic() - start - timings["lab_ready_s"], 1)
            errors = page.locator("[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
            tracebacks = [e for e in errors if "Traceback" in e]
            assert not tracebacks, f"a cell failed in the browser: {tracebacks[0][-2000:] if tracebacks else ''}"

            widget = page.locator(".slugkit-step-size").first
            widget.scroll_into_view_if_needed()
            plot = widget.locator("img").first
            strip = widget.locator(".slugkit-strip").first
            plot.wait_for(state="visible")
            page.wait_for_function("() => { const i = document.querySelector('.slugkit-step-size img');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
            before_png, before_strip = plot.screenshot(), strip.inner_text()
            before_src = plot.get_attribute("src")
            widget.screenshot(path=str(OUT / "before.png"))

            handle = widget.locator(".noUi-handle").first
            track = widget.locator(".noUi-target").first
            hb, tb = handle.bounding_box(), track.bounding_box()
            page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
            page.mouse.down()
            page.mouse.move(tb["x"] + 2, hb["y"] + hb["height"] / 2, steps=12)  # to the smallest λ
            page.mouse.up()
            t_move = time.monotonic()
            page.wait_for_function(
                "([src, text]) => { const w = document.querySelector('.slugkit-step-size');"
                " const i = w.querySelector('img'); const s = w.querySelector('.slugkit-strip');"
                " return i.getAttribute('src') !== src && i.complete && s.innerText !== text; }",
                arg=[before_src, before_strip], timeout=30_000, polling=200)
            timings["slider_update_s"] = round(time.monotonic() - t_move, 2)
            page.wait_for_timeout(300)
            after_png, after_strip = plot.screenshot(), strip.inner_text()
            widget.screenshot(path=str(OUT / "after.png"))
            page.screenshot(path=str(OUT / "page.png"))
            toasts = page.locator(".Toastify__toast").all_inner_texts()
            assert not [t for t in toasts if "news" in t.lower()], f"JupyterLab's news prompt is shown: {toasts}"
        finally:
            context.close()
    timings["total_s"] = round(time.monotonic() - start, 1)
    (OUT / "timings.json").write_text(json.dumps(timings, indent=2))
    print("browser timings:", timings)
    assert after_png != before_png, "the plot did not change after moving the λ slider"
    assert after_strip != before_strip, "the prediction strip did not change after moving the λ slider"
