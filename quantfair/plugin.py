"""pytest glue, loaded into every pytest run of the environment (entry point pytest11).

It declares only namespaced options (`--quantfair-model`, ini `quantfair_model`, ...) and
markers (`quantfair`, `quantfair_quick`, `quantfair_release`), imports neither torch nor
transformers, and does nothing more unless a model is given. The short forms (`--model`,
`-m quick`) live in the opt-in plugin `quantfair.short_options`. The run's state is one
`QuantfairRun` (see `quantfair.run`), kept under a stash key on the config.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import inspect
import itertools
import os
import re
import shlex
import socket
import sys
import warnings
from pathlib import Path

import pytest

from quantfair.config import (
    DEFAULT_LANGUAGES,
    MODEL_KINDS,
    OPTIONS,
    PATH_SETTINGS,
    RunConfig,
    add_options,
    conftest_modules,
    option_help,
    parse_languages,
    require_other_languages,
)
from quantfair.errors import QuantfairError, UsageError, os_error_text
from quantfair.text import one_line, shell_word
from quantfair.workers import HOST_WORKERS, WORKER_HOST, gateway_host, remote_gateways

RUN = pytest.StashKey[object]()  # the QuantfairRun of an audit run
# A bad setting of the ini file alone, said when the first audit runs (`pytest_configure`)
DEFERRED = pytest.StashKey[str]()
CONTROLLER_SETTING = "quantfair_setting_error"  # workerinput: the controller's DEFERRED
CONTROLLER_SETTINGS = "quantfair_settings"  # workerinput: `_settings_given` of the controller
CONTROLLER_LANGUAGES = "quantfair_languages"  # workerinput: the languages audits are made for
# The controller's files: an xdist worker writes no report and reads no baseline (on another
# machine, it may have neither folder nor file).
CONTROLLER_FILES = ("report", "baseline")
# A worker's stop by a bad setting, as the xdist controller heard it (`pytest_testnodedown`)
WORKER_SETTING_STOP = pytest.StashKey[str]()
EVIDENCE = pytest.StashKey[dict]()  # an audit's measured outcome, on its test item
DEFINED = pytest.StashKey[dict]()  # finding id -> (its Finding, the test defining it)
MARKERS = (
    "quantfair: a quantfair audit (runs when a model is given with --quantfair-model)",
    "quantfair_quick: a quantfair audit small enough for CI on two CPU cores",
    "quantfair_release: a release gate bounded by --quantfair-max-<quantity> options",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quantfair", "quantization fairness audits")
    add_options(group.addoption, prefix="quantfair-")
    for option in OPTIONS.values():
        # languages: a TOML array in pyproject.toml, or one or more lines of an ini file;
        # numbers: TOML's own in pytest's native `[tool.pytest]` table (pytest >= 9.2 takes
        # unions; an ini file's text stays a string, the first member)
        kind = "bool" if option.flag else "linelist" if option.name == "languages" else (
            str | int | float if option.number and pytest.version_tuple >= (9, 2)
            else "string")
        parser.addini(option.dest, option_help(option, "quantfair-"), type=kind, default=None)


def option_value(config: pytest.Config, name: str):
    """The command-line value, else the ini value, else None (RunConfig applies defaults).
    Raises UsageError for an ini value pytest cannot read (a bool that is not one)."""
    dest = OPTIONS[name].dest
    value = config.getoption(dest, default=None)
    overridden = dest in _typed_overrides(config)
    if value not in (None, False) and (not overridden or _typed(config, name)):
        return value
    if overridden:  # one of addopts gives way to a typed -o, as the ini file's does
        value = None
    try:
        with warnings.catch_warnings():  # a TOML list for one value: said below, in one line
            warnings.filterwarnings("ignore", "Passing a value that is not a string")
            given = config.getini(dest)
    except (ValueError, TypeError, pytest.UsageError) as error:  # pytest 9 raises UsageError,
        # and a later pytest TypeError for the list
        text = str(error).removeprefix(f"{config.inipath}: ")  # named once, as the key's file
        hint = ('; write a TOML array, such as ["de", "he"]'
                if name == "languages" and "list" in text else "")
        raise UsageError(f"{_ini_setting(config, dest)}: {text}{hint}") from None
    if isinstance(given, (int, float)) and not isinstance(given, bool):  # units = 0 (TOML)
        given = str(given)
    value = given or value
    if isinstance(value, list) and name != "languages":  # a TOML array for one value
        raise UsageError(f"{_ini_setting(config, dest)}: expects one value, got a list: "
                         f"{value!r}")
    if isinstance(value, list):  # quantfair_languages = ["de", "he"], or lines of an ini file
        # (lines may end with the comma that joins them: "he," then "zh"; any other empty
        # entry, "he," alone or ",", is RunConfig's to refuse; an ini file has no empty line
        # here, so an empty item is a TOML array's)
        if not all(str(item).strip() for item in value):
            raise UsageError(f"{_ini_setting(config, dest)}: an empty entry in {value!r}")
        joined = ""
        for item in (str(item).strip() for item in value):
            joined += item if joined.endswith(",") or not joined else f",{item}"
        value = joined or None
    return _from_ini_folder(config, name, value) if name in PATH_SETTINGS and value else value


def _from_ini_folder(config: pytest.Config, name: str, value: str) -> str:
    """A relative path of the ini file taken from its folder (as pytest's own `paths` settings
    are), whichever folder pytest runs in; a model there only where it is written as a path
    (`./model`, `../model`) or that file exists (else it is a model name or a Hugging Face
    id); `~` is left for RunConfig to expand."""
    if config.inipath is None or value.startswith("~") or Path(value).is_absolute():
        return value
    path = config.inipath.parent / value
    written_as_path = value.startswith(("./", "../"))
    return str(path) if name != "model" or written_as_path or os.path.exists(path) else value


def pytest_configure(config: pytest.Config) -> None:
    try:
        _configure(config)
    except pytest.UsageError as error:  # a value typed or pasted whole: one line of it
        raise pytest.UsageError(one_line(str(error))) from None


def _configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    if _shows_only(config):
        return  # pytest shows its help, markers or fixtures and runs nothing: never refused
    workerinput = getattr(config, "workerinput", {})
    if said := workerinput.get(CONTROLLER_SETTING):
        config.stash[DEFERRED] = said  # what the controller found (its files: the baseline)
        return
    if (theirs := workerinput.get(CONTROLLER_SETTINGS)) is not None and (
            differ := _settings_differ(theirs, _settings_given(config))):
        config.stash[DEFERRED] = f"quantfair: {differ}{_where(config)}"
        return
    _check_setup_not_moved(config)
    _check_given_once(config)
    try:
        _check_ini_keys(config)
        if not option_value(config, "model"):
            _check_no_options_without_model(config)
            return
        # both on the command line contradict each other; one there overrides the other in
        # addopts (a default), and an ini file's report yields to --no-report
        ignored = None
        given = config.getoption(OPTIONS["report"].dest, default=None)
        if given is not None and option_value(config, "no-report"):  # also the ini file's
            typed = {name: _typed(config, name) for name in ("report", "no-report")}
            if typed["report"] == typed["no-report"]:
                raise UsageError(f"give --report {given} or --no-report, not both")
            ignored = "no-report" if typed["report"] else "report"
        tolerance = config.getoption(OPTIONS["tolerance"].dest, default=None)
        if tolerance and _typed(config, "tolerance") \
                and not option_value(config, "baseline"):
            raise UsageError(f"--tolerance {tolerance} applies to a --baseline comparison; "
                             "none given")
        if not workerinput and config.getoption("dist", default="no") == "each":
            raise UsageError("pytest-xdist's --dist each runs every audit on every worker (the "
                             "same numbers, once per worker; one copy's error or crash hidden "
                             "behind another's pass): use --dist load or loadgroup")
        # an xdist controller whose workers run on other machines checks what they check
        # (gateways without --dist run nothing: the audits run here)
        remote = not hasattr(config, "workerinput") and remote_gateways(
            config.getoption("tx", default=None)) and config.getoption(
                "dist", default="no") != "no"
        if remote and (separate := _separate_paths(config)):
            flag, value = separate[0]
            raise UsageError(f"{flag} {value}: pytest-xdist's remote gateways (--tx) take "
                             "each argument that names an existing path for a path to send "
                             f"and stop at it: write {flag}={value}")
        run_config = RunConfig.build(
            lambda name: None if name == ignored or workerinput and name in CONTROLLER_FILES
            else option_value(config, name), remote_workers=remote)
        require_other_languages(run_config.languages)
        theirs = workerinput.get(CONTROLLER_LANGUAGES)
        if theirs is not None and (ours := list(run_config.languages)) != list(theirs):
            raise UsageError(f"the corpus here gives the languages {', '.join(ours)}, the "
                             f"controller's {', '.join(theirs)}: each host needs the same corpus")
        # The model, caches and device are checked now where quantfair is asked for on the
        # command line; where it is configured by the ini file alone, once an audit runs, so
        # that the project's own runs (its tests, --collect-only) stay as they were without
        # it: no torch import, no refusal on a machine that lacks the model.
        deferred = _ini_only(config)
        if not deferred and not config.getoption("collectonly", default=False):
            run_config.preflight(here=not remote)
        from quantfair.run import QuantfairRun

        run = QuantfairRun(config, run_config, preflight=deferred)
    except (QuantfairError, OSError) as error:  # OSError: e.g. a path too long to look up
        message = in_pytest_terms(config, setting_error(error))
        if not _ini_only(config) and not hasattr(config, "workerinput"):
            raise pytest.UsageError(message) from None
        # Every setting is the ini file's: the project's own runs (its tests,
        # --collect-only) go on as without it; the first audit to run says it and stops the
        # run (`quantfair_audit`, exit 4 in `pytest_sessionfinish`). So too on an xdist
        # worker (on another machine, what the controller did not check): refused at
        # configure, it would crash, be replaced and crash again.
        config.stash[DEFERRED] = f"quantfair: {one_line(message)}{_where(config)}"
        return
    config.stash[RUN] = run
    config.pluginmanager.register(run, "quantfair-run")


def setting_error(error: QuantfairError | OSError) -> str:
    """What checking a setting raised, as its line says it (an OSError: a path too long to
    look up, or one the file system refuses)."""
    return str(error) if isinstance(error, QuantfairError) else os_error_text(error)


def _ini_only(config: pytest.Config) -> bool:
    """Whether quantfair is configured by the project alone (its ini file, addopts and
    PYTEST_ADDOPTS): no quantfair option or `-o quantfair_...` typed on the command line and
    no `-m` asking for a release gate."""
    return not selects_release_gates(config) and not _typed_options(config)


def _typed_options(config: pytest.Config) -> list[str]:
    """The quantfair options typed on the command line, as typed (`--units`,
    `--quantfair-units`, `-o quantfair_units`), not those only in addopts or PYTEST_ADDOPTS."""
    return [f"--{'' if _given_short(config, option.name) else 'quantfair-'}{option.name}"
            for option in OPTIONS.values()
            if config.getoption(option.dest, default=None) not in (None, False)
            and _typed(config, option.name)] + [f"-o {key}" for key in
                                                _typed_overrides(config)]


def _shows_only(config: pytest.Config) -> bool:
    """Whether pytest only shows something and runs no test (`--help`, `--markers`,
    `--fixtures`, `--fixtures-per-test`; `--version` ends before plugins configure)."""
    return any(config.getoption(name, default=False)
               for name in ("help", "markers", "showfixtures", "show_fixtures_per_test"))


def selects_release_gates(config: pytest.Config) -> bool:
    """Whether `-m` selects release gates and nothing else (`-m quantfair_release`, `-m
    "quantfair and quantfair_release and not slow"`): a run asking for a gate. It selects a
    release audit (markers quantfair, quantfair_release) but no test lacking the release
    marker, whatever else that test carries (`-m "quantfair_release or slow"` takes a
    project's slow tests too). False where pytest's marker expressions are not as expected."""
    expression = config.getoption("markexpr", default="") or ""
    if "quantfair_release" not in expression:
        return False
    # every other marker the expression names, present or not: none may select a test
    names = sorted(set(re.findall(r"[\w:+\-.\[\]\\/]+", expression))
                   - {"and", "or", "not", "quantfair_release"})
    if len(names) > 12:
        return False
    try:
        from _pytest.mark.expression import Expression

        compiled = Expression.compile(expression)
        for present in itertools.product((False, True), repeat=len(names)):
            carried = {name for name, there in zip(names, present, strict=True) if there}
            if compiled.evaluate(lambda name, carried=carried, **_: name in carried):
                return False  # a test without the release marker is selected
        return compiled.evaluate(lambda name, **_: name in ("quantfair", "quantfair_release"))
    except Exception:  # noqa: BLE001 -- another pytest's internals
        return False


def _check_no_options_without_model(config: pytest.Config) -> None:
    """Without a model every audit is skipped, so a command line that gives quantfair options
    (a release gate's --quantfair-baseline) must have meant one: that is a usage error, not a
    run that passes having audited nothing. Settings in an ini file alone keep the plugin
    inert, as do options in addopts or PYTEST_ADDOPTS (defaults, as ini keys are), but not
    `-o quantfair_...` typed on the command line."""
    model = "--model" if _given_short(config, "model") else "--quantfair-model"
    if config.getoption(OPTIONS["model"].dest, default=None) == "":
        raise pytest.UsageError(f"{model} is empty: name {MODEL_KINDS}")
    given = _typed_options(config)
    if f"-o {OPTIONS['model'].dest}" in given:  # given, and empty
        raise pytest.UsageError(f"-o {OPTIONS['model'].dest} is empty: name {MODEL_KINDS}")
    if selects_release_gates(config) and not config.getoption("collectonly", default=False):
        given.append("-m quantfair_release (the release gates)")
    if given:
        where = f"read {config.inipath}" if config.inipath else "found no ini file"
        raise pytest.UsageError(
            f"{', '.join(given)} given but no model: give --quantfair-model, or "
            f"quantfair_model in the ini file (pytest {where}, rootdir {config.rootpath})")


def _check_ini_keys(config: pytest.Config) -> None:
    """A UsageError for a `quantfair_` key of the ini file that names no setting (a gate's
    misspelled `quantfair_max_degradaton` would pass on the others; pytest only warns): the
    prefix is quantfair's. No check where pytest's internals are not as expected."""
    keys = getattr(config, "_inicfg", None)
    if not isinstance(keys, dict):
        return
    known = {option.dest for option in OPTIONS.values()}
    unknown = sorted(key for key in keys if key.startswith("quantfair_") and key not in known)
    if unknown:
        near = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        raise UsageError(
            "unknown setting " + ", ".join(
                _ini_setting(config, key) + (f" (did you mean {near[key][0]}?)"
                                             if near[key] else "") for key in unknown)
            + "; quantfair's settings are the quantfair_* keys of `pytest --help`")


def _check_setup_not_moved(config: pytest.Config) -> None:
    """pytest chooses its rootdir and ini file before it knows plugin options, taking the value
    of `--quantfair-baseline PATH` for a path to test: a gate run from its project with
    `--pyargs` would then drop the project's ini file (its `quantfair_` settings, markers,
    warning filters) and pass on what it did not read. A UsageError naming the option when
    the rootdir or ini file pytest chose differ from those it chooses with the option known;
    no check where pytest's internals are not as expected (it must never break a run)."""
    if not (separate := _separate_paths(config)):
        return
    arguments = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
                 *map(str, config.invocation_params.args)]
    try:
        from _pytest.config.findpaths import determine_setup

        known = config._parser.parse_known_args(arguments)
        rootpath, inipath, *_ = determine_setup(
            inifile=known.inifilename, override_ini=known.override_ini, args=known.file_or_dir,
            rootdir_cmd_arg=known.rootdir or None, invocation_dir=config.invocation_params.dir)
    except Exception:  # noqa: BLE001 -- another pytest's internals
        return
    if (rootpath, inipath) != (config.rootpath, config.inipath):
        flag, value = separate[0]
        raise pytest.UsageError(
            f"pytest took {flag} {value} for a path to test and chose its rootdir "
            f"{config.rootpath} and {_ini_name(config.inipath)} from it, not {rootpath} and "
            f"{_ini_name(inipath)}: write {flag}={value}")


