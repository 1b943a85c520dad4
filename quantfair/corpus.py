"""Parallel multilingual text: the shipped UDHR corpus or a user JSONL file, aligned by unit."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from quantfair.errors import QuantfairError, UsageError
from quantfair.storage import DuplicateKey, unique_keys
from quantfair.text import decimal_integer

DATA_FILE = Path(__file__).parent / "data" / "udhr.jsonl"
LANGUAGES_FILE = Path(__file__).parent / "data" / "languages.tsv"
REFERENCE = "en"
LENGTHS = ("short", "medium", "long")
LONG_SPAN = 3  # articles per "long" unit


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str  # ISO 15924 code: Latn, Cyrl, Arab, Hans, Jpan, Hang, ...
    family: str
    resource_class: int  # Joshi et al. 2020: 0 (left behind) .. 5 (winners)
    iso639_3: str = ""


UNKNOWN = "unknown"  # a script or family the metadata does not give
COLUMNS = ("code", "iso639_3", "name", "script", "family", "resource_class", "joshi_name")


def _utf8_text(path: Path) -> str:
    """The text of the file `path` as UTF-8, a BOM at the start skipped (some editors write
    one). Raises QuantfairError naming `file:line` where a byte is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise QuantfairError(f"{path}:{line}: not valid UTF-8") from None


def _read_languages(path: Path = LANGUAGES_FILE, corpus: Sequence[str] | None = None,
                    ) -> dict[str, Language]:
    """Language metadata from a TSV file with a header of `COLUMNS` (`code` required, the
    rest optional; `joshi_name` is not used): the shipped file (written by
    scripts/build_corpus.py), or a user corpus's, where a value left out or empty is the
    shipped file's for that code (`metadata`) or unknown, and every code must be a language
    of `corpus`. Raises QuantfairError naming `file:line` and the first bad value."""
    lines = _utf8_text(path).splitlines()
    header = lines[0].split("\t") if lines else []
    if "code" not in header or not set(header) <= set(COLUMNS) or len(set(header)) < len(header):
        raise QuantfairError(f"{path}:1: expected a tab-separated header of {', '.join(COLUMNS)}"
                             f" (code required, each once), got {', '.join(header) or 'nothing'}")
    languages: dict[str, Language] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        values = [value.strip() for value in line.split("\t")]
        if len(values) != len(header):
            raise QuantfairError(f"{path}:{number}: {len(values)} tab-separated values for "
                                 f"{len(header)} columns ({', '.join(header)})")
        row = {key: value for key, value in zip(header, values, strict=True) if value}
        code = unicodedata.normalize("NFC", row.get("code", ""))  # as the corpus's codes
        if corpus is not None and code not in corpus:
            raise QuantfairError(f"{path}:{number}: language {code!r} is not in the corpus "
                                 f"(it has {', '.join(corpus)})")
        if code in languages:
            raise QuantfairError(f"{path}:{number}: language {code} is listed twice")
        if not re.fullmatch(r"[A-Z][a-z]{3}", row.get("script", "Zyyy")):
            raise QuantfairError(f"{path}:{number}: script {row['script']!r} is not an ISO "
                                 "15924 code such as Latn, Cyrl, Arab or Hans")
        if not re.fullmatch(r"[a-z]{3}", row.get("iso639_3", "und")):
            raise QuantfairError(f"{path}:{number}: iso639_3 {row['iso639_3']!r} is not an ISO "
                                 "639-3 code: three lowercase letters, such as eng or heb")
        resource_class = row.get("resource_class")
        if resource_class is not None and resource_class not in {str(c) for c in CLASSES}:
            raise QuantfairError(f"{path}:{number}: resource_class {resource_class!r} is not "
                                 "one of Joshi et al.'s classes 0..5")
        known = Language(code, code, UNKNOWN, UNKNOWN, -1) if corpus is None else language(code)
        fields = {key: row[key] for key in ("name", "script", "family", "iso639_3") if key in row}
        if resource_class is not None:
            fields["resource_class"] = int(resource_class)
        languages[code] = replace(known, **fields)
    return languages


CLASSES = range(6)  # Joshi et al.'s classes 0..5
LANGUAGES = _read_languages()
_BY_ISO639_3 = {lang.iso639_3: lang for lang in LANGUAGES.values() if lang.iso639_3}
_ORDER = {key: i for i, lang in enumerate(LANGUAGES.values())  # by key and ISO 639-3
          for key in (lang.code, lang.iso639_3) if key}
