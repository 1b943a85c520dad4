import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantfair.corpus import DATA_FILE, LANGUAGES, LANGUAGES_FILE, load_corpus
from quantfair.errors import QuantfairError, UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_corpus_is_aligned_and_complete():
    corpus = load_corpus()
    assert len(corpus.languages) >= 50 and set(LANGUAGES) <= set(corpus.languages)
    assert len(corpus.units) == 31 and corpus.units[0] == "preamble"
    for lang, units in corpus.texts.items():
        assert list(units) == corpus.units, lang
        assert all(text.strip() for text in units.values()), lang
        # the source marks a paragraph it lacks with "&1": such a unit is not the same content
        assert not any(re.fullmatch(r"&\d+", line) for text in units.values()
                       for line in text.splitlines()), lang


def test_articles_follow_element_order_not_labels():
    # Hebrew labels article 20 like article 2; the text must still be article 20's
    # (freedom of assembly), not a second copy of article 2.
    he = load_corpus().texts["he"]
    assert he["article_20"] != he["article_02"]
    assert "התאספות" in he["article_20"]


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_data_files_are_reproduced_by_the_build_script(tmp_path):
    pytest.importorskip("langcodes", reason="the build script names languages with langcodes")
    output = tmp_path / "udhr.jsonl"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_corpus.py"), "--output",
                    str(output)], check=True, timeout=300)
    assert output.read_bytes() == DATA_FILE.read_bytes()
    assert (tmp_path / "languages.tsv").read_bytes() == LANGUAGES_FILE.read_bytes()


def test_units_sample_is_seeded_and_not_the_first_n():
    corpus = load_corpus()
    sample = corpus.sample_units(8, seed=0)
    assert sample == corpus.sample_units(8, seed=0) and len(sample) == 8
    assert sample != corpus.units[:8]


def test_a_smaller_units_sample_lies_inside_a_larger_one():
    """Runs at other --units pair on every unit of the smaller run (the --baseline gate)."""
    units = load_corpus().units
    samples = [set(load_corpus().sample_units(count)) for count in range(1, len(units) + 1)]
    assert [len(sample) for sample in samples] == list(range(1, len(units) + 1))
    assert all(smaller < larger for smaller, larger in zip(samples, samples[1:]))


def test_length_buckets_come_from_the_same_units():
    corpus = load_corpus().select(["en", "he"], units=["article_01", "article_02", "article_03"])
    short, long = corpus.with_length("short"), corpus.with_length("long")
    assert all(corpus.texts["en"][u].startswith(short.texts["en"][u]) for u in corpus.units)
    assert long.units == ["article_01+article_02+article_03"]
    assert long.texts["he"][long.units[0]].startswith(corpus.texts["he"]["article_01"])


def test_more_units_than_a_one_unit_corpus_has_are_refused_in_the_singular(tmp_path):
    from quantfair.config import RunConfig

    path = _write(tmp_path, [{"lang": "en", "unit": "a", "text": "x"},
                             {"lang": "he", "unit": "a", "text": "y"}])
    settings = {"model": "tiny-gpt2", "corpus": str(path), "units": "2"}
    with pytest.raises(UsageError, match="--units 2: the corpus has 1 unit per language"):
        RunConfig.build(settings.get)


def test_the_short_bucket_of_a_text_opening_with_a_blank_line_is_its_first_words(tmp_path):
    corpus = load_corpus(_write(tmp_path, [{"lang": "en", "unit": "a", "text": "\n  \nHi.\nMore."},
                                           {"lang": "he", "unit": "a", "text": "שלום"}]))
    assert corpus.with_length("short").texts == {"en": {"a": "Hi."}, "he": {"a": "שלום"}}


def test_unknown_language_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown language.*xx"):
        load_corpus().select(["en", "xx"])


def test_a_code_in_any_unicode_form_is_one_code(tmp_path, monkeypatch):
    """`xŕ` written decomposed in the file (r + U+0301) and typed precomposed (U+0155): the
    message listed a code that looked the same as the one refused. Codes are read in one
    form (NFC) wherever they are given: the corpus, its languages file, --languages, a
    release maximum, an option given twice."""
    from quantfair import corpus as module
    from quantfair.config import OPTIONS, parse_languages, parse_release_bound

    monkeypatch.setattr(module, "_USER", {})  # the languages file's metadata, forgotten after
    decomposed, precomposed = "xr\u0301", "x\u0155"
    path = _write(tmp_path, [{"lang": "en", "unit": "a", "text": "x"},
                             {"lang": decomposed, "unit": "a", "text": "y"}])
    path.with_suffix(".languages.tsv").write_text(f"code\tname\n{decomposed}\tX\n")
    corpus = load_corpus(path)
    assert corpus.languages == ["en", precomposed] and module.language(precomposed).name == "X"
    for typed in (decomposed, precomposed):
        assert corpus.select(parse_languages(f"en,{typed}")).languages == ["en", precomposed]
        assert parse_release_bound("max-disparity", f"5,{typed}=2", ["en", precomposed]) == {
            "*": 5.0, precomposed: 2.0}
    reading = OPTIONS["languages"].reading
    assert reading(f"en,{decomposed}") == reading(f"en, {precomposed}")
    with pytest.raises(QuantfairError, match="duplicate unit .* written in two Unicode forms"):
        load_corpus(_write(tmp_path, [{"lang": "en", "unit": "a", "text": "x"},
                                      {"lang": decomposed, "unit": "a", "text": "y"},
                                      {"lang": precomposed, "unit": "a", "text": "z"}]))