def _separate_paths(config: pytest.Config) -> list[tuple[str, str]]:
    """(flag, value) of each quantfair option given in two words (`--quantfair-report
    r.json`) whose value names an existing path, which pytest (and xdist) may take for a path
    of their own."""
    arguments = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
                 *map(str, config.invocation_params.args)]
    return [(flag, value) for flag, value in zip(arguments, arguments[1:])
            for option in OPTIONS.values()
            if not option.flag and flag in (f"--{option.name}", f"--quantfair-{option.name}")
            and config.getoption(option.dest, default=None) == value
            # os.path.exists: False, not OSError, for a name too long to be a path
            and os.path.exists(Path(config.invocation_params.dir, value))]


def _owned_forms(config: pytest.Config, name: str) -> list[str]:
    """The forms of option `name` that pytest reads as quantfair's (a project may own
    `--model`); none where pytest's internals are not as expected."""
    try:
        owner = config._parser._opt2dest
    except Exception:  # noqa: BLE001 -- another pytest's internals
        return []
    return [form for form in (f"--{name}", f"--quantfair-{name}")
            if owner.get(form) == OPTIONS[name].dest]


def _typed(config: pytest.Config, name: str) -> bool:
    """Whether option `name` was typed on the command line (not only in the ini file's
    addopts or PYTEST_ADDOPTS); True where that cannot be told."""
    forms = _owned_forms(config, name)
    return not forms or any(str(argument).partition("=")[0] in forms
                            for argument in config.invocation_params.args)


