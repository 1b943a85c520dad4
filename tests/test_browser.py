"""The HTML report in headless Chromium: loads offline, no console errors, no requests."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

AUDITS = Path(__file__).resolve().parents[1] / "audits"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytest_plugins = ["pytester"]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--enable-logging=stderr", "--v=0"]


def page_requests(netlog: Path) -> list[str]:
    """Network requests the page made (the browser's own background traffic left out)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [event["params"]["url"] for event in log["events"]
            if event["type"] == start and "url" in event.get("params", {})
            and event["params"].get("initiator") != "not an origin"
            and not event["params"]["url"].startswith(("file:", "data:"))]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    path = folder / "tiny.json"
    subprocess.run(["pytest", "-p", "no:cacheprovider", str(AUDITS / "test_synergy.py"),
                    str(AUDITS / "test_baseline.py"), "--model", "tiny-gpt2", "-m", "quick",
                    "--report", str(path)], cwd=folder, capture_output=True, timeout=600)
    return path


def test_report_renders_offline_without_errors(report, tmp_path):
    page = report.with_suffix(".html").as_uri()
    netlog = tmp_path / "net.json"
    dom = chromium(tmp_path, "--virtual-time-budget=3000", f"--log-net-log={netlog}",
                   "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console  # the report logs nothing; errors and CSP violations would show here
    assert page_requests(netlog) == []
    expected = len(json.loads(report.read_text())["audits"])
    assert dom.stdout.count('<tr class="audit') == expected > 0

    screenshot = tmp_path / "report.png"
    shot = chromium(tmp_path, "--window-size=1200,2400", f"--screenshot={screenshot}", page)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000