_USER: dict[str, Language] = {}  # a user corpus's own metadata (`use_languages`)


def use_languages(languages: dict[str, Language]) -> None:
    """Metadata for a user corpus's languages that `metadata` gives over the shipped file's:
    the corpus's own languages file (`load_corpus`), or a report's `language_metadata`."""
    _USER.update(languages)


def use_report_languages(recorded: dict[str, dict]) -> None:
    """A report's `language_metadata`, the metadata its run used, over what is known here:
    a user corpus's own codes, and its languages file's values for shipped codes (`heb` in
    class 1), for a report read elsewhere."""
    fields = set(Language.__dataclass_fields__) - {"code"}
    use_languages({code: replace(language(code), **{k: v for k, v in given.items()
                                                    if k in fields})
                   for code, given in recorded.items()})


def metadata(code: str) -> Language | None:
    """The metadata of `code`: a user corpus's own (`use_languages`), else the shipped
    file's for a key of the shipped corpus (`he`) or the ISO 639-3 code of one of its
    languages (`heb`, as a user corpus may name it), under `code`; None for a language
    neither has."""
    shipped = _USER.get(code) or LANGUAGES.get(code) or _BY_ISO639_3.get(code)
    return replace(shipped, code=code) if shipped else None


def language(code: str) -> Language:
    """Metadata for `code` (see `metadata`); other languages of a user corpus get an
    'unknown' entry."""
    return metadata(code) or Language(code, code, UNKNOWN, UNKNOWN, -1)


def _language_of(code: str) -> str:
    """The language `code` names: its ISO 639-3 code where it has metadata, else itself."""
    meta = metadata(code)
    return meta.iso639_3 if meta and meta.iso639_3 else code


def same_language(code: str, other: str) -> bool:
    """Whether two codes name one language: `he` and a user corpus's `heb` (by ISO 639-3
    code, `_language_of`)."""
    return _language_of(code) == _language_of(other)


def names_reference(code: str) -> bool:
    """Whether `code` names English, the reference: `en`, or `eng` in a user corpus."""
    return same_language(code, REFERENCE)


def named_by(code: str, names: Sequence[str]) -> bool:
    """Whether `code` names one of the languages `names` (a finding's keys: `he` names a
    user corpus's `heb` too)."""
    return any(same_language(code, name) for name in names)


def by_language(codes: Sequence[str]) -> dict[str, list[str]]:
    """`codes` grouped by the language they name (`_language_of`), in the order of the
    codes (`["en", "he", "heb"]` -> `{"eng": ["en"], "heb": ["he", "heb"]}`). A user corpus
    may hold one language under two codes (`he` and `heb`), or two variants of it (`pt-BR`,
    `pt-PT`)."""
    groups: dict[str, list[str]] = {}
    for code in codes:
        groups.setdefault(_language_of(code), []).append(code)
    return groups


def per_language(values: dict[str, float]) -> dict[str, float]:
    """Values by code -> one value per language (`by_language`): the mean of its codes',
    keyed by its codes joined by "+" (`he+heb`), so that a language counts once."""
    return {"+".join(codes): sum(values[code] for code in codes) / len(codes)
            for codes in by_language(list(values)).values()}


def shared_languages(codes: Sequence[str]) -> list[str]:
    """The groups of `by_language` of more than one code, said as "he, heb (ISO 639-3 heb)";
    English's not (`names_reference`: its other codes are the reference, compared with
    nothing)."""
    return [f"{', '.join(named)} (ISO 639-3 {iso})" for iso, named in by_language(codes).items()
            if len(named) > 1 and not names_reference(named[0])]


def code_notes(codes: Sequence[str]) -> list[str]:
    """Notes on `codes` for a reader of their numbers: one language under several codes
    (`shared_languages`), English under another code (`names_reference`)."""
    return [*(f"one language under several codes, each audited: {shared}"
              for shared in shared_languages(codes)),
            *(f"{code} names English, the reference: measured, compared with nothing"
              for code in codes if code != REFERENCE and names_reference(code))]