def _typed_overrides(config: pytest.Config) -> dict[str, str]:
    """The `-o quantfair_KEY=VALUE` entries typed on the command line (`_typed_entries`), as
    {KEY: VALUE}, the last of a key's (pytest's)."""
    return dict(_typed_entries(config))


def _typed_entries(config: pytest.Config) -> list[tuple[str, str]]:
    """The `-o quantfair_KEY=VALUE` entries typed on the command line (`-o ENTRY`, `-oENTRY`,
    `--override-ini ENTRY` or `--override-ini=ENTRY`; not those of addopts or
    PYTEST_ADDOPTS), as (KEY, VALUE), in order."""
    arguments = list(map(str, config.invocation_params.args))
    entries = []
    for i, argument in enumerate(arguments):
        following = arguments[i + 1] if i + 1 < len(arguments) else ""
        if argument == "--override-ini":
            entry = following
        elif argument.startswith("--override-ini="):
            entry = argument.removeprefix("--override-ini=")
        elif (entry := _short_override(argument, following)) is None:
            continue
        key, _, value = entry.partition("=")
        if key.strip().startswith("quantfair_"):
            entries.append((key.strip(), value.strip()))
    return entries


def _short_override(argument: str, following: str) -> str | None:
    """The entry of `-o ENTRY`, `-oENTRY` or a cluster of pytest's short flags ending in it
    (`-qo ENTRY`, `-vvoENTRY`), else None; a letter of pytest's that takes a value
    (`-k`, `-m`, `-c`, `-p`, `-W`, `-r`, xdist's `-n`) takes the rest of the cluster."""
    if not argument.startswith("-") or argument.startswith("--"):
        return None
    for index, letter in enumerate(argument[1:], start=2):
        if letter == "o":
            return argument[index:] or following
        if letter in "kmcpWrn":
            return None
    return None


