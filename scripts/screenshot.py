"""Regenerate docs/report.png, the README's picture of the HTML report.

    python scripts/screenshot.py                      # newest reports/smollm2-135m-*.json
    python scripts/screenshot.py REPORT.json [-o docs/report.png]

Renders the report with the installed quantfair and photographs its first screens with headless
Chromium (`apt-get install chromium`). Make the report first with the README's quick start.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from quantfair.html import render_html
from quantfair.report import load_report

ROOT = Path(__file__).resolve().parents[1]
WINDOW = "1100,1500"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "report.png")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("screenshot: chromium is not installed (apt-get install chromium)")
    report = args.report or max((ROOT / "reports").glob("smollm2-135m-*.json"), default=None,
                                key=lambda p: p.stat().st_mtime)
    if report is None:
        sys.exit("screenshot: no reports/smollm2-135m-*.json: run the README's quick start")
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "report.html"
        page.write_text(render_html(load_report(report)), encoding="utf-8")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--user-data-dir={folder}/profile",
                        f"--window-size={WINDOW}", f"--screenshot={args.output.resolve()}",
                        page.as_uri()], check=True, capture_output=True, timeout=120)
    print(f"{args.output} from {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
