"""The shipped languages: their metadata beside the data, and --languages selectors over it."""

import csv
import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest

from quantfair.config import parse_languages
from quantfair.corpus import DATA_FILE, LANGUAGES, LANGUAGES_FILE, language, load_corpus
from quantfair.errors import UsageError
from quantfair.report import language_metadata

TAXONOMY_FILE = Path(LANGUAGES_FILE).with_name("joshi2020_lang2tax.txt")
# The sixteen languages of the first corpus, with the classes Joshi et al. (2020) give them.
ORIGINAL = {"en": 5, "de": 5, "fr": 5, "es": 5, "ru": 4, "he": 3, "ar": 5, "zh": 5, "ja": 5,
            "ko": 4, "hi": 4, "tr": 4, "el": 3, "th": 3, "sw": 2, "yo": 2}
# sha256 of the 16-language udhr.jsonl (496 lines) as it was before the corpus grew.
ORIGINAL_SHA256 = "5b46fd72640a079a9b22f87e714cc08f970fc75a67de40a88d3600ebb88ff2ba"


def _rows():
    with open(LANGUAGES_FILE, encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def test_corpus_has_fifty_languages_of_31_aligned_units_each_with_metadata():
    corpus = load_corpus()
    assert len(corpus.languages) >= 50
    assert set(corpus.languages) == set(LANGUAGES)
    assert len(corpus.units) == 31
    for lang, units in corpus.texts.items():
        assert list(units) == corpus.units and all(t.strip() for t in units.values()), lang


def test_every_language_has_iso_codes_script_family_and_class():
    rows = _rows()
    assert [row["code"] for row in rows] == list(LANGUAGES)
    for row in rows:
        meta = language(row["code"])
        assert re.fullmatch(r"[a-z]{2,3}", meta.code), row
        assert re.fullmatch(r"[a-z]{3}", meta.iso639_3), row
        assert re.fullmatch(r"[A-Z][a-z]{3}", meta.script), row  # ISO 15924
        assert meta.name and meta.family and meta.name != meta.code, row
        assert meta.resource_class in range(6), row


def test_corpus_covers_all_six_classes_and_at_least_twelve_scripts():
    classes = {lang.resource_class for lang in LANGUAGES.values()}
    scripts = {lang.script for lang in LANGUAGES.values()}
    assert classes == {0, 1, 2, 3, 4, 5}
    assert len(scripts) >= 12
    assert {"Latn", "Cyrl", "Grek", "Arab", "Hebr", "Deva", "Beng", "Taml", "Thai", "Ethi",
            "Geor", "Armn", "Hans", "Jpan", "Hang"} <= scripts
    assert len({lang.family.split(" (")[0] for lang in LANGUAGES.values()}) >= 8


def test_the_readme_counts_the_shipped_languages_scripts_and_families():
    """The README said 26 scripts after a language had left the corpus."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    said = re.search(r"in (\d+) languages\s+\((\d+) scripts, (\d+) language families", readme)
    assert said, "the README's Data section no longer counts the corpus"
    families = {lang.family.split(" (")[0] for lang in LANGUAGES.values()}
    scripts = {lang.script for lang in LANGUAGES.values()}
    assert tuple(map(int, said.groups())) == (len(LANGUAGES), len(scripts), len(families))


def test_scripts_are_those_the_languages_are_written_in():
    expected = {"en": "Latn", "ru": "Cyrl", "el": "Grek", "ar": "Arab", "fa": "Arab",
                "he": "Hebr", "hi": "Deva", "bn": "Beng", "ta": "Taml", "th": "Thai",
                "ti": "Ethi", "ka": "Geor", "hy": "Armn", "zh": "Hans", "ja": "Jpan",
                "ko": "Hang", "my": "Mymr", "vai": "Vaii"}
    assert {code: language(code).script for code in expected} == expected


def test_resource_classes_are_joshi_et_al_s():
    taxonomy = {}
    for line in TAXONOMY_FILE.read_text(encoding="utf-8").splitlines():
        name, _, level = line.rpartition(",")
        assert name not in taxonomy, f"{name} twice in the taxonomy file"
        taxonomy[name] = int(level)
    for row in _rows():
        assert int(row["resource_class"]) == taxonomy[row["joshi_name"]], row
    assert {code: language(code).resource_class for code in ORIGINAL} == ORIGINAL


def test_the_original_sixteen_languages_keep_their_keys_order_and_text():
    lines = DATA_FILE.read_bytes().split(b"\n")
    original = b"\n".join(lines[:16 * 31]) + b"\n"
    assert hashlib.sha256(original).hexdigest() == ORIGINAL_SHA256
    assert load_corpus().languages[:16] == list(ORIGINAL)


def test_unknown_languages_still_get_an_unknown_entry():
    meta = language("xx")
    assert (meta.code, meta.script, meta.resource_class) == ("xx", "unknown", -1)


@pytest.mark.parametrize("text, expected", [
    ("script:Arab", ("en", "ar", "fa", "ur")),
    ("script:arab", ("en", "ar", "fa", "ur")),
    ("family:Semitic", ("en", "he", "ar", "ti")),
    ("family:semitic, de", ("en", "he", "ar", "ti", "de")),
    ("family:Afro-Asiatic (Semitic)", ("en", "he", "ar", "ti")),  # as `quantfair corpus` shows
    ("de,script:Hebr", ("en", "de", "he")),
    ("script:Hani", ("en", "zh", "ja")),  # Hans and Jpan are written in Han (ISO 15924)
    ("script:Kana", ("en", "ja")),
    ("script:Hans", ("en", "zh")),
    ("script:Kore", ("en", "ko")),  # Korean in Hangul alone is Korean writing (ISO 15924)
    ("script:Hang", ("en", "ko")),
    ("class:5", ("en", "de", "fr", "es", "ar", "zh", "ja")),
    ("he,family:Dravidian", ("en", "he", "ta", "te", "kn", "ml")),
    ("family:indo-european,family:Afro-Asiatic", None),
    ("SCRIPT:arab,Family:Semitic", ("en", "ar", "fa", "ur", "he", "ti")),  # selector order
])
def test_selectors_pick_languages_by_metadata(text, expected):
    if expected is None:  # a family names its branches' languages
        expected = ("en", *[code for code in LANGUAGES if code != "en" and LANGUAGES[code]
                            .family.startswith("Indo-European")],
                    *[code for code in LANGUAGES if LANGUAGES[code].family.startswith("Afro")])
    assert parse_languages(text) == expected


@pytest.mark.parametrize("text", ["all", " ALL ", "All"])
def test_all_is_a_selector_in_any_case(text):
    assert parse_languages(text) is None


def test_class_ranges_are_inclusive_and_english_stays_first():
    low = parse_languages("class:0-1")
    assert low[0] == "en" and {"dag", "vai", "shn", "bo", "te"} <= set(low[1:])
    assert all(language(code).resource_class <= 1 for code in low[1:])
    assert len(parse_languages("class:0-5")) == len(LANGUAGES)
    assert parse_languages("class:2,class:2-2") == parse_languages("class:2")
    # an open end runs to the last class or from the first: class:3- was class 3 alone
    assert parse_languages("class:3-") == parse_languages("class:3-5")
    assert parse_languages("class:-1") == parse_languages("class:0-1")
    assert parse_languages("script:Latn")[0] == "en"


def test_selectors_within_a_corpus_keep_to_its_languages():
    assert parse_languages("script:Hebr", ["en", "he", "xx"]) == ("en", "he")
    # a user corpus naming languages by ISO 639-3 code gets their metadata, in its own codes
    assert parse_languages("family:Semitic", ["eng", "en", "arb", "heb", "xx"]) == (
        "en", "heb", "arb")
    assert language("heb") == replace(language("he"), code="heb")
    assert language_metadata(["heb", "xx"]) == {"heb": language_metadata(["he"])["he"]}
    with pytest.raises(UsageError, match="selects no language of this corpus"):
        parse_languages("script:Arab", ["en", "he", "xx"])


@pytest.mark.parametrize("text, message, choices", [
    ("script:Klingon", "no shipped language is written in script 'Klingon'", "Arab, Armn"),
    ("script:Hant", "no shipped language is written in script 'Hant'", "Hani, Hans"),
    ("class:6", "class:6", "0..5"),
    ("class:3-1", "class:3-1", "a range goes from low to high, class:1-3"),
    ("class:low", "class:low", "0..5"),
    ("class:-", "class:-", "0..5"),
    ("class:1--2", "class:1--2", "0..5"),
    ("family:Elvish", "unknown family 'Elvish'", "Indo-European"),
    ("family:Indo", "unknown family 'Indo'", "Afro-Asiatic (Chadic, Semitic)"),  # branches too
    ("family:a", "unknown family 'a'", "Indo-European"),  # a whole name, not a substring
    ("family:(", "unknown family '('", "Indo-European"),
    ("en,all", "all selects every language; give it alone", "en,all"),
    ("de,ALL", "all selects every language; give it alone", "de,ALL"),
    ("color:red", "unknown language selector 'color:red'", "script:"),
    *((f"{kind}: ", f"--languages {kind}: names no {kind.lower()}; give one",
       f"such as {kind.lower()}:") for kind in ("script", "Class", "family")),
])
def test_bad_selectors_are_one_line_usage_errors(text, message, choices):
    with pytest.raises(UsageError) as error:
        parse_languages(text)
    assert message in str(error.value) and choices in str(error.value)
    assert "\n" not in str(error.value)


@pytest.fixture
def own_languages(tmp_path, monkeypatch):
    """`write(rows)`: a user corpus (en, yo, tlh, he) and its languages file, by default
    giving Yoruba all its metadata, Klingon (`tlh`, not in the shipped file) some, and Hebrew
    another name. The metadata it gives is forgotten after the test."""
    from quantfair import corpus

    monkeypatch.setattr(corpus, "_USER", {})
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(f'{{"lang": "{code}", "unit": "u1", "text": "Text {code}."}}\n'
                            for code in ("en", "yo", "tlh", "he")), encoding="utf-8")

    def write(*rows: str, header: str = "code\tname\tscript\tfamily\tresource_class"):
        rows = rows or ("yo\tYoruba\tLatn\tNiger-Congo (Volta-Niger)\t2",
                        "tlh\tKlingon\t\tConstructed\t", "he\tIvrit\t\t\t")
        (tmp_path / "texts.languages.tsv").write_text("\n".join([header, *rows]) + "\n",
                                                      encoding="utf-8")
        return path

    return write


def test_a_user_corpus_languages_file_gives_its_languages_metadata(own_languages):
    from quantfair.corpus import select_languages
    from quantfair.report import _validator

    path = own_languages()
    assert language("tlh").script == "unknown"  # not read yet
    corpus = load_corpus(path)
    assert language("yo") == replace(language("yo"), name="Yoruba", script="Latn",
                                     family="Niger-Congo (Volta-Niger)", resource_class=2)
    klingon = language("tlh")
    assert (klingon.name, klingon.script, klingon.family, klingon.resource_class) == (
        "Klingon", "unknown", "Constructed", -1)
    # a value left empty is the shipped file's: only Hebrew's name is its own
    assert language("he") == replace(LANGUAGES["he"], name="Ivrit")
    among = corpus.languages
    assert select_languages("family:constructed", among) == ["tlh"]
    assert select_languages("script:Latn", among) == ["en", "yo"]
    assert select_languages("class:2-3", among) == ["he", "yo"]
    recorded = language_metadata(among)
    assert recorded["tlh"] == {"name": "Klingon", "family": "Constructed"}  # unknowns left out
    errors = _validator("quantfair-report/6").iter_errors({"language_metadata": recorded})
    assert not [e.message for e in errors if list(e.path)[:1] == ["language_metadata"]]
    with pytest.raises(UsageError, match="unknown family 'unknown'"):
        select_languages("family:unknown", among)


@pytest.mark.parametrize("rows, header, message", [
    (["xx\tX\tLatn\tNone\t1"], None, "texts.languages.tsv:2: language 'xx' is not in the "
     "corpus (it has en, yo, tlh, he)"),
    (["yo\tYoruba\tLatin\t\t"], None, "texts.languages.tsv:2: script 'Latin' is not an ISO "
     "15924 code"),
    (["yo\tyoru"], "code\tiso639_3", "texts.languages.tsv:2: iso639_3 'yoru' is not an ISO "
     "639-3 code"),
    (["yo\tYoruba\t\t\t6"], None, "texts.languages.tsv:2: resource_class '6' is not one of"),
    (["yo\tYoruba", "tlh\tKlingon\t\t\t"], None, "texts.languages.tsv:2: 2 tab-separated "
     "values for 5 columns"),
    (["yo\tA\t\t\t", "", "yo\tB\t\t\t"], None, "texts.languages.tsv:4: language yo is listed "
     "twice"),
    (["yo\tYoruba"], "code\tlanguage", "texts.languages.tsv:1: expected a tab-separated "
     "header of code, iso639_3, name"),
    (["Yoruba\t2"], "name\tresource_class", "(code required, each once), got name, "
     "resource_class"),
])
def test_a_bad_languages_file_is_one_line_naming_its_line(own_languages, rows, header,
                                                           message):
    from quantfair.errors import QuantfairError

    path = own_languages(*rows, **({"header": header} if header else {}))
    with pytest.raises(QuantfairError) as error:
        load_corpus(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_languages_file_that_is_no_utf8_text_or_no_file_is_one_line(own_languages):
    """Bytes that are not UTF-8 name the line (they once crashed every command and pytest);
    a folder or a broken link where the file would be is not silently taken for none."""
    from quantfair.errors import QuantfairError

    path = own_languages()
    tsv = path.with_name("texts.languages.tsv")
    tsv.write_bytes(b"code\tname\nyo\tYor\xf9b\xe1\n")  # Latin-1
    with pytest.raises(QuantfairError, match=r"texts.languages.tsv:2: not valid UTF-8$"):
        load_corpus(path)
    tsv.unlink()
    for make in (tsv.mkdir, lambda: tsv.symlink_to(path.with_name("gone.tsv"))):
        make()
        with pytest.raises(UsageError, match="languages file .*texts.languages.tsv is not a "
                                             "regular file"):
            load_corpus(path)
        tsv.rmdir() if tsv.is_dir() else tsv.unlink()