FALSE = ("false", "f", "no", "n", "off", "0")  # as pytest reads an ini bool


def _flag_values(config: pytest.Config, option, entries: list[tuple[str, str]],
                 arguments: list[str]) -> dict[str, str]:
    """A switch typed on the command line and the typed `-o` entries that turn it on or off,
    as the values `_check_given_once` compares ({"on": the first, "off": the first}): one of
    them or none, else."""
    typed = [form for form in _owned_forms(config, option.name) if form in arguments]
    values = {"on": typed[-1]} if typed else {}
    for key, value in entries:
        if key == option.dest and value:  # an empty one: unset
            values.setdefault("off" if value.lower() in FALSE else "on", f"-o {key}={value}")
    return values


def _check_given_once(config: pytest.Config) -> None:
    """A UsageError where the command line gives an option twice with different values
    (`--model a --quantfair-model b`, or `-o quantfair_model=b`): one would silently win. A
    value on the command line overriding the ini file's addopts or PYTEST_ADDOPTS is no
    conflict."""
    arguments = list(map(str, config.invocation_params.args))
    entries = _typed_entries(config)
    for option in OPTIONS.values():
        if option.flag:
            if len(given := _flag_values(config, option, entries, arguments)) > 1:
                raise pytest.UsageError(f"{given['on']}, {given['off']}: the option is given "
                                        "more than once, with different values; give it once")
            continue
        forms = _owned_forms(config, option.name)
        given = [(f"-o {option.dest}=", value) for key, value in entries
                 if key == option.dest]  # an empty one unsets the ini file's: alone only
        for i, argument in enumerate(arguments):
            flag, equals, value = argument.partition("=")
            if flag in forms and (equals or i + 1 < len(arguments)):
                given.append((flag, value if equals else arguments[i + 1]))
        values = {}  # reading -> its first (flag, value): `CPU` and `cpu` are one value
        for flag, value in given:
            values.setdefault(option.reading(value), (flag, value))
        if len(values) > 1:
            given = ", ".join(f"{flag}{value and shell_word(value)}" if flag.endswith("=") else
                              f"{flag} {shell_word(value)}" for flag, value in values.values())
            raise pytest.UsageError(f"{given}: the option is given more than once, with "
                                    "different values; give it once")