def resource_points(values: dict[str, float]) -> tuple[list[tuple[str, float, float]], list[str]]:
    """Points for a correlation with resource class: one per language of `values` (code ->
    a value, such as its disparity) and class, as (its codes joined by "+", the class, the
    mean of its codes' values): a class is a language's (Joshi et al. 2020), so one
    language under two codes (`by_language`) is one point, unless its codes were given
    different classes (variants a languages file tells apart). English under another code
    (`eng`) is the reference, no point; the codes without a class are returned, left out."""
    points: dict[tuple[str, int], list[str]] = {}
    for code in values:
        if language(code).resource_class >= 0 and not names_reference(code):
            points.setdefault((_language_of(code), language(code).resource_class),
                              []).append(code)
    return ([("+".join(codes), float(resource_class),
              sum(values[code] for code in codes) / len(codes))
             for (_, resource_class), codes in points.items()],
            [code for code in values if language(code).resource_class < 0])


def _known() -> list[Language]:
    """Every language with metadata: the shipped file's, then a user corpus's own."""
    return [*LANGUAGES.values(), *(lang for code, lang in _USER.items() if code not in LANGUAGES)]


def _family_names(lang: Language) -> set[str]:
    """`Afro-Asiatic (Semitic)` -> {"afro-asiatic (semitic)", "afro-asiatic", "semitic"}."""
    family, _, branch = lang.family.partition(" (")
    return {lang.family.lower(), family.lower(), branch.removesuffix(")").lower()} - {""}


def _families() -> str:
    """The shipped metadata's families, each with its branches: `Afro-Asiatic (Chadic,
    Semitic), ...`."""
    branches: dict[str, set[str]] = {}
    for lang in _known():
        family, _, branch = lang.family.partition(" (")
        branches.setdefault(family, set()).update({branch.removesuffix(")")} - {""})
    return ", ".join(family + (f" ({', '.join(sorted(names))})" if names else "")
                     for family, names in sorted(branches.items()))


# ISO 15924 codes that name a combination or a variant of other scripts: Han (Hani) is
# written in Hans and Hant, and with kana in Jpan, with Hangul in Kore.
SCRIPT_PARTS = {"Hans": {"Hani"}, "Hant": {"Hani"}, "Jpan": {"Hani", "Hira", "Kana"},
                "Kore": {"Hani", "Hang"}}
# Scripts a text in one script is written in too: Korean in Hangul alone is Korean (Kore).
SCRIPT_WHOLES = {"Hang": {"Kore"}}


def _scripts(lang: Language) -> set[str]:
    """The ISO 15924 codes `script:` selects `lang` by: its script's own, those of the
    scripts it combines (`Jpan`: Jpan, Hani, Hira, Kana) and of the writing it is a part of
    (`Hang`: Hang, Kore); none for a language without metadata."""
    if lang.script == UNKNOWN:
        return set()
    return {lang.script} | SCRIPT_PARTS.get(lang.script, set()) | SCRIPT_WHOLES.get(
        lang.script, set())


SELECTOR_EXAMPLES = {"script": "script:Arab", "class": "class:0-2", "family": "family:Semitic"}


