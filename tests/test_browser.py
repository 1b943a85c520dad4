"""The HTML report in headless Chromium: loads offline, no console errors, no requests."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

AUDITS = Path(__file__).resolve().parents[1] / "audits"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "reports" / "screenshots"  # CI artifacts
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


@pytest.fixture(scope="module", params=["tiny-gpt2", "smollm2-135m"])
def report(request, tmp_path_factory):
    """The quick audits' report of a tiny model and of the embedded one."""
    folder = tmp_path_factory.mktemp("browser")
    path = folder / f"{request.param}.json"
    subprocess.run(["pytest", "-p", "no:cacheprovider", str(AUDITS), "--model", request.param,
                    "-m", "quick", "--report", str(path)], cwd=folder, capture_output=True,
                   timeout=900)
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
    data = json.loads(report.read_text())
    html = dom.stdout
    assert html.count('<tr class="audit') == len(data["audits"]) > 0
    decided = {a["finding"] for a in data["audits"] if a["outcome"] != "skipped"}
    assert html.count("<details class=\"outcome-") == sum(  # the findings matrix: every case
        a["finding"] in decided for a in data["audits"])  # of a finding not wholly skipped
    scorecard = html[html.index('<table class="score" data-strategy="none">'):]
    scorecard = scorecard[:scorecard.index("</table>")]
    assert scorecard.count('<tr class="lang') == len(data["settings"]["languages"])
    charts = re.findall(r'<svg class="chart".*?</svg>', html, flags=re.S)
    assert len(charts) >= 3
    for chart in charts:
        ticks = re.findall(r'<g id="[^"]*tick_\d+">.*?<text[^>]*>([^<]+)</text>', chart,
                           flags=re.S)
        assert any(label.strip() for label in ticks), chart[:200]

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot = SCREENSHOTS / f"report-{report.stem}.png"
    shot = chromium(tmp_path, "--window-size=1200,2400", "--hide-scrollbars",
                    f"--screenshot={screenshot}", page)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000



def test_the_audits_table_fits_the_page_without_scrolling(report, tmp_path):
    """At a desktop width every column of "All audits" is in view: the whole suite's long
    quantity names ("relative CI half-width of the mean disparity (medium)") and
    experiment lists, kept on one line, widened the table past its page (the outcome column
    out of view) and squeezed the claims to a word a line."""
    from quantfair.html import render_html

    data = json.loads(report.read_text())
    for audit, (quantity, experiments) in zip(data["audits"], [
            ("relative CI half-width of the mean disparity (medium)", ["015"]),
            ("improvement factor (none / L0+Llast) difference", ["057", "058", "061", "062",
                                                                 "063", "064"]),
            ("disparity difference (mean over languages)", ["001", "002", "004", "008"])]):
        audit.update(quantity=quantity, experiments=experiments, value=0.0851, low=0.0123,
                     high=0.118)
    page = tmp_path / "page.html"
    page.write_text(render_html(data).replace("</body>", """<script>
const table = document.getElementById('audits');
document.body.insertAdjacentHTML('beforeend', '<pre id="probe">' + table.scrollWidth + ' '
  + table.parentElement.clientWidth + '</pre>');
</script></body>"""))
    dom = chromium(tmp_path, "--window-size=1400,2400", "--dump-dom", page.as_uri())
    width, room = map(int, re.search(r'<pre id="probe">(\d+) (\d+)</pre>', dom.stdout).groups())
    assert width <= room