def _ini_name(path: Path | None) -> str:
    return f"ini file {path}" if path else "no ini file"


def _ini_setting(config: pytest.Config, dest: str) -> str:
    """Where the ini value `dest` was set: `quantfair_units in pytest.ini`, or `-o
    quantfair_units` (pytest's --override-ini)."""
    overrides = config.getoption("override_ini", default=None) or []
    if any(entry.partition("=")[0].strip() == dest for entry in overrides):
        return f"-o {dest}"
    return f"{dest} in {config.inipath.name if config.inipath else 'the ini file'}"


def in_pytest_terms(config: pytest.Config, message: str) -> str:
    """`message`, which names options as the CLI does (--<name>), with pytest's names for
    them (--quantfair-<name>, there without the opt-in short forms) unless the short form
    gave the value (`_given_short`), or, for an option not given, gave another's; and where
    a value named in it was set when that was the ini file rather than the command line."""
    notes = []
    speaks_short = any(_given_short(config, name) for name in OPTIONS)
    for option in OPTIONS.values():
        named = rf"--{re.escape(option.name)}(?![\w-])"
        if not re.search(named, message):
            continue
        given = config.getoption(option.dest, default=None) not in (None, False)
        if not (_given_short(config, option.name)
                or not given and speaks_short and option.short):
            message = re.sub(named, f"--quantfair-{option.name}", message)
        if not given and _ini_value(config, option.dest) not in (None, "", []):  # TOML's 0
            notes.append(f" (set by {_ini_setting(config, option.dest)})")
    return message + "".join(notes)


def _given_short(config: pytest.Config, name: str) -> bool:
    """Whether the value of option `name` came from its short form (--<name>): the last of
    its forms in the arguments as pytest reads them (the ini file's addopts, PYTEST_ADDOPTS,
    then the command line)."""
    forms = (f"--{name}", f"--quantfair-{name}")
    arguments = [*(_ini_value(config, "addopts") or ()),
                 *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
                 *config.invocation_params.args]
    flags = [str(argument).partition("=")[0] for argument in arguments]
    given = [flag for flag in flags if flag in forms]
    return bool(given) and given[-1] == forms[0]


def _ini_value(config: pytest.Config, dest: str):
    try:
        return config.getini(dest)
    except (ValueError, pytest.UsageError):
        return None