def _write(tmp_path, lines, raw=None):
    path = tmp_path / "c.jsonl"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines))
    return path


@pytest.mark.parametrize("lines, message", [
    ([], "empty"),
    ([{"lang": "en", "unit": "a", "text": "hi"}, "{not json"], ":2: malformed JSON"),
    ([{"lang": "en", "unit": "a", "text": "hi"}, '{"lang": "en", "unit": "b", "text": "cut'],
     ":2: malformed JSON at column 37: Unterminated string starting"),  # the open quote
    ([{"lang": "en", "unit": "a", "text": "hi", "extra": 1}], "exactly fields"),
    # json keeps the last of a key given twice: a record that says two things is refused
    ([{"lang": "en", "unit": "a", "text": "hi"}, '{"lang": "en", "unit": "b", "text": "x", '
      '"text": "y"}'], ':2: key "text" given twice in one record'),
    (['{"lang": "en", "lang": "de", "unit": "a", "text": "x"}'], ':1: key "lang" given twice'),
    ([{"lang": "en", "unit": "a", "text": "  "}], "empty or whitespace-only text"),
    ([{"lang": "en", "unit": "a", "text": "x"}, {"lang": "en", "unit": "b", "text": "y"},
      {"lang": "he", "unit": "a", "text": "z"}], r"'he' lacks unit\(s\) b \(en/b is line 2\)"),
    ([{"lang": "en", "unit": "a", "text": "x"}, {"lang": "he", "unit": "a", "text": "y"},
      {"lang": "he", "unit": "extra", "text": "z"}],
     r"'en' lacks unit\(s\) extra \(he/extra is line 3\)"),  # the odd one out is named
    ([{"lang": "he", "unit": "a", "text": "z"}], "no 'en' texts; disparities are relative to "
                                                  "it$"),
    ([{"lang": "eng", "unit": "a", "text": "z"}], r"no 'en' texts; .* \(name English 'en', "
                                                   r"not 'eng'\)"),
    *(([{"lang": "en", "unit": "a", "text": "x"}, {"lang": code, "unit": "a", "text": "y"}],
       f"language code '{code}' cannot be named in --languages")
      for code in ("he,ar", "script:Arab", "All", " he")),
])
def test_user_corpus_errors_are_clear(tmp_path, lines, message):
    with pytest.raises(QuantfairError, match=message):
        load_corpus(_write(tmp_path, lines))


def test_user_corpus_rejects_non_utf8(tmp_path):
    raw = b'{"lang": "en", "unit": "a", "text": "ok"}\n{"lang": "en", "unit": "b", "text": "\xff"}'
    with pytest.raises(QuantfairError, match=":2: not valid UTF-8"):
        load_corpus(_write(tmp_path, None, raw))


def test_user_corpus_loads(tmp_path):
    corpus = load_corpus(_write(tmp_path, [
        {"lang": "en", "unit": "a", "text": "x"}, {"lang": "xx", "unit": "a", "text": "y"}]))
    assert corpus.languages == ["en", "xx"] and corpus.units == ["a"]


def test_a_release_maximum_for_english_under_another_code_is_refused():
    """`eng` is compared with nothing: its maximum would bound nothing, silently."""
    from quantfair.config import parse_release_bound

    with pytest.raises(QuantfairError, match=r"^--max-disparity 2,eng=3: disparities are "
                       r"relative to en, which eng names too \(compared with nothing\)"):
        parse_release_bound("max-disparity", "2,eng=3", ["en", "eng", "he"])
    assert parse_release_bound("max-degradation", "0.5,eng=0.4", ["en", "eng", "he"]) == {
        "*": 0.5, "eng": 0.4}  # a language's own damage: bounded


def test_a_language_under_another_code_is_hinted_and_calibrates_once(tmp_path):
    """A corpus's `heb` where `he` is typed, in --languages and a release maximum; selectors
    calibrate on each language once (not on Hebrew twice, nor on English again as `eng`)."""
    from quantfair.config import parse_release_bound
    from quantfair.session import _calibration_languages, _selector_share

    corpus = load_corpus(_write(tmp_path, [{"lang": lang, "unit": f"u{i}", "text": "x"}
                                           for lang in ("en", "eng", "he", "heb", "arb")
                                           for i in range(12)]))
    with pytest.raises(QuantfairError, match=r"unknown language\(s\) ar, xx \(this corpus's "
                                             r"codes for them: arb for ar\?\)"):
        corpus.select(["ar", "xx"])
    with pytest.raises(QuantfairError, match="he is not among the audited languages "
                                             r"\(en, heb\); the corpus's code for it: heb\?"):
        parse_release_bound("max-disparity", "2,he=3", ["en", "heb"])
    assert _calibration_languages(["he", "eng", "en", "heb", "arb"]) == ["arb", "en", "he"]
    assert len(_selector_share(corpus)) == 32 // 3  # three languages, not five codes