def select_languages(selector: str, among: Sequence[str] | None = None) -> list[str]:
    """Codes of the languages with metadata that `selector` names, in metadata order:
    `script:Arab` (ISO 15924, any case; `script:Hani` takes Hans and Jpan too), `class:0-2`,
    `class:3-` (3 to 5) or `class:5` (Joshi et al.), `family:Semitic` (a family or its
    branch, any case; the kind in any case too); only those in `among` when given.
    Unknown kinds, scripts, classes or families and empty selections are usage errors."""
    kind, _, value = (part.strip() for part in selector.partition(":"))
    kind = kind.lower()
    if kind in SELECTOR_EXAMPLES and not value:
        raise UsageError(f"--languages {selector} names no {kind}; give one, such as "
                         f"{SELECTOR_EXAMPLES[kind]}")
    pool = list(LANGUAGES.values()) if among is None else sorted(  # a user corpus's own last
        (lang for lang in map(metadata, dict.fromkeys(among)) if lang),
        key=lambda lang: _ORDER.get(lang.code, len(_ORDER)))
    if kind == "script":
        scripts = sorted({script for lang in _known() for script in _scripts(lang)})
        if value.lower() not in {s.lower() for s in scripts}:
            raise UsageError(f"--languages {selector}: no shipped language is written in "
                             f"script '{value}' (ISO 15924); scripts: {', '.join(scripts)}")
        chosen = [lang for lang in pool if value.lower() in map(str.lower, _scripts(lang))]
    elif kind == "class":
        low, dash, high = value.partition("-")
        if dash and (low or high):  # an open end: class:3- is 3-5, class:-2 is 0-2
            low, high = low or str(CLASSES[0]), high or str(CLASSES[-1])
        try:
            low_class, high_class = decimal_integer(low), decimal_integer(high or low)
        except ValueError:
            low_class = high_class = -1
        if low_class not in CLASSES or high_class not in CLASSES:
            raise UsageError(f"--languages {selector}: a class is 0..5 (Joshi et al. 2020), "
                             "or a range such as class:0-2 or class:3-")
        if low_class > high_class:
            raise UsageError(f"--languages {selector}: a range goes from low to high, "
                             f"class:{high_class}-{low_class}")
        chosen = [lang for lang in pool if low_class <= lang.resource_class <= high_class]
    elif kind == "family":
        if value.lower() == UNKNOWN or not any(value.lower() in _family_names(lang)
                                               for lang in _known()):
            raise UsageError(f"unknown family '{value}' in --languages {selector}; families "
                             f"(or their branches in parentheses): {_families()}")
        chosen = [lang for lang in pool if value.lower() in _family_names(lang)]
    else:
        raise UsageError(f"unknown language selector '{selector}' in --languages; use "
                         "script:<ISO 15924>, class:<0-5 or a range>, family:<name>, "
                         "language codes or all")
    if not chosen:
        raise UsageError(f"--languages {selector} selects no language"
                         + (" of this corpus" if among is not None else ""))
    return [lang.code for lang in chosen]


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
            by_case = {lang.lower(): lang for lang in self.texts}
            meant = [by_case[m.lower()] for m in missing if m.lower() in by_case]
            hint = f" (codes are case-sensitive: {', '.join(meant)}?)" if meant else ""
            if named := [f"{code} for {m}" for m in missing for code in self.texts
                         if m.lower() not in by_case and same_language(code, m)]:
                hint += f" (this corpus's codes for them: {', '.join(named)}?)"
            if spaced := [m for m in missing if len(m.split()) > 1  # `he ar` in an ini file
                          and all(code in self.texts for code in m.split())]:
                hint += f" (separate codes with commas: {','.join(spaced[0].split())}?)"
            raise UsageError(f"unknown language(s) {', '.join(missing)}{hint}; this corpus has "
                             f"{', '.join(self.languages)}")
        if REFERENCE in self.texts and REFERENCE not in languages:
            languages.insert(0, REFERENCE)  # disparities are relative to English
        units = list(units or self.units)
        unknown = [u for u in units if u not in self.units]
        if unknown:
            raise UsageError(f"unknown unit(s) {', '.join(unknown[:5])}")
        return Corpus({lang: {u: self.texts[lang][u] for u in units} for lang in languages},
                      self.source)

    def sample_units(self, count: int, seed: int = 0) -> list[str]:
        """A seeded sample of `count` unit ids (in corpus order), not simply the first
        `count`: the first `count` of one seeded order of all units, so a smaller sample lies
        inside a larger one and runs at other `--units` pair on every unit of the smaller."""
        # a sample of all units (not a shuffle): from 6 of the shipped 31 units up, its first
        # `count` are those `sample(units, count)` draws, as recorded numbers were measured on
        order = random.Random(seed).sample(self.units, len(self.units))
        chosen = set(order[:count])
        return [u for u in self.units if u in chosen]

    def with_length(self, length: str) -> Corpus:
        """Length buckets from the same units: short = first non-blank line, medium = the
        unit, long = consecutive units joined (LONG_SPAN at a time)."""
        if length == "medium":
            return self
        if length == "short":
            return Corpus({lang: {u: next(line for line in t.split("\n") if line.strip())
                                  for u, t in units.items()}
                           for lang, units in self.texts.items()}, self.source)
        if length == "long":
            ids = self.units
            spans = [ids[i:i + LONG_SPAN] for i in range(0, len(ids), LONG_SPAN)]
            return Corpus({lang: {"+".join(span): "\n".join(units[u] for u in span)
                                  for span in spans}
                           for lang, units in self.texts.items()}, self.source)
        raise UsageError(f"unknown length '{length}': use {', '.join(LENGTHS)}")