def _run(config: pytest.Config):
    return config.stash.get(RUN, None)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """What each worker gets from the controller: a bad setting of the ini file alone that
    the controller found, which waits for an audit (`DEFERRED`; a worker does not read the
    controller's files again); the controller's settings, which a worker on another machine
    must see alike; its machine, and how many of the run's workers share it (their share of
    its cores: `workers.xdist_workers`)."""
    config = node.config
    if DEFERRED in config.stash:
        node.workerinput[CONTROLLER_SETTING] = config.stash[DEFERRED]
    node.workerinput[CONTROLLER_SETTINGS] = _settings_given(config)
    run = _run(config)  # the audits' ids: a worker stopped by a setting makes the same
    node.workerinput[CONTROLLER_LANGUAGES] = list(
        run.config.languages if run else _settings_languages(config))
    host = gateway_host(node.gateway.spec)
    node.workerinput[WORKER_HOST] = host
    node.workerinput[HOST_WORKERS] = sum(
        1 for spec in node.nodemanager.specs if gateway_host(spec) == host)


def _settings_given(config: pytest.Config) -> dict[str, object]:
    """quantfair's settings as this process was given them (command line, PYTEST_ADDOPTS,
    ini file), unread: each xdist worker is given the controller's typed arguments alone and
    reads its own environment and ini file, which on another machine may say otherwise. The
    report and baseline are the controller's."""
    given = {}
    for option in OPTIONS.values():
        if option.name in CONTROLLER_FILES:
            continue
        value = config.getoption(option.dest, default=None)
        given[option.name] = value if value not in (None, False) else _ini_value(
            config, option.dest)
    return given


def _settings_differ(controller: dict, here: dict) -> str:
    """"" where a worker was given the controller's settings, else the first that differs."""
    for name, value in controller.items():
        if here.get(name) != value:
            def shown(given) -> str:
                return repr(given) if given not in (None, "", []) else "unset"
            return (f"--quantfair-{name} is {shown(value)} on the controller and "
                    f"{shown(here.get(name))} on this worker: a worker on another machine "
                    "reads its own PYTEST_ADDOPTS and ini file; give quantfair's options on "
                    "the command line")
    return ""


def _where(config: pytest.Config) -> str:
    """" (worker gw1 on host-2)" for a worker on another machine, whose line would not say
    which one; else ""."""
    given = getattr(config, "workerinput", {})
    if not given.get(WORKER_HOST):
        return ""
    return f" (worker {given.get('workerid')} on {socket.gethostname()})"


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """The xdist controller keeps a worker's stop by a bad setting: its own stop reason may
    be another (under `-x`, "stopping after 1 failures" comes first and is the one kept)."""
    reason = getattr(node, "workeroutput", {}).get("shouldstop")
    if isinstance(reason, str) and reason.startswith("quantfair: "):
        node.config.stash[WORKER_SETTING_STOP] = reason


def stop_reason(session: pytest.Session) -> object:
    """Why the run stopped early (`session.shouldstop`; the controller's under xdist):
    False, or a string such as pytest's "stopping after 1 failures"."""
    controller = session.config.pluginmanager.getplugin("dsession")
    return getattr(controller or session, "shouldstop", False)


