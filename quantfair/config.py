"""One option table for the `quantfair` CLI and the pytest plugin, and the frozen `RunConfig`
both build from it, validated once before any model is loaded.

Importing this module imports neither torch nor transformers: the pytest plugin loads it into
every pytest run of the environment.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

from quantfair.errors import UsageError
from quantfair.schemes import ARTIFACT, DEFAULT_EMBEDDING_TYPE, EMBEDDING_TYPES, QuantScheme
from quantfair.storage import is_gguf
from quantfair.text import brief, decimal_integer, units_text
from quantfair.workers import parse_threads

HIDDEN_STATES_VARIABLE = "QUANTFAIR_HIDDEN_STATES_MB"
HIDDEN_STATES_MB = 2048


def hidden_states_capacity() -> int:
    """Bytes of reused hidden states to keep (`quantfair.prefix`): QUANTFAIR_HIDDEN_STATES_MB
    (MiB, default 2048; 0 turns the reuse off). Raises UsageError for anything but a
    non-negative integer."""
    text = os.environ.get(HIDDEN_STATES_VARIABLE, "").strip() or str(HIDDEN_STATES_MB)
    with contextlib.suppress(ValueError):
        if (mib := decimal_integer(text)) >= 0:
            return mib << 20
    raise UsageError(f"{HIDDEN_STATES_VARIABLE} must be a number of MiB (0: off), "
                     f"got '{brief(text)}'")

REFERENCE = "en"  # disparities are relative to English
DEFAULT_LANGUAGES = "en,de,ru,he,ar,zh"
MODEL_KINDS = "a Hugging Face id, a directory, a .gguf file or a known model such as smollm2-135m"
DEFAULT_UNITS = 8
DEFAULT_QUANT = "int4"  # 4-bit, per tensor, symmetric, every parameter: the seed's baseline
DEFAULT_TOLERANCE = 0.10  # relative growth of a disparity that counts as a regression


DTYPES = ("float32", "bfloat16", "float16")

# Quantities a release gate can bound per language (--max-<quantity>, ini quantfair_max_...).
SHIPPED_CORPUS = "udhr (shipped)"  # the corpus setting's name for the shipped one
RELEASE_QUANTITIES = ("disparity", "kld_disparity", "degradation", "seed_disparity")


def refuse_empty(name: str, raw: Any) -> None:
    """An option given an empty value (e.g. an unset variable in a script) is never taken as
    its default. Raises UsageError."""
    if isinstance(raw, str) and not raw.strip():
        raise UsageError(f"--{name} is empty: give a value (see --help) or leave it out")


@dataclass(frozen=True)
class Option:
    """One setting: `--<name>` on the CLI and in the audit suite, `--quantfair-<name>` and the
    ini key `quantfair_<name>` everywhere."""

    name: str
    help: str
    default: Any = None
    flag: bool = False  # a switch (store_true)
    short: bool = True  # also has the short form in the audit suite
    number: bool = False  # may be a number (a TOML table's ini value may be one)
    integer: bool = False  # a whole number: `2.0` is refused, not read as `2`
    caseless: bool = False  # read in any case (`--device CPU` is `--device cpu`)

    @property
    def dest(self) -> str:
        return "quantfair_" + self.name.replace("-", "_")

    def reading(self, value: str) -> str:
        """`value` as this option reads it, to tell two values given for it apart: a path as
        written; else without surrounding space, in one Unicode form, in one case where the
        option takes any; a list (languages, maxima) entry by entry, a selector in any case;
        a number as its value (`02` is `2`, `10%` is `0.1`), where an integer option's `2.0`
        stays apart (refused)."""
        if self.name in PATH_SETTINGS:  # `café` in two forms names two files
            return value
        text = unicodedata.normalize("NFC", value.strip())
        if self.name == "languages":
            entries = (entry.strip() for entry in text.split(","))
            return ",".join(entry.lower() if ":" in entry or entry.lower() == "all" else entry
                            for entry in entries)
        if self.number:
            text = ",".join(map(self._number_reading, text.split(",")))
        return text.lower() if self.caseless else text

    def _number_reading(self, entry: str) -> str:
        """One entry of a number option (`2`, `10%`, `he=3`) as its value."""
        language, equals, number = entry.rpartition("=")
        digits = number.strip().removesuffix("%")
        scale = 100 if number.strip().endswith("%") else 1
        if self.integer:
            read = str(int(digits)) if re.fullmatch(r"[+-]?[0-9]+", number.strip()) else number
        else:
            read = repr(float(digits) / scale) if NUMBER.fullmatch(digits) else number
        return f"{language.strip()}{equals}{read.strip()}"


LANGUAGES_HELP = ("comma-separated language codes and selectors (script:Arab, class:0-2, "
                  "family:Semitic), or all; en is always added")

OPTIONS = {option.name: option for option in (
    Option("model", "model (the FP reference): smollm2-135m, gemma3-270m, a Hugging Face id, "
                    "a local directory or a .gguf file"),
    Option("quant", "quantization scheme, e.g. int4, int4-g128, int8-channel, gguf:Q4_0 "
                    f"(default {DEFAULT_QUANT})", DEFAULT_QUANT, caseless=True),
    Option("embedding-type", "type of the token embedding and output head under a gguf: scheme: "
                             f"{', '.join(EMBEDDING_TYPES)} (default {DEFAULT_EMBEDDING_TYPE})",
           caseless=True),
    Option("quantized", "audit this quantized artifact of the model instead of computing a scheme: "
                        "a GGUF file, a safetensors directory or a cached Hugging Face id"),
    Option("quantized-label", "name of the artifact's measurements in reports, stable across "
                              f"releases: letters, digits and . _ - (default {ARTIFACT})"),
    Option("languages", f"{LANGUAGES_HELP} (default {DEFAULT_LANGUAGES}; all of a --corpus file)",
           DEFAULT_LANGUAGES),
    Option("units", "measure a seeded sample of this many units per language, 0 for all "
                    f"(default {DEFAULT_UNITS})", str(DEFAULT_UNITS), number=True, integer=True),
    Option("corpus", "JSONL corpus with fields lang, unit, text (default: the shipped UDHR)"),
    Option("device", "auto (default: cuda if available, an xdist worker i taking GPU i mod n; "
                     "else cpu), cpu, cuda, cuda:N, mps", caseless=True),
    Option("dtype", f"evaluate in this dtype: {', '.join(DTYPES)} (default float32; fake "
                    "quantization is computed in float32, then cast)", "float32", caseless=True),
    Option("threads", "torch threads per process: auto (default: an xdist worker takes "
                      "cores // workers, unless OMP_NUM_THREADS is set; a serial run keeps "
                      "torch's default) or a number", "auto", number=True, integer=True,
           caseless=True),
    Option("random-weights", "build the model from a shipped config with random weights",
           flag=True),
    Option("strategy", "a protection strategy to audit against none and random protection at "
                       "its budget; 'suggested' takes the latest `quantfair suggest` result"),
    Option("report", "path of the JSON report, HTML beside it (default "
                     "reports/<model>-<UTC time>-<pid>.json)"),
    Option("no-report", "do not write the JSON/HTML report", flag=True),
    Option("baseline", "an earlier JSON report: fail when a disparity grows beyond the "
                       "tolerance (its paired bootstrap CI above it) or an audit that passed "
                       "now fails"),
    Option("tolerance", "relative disparity growth counted as a regression: a fraction, or a "
                        f"percentage with its percent sign (default {DEFAULT_TOLERANCE})",
           str(DEFAULT_TOLERANCE), number=True),
    Option("strict", "inconclusive comparisons (and growth beyond the --baseline tolerance "
                     "not significant) fail the run", flag=True, short=False),
    *(Option(f"max-{name.replace('_', '-')}", f"release gate: every language's {name} at most "
             "this, e.g. " + ("0.5 or 0.5,he=0.8 (a fraction, or a percentage)"
                              if name == "degradation" else "2.0 or 2.0,he=3.0")
             + " (per-language overrides)", number=True)
      for name in RELEASE_QUANTITIES),
)}


# Options naming files (a model may also be a name or a Hugging Face id): `~` is expanded,
# and in an ini file a relative path is taken from its folder (the plugin).
PATH_SETTINGS = ("model", "quantized", "corpus", "report", "baseline")

# options whose empty value has a message of its own (RunConfig.build)
OWN_EMPTY_MESSAGE = frozenset({"model", "languages", "strategy", "report", "quantized-label",
                               *(f"max-{name.replace('_', '-')}" for name in RELEASE_QUANTITIES)})


def option_help(option: Option, prefix: str) -> str:
    """`option`'s help, naming the other options it mentions as `prefix` does (--corpus is
    --quantfair-corpus in pytest, where a project may have a --corpus of its own)."""
    return re.sub(r"--([a-z][\w-]*)", lambda found: f"--{prefix}{found[1]}"
                  if found[1] in OPTIONS else found[0], option.help)


def add_options(addoption: Callable[..., Any], *, prefix: str,
                names: Iterable[str] | None = None) -> None:
    """Declare options through `addoption` (argparse's add_argument or pytest's), each as
    `--<prefix><name>` with the shared dest; defaults stay None so that an unset option can be
    told from one set to its default."""
    for name in OPTIONS if names is None else names:
        option = OPTIONS[name]
        if prefix == "" and not option.short:
            continue
        kwargs: dict[str, Any] = {"dest": option.dest, "help": option_help(option, prefix)}
        if option.flag:
            kwargs.update(action="store_true", default=False)
        else:
            kwargs.update(default=None, metavar=option.name.upper().replace("-", "_"))
        addoption(f"--{prefix}{name}", **kwargs)


def conftest_modules(pluginmanager: Any) -> Iterator[ModuleType]:
    """The conftest.py modules a pytest plugin manager has registered, asking nothing of
    other plugins: a project may register any object (one answering every attribute with a
    KeyError, an unhashable one, which `get_plugins`' set refuses)."""
    for _, plugin in pluginmanager.list_name_plugin():
        if isinstance(plugin, ModuleType) and isinstance(
                file := getattr(plugin, "__file__", None), str) and (
                Path(file).name == "conftest.py"):
            yield plugin


@contextlib.contextmanager
def _named_option(name: str):
    """A UsageError raised inside names option `name` where it names no option (so that the
    pytest plugin can say where a value it names came from: the ini file, -o)."""
    try:
        yield
    except UsageError as error:
        if re.search(r"--[a-z]", str(error)):
            raise
        raise UsageError(f"--{name}: {error}") from None


def selected_corpus(path: str | None, languages: str):
    """The corpus at `path` (None: the shipped UDHR) with the languages `languages` selects
    (`parse_languages` over the corpus's own). Raises UsageError naming --languages for a bad
    list, QuantfairError for a bad file."""
    from quantfair.corpus import load_corpus

    corpus = load_corpus(path)
    with _named_option("languages"):
        return corpus.select(parse_languages(languages, corpus.languages))


def parse_languages(text: str, available: Sequence[str] | None = None) -> tuple[str, ...] | None:
    """`"de, he,de"` -> `("en", "de", "he")`: trimmed, de-duplicated, English first;
    `"all"` -> None (every language of the corpus). Entries may also be selectors over the
    shipped language metadata (`script:Arab`, `class:0-2`, `family:Semitic`), restricted to
    `available` (the corpus's languages) when it is given."""
    if text.strip().lower() == "all":  # a selector: any case, as script:arab
        return None
    codes = [unicodedata.normalize("NFC", code.strip()) for code in text.split(",")]
    if any(not code for code in codes):
        what = f"has an empty entry in '{text}'" if text.strip() else "is empty"
        raise UsageError(f"--languages {what}; give comma-separated codes such as en,de,he")
    if "all" in map(str.lower, codes):
        raise UsageError(f"--languages {text}: all selects every language; give it alone")
    chosen = []
    for code in codes:
        if ":" in code:
            from quantfair.corpus import select_languages  # torch-free, reads languages.tsv

            chosen += select_languages(code, available)
        else:
            chosen.append(code)
    return tuple(dict.fromkeys([REFERENCE, *chosen]))


def refuse_inputs(path: str | os.PathLike, flag: str, model: str | None,
                  quantized: str | None, corpus: str | None,
                  elsewhere: str = "write elsewhere") -> None:
    """UsageError where the file `path` to write (given as `flag`) is one the run reads (the
    model's file, its `quantized` artifact, the `corpus` or the corpus's languages file) or
    lies in the folder a model was loaded from, in the quantfair package (its shipped corpus)
    or in quantfair's caches (said with the advice `elsewhere`): writing it would destroy the
    input."""
    from quantfair.corpus import languages_file
    from quantfair.storage import CACHE_FOLDERS, MODEL_KEY, RUN_PREFIX, cache_root, results_root

    languages = corpus and languages_file(Path(corpus))  # read where it exists
    reads = {"the file the model was loaded from": model, "the --quantized file": quantized,
             "the --corpus file": corpus, "the --corpus file's languages file": languages}
    target = Path(path).resolve()
    for what, read in reads.items():
        if not read or not Path(read).exists() and read != languages:
            continue
        read = Path(read).resolve()
        if read.is_dir() and read in target.parents:  # a model saved as a folder
            raise UsageError(f"{flag} {path} is in {what.replace('file', 'folder')}: write "
                             "another")
        if target == read or target.exists() and read.exists() and target.samefile(read):
            raise UsageError(f"{flag} {path} is {what}: write another")
    package = Path(__file__).resolve().parent  # its shipped corpus, languages, configs
    if package in target.parents:
        raise UsageError(f"{flag} {path} is in the quantfair package ({package}), whose files "
                         f"it reads: {elsewhere}")
    # the folders quantfair itself fills (a model's results, converted weights, ...)
    for variable, cache, ours in (
            ("QUANTFAIR_RESULTS_DIR", results_root(),
             lambda folder: (re.fullmatch(f"[0-9a-f]{{{MODEL_KEY}}}", folder)
                             or folder.startswith(RUN_PREFIX))),
            ("QUANTFAIR_CACHE_DIR", cache_root(), lambda folder: folder in CACHE_FOLDERS)):
        inside = (target.relative_to(cache.resolve()).parts
                  if target.is_relative_to(cache.resolve()) else ())
        if len(inside) > 1 and ours(inside[0]):
            raise UsageError(f"{flag} {path} is in quantfair's cache ({cache / inside[0]}, "
                             f"{variable}): {elsewhere}")


def check_folder_writable(directory: Path, option: str) -> None:
    """UsageError unless a file can be written in `directory` (made when the file is written,
    not here: a run that stops at a bad setting leaves nothing behind): a run must not end by
    failing to write what it measured."""
    from quantfair.storage import probe_writable, why_unwritable

    try:
        probe_writable(directory, make=False)
    except OSError as error:
        raise UsageError(f"{option}: cannot write in {directory} "
                         f"({why_unwritable(directory, error)})") from None


def check_search_units(units: int | None, total: int, calibration_units: int,
                       budget: float) -> None:
    """UsageError unless the corpus's `total` units per language less the `units` audited
    (None or 0: all) leave `calibration_units` for `quantfair suggest` to search on."""
    held_out = total - min(units, total) if units else 0
    if budget > 0 and not held_out:
        raise UsageError(f"--units {units or 0} audits every one of the corpus's {total} "
                         f"units and leaves none to search on: give fewer, e.g. --units "
                         f"{max(1, total - 9)}")
    if held_out and calibration_units > held_out:
        raise UsageError(f"--calibration-units {calibration_units}: {units_text(held_out)} per "
                         f"language {'is' if held_out == 1 else 'are'} left out of the audit "
                         "to search on; give at most that, or fewer --units")


def require_other_languages(languages: Sequence[str] | None) -> None:
    """UsageError when English is the only language (under any of its codes, `en` and a user
    corpus's `eng`): disparities compare languages with it (`None`: every language of the
    corpus)."""
    from quantfair.corpus import names_reference  # the corpus is loaded: its codes are known

    if languages is not None and all(names_reference(code) for code in languages):
        codes = ", ".join(dict.fromkeys(languages))
        english = "" if codes == REFERENCE else " (English, the reference)"
        raise UsageError(f"--languages selects only {codes}{english}: disparities compare "
                         f"languages with {REFERENCE}; give at least one other (`quantfair "
                         "corpus` lists the corpus's languages)")


# A percentage as written in options and strategy terms: plain decimals, no exponent, sign
# or trailing point (`12%`, `.5%`, `0.000001%`), at most 9 decimals.
PERCENT_NUMBER = r"(?:[0-9]{1,6}(?:\.[0-9]{1,9})?|\.[0-9]{1,9})"


def parse_percent(text: str, what: str) -> float:
    """`"12%"` or `"12"` -> 0.12; UsageError naming `what` unless it is a plain decimal
    (`PERCENT_NUMBER`) within 0..100%."""
    if not re.fullmatch("-?" + PERCENT_NUMBER + "%?", text.strip()):  # -5%: out of range
        if not re.fullmatch(r"-?[0-9]{7,}(?:\.[0-9]*)?%?", text.strip()):  # not too large
            raise UsageError(f"{what} must be a percentage like 12%, got '{brief(text)}'")
        value = math.inf
    else:
        value = float(text.strip().removesuffix("%"))
    if not 0 <= value <= 100 or text.strip().startswith("-"):  # -0% too
        raise UsageError(f"{what}: must be between 0% and 100%, got {brief(text)}")
    return value / 100


def parse_release_bound(name: str, text: str, languages: Sequence[str]) -> dict[str, float]:
    """`"2.0,he=3.0"` -> `{"*": 2.0, "he": 3.0}` (a default and per-language maxima); a
    language not among the audited `languages` is a UsageError (its bound would never
    apply)."""
    from quantfair.corpus import names_reference, same_language  # the corpus's codes known

    if not text.strip():
        raise UsageError(f"--{name} is empty: give a maximum, e.g. 2.0,he=3.0 (or leave the "
                         "option out for no gate)")
    bound: dict[str, float] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            raise UsageError(f"--{name} {text}: an empty entry; give e.g. 2.0,he=3.0")
        language, equals, number = entry.rpartition("=")
        if equals and not (language.strip() and number.strip()):
            raise UsageError(f"--{name} {text}: '{entry}' names no "
                             + ("maximum" if language.strip() else "language")
                             + "; give LANG=VALUE, or VALUE alone for every language, e.g. "
                             "2.0,he=3.0")
        language = unicodedata.normalize("NFC", language.strip()) or "*"
        # a degradation is a relative change, shown as a percentage: 0.5 or 50%
        parse = fraction_option if name == "max-degradation" else number_option
        try:
            value = parse(name, number)
        except UsageError as error:  # which maximum of several
            raise UsageError(str(error) if language == "*" else
                             f"{error} (the maximum of {language})") from None
        if language == "*" and "*" in bound:
            raise UsageError(f"--{name} {text}: two maxima for every language; give one, and "
                             "LANG=VALUE for a language, e.g. 2.0,he=3.0")
        if language in bound:
            raise UsageError(f"--{name} {text}: {language} is given twice")
        if language != "*" and ":" in language:
            raise UsageError(f"--{name} {text}: {language} is a selector; a maximum is given "
                             "per language code (e.g. he=3), selectors are for --languages")
        if language != "*" and language not in languages:
            meant = [lang for lang in languages if lang.lower() == language.lower()]
            named = [lang for lang in languages if same_language(lang, language)]
            raise UsageError(f"--{name} {text}: {language} is not among the audited languages "
                             f"({', '.join(languages)})"
                             + (f"; codes are case-sensitive: {meant[0]}?" if meant else
                                f"; the corpus's code for it: {named[0]}?" if named else "")
                             + ("; separate maxima with commas, e.g. 2.0,he=3.0"
                                if len(language.split()) > 1 else ""))
        if name.endswith("disparity") and names_reference(language):  # `eng` too
            raise UsageError(f"--{name} {text}: disparities are relative to {REFERENCE}, "
                             + ("whose own is 1 by definition" if language == REFERENCE else
                                f"which {language} names too (compared with nothing)")
                             + "; bound the other languages")
        bound[language] = value
    return bound


# ASCII decimal notation only, as `decimal_integer`
NUMBER = re.compile(r"\s*[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                    r"|(?i:inf|infinity|nan))\s*")  # not finite: said so (number_option)


def integer_option(name: str, text: str, minimum: int = 0) -> int:
    """The value of option `--name` as typed (`decimal_integer`), at least `minimum`; raises
    UsageError in one line."""
    try:
        value = decimal_integer(text)
    except ValueError as error:
        raise UsageError(f"--{name} must be {error}, got '{brief(text)}'") from None
    if value < minimum:
        least = "a positive integer" if minimum == 1 else f"at least {minimum}"
        raise UsageError(f"--{name} must be {least}, got {value}")
    return value


def number_option(name: str, text: str, given: str | None = None) -> float:
    """`text` as a finite non-negative number; UsageError quoting `given` (default: `text`),
    the value as typed."""
    given = text if given is None else given
    if not NUMBER.fullmatch(text):
        raise UsageError(f"--{name} must be a number, got '{brief(given)}'")
    value = float(text)
    if not 0 <= value < math.inf:
        raise UsageError(f"--{name} must be a finite non-negative number, got {brief(given)}")
    return value


def fraction_option(name: str, text: str) -> float:
    """A relative quantity as a fraction: `0.1` or `10%` -> 0.1. A bare number above 1 is a
    UsageError: `5` would be 500%, where 5% is what is usually meant."""
    percent = text.strip().endswith("%")
    value = number_option(name, text.strip().removesuffix("%") if percent else text,
                          text.strip())
    if not percent and value > 1:
        raise UsageError(f"--{name} {text.strip()}: a bare number is a fraction ({text.strip()} "
                         f"is {100 * value:g}%); write {text.strip()}% for {text.strip()} percent, "
                         f"or {100 * value:g}% if that is meant")
    return value / 100 if percent else value


def tolerance_option(text: str) -> float:
    """--tolerance as a fraction: 0.1 or 10% (`fraction_option`)."""
    return fraction_option("tolerance", text)


def _dtype(text: str | None) -> str:
    name = (text or "float32").strip().lower()
    if name not in DTYPES:
        raise UsageError(f"--dtype {text}: use one of {', '.join(DTYPES)}")
    return name


def _scheme(quant: str, embedding_type: str | None) -> QuantScheme:
    kind, colon, label = quant.strip().partition(":")
    if colon and kind.lower() == ARTIFACT:  # before the label's own check: `artifact:` too
        raise UsageError(f"--quant {quant.strip()}: an artifact's scheme comes from --quantized "
                         "FILE" + (f" (with --quantized-label {label})" if label else ""))
    with _named_option("quant"):
        scheme = QuantScheme.parse(quant)
    if embedding_type is None:
        return scheme
    if scheme.gguf_type is None:
        raise UsageError(f"--embedding-type applies to gguf: schemes, not {scheme.name}")
    with _named_option("embedding-type"):
        given = QuantScheme.gguf(scheme.gguf_type, embedding_type.strip().upper())
    if "-embed-" in quant.lower() and given != scheme:
        raise UsageError(f"--embedding-type {embedding_type.strip()} contradicts --quant "
                         f"{quant.strip()}: give the embedding type once")
    return given


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, parsed and validated once (see `OPTIONS` for their meaning)."""

    model: str
    scheme: QuantScheme = field(default_factory=lambda: QuantScheme.parse(DEFAULT_QUANT))
    quantized: str | None = None  # an artifact supplying scheme `artifact:<label>`'s tensors
    # release gate: quantity -> {"*": default maximum, language: maximum}
    release_bounds: dict[str, dict[str, float]] = field(default_factory=dict)
    languages: tuple[str, ...] | None = None  # None: every language of the corpus
    units: int | None = DEFAULT_UNITS  # a seeded sample of this many units per language; None: all
    corpus: str | None = None
    device: str | None = None
    dtype: str = "float32"  # one of DTYPES
    threads: int | None = None  # torch threads per process; None: auto (quantfair.workers)
    hidden_states_bytes: int = field(default_factory=hidden_states_capacity)
    random_weights: bool = False
    strategy: str | None = None
    report: Path | None = None
    no_report: bool = False
    baseline: Path | None = None
    tolerance: float = DEFAULT_TOLERANCE
    strict: bool = False

    @classmethod
    def build(cls, value: Callable[[str], Any], *, remote_workers: bool = False,
              quantizer: bool = True) -> RunConfig:
        """From `value(name)`: the raw setting (a string, a bool for switches, or None when
        unset). Raises UsageError naming the first bad setting; loads no model.
        `remote_workers`: the audits run on other machines (an xdist controller's remote
        gateways), whose cores bound `threads` there, not here; without `quantizer` a
        `llama.cpp:` scheme's file is not needed (tensor names only), nor llama-quantize."""
        def get(name: str) -> Any:
            raw = value(name)
            if isinstance(raw, str) and name in PATH_SETTINGS and raw.startswith("~"):
                expanded = os.path.expanduser(raw)  # `--report=~/r.json`: no shell expands it
                if expanded.startswith("~"):  # left as it is: a folder named `~nosuchuser`
                    user = raw.partition("/")[0]  # the model is the CLI's argument: unnamed
                    raise UsageError(f"{'model path' if name == 'model' else f'--{name}'} "
                                     f"{raw}: {user} names no user's home folder")
                return expanded
            return OPTIONS[name].default if raw is None else raw

        model = get("model")
        if not model:
            raise UsageError(f"the model is empty: name {MODEL_KINDS}")
        for name in OPTIONS:
            if name not in OWN_EMPTY_MESSAGE:
                refuse_empty(name, value(name))
        # The default languages are the shipped corpus's; a user corpus defaults to all of its.
        chosen = value("languages")  # an empty list is an error, not the default
        if chosen is None:
            chosen = "all" if get("corpus") else DEFAULT_LANGUAGES
        corpus = selected_corpus(get("corpus"), chosen)
        languages = tuple(corpus.languages)  # unknown languages failed just now
        units = integer_option("units", str(get("units")))
        # Given, more units than the corpus has is a mistake; the default takes all of a
        # smaller user corpus.
        if value("units") is not None and units > len(corpus.units):
            raise UsageError(f"--units {units}: the corpus has {units_text(len(corpus.units))} "
                             "per language (0 audits them all)")
        strategy = get("strategy")
        if strategy is not None and not strategy.strip():
            raise UsageError("--strategy is empty; give a strategy such as L0+Llast, or "
                             "leave it out")
        if strategy:
            from quantfair.strategy_syntax import check_given_strategies

            check_given_strategies([strategy])
        report, baseline = get("report"), get("baseline")
        if report is not None and not report.strip():
            raise UsageError("--report is empty; give the path of a .json file (--no-report "
                             "writes none)")
        if report:
            given = path = Path(report)
            if path.suffix.lower() == ".html":  # r.html names the pair r.json and r.html
                path = path.with_suffix(".json")
            elif path.suffix.lower() != ".json":  # r.JSON stays; r and release-1.2 get .json added
                path = path.with_name(path.name + ".json")
            if report.endswith(("/", os.sep)) or given.is_dir() or path.is_dir():
                raise UsageError(f"--report {report} is a directory; give the path of a .json "
                                 "file")
            if any(p.exists() and not p.is_file() for p in (given, path)):
                raise UsageError(f"--report {report} is not a regular file (--no-report writes "
                                 "no report)")
            html = path.with_suffix(".html")
            if html.exists() and not html.is_file():
                raise UsageError(f"--report {report}: the HTML report beside it, {html}, "
                                 "would replace what is not a file there; give another path")
            if baseline and path.resolve() == Path(baseline).resolve():
                raise UsageError(f"--report {report} would overwrite the --baseline it is "
                                 "compared with; give another path")
            for written in (path, html):
                refuse_inputs(written, "--report", model, get("quantized"), get("corpus"))
            check_folder_writable(path.parent, "--report")
        if baseline and Path(baseline).is_dir():
            raise UsageError(f"--baseline {baseline} is a directory; give a report's .json file")
        if baseline and not Path(baseline).is_file():
            raise UsageError(f"--baseline {baseline}: no such report file")
        quantized, label = get("quantized"), get("quantized-label")
        if label is not None and not label.strip():
            raise UsageError("--quantized-label is empty: give a name, or leave it out")
        if label and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label):
            raise UsageError(f"--quantized-label {label!r}: a name is letters, digits and . _ -, "
                             "beginning with a letter or digit (e.g. release, v1.2)")
        if quantized:
            for name in ("quant", "embedding-type"):
                if value(name) is not None:
                    raise UsageError(f"give --{name} or --quantized, not both: an artifact "
                                     "brings its own quantization")
            if is_gguf(quantized) and not Path(quantized).is_file():
                raise UsageError(f"--quantized {quantized}: " + (
                    "a directory, not a GGUF file" if Path(quantized).is_dir()
                    else "no such GGUF file"))
            scheme = QuantScheme(artifact=label or ARTIFACT)
        elif label:
            raise UsageError("--quantized-label names a --quantized artifact; none given")
        else:
            scheme = _scheme(get("quant"), get("embedding-type"))
        if scheme.llama_type and quantizer:
            from quantfair.llamacpp import llama_quantize_binary

            llama_quantize_binary()  # before any model loads
        return cls(model=model, scheme=scheme, quantized=quantized or None,
                   languages=languages,
                   units=units or None, corpus=get("corpus"),
                   device=(get("device") or "").strip().lower() or None,  # as --dtype's
                   dtype=_dtype(get("dtype")),
                   threads=parse_threads(get("threads"), cores_here=not remote_workers),
                   random_weights=bool(get("random-weights")), strategy=strategy or None,
                   report=path if report else None, no_report=bool(get("no-report")),
                   baseline=Path(baseline) if baseline else None,
                   tolerance=tolerance_option(str(get("tolerance"))),
                   strict=bool(get("strict")),
                   release_bounds={name: parse_release_bound(option, text, languages)
                                   for name in RELEASE_QUANTITIES
                                   if (text := get(option := f"max-{name.replace('_', '-')}"))
                                   is not None})

    def preflight(self, cache: bool = True, here: bool = True) -> None:
        """What can be checked before a model loads: the caches are writable (with `cache`),
        the model and any --quantized artifact are there, the device exists (with `here`; not
        where the model loads on other machines, each of which checks its own). Raises
        UsageError."""
        from quantfair.models import check_available, is_auto_device, resolve_device
        from quantfair.storage import cache_root, check_writable, results_root

        if cache:
            check_writable(cache_root(), results_root())
        if not here:
            return
        check_available(self.model, self.random_weights)
        if self.quantized:
            check_available(self.quantized, what="--quantized")
        if not is_auto_device(self.device):  # auto always resolves: no torch in a controller
            resolve_device(self.device)

    @cached_property
    def full_corpus(self):
        """The whole corpus file (`quantfair.corpus.Corpus`), read once per config."""
        from quantfair.corpus import load_corpus

        return load_corpus(self.corpus)

    @cached_property
    def corpus_split(self):
        """(the audited corpus: `languages`, `units` sampled; the held-out units of those
        languages, None when every unit is audited), both `quantfair.corpus.Corpus`."""
        full = self.full_corpus
        selected = full.select(self.languages)
        units = full.sample_units(self.units) if self.units else full.units
        held_out = [u for u in full.units if u not in units]
        return (selected.select(units=units),
                selected.select(units=held_out) if held_out else None)

    @cached_property
    def corpus_digest(self) -> str:
        """The audited text's digest (`Corpus.digest`): a corpus file edited in place is a
        different corpus under the same path."""
        return self.corpus_split[0].digest()

    def check_search(self, calibration_units: int, budget: float) -> None:
        """`check_search_units` on this config's corpus split."""
        audited, held_out = self.corpus_split
        check_search_units(self.units, len(audited.units) + len(held_out.units if held_out
                                                                 else ()),
                           calibration_units, budget)

    def settings(self) -> dict:
        """What was measured, as the report's `settings` block (the same from CLI and plugin)."""
        return {"model": self.model, "random_weights": self.random_weights,
                "scheme": self.scheme.name, "quantized": self.quantized,
                "languages": list(self.languages) if self.languages else None,
                "units": self.units, "corpus": self.corpus or SHIPPED_CORPUS,
                "device": self.device or "auto", "dtype": self.dtype,
                "corpus_digest": self.corpus_digest,
                **({"strategy": self.strategy} if self.strategy else {}),
                **({"release_maxima": self.release_maxima} if self.release_bounds else {})}

    @property
    def release_maxima(self) -> str:
        """"disparity 2,he=3; degradation 0.1": the release gates' maxima, as the options
        give them."""
        return "; ".join(
            f"{name} " + ",".join(f"{limit:g}" if language == "*" else f"{language}={limit:g}"
                                  for language, limit in maxima.items())
            for name, maxima in self.release_bounds.items())
