"""Parallel multilingual text: the shipped UDHR corpus or a user JSONL file, aligned by unit."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from quantfair.errors import QuantfairError, UsageError

DATA_FILE = Path(__file__).parent / "data" / "udhr.jsonl"
REFERENCE = "en"
LENGTHS = ("short", "medium", "long")
LONG_SPAN = 3  # articles per "long" unit


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str
    family: str
    resource_class: int  # Joshi et al. 2020: 0 (left behind) .. 5 (winners)


LANGUAGES = {
    lang.code: lang
    for lang in [
        Language("en", "English", "Latin", "Indo-European (Germanic)", 5),
        Language("de", "German", "Latin", "Indo-European (Germanic)", 5),
        Language("fr", "French", "Latin", "Indo-European (Romance)", 5),
        Language("es", "Spanish", "Latin", "Indo-European (Romance)", 5),
        Language("ru", "Russian", "Cyrillic", "Indo-European (Slavic)", 4),
        Language("he", "Hebrew", "Hebrew", "Afro-Asiatic (Semitic)", 3),
        Language("ar", "Arabic", "Arabic", "Afro-Asiatic (Semitic)", 5),
        Language("zh", "Chinese (Mandarin)", "Han", "Sino-Tibetan", 5),
        Language("ja", "Japanese", "Kana+Han", "Japonic", 5),
        Language("ko", "Korean", "Hangul", "Koreanic", 4),
        Language("hi", "Hindi", "Devanagari", "Indo-European (Indo-Aryan)", 4),
        Language("tr", "Turkish", "Latin", "Turkic", 4),
        Language("el", "Greek", "Greek", "Indo-European (Hellenic)", 3),
        Language("th", "Thai", "Thai", "Kra-Dai", 3),
        Language("sw", "Swahili", "Latin", "Niger-Congo (Bantu)", 2),
        Language("yo", "Yoruba", "Latin", "Niger-Congo (Volta-Niger)", 2),
    ]
}


def language(code: str) -> Language:
    """Metadata for `code`; languages from a user corpus get an 'unknown' entry."""
    return LANGUAGES.get(code, Language(code, code, "unknown", "unknown", -1))


@dataclass(frozen=True)
class Corpus:
    """Texts keyed by (language, unit); every language has the same units."""

    texts: dict[str, dict[str, str]]  # lang -> unit -> text
    source: str

    @property
    def languages(self) -> list[str]:
        return list(self.texts)

    @property
    def units(self) -> list[str]:
        return list(next(iter(self.texts.values())))

    def digest(self) -> str:
        payload = json.dumps(self.texts, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def select(self, languages: Sequence[str] | None = None,
               units: Sequence[str] | None = None) -> Corpus:
        """A sub-corpus; unknown languages or units are usage errors."""
        languages = list(languages or self.languages)
        missing = [lang for lang in languages if lang not in self.texts]
        if missing:
            raise UsageError(
                f"unknown language(s) {', '.join(missing)}; this corpus has "
                f"{', '.join(self.languages)}"
            )
        if REFERENCE in self.texts and REFERENCE not in languages:
            languages.insert(0, REFERENCE)  # disparities are relative to English
        units = list(units or self.units)
        unknown = [u for u in units if u not in self.units]
        if unknown:
            raise UsageError(f"unknown unit(s) {', '.join(unknown[:5])}")
        return Corpus({lang: {u: self.texts[lang][u] for u in units} for lang in languages},
                      self.source)

    def sample_units(self, count: int, seed: int = 0) -> list[str]:
        """A seeded sample of unit ids (in corpus order), not simply the first `count`."""
        if count >= len(self.units):
            return self.units
        chosen = set(random.Random(seed).sample(self.units, count))
        return [u for u in self.units if u in chosen]

    def with_length(self, length: str) -> Corpus:
        """Length buckets from the same units: short = first sentence-line, medium = the unit,
        long = consecutive units joined (LONG_SPAN at a time)."""
        if length == "medium":
            return self
        if length == "short":
            return Corpus({lang: {u: t.split("\n")[0] for u, t in units.items()}
                           for lang, units in self.texts.items()}, self.source)
        if length == "long":
            ids = self.units
            spans = [ids[i:i + LONG_SPAN] for i in range(0, len(ids), LONG_SPAN)]
            return Corpus({lang: {"+".join(span): "\n".join(units[u] for u in span)
                                  for span in spans}
                           for lang, units in self.texts.items()}, self.source)
        raise UsageError(f"unknown length '{length}': use {', '.join(LENGTHS)}")


def load_corpus(path: str | Path | None = None) -> Corpus:
    """The shipped UDHR corpus, or a user JSONL file (fields lang, unit, text), validated."""
    path = Path(path) if path else DATA_FILE
    if not path.is_file():
        raise UsageError(f"corpus file not found: {path}")
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8-sig")  # a BOM at the start is what some editors write
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise QuantfairError(f"{path}:{line}: not valid UTF-8") from None
    texts: dict[str, dict[str, str]] = {}
    # Only "\n" ends a record: U+2028, U+0085 and friends are legal inside JSON strings.
    for number, line in enumerate(raw.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise QuantfairError(f"{where}: malformed JSON ({error.msg})") from None
        except RecursionError:
            raise QuantfairError(f"{where}: malformed JSON (nested too deeply)") from None
        if not isinstance(record, dict) or set(record) != {"lang", "unit", "text"}:
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise QuantfairError(f"{where}: expected exactly fields lang, unit, text, got {got}")
        if not all(isinstance(record[k], str) for k in record):
            raise QuantfairError(f"{where}: lang, unit and text must be strings")
        for key, value in record.items():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                raise QuantfairError(
                    f"{where}: {key} holds an unpaired surrogate "
                    f"(\\u{ord(value[error.start]):04x}), which is not valid Unicode text"
                ) from None
        if not record["lang"].strip() or not record["unit"].strip():
            raise QuantfairError(f"{where}: lang and unit must not be empty")
        if not record["text"].strip():
            raise QuantfairError(f"{where}: empty text for {record['lang']}/{record['unit']}")
        units = texts.setdefault(record["lang"], {})
        if record["unit"] in units:
            raise QuantfairError(f"{where}: duplicate unit {record['lang']}/{record['unit']}")
        units[record["unit"]] = record["text"]
    if not texts:
        raise QuantfairError(f"{path}: the corpus is empty")
    all_units = {u for units in texts.values() for u in units}
    for lang, units in texts.items():
        missing = sorted(all_units - set(units))
        if missing:
            raise QuantfairError(
                f"{path}: language '{lang}' lacks unit(s) {', '.join(missing[:5])}; "
                "every language needs the same units"
            )
    if REFERENCE not in texts:
        raise QuantfairError(f"{path}: no '{REFERENCE}' texts; disparities are relative to it")
    order = list(texts[REFERENCE])
    return Corpus({lang: {u: units[u] for u in order} for lang, units in texts.items()},
                  source=str(path))