def setting_stop(session: pytest.Session) -> str | None:
    """The bad setting that stopped the run after the first audit started ("quantfair: ...",
    `quantfair_audit`), in this process or on an xdist worker; else None."""
    reason = stop_reason(session)
    if isinstance(reason, str) and reason.startswith("quantfair: "):
        return reason
    return session.config.stash.get(WORKER_SETTING_STOP, None)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A run that a deferred bad setting stopped (`DEFERRED`) ends as a usage error (4), on
    the xdist controller too."""
    if DEFERRED in session.config.stash and setting_stop(session):
        session.exitstatus = pytest.ExitCode.USAGE_ERROR


def _settings_languages(config: pytest.Config) -> tuple[str, ...]:
    """Where no run is configured (no model; a bad setting waiting for the first audit), the
    languages the settings name, so that test ids are the run's; the defaults where they
    cannot be read here (a bad list, `all`, a user corpus's codes)."""
    try:
        chosen = parse_languages(option_value(config, "languages") or DEFAULT_LANGUAGES)
    except (QuantfairError, OSError):
        chosen = None
    return chosen or parse_languages(DEFAULT_LANGUAGES)


def _bad_definition(message: str) -> None:
    """A finding defined wrongly, found while its file is collected: a collection error of
    that file in one line (pytest's frames left out), as pytest reports its own."""
    pytest.fail(message, pytrace=False)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    finding = _finding_of(metafunc.function)
    if finding is None or "case" not in metafunc.fixturenames:
        return
    if metafunc.cls is not None:  # the class instance would arrive as the audit's context
        _bad_definition(f"audit() makes a module-level test: assign finding {finding.id!r} "
                        f"outside class {metafunc.cls.__name__}")
    defined = metafunc.config.stash.setdefault(DEFINED, {})
    first, where = defined.setdefault(finding.id, (finding, metafunc.definition.nodeid))
    if first != finding:  # the same finding imported into two files is one finding
        _bad_definition(f"finding id {finding.id!r} is defined twice, differently: {where} "
                        f"and {metafunc.definition.nodeid} (reports key findings by id)")
    run = _run(metafunc.config)
    languages = getattr(metafunc.config, "workerinput", {}).get(CONTROLLER_LANGUAGES) or (
        run.config.languages if run else _settings_languages(metafunc.config))
    if run is not None:  # a language of no corpus is a typo ("hebrew"), not one left out
        from quantfair.corpus import metadata

        known = run.config.full_corpus.languages
        if unknown := [c for c in finding.check.named_languages
                       if c not in known and metadata(c) is None]:
            _bad_definition(f"finding {finding.id!r} names unknown language(s) "
                            f"{', '.join(unknown)}: neither in the corpus ({', '.join(known)}) "
                            "nor in the shipped languages")
    # only where it is read: a marker's name is a -k keyword (`-k group` matched every audit)
    grouped = metafunc.config.getoption("dist", default="no") == "loadgroup"
    from quantfair.audit import CANDIDATE, Case  # imported already: the finding is of it

    cases = finding.check.cases(languages)
    # the strategy given is audited in the quick subset too: asked for, never left out
    given = {CANDIDATE} if run is not None and run.config.strategy else set()
    params = [pytest.param(case, id=case.id, marks=[
        *([pytest.mark.xdist_group(case.group)] if grouped else []),
        *([pytest.mark.quantfair_quick] if case.strategy in given else [])]) for case in cases]
    if not params:  # pytest's own empty parameter set has no case to report on
        reason = (f"{finding.id}: none of its cases is among the audited languages "
                  f"({', '.join(languages)})")
        params = [pytest.param(Case("no-case"), id="no-case",
                               marks=pytest.mark.skip(reason=reason))]
    metafunc.parametrize("case", params)
    if run is not None and finding.release:  # the cases a maximum bounds: its gate decides them
        bounded = getattr(finding.check, "bounded", None)
        run.expect_gate(finding.id, [case.id for case in cases if bounded is None
                                     or bounded(run.config.release_bounds, case)],
                        finding.check.quantity if bounded is not None else None)


def _finding_of(value: object):
    """The Finding of a test function `audit()` made, else None: asked of every name a
    module or conftest.py binds, another project's too (a mock answers any attribute)."""
    audit = sys.modules.get("quantfair.audit")  # not imported: no finding was made
    if audit is None or not inspect.isfunction(value):
        return None
    finding = getattr(value, "quantfair_finding", None)
    return finding if isinstance(finding, audit.Finding) else None


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object):
    """A finding assigned to a name pytest does not collect (`my_audit = audit(...)`) would
    never run, unseen: a warning names it."""
    made = yield
    finding = _finding_of(obj)
    if finding is not None and not made and not any(  # an alias of a collected name is fine
            other is obj and collector.funcnamefilter(alias)
            for alias, other in vars(collector.obj).items()):
        warnings.warn_explicit(pytest.PytestCollectionWarning(
            f"finding {finding.id!r} is assigned to {name}, which pytest does not collect "
            "(python_functions): it never runs; name it test_..."), None,
            str(collector.path), _assigned_line(collector.path, name))
    return made


def _assigned_line(path: Path, name: str) -> int:
    """The line of a module's source that assigns `name` at the top level (1 when none
    does, or the file cannot be read)."""
    with contextlib.suppress(OSError, SyntaxError, ValueError):
        for node in ast.parse(path.read_bytes()).body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [getattr(node, "target", None)])  # x: T = ..., x += ...
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return node.lineno
    return 1


def pytest_collection_finish(session: pytest.Session) -> None:
    """Findings in a conftest.py, which pytest collects no tests from, never run: said (a
    usage error where warnings are errors, `-W error`: raised here it was an INTERNALERROR)."""
    if "quantfair.audit" not in sys.modules:  # no finding was made
        return
    for plugin in conftest_modules(session.config.pluginmanager):
        for name, value in vars(plugin).items():
            if finding := _finding_of(value):
                try:
                    warnings.warn_explicit(pytest.PytestCollectionWarning(
                        f"finding {finding.id!r} is assigned to {name} in a conftest.py, "
                        "which pytest collects no tests from: it never runs; move it to a "
                        "test file"), None, plugin.__file__,
                        _assigned_line(Path(plugin.__file__), name))
                except Warning as error:
                    raise pytest.UsageError(f"{plugin.__file__}: {error}") from None