def load_corpus(path: str | Path | None = None) -> Corpus:
    """The shipped UDHR corpus, or a user JSONL file (fields lang, unit, text), validated;
    a user corpus's languages file (`languages_file`), where there is one, gives metadata
    for its languages (`use_languages`). Raises UsageError for a missing file, QuantfairError
    naming `file:line` for a bad record or metadata row."""
    path = Path(path) if path else DATA_FILE
    if path.is_dir():
        raise UsageError(f"corpus {path} is a directory; give a JSONL file")
    if not path.is_file():
        kind = "not a regular file (a pipe or device): save it to a file and give that"
        raise UsageError(f"corpus {path} is {kind}" if path.exists()
                         else f"corpus file not found: {path}")
    raw = _utf8_text(path)
    texts: dict[str, dict[str, str]] = {}
    first_line: dict[str, tuple[str, int]] = {}  # unit -> (language, line) that first has it
    spelled: dict[str, set[str]] = {}  # a code -> the Unicode forms it was written in
    # Only "\n" ends a record: U+2028, U+0085 and friends are legal inside JSON strings.
    for number, line in enumerate(raw.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line, object_pairs_hook=unique_keys)
        except DuplicateKey as error:
            raise QuantfairError(f"{where}: key {error} given twice in one record") from None
        except json.JSONDecodeError as error:
            # json's messages may end where its position would go: "... starting at"
            reason = error.msg.removesuffix(" at")
            raise QuantfairError(f"{where}: malformed JSON at column {error.colno}: {reason}"
                                 ) from None
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
        # a code in one Unicode form (NFC), as typed codes are read: `é` is `e` + U+0301
        written = record["lang"]
        lang = record["lang"] = unicodedata.normalize("NFC", written)
        if {",", ":"} & set(lang) or lang != lang.strip() or lang.lower() == "all":
            raise QuantfairError(f"{where}: language code {lang!r} cannot be named in "
                                 "--languages: no comma, colon or surrounding space, not 'all'")
        if not record["text"].strip():
            raise QuantfairError(f"{where}: empty or whitespace-only text for "
                                 f"{record['lang']}/{record['unit']}")
        units = texts.setdefault(record["lang"], {})
        spelled.setdefault(lang, set()).add(written)
        if record["unit"] in units:
            raise QuantfairError(f"{where}: duplicate unit {record['lang']}/{record['unit']}"
                                 + (" (a code written in two Unicode forms is one code)"
                                    if len(spelled[lang]) > 1 else ""))
        units[record["unit"]] = record["text"]
        first_line.setdefault(record["unit"], (record["lang"], number))
    if not texts:
        raise QuantfairError(f"{path}: the corpus is empty")
    all_units = {u for units in texts.values() for u in units}
    for lang, units in texts.items():
        missing = sorted(all_units - set(units))
        if missing:
            other, number = first_line[missing[0]]
            raise QuantfairError(
                f"{path}: language '{lang}' lacks unit(s) {', '.join(missing[:5])} "
                f"({other}/{missing[0]} is line {number}); every language needs the same units"
            )
    if REFERENCE not in texts:
        named = next((code for code in texts if names_reference(code)), None)
        raise QuantfairError(f"{path}: no '{REFERENCE}' texts; disparities are relative to it"
                             + (f" (name English '{REFERENCE}', not '{named}')" if named else ""))
    own = languages_file(path)
    if path != DATA_FILE and os.path.lexists(own):
        if not own.is_file():
            raise UsageError(f"the corpus's languages file {own} is not a regular file: give "
                             "a TSV file there, or remove it")
        use_languages(_read_languages(own, list(texts)))
    order = list(texts[REFERENCE])
    return Corpus({lang: {u: units[u] for u in order} for lang, units in texts.items()},
                  source=str(path))


def languages_file(corpus: Path) -> Path:
    """Where a user corpus keeps its languages' metadata: `texts.jsonl` ->
    `texts.languages.tsv`, in the shipped `languages.tsv`'s columns."""
    return corpus.with_name(f"{corpus.stem}.languages.tsv")