@pytest.hookimpl(trylast=True)  # after -k and -m deselect: the audits that would run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):
        # An xdist worker (each collects the same list, one stopped by a setting bad on its
        # host alone too; the controller deals it out in order): audits that select single
        # entries, the longest single tests, go first, so none of them starts last and keeps
        # one worker busy while the others idle.
        items.sort(key=_element_selections, reverse=True)  # stable: ties keep their order
    _audit_each_case_once(config, items)
    if _run(config) is not None:
        return
    audits = [item for item in items if is_audit(item)]
    if not audits or _shows_only(config) or DEFERRED in config.stash:
        return
    skip = pytest.mark.skip(reason="quantfair audits need a model (--quantfair-model, or "
                                   "--model in the audit suite)")
    for item in audits:
        item.add_marker(skip)
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter:
        reporter.write_line(f"quantfair: {len(audits)} audits skipped: no model given")


def _audit_each_case_once(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One finding collected from two places (imported into a second test file, or bound to
    two names) is one finding (`pytest_generate_tests` refuses two different findings under
    one id): its cases after the first selected are deselected, with a line saying so."""
    first: dict[tuple[str, str], pytest.Item] = {}
    again: dict[str, list[pytest.Item]] = {}
    for item in items:
        finding = _finding_of(getattr(item, "function", None))
        if finding is not None and hasattr(item, "callspec"):
            key = (finding.id, item.callspec.id)
            if first.setdefault(key, item) is not item:
                again.setdefault(finding.id, []).append(item)
    if not again:
        return
    duplicates = [item for copies in again.values() for item in copies]
    dropped = set(duplicates)
    items[:] = [item for item in items if item not in dropped]
    config.hook.pytest_deselected(items=duplicates)
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter and not hasattr(config, "workerinput"):
        for finding, copies in again.items():
            places = dict.fromkeys(_function_id(item) for item in (
                first[(finding, copies[0].callspec.id)], *copies))
            reporter.write_line(f"quantfair: finding {finding!r} is collected twice "
                                f"({' and '.join(places)}): its {len(copies)} audits run once")


def _function_id(item: pytest.Item) -> str:
    """`test_a.py::test_x` of `test_a.py::test_x[case]`."""
    return f"{item.parent.nodeid}::{item.originalname}"


def is_audit(item: pytest.Item) -> bool:
    """Whether `item` is a quantfair audit: marked `quantfair` and using the audit context
    (`quantfair_audit`), as every test `audit()` makes is. The marker alone is not enough: a
    project may tag its own tests `quantfair`."""
    return bool(item.get_closest_marker("quantfair")) and "quantfair_audit" in getattr(
        item, "fixturenames", ())


def _element_selections(item: pytest.Item) -> int:
    finding = _finding_of(getattr(item, "function", None))
    return finding.check.element_selections if finding is not None else 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Audit evidence and what the process measured since its last report ride on the test
    report (xdist carries it to the controller), not on user_properties, so JUnit XML files
    stay small."""
    report = yield
    run = _run(item.config)
    if run is not None and (extras := run.report_extras()):
        report.quantfair_run = extras
    finding = _finding_of(getattr(item, "function", None))
    callspec = getattr(item, "callspec", None)
    if finding is not None and callspec is not None:
        report.quantfair = {**finding.describe(callspec.params["case"]),
                            **item.stash.get(EVIDENCE, {})}
        excinfo = call.excinfo
        if call.when == "call" and excinfo is not None and not excinfo.errisinstance(
                (pytest.fail.Exception, pytest.skip.Exception)):
            # The audit could not run (a bad setting, a broken cache): an error, not a finding.
            text = str(excinfo.value)
            first = text.strip().splitlines()
            message = f"{excinfo.typename}: {first[0] if first else 'no message'}"
            if excinfo.errisinstance(QuantfairError):  # a bad setting: one line, no traceback
                message = one_line(in_pytest_terms(item.config, text))  # said as it is
                report.longrepr = f"quantfair: {message}"
            report.quantfair.update(outcome="error", message=message)
            # pytest (its summary, JUnit XML, --lf) counts an error by the phase it happened
            # in, and only setup and teardown have errors: an audit that could not set up its
            # measurement is reported as set up, so no file counts it as a failed claim
            report.when = "setup"
    return report


@pytest.fixture(scope="session")
def quantfair_audit(request: pytest.FixtureRequest):
    """The per-process audit context: one model, one evaluator, shared by every audit."""
    run = _run(request.config)
    if run is None and (deferred := request.config.stash.get(DEFERRED, None)):
        request.session.shouldstop = deferred  # one error, then the run stops
        pytest.fail(deferred, pytrace=False)
    if run is None:
        pytest.skip("quantfair audits need a model (--quantfair-model)")
    try:
        return run.context()
    except QuantfairError as error:  # wrong for every audit (an artifact of another model, a
        # damaged file, no suggestion cached): one error, then the run stops
        message = f"quantfair: {one_line(in_pytest_terms(request.config, str(error)))}"
        request.session.shouldstop = message
    pytest.fail(message, pytrace=False)  # kept for every audit of the session
