import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from quantfair.cli import main

BAD_INPUTS = [
    (["inspect", "no-such-org/no-such-model"], "not in the local Hugging Face cache"),
    (["inspect", "no-such-model"], "random weights for dry runs: tiny-gpt2, tiny-opt"),
    (["inspect", "gpt2"], "hf download gpt2"),
    (["inspect", "tiny-gpt2", "--quant", "int0"], "bits must be between 2 and 8"),
    (["inspect", "tiny-gpt2", "--quant", "int9"],
     "quantization scheme 'int9': bits must be between 2 and 8"),
    (["inspect", "tiny-gpt2", "--quant", "int4-g0"],
     "quantization scheme 'int4-g0': group size must be a positive"),
    (["inspect", "/nowhere/model.gguf"], "GGUF file not found"),
    (["inspect", "/nowhere/model"], "model path not found: /nowhere/model"),
    (["inspect", "pyproject.toml"], "model pyproject.toml: a file that is not .gguf"),
    (["inspect", "/tmp"], "/tmp has no config.json: not a Hugging Face model directory"),
    # argparse's own errors: one line too, saying where the usage is
    (["suggest", "tiny-llama", "--budget"], "quantfair: error: argument --budget: "
     "expected one argument (see quantfair suggest --help)"),
    (["measure", "tiny-llama", "--strategy", "-L0"], "argument --strategy: expected one "
     "argument"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["corpus", "--units", "3"], "quantfair: error: unrecognized arguments: "
     "--units 3 (see quantfair corpus --help)"),
    (["measure", ""], "the model is empty: name a Hugging Face id"),  # a positional argument
    (["report", "--", "-1.json", "b.json"], "report not found: -1.json"),  # a path, as given
    # an option given twice with different values: one would silently win
    (["measure", "tiny-gpt2", "--units", "5", "--units=100"], "quantfair: error: --units 5, "
     "--units 100: the option is given more than once, with different values; give it "
     "once"),
    (["report", "a.json", "--tolerance", "0.1", "--tolerance", "0.2"], "--tolerance 0.1, "
     "--tolerance 0.2: the option is given more than once, with different values"),
]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`quantfair ARGS` in this process (the imports each process would pay for, once): its
    exit status and what it wrote, as `subprocess.run` gives them; `env`: variables set for
    the call (QUANTFAIR_DEBUG unset)."""
    out, err = io.StringIO(), io.StringIO()
    environment = {k: v for k, v in os.environ.items() if k != "QUANTFAIR_DEBUG"}
    with mock.patch.dict(os.environ, {**environment, "HF_HUB_OFFLINE": "1", **(env or {})},
                         clear=True), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as end:  # argparse: usage errors and --help
            status = end.code or 0
    return subprocess.CompletedProcess(["quantfair", *args], status, out.getvalue(),
                                       err.getvalue())


def run_cli_process(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`quantfair ARGS` as a process of its own, where what a process does is under test."""
    return subprocess.run([sys.executable, "-m", "quantfair", *args], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                          timeout=300)


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_bad_input_is_one_clear_line(args, message):
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_an_option_given_twice_with_the_same_value_is_no_conflict():
    result = run_cli("inspect", "tiny-gpt2", "--quant", "int8", "--quant=int8")
    assert result.returncode == 0 and "int8" in result.stdout, result.stderr
    # read alike, though written differently: in another case where the option takes any,
    # with spaces, a number with a leading zero
    result = run_cli("inspect", "tiny-gpt2", "--quant", "INT8", "--quant= int8", "--units",
                     "2", "--units", "02", "--device", "CPU", "--device", "cpu")
    assert result.returncode == 0 and "int8" in result.stdout, result.stderr
    result = run_cli("inspect", "tiny-gpt2", "--units", "2", "--units=3")
    assert "--units 2, --units 3: the option is given more than once" in result.stderr
    for units in (["2.0", "2"], ["2", "2.0"]):  # 2.0 is refused alone: in either order
        result = run_cli("inspect", "tiny-gpt2", "--units", units[0], "--units", units[1])
        assert "the option is given more than once" in result.stderr
    # a command's own options too, and languages entry by entry, a selector in any case
    result = run_cli("suggest", "tiny-gpt2", "--budget", "5%", "--width", "3", "--width", "03",
                     "--languages", "en,script:Hebr", "--languages", "en, SCRIPT:hebr",
                     "--units", "40")
    assert "--units 40: the corpus has 31 units" in result.stderr  # read on: no conflict
    result = run_cli("report", "/nowhere/a.json", "/nowhere/b.json", "--tolerance", "0.1",
                     "--tolerance", "0.10", "--tolerance=10%")  # fractions as their values
    assert "report not found" in result.stderr
    result = run_cli("corpus", "--corpus", "a.jsonl", "--corpus", " a.jsonl")  # two paths
    assert "the option is given more than once" in result.stderr
    result = run_cli("corpus", "--languages", "He", "--languages", "he")  # codes: case matters
    assert "--languages He, --languages he: the option is given more than once" in result.stderr
    result = run_cli("corpus", "--languages", "en,he", "--languages=he, de")  # read apart
    assert ("--languages 'en,he', --languages 'he, de': the option is given more than once"
            in result.stderr)


@pytest.mark.parametrize("args", [
    ["inspect", "tiny-gpt2", "--quant", "int9"],
    ["measure", "tiny-gpt2", "--languages", "en,xx"],
    ["measure", "tiny-gpt2", "--strategy", "L0+nothing"],
    ["suggest", "tiny-gpt2", "--budget", "0.12"],
    ["suggest", "tiny-gpt2", "--budget", "5%", "--units", "40"],
    ["export", "tiny-gpt2", "--strategy", "L0", "-o", "/nowhere/x.gguf"],
    ["export", "tiny-gpt2", "--strategy", "L0", "-o", "/sys/x.gguf"],
])
def test_a_usage_error_answers_before_torch_is_imported(args):
    code = ("import sys; from quantfair.cli import main; status = main(sys.argv[1:]); "
            "print(status, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr


def test_inspect_random_gpt2_prints_family_and_seed_overheads():
    result = run_cli("inspect", "gpt2", "--random-weights", "--strategy", "L0+Llast+ln_f+biases")
    assert result.returncode == 0, result.stderr
    assert "family: gpt2" in result.stdout
    assert "| L0+Llast+ln_f+biases " in result.stdout and "11.461%" in result.stdout


def test_inspect_says_what_its_shares_are_of():
    """GPT-2's linear weights: 12 layers x 768 x (3 x 768 + 768 + 2 x 3072) = 84,934,656."""
    result = run_cli("inspect", "gpt2", "--random-weights", "--quant", "int4-g128-linear")
    assert result.returncode == 0, result.stderr
    assert ("% params: of all 124,439,808 parameters, 84,934,656 of them quantized under "
            "int4-g128-linear") in result.stdout


def test_inspect_of_a_selector_runs_where_the_cache_cannot_be_written(monkeypatch, capsys):
    """inspect needs no writable cache: a selection it cannot keep is made again next time."""
    import errno

    import quantfair.strategies

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(quantfair.strategies, "atomic_write", read_only)
    # a share no other test selects: its masks are not on disk already
    assert main(["inspect", "tiny-gpt2", "--strategy", "magnitude:4.321%"]) == 0
    assert "| magnitude:4.321%" in capsys.readouterr().out


def test_inspect_says_on_stderr_what_it_loads_and_computes():
    """An activation selector runs the model over calibration text first: minutes on a real
    model, which must not pass in silence."""
    result = run_cli("inspect", "tiny-llama", "--strategy", "act:5%")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines.index("quantfair: loading tiny-llama") < lines.index(
        "quantfair: recording calibration activations")
    assert "| act:5%" in result.stdout


@pytest.fixture
def corpus_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"lang": "en", "unit": "a", "text": "hi"}\n{"lang": "en",\n')
    (tmp_path / "directory.gguf").mkdir()
    return {"empty": str(empty), "malformed": str(malformed),
            "directory_gguf": str(tmp_path / "directory.gguf")}


@pytest.mark.parametrize("args, message", [
    (["measure", "tiny-gpt2", "--languages", "en,xx"], "unknown language(s) xx"),
    (["measure", "tiny-gpt2", "--languages", "EN,He"],
     "unknown language(s) EN, He (codes are case-sensitive: en, he?)"),
    (["measure", "tiny-gpt2", "--languages", "he ar"],  # as an ini file's line reads
     "unknown language(s) he ar (separate codes with commas: he,ar?)"),
    (["measure", "tiny-gpt2", "--languages", "de,script:Klingon"],
     "no shipped language is written in script 'Klingon'"),
    (["measure", "tiny-gpt2", "--corpus", "{empty}"], "the corpus is empty"),
    (["measure", "tiny-gpt2", "--corpus", "{malformed}"], "malformed.jsonl:2: malformed JSON"),
    (["measure", "tiny-gpt2", "--strategy", "L99"], "layer 99 out of range"),
    (["inspect", "gpt2", "--random-weights", "--strategy", "L99"], "layer 99 out of range"),
    (["suggest", "tiny-gpt2", "--budget", "150%"], "between 0% and 100%"),
    (["suggest", "tiny-gpt2", "--budget", "-5%"], "between 0% and 100%, got -5%"),
    (["suggest", "tiny-gpt2", "--budget", "9" * 20 + "%"], "between 0% and 100%, got 999"),
    (["suggest", "tiny-gpt2", "--budget", "100.0%"], "--budget 100% keeps every parameter"),
    (["report", "/nowhere/old.json", "/nowhere/new.json", "--tolerance", "-.5"],
     "--tolerance must be a finite non-negative number, got -.5"),
    (["report", "/nowhere/old.json", "/nowhere/new.json", "--tolerance", "-5%"],
     "--tolerance must be a finite non-negative number, got -5%"),
    (["report", "/nowhere/old.json", "/nowhere/new.json", "--tolerance", "x%"],
     "--tolerance must be a number, got 'x%'"),
    (["suggest", "tiny-gpt2", "--budget", "lots"], "must be a percentage"),
    (["suggest", "tiny-gpt2", "--budget", "0.12"], "a percentage with its % sign, like 12%"),
    (["measure", "tiny-gpt2", "--units", "32"], "--units 32: the corpus has 31 units"),
    (["measure", "tiny-gpt2", "--lang", "he", "--foo"], "unrecognized arguments: --lang he "
     "--foo (options are not abbreviated: --lang abbreviates --languages)"),
    # argparse names a required option or command as missing where one is abbreviated
    (["suggest", "tiny-gpt2", "--bud", "5%"], "unrecognized arguments: --bud (options are "
     "not abbreviated: --bud abbreviates --budget) (see quantfair suggest --help)"),
    (["--vers"], "unrecognized arguments: --vers (options are not abbreviated: --vers "
     "abbreviates --version)"),
    # and an unknown option, not the option or command it leaves missing
    (["suggest", "tiny-gpt2", "--bogus"], "error: unrecognized arguments: --bogus (see "
     "quantfair suggest --help)"),
    (["--bogus"], "error: unrecognized arguments: --bogus (see quantfair --help)"),
    (["report", "-o/tmp/r.html"], "error: the following arguments are required: OLD"),
    # one dash for two: argparse would write `utput` and `ut.html`
    (["report", "a.json", "b.json", "-output", "o.html"], "error: -output is read as -o "
     "utput: write --output with two dashes, or -o and its value apart (see quantfair report "
     "--help)"),
    (["export", "tiny-gpt2", "--strategy", "L0", "-out.gguf"], "error: -out.gguf is read as -o "
     "ut.gguf: write --output with two dashes, or -o and its value apart"),
    (["measure", "tiny-gpt2", "--u=3"], "(options are not abbreviated: --u abbreviates --units)"),
    (["suggest", "tiny-gpt2", "--budget", "5%", "--units", "0"],
     "--units 0 audits every one of the corpus's 31 units and leaves none to search on: give "
     "fewer, e.g. --units 22"),
    (["suggest", "tiny-gpt2", "--budget", "5%%"], "must be a percentage like 12%"),
    (["suggest", "tiny-gpt2", "--budget", "1e-9%"], "must be a percentage like 12%"),
    (["suggest", "tiny-gpt2", "--budget", "nan%"], "must be a percentage like 12%"),
    (["suggest", "tiny-gpt2", "--budget", "12%x"], "must be a percentage like 12%"),
    (["suggest", "tiny-gpt2", "--budget", "5%", "--calibration-units", "0"],
     "--calibration-units must be a positive integer, got 0"),
    (["suggest", "tiny-gpt2", "--budget", "5%", "--width", "-1"],
     "--width must be a positive integer, got -1"),
    (["suggest", "tiny-gpt2", "--budget", "5%", "--width", "1_0"],  # int(): 10
     "--width must be an integer, got '1_0'"),
    (["suggest", "tiny-gpt2", "--budget", "5%", "--calibration-units", "abc"],  # as --units
     "--calibration-units must be an integer, got 'abc'"),
    (["suggest", "tiny-gpt2", "--budget", "5%", "--width", "9" * 5000],  # echoed briefly
     f"--width must be an integer of at most 18 digits, got '{'9' * 40}... (5,000 "
     "characters)'"),
    (["measure", "tiny-gpt2", "--units", "9" * 19],
     "--units must be an integer of at most 18 digits, got"),
    (["measure", "tiny-gpt2", "--units", "9" * 18], "--units 999999999999999999: the corpus"),
    (["report", "/nowhere/old.json", "/nowhere/new.json"], "report not found"),
    (["suggest", "tiny-gpt2", "--budget", "5%", "--languages", "en"],
     "give at least one other (`quantfair corpus` lists the corpus's languages)"),
    *(([*command, "--languages", ""], "--languages is empty; give comma-separated codes")
      for command in (["suggest", "tiny-gpt2", "--budget", "5%"], ["measure", "tiny-gpt2"],
                      ["corpus"])),
    *(([*command, "--languages", "HE"], "--languages: unknown language(s) HE (codes are case-")
      for command in (["corpus"], ["measure", "tiny-gpt2"])),  # the option named alike
    (["suggest", "tiny-gpt2", "--budget", "5%", "--calibration-units", "30"],
     "--calibration-units 30: 23 units per language are left out of the audit to search on"),
    (["measure", "tiny-gpt2", "--quantized-label", " "], "--quantized-label is empty"),
    *((["measure", "tiny-gpt2", "--quantized-label", label], f"--quantized-label '{label}': a name")
      for label in (".", "_rc1", "my release", "a:b", "a,b", "a/b", "a+b")),
    *((["measure", "tiny-gpt2", f"--{name}", ""], f"--{name} is empty: give a value")
      for name in ("quantized", "corpus", "dtype", "device", "quant", "embedding-type")),
    (["corpus", "--corpus", "quantfair"], "corpus quantfair is a directory; give a JSONL file"),
    *((["corpus", f"--{name}", " "], f"--{name} is empty: give a value")
      for name in ("corpus", "model", "device")),
    (["corpus", "--random-weights"], "--random-weights and --device apply to --model's"),
    (["measure", "{directory_gguf}"], "is a directory, not a GGUF file"),
    (["measure", "tiny-gpt2", "--quantized", "{directory_gguf}"],
     "a directory, not a GGUF file"),
    (["measure", "tiny-gpt2", "--quant", "gguf:Q4_K"], "--quant: unknown GGUF type 'Q4_K': "
     "quantfair computes Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; llama.cpp's quantizer makes Q4_K_S, "
     "Q4_K_M, e.g. scheme llama.cpp:Q4_K_M"),
    (["measure", "tiny-gpt2", "--quant", "gguf:IQ9"], "--quant: unknown GGUF type 'IQ9': "
     "quantfair computes Q4_0, Q4_1, Q5_0, Q5_1, Q8_0"),
    (["measure", "tiny-gpt2", "--quantized", "quantfair/schemas"],
     "--quantized quantfair/schemas has no config.json: not a Hugging Face model directory"),
    (["measure", "tiny-gpt2", "--quantized", "someorg/no-such-model"],
     "--quantized 'someorg/no-such-model' is not in the local Hugging Face cache, which is all "
     "--quantized reads: run `hf download someorg/no-such-model` on a machine with network (or "
     "copy its cache), or give a .gguf file or the directory save_pretrained wrote"),
    (["suggest", "tiny-gpt2", "--budget", "5%", "--json", "/nowhere/x.json"],
     "--json /nowhere/x.json: no directory /nowhere"),
    (["export", "tiny-gpt2", "--quant", "gguf:Q4_0", "--strategy", "L0", "-o", "/nowhere/x.gguf"],
     "-o /nowhere/x.gguf: no directory /nowhere"),
    (["export", "tiny-gpt2", "--quant", "gguf:Q4_0", "--strategy", "L0", "-o",
      "pyproject.toml/x.gguf"], "-o pyproject.toml/x.gguf: pyproject.toml is a file, not a "
                                "directory"),
    (["export", "tiny-gpt2", "--quant", "gguf:Q4_0", "--strategy", "L0", "-o", "/dev/null"],
     "-o /dev/null: a GGUF file's name ends in .gguf"),
    (["export", "tiny-gpt2", "--quant", "gguf:Q4_0", "--strategy", "L0", "-o", ""],
     "-o is empty; give the path of a file"),
    (["export", "tiny-gpt2", "--quant", "gguf:Q4_0", "--strategy", "L0", "-o", "-"],
     "-o -: standard output is not written to; give the path of a file"),
    (["suggest", "tiny-gpt2", "--budget", "5%", "--json", "/tmp"],
     "--json /tmp is a directory; give the path of a file"),
    (["measure", "tiny-gpt2", "--json", "/nowhere/"],
     "--json /nowhere/ is a directory; give the path of a file"),
    (["suggest", "tiny-gpt2", "--budget", "5%", "--json", "/sys/x.json"],
     "--json: cannot write in /sys"),
    (["measure", "tiny-gpt2", "--json", "/proc/x.json"],
     "--json: cannot write in /proc (its file system takes no new files)"),
    (["measure", "tiny-gpt2", "--json", ""], "--json is empty; give the path of a file"),
    (["measure", "tiny-gpt2", "--corpus", "{malformed}", "--json", "{malformed}"],
     "malformed.jsonl is the --corpus file: write another"),
    (["measure", "{directory_gguf}/../empty.jsonl", "--json", "{empty}"],
     "empty.jsonl is the file the model was loaded from: write another"),
    (["measure", "tiny-gpt2", "--languages", "he", "--units", "2", "--json", "/dev/full"],
     "could not write /dev/full: No space left on device"),
])
def test_bad_measure_and_suggest_input_is_one_clear_line(corpus_files, args, message):
    online = {"HF_HUB_OFFLINE": "0"} if "someorg/" in message else {}  # read from the cache
    result = run_cli(*[a.format(**corpus_files) for a in args], env=online)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert message in lines[-1] and lines[-1].startswith("quantfair: error:"), result.stderr


@pytest.mark.parametrize("args", [
    ["measure", "tiny-gpt2", "--quant", "int4-g" + "9" * 5000],
    ["measure", "tiny-gpt2", "--strategy", "L" + "9" * 5000],
    ["measure", "tiny-gpt2", "--tolerance", "9" * 5000],  # argparse: unrecognized arguments
    ["measure", "x" * 5000],
    ["measure", "tiny-gpt2", "--quant", "a b " * 2000],  # blanks in it too
    ["measure", "tiny-gpt2", "--units", "2\n3"],
])
def test_a_value_typed_or_pasted_whole_is_echoed_in_one_short_line(args):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantfair: error:"), result.stderr
    assert len(lines[0]) < 1200 and ("characters left out" in lines[0] or "2\\n3" in lines[0])


def test_a_warning_about_a_cache_path_too_long_is_one_short_line():
    """The weights are kept in memory, said in one line of readable length."""
    result = run_cli("inspect", "tiny-gpt2", env={"QUANTFAIR_CACHE_DIR": "/tmp/" + "x" * 5000})
    assert result.returncode == 0
    warned = [line for line in result.stderr.splitlines() if "keeping weights in memory" in line]
    assert len(warned) == 1 and len(warned[0]) < 1200 and "characters left out" in warned[0]


@pytest.mark.parametrize("variable, value, message", [
    ("QUANTFAIR_CACHE_DIR", "   ", "QUANTFAIR_CACHE_DIR holds only blanks: give a folder"),
    ("QUANTFAIR_RESULTS_DIR", " ", "QUANTFAIR_RESULTS_DIR holds only blanks: give a folder"),
    ("QUANTFAIR_CACHE_DIR", "~nosuchuser/q", "QUANTFAIR_CACHE_DIR=~nosuchuser/q: ~nosuchuser "
     "names no user's home folder"),
    ("QUANTFAIR_HIDDEN_STATES_MB", "1_0", "QUANTFAIR_HIDDEN_STATES_MB must be a number of MiB"),
    ("QUANTFAIR_HIDDEN_STATES_MB", "\u0663", "QUANTFAIR_HIDDEN_STATES_MB must be a number"),
    ("QUANTFAIR_HIDDEN_STATES_MB", "-1", "QUANTFAIR_HIDDEN_STATES_MB must be a number of MiB"),
])
def test_a_bad_environment_variable_is_one_line_and_makes_no_folder(tmp_path, monkeypatch,
                                                                     variable, value, message):
    monkeypatch.chdir(tmp_path)
    result = run_cli("measure", "tiny-gpt2", "--languages", "en,he", "--units", "1",
                     env={variable: value})
    assert result.returncode == 2 and message in result.stderr.splitlines()[-1], result.stderr
    assert not any(path.name.strip() == "" for path in tmp_path.iterdir())


def test_a_folder_variable_starting_with_a_tilde_is_under_the_home_folder(tmp_path,
                                                                          monkeypatch):
    """It made a folder named `~` in the working directory: CI files and Docker's ENV expand
    no `~`."""
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    result = run_cli("measure", "tiny-gpt2", "--languages", "en,he", "--units", "1",
                     env={"HOME": str(home), "QUANTFAIR_RESULTS_DIR": "~/results",
                          "QUANTFAIR_CACHE_DIR": "~/cache"})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in home.iterdir()) == ["cache", "results"]
    assert not (tmp_path / "~").exists()


def test_json_never_writes_into_quantfairs_own_cache_folders(tmp_path):
    """A cached suggestion overwritten by --json was then refused as damaged; a file beside
    the cache's folders is the user's to write."""
    results, cache = tmp_path / "results", tmp_path / "cache"
    cached = results / "af5fdcc1750df9e8" / "suggested-int4.json"
    cached.parent.mkdir(parents=True)
    cached.write_text("{}")
    env = {"QUANTFAIR_RESULTS_DIR": str(results), "QUANTFAIR_CACHE_DIR": str(cache)}
    for path, folder, variable in ((cached, cached.parent, "QUANTFAIR_RESULTS_DIR"),
                                   (cache / "weights" / "x.json", cache / "weights",
                                    "QUANTFAIR_CACHE_DIR")):
        result = run_cli("measure", "tiny-gpt2", "--json", str(path), env=env)
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1].endswith(
            f"is in quantfair's cache ({folder}, {variable}): write elsewhere")
    assert cached.read_text() == "{}"
    mine = results / "mine.json"
    assert run_cli("measure", "tiny-gpt2", "--units", "1", "--languages", "en,he", "--json",
                   str(mine), env=env).returncode == 0 and json.loads(mine.read_text())


def test_every_folder_quantfair_fills_is_refused_as_an_output(tmp_path, monkeypatch):
    """The paths the cache's writers build, not a list of their names kept apart."""
    from quantfair.config import refuse_inputs
    from quantfair.errors import QuantfairError
    from quantfair.models import _checkpoint_folder
    from quantfair.quantize import weights_folder
    from quantfair.storage import CACHE_FOLDERS, RUN_PREFIX, cache_folder, model_folder

    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / "results"))
    with pytest.raises(ValueError):
        cache_folder("other")
    built = [weights_folder("0" * 64), _checkpoint_folder("0" * 64),
             *(cache_folder(name) for name in CACHE_FOLDERS),
             model_folder("0123456789abcdef" * 4), tmp_path / "results" / f"{RUN_PREFIX}x"]
    for folder in built:
        with pytest.raises(QuantfairError, match="is in quantfair's cache"):
            refuse_inputs(folder / "report.json", "--json", None, None, None)
    refuse_inputs(tmp_path / "cache" / "mine" / "report.json", "--json", None, None, None)


def test_json_never_overwrites_a_file_the_command_reads(tmp_path):
    """A file of a model saved as a folder, the corpus's languages file and the corpus through
    a hard link are refused before anything loads; any other hard link is replaced, not
    written through (each of these once overwritten what it pointed at)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_text("weights")
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("".join(json.dumps({"lang": lang, "unit": "a", "text": "hi there"}) + "\n"
                              for lang in ("en", "he")))
    os.link(corpus, tmp_path / "hard.json")
    for args, message in (
            ([str(model), "--json", str(model / "model.safetensors")],
             "model.safetensors is in the folder the model was loaded from: write another"),
            (["tiny-gpt2", "--corpus", str(corpus), "--json",
              str(tmp_path / "texts.languages.tsv")],
             "texts.languages.tsv is the --corpus file's languages file: write another"),
            (["tiny-gpt2", "--corpus", str(corpus), "--json", str(tmp_path / "hard.json")],
             "hard.json is the --corpus file: write another")):
        result = run_cli("measure", *args)
        assert result.returncode == 2 and message in result.stderr.splitlines()[-1]
    assert (model / "model.safetensors").read_text() == "weights"
    other = tmp_path / "other.txt"
    other.write_text("kept")
    os.link(other, tmp_path / "out.json")
    written = run_cli("measure", "tiny-gpt2", "--corpus", str(corpus), "--json",
                      str(tmp_path / "out.json"))
    assert written.returncode == 0, written.stderr
    assert other.read_text() == "kept" and json.loads((tmp_path / "out.json").read_text())


def test_a_negative_percentage_is_out_of_range_not_malformed():
    from quantfair.config import parse_percent
    from quantfair.errors import UsageError

    with pytest.raises(UsageError, match="^--budget: must be between 0% and 100%, got -5%$"):
        parse_percent("-5%", "--budget")  # as --budget=-5% gives it


def test_a_search_on_a_corpus_smaller_than_the_default_units_says_none_is_left():
    from quantfair.config import check_search_units
    from quantfair.errors import UsageError

    with pytest.raises(UsageError, match="--units 8 audits every one of the corpus's 3 units"):
        check_search_units(8, 3, 4, 0.12)
    with pytest.raises(UsageError, match="^--calibration-units 4: 1 unit per language is left "
                                         "out of the audit"):
        check_search_units(30, 31, 4, 0.12)


@pytest.mark.parametrize("args, message", [
    (["--units", "28", "--calibration-units", "4"],
     "--calibration-units 4: 3 units per language are left out"),
    (["--languages", "en"], "--languages selects only en: disparities compare languages with "
                            "en; give at least one other"),
])
def test_a_search_that_cannot_run_stops_before_loading(args, message):
    result = run_cli("suggest", "tiny-gpt2", "--budget", "5%", *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr  # no "loading tiny-gpt2"
    assert message in lines[0]


def test_english_under_two_codes_is_no_other_language():
    """A user corpus's `eng` is English again: `--languages en,eng` compares nothing."""
    from quantfair.config import require_other_languages
    from quantfair.errors import UsageError

    with pytest.raises(UsageError, match=r"^--languages selects only en, eng \(English, the "
                                         r"reference\): disparities compare languages with en;"):
        require_other_languages(("en", "eng"))
    require_other_languages(("en", "eng", "he"))  # he is compared


@pytest.mark.parametrize("args, results_dir, message", [
    (["--device", "tpu"], None, "--device tpu: unknown device; use auto, cpu"),
    (["--device", "meta"], None, "--device meta: not supported"),
    (["--device", "cpu:0"], None, "--device cpu:0: the CPU takes no index; give cpu"),
    (["--quantized", "pyproject.toml"], None,
     "--quantized pyproject.toml: a file that is not .gguf"),
    ([], "/proc/none", "cannot write the quantfair cache at /proc/none"),
])
def test_settings_the_pytest_plugin_checks_up_front_are_checked_before_loading(
        args, results_dir, message, monkeypatch):
    if results_dir:
        monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", results_dir)
    result = run_cli("measure", "tiny-gpt2", *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr  # no "loading tiny-gpt2"


@pytest.mark.parametrize("written", ["data/udhr.jsonl", "data/languages.tsv", "new.json"])
def test_no_command_writes_into_the_package_it_reads(written):
    """`corpus --json` (no --corpus given) replaced the shipped corpus, which every later
    command then read as malformed."""
    import quantfair

    shipped = Path(quantfair.__file__).parent / written
    before = shipped.read_bytes() if shipped.exists() else None
    try:
        for args in (["corpus", "--languages", "en"], ["measure", "tiny-gpt2", "--units", "1"]):
            refused = run_cli(*args, "--json", str(shipped))
            assert refused.returncode == 2 and refused.stderr.strip() == (
                f"quantfair: error: --json {shipped} is in the quantfair package "
                f"({shipped.parents[len(Path(written).parts) - 1]}), whose files it reads: "
                "write elsewhere")
    finally:  # where it was written after all, the package as it was for the other tests
        if (shipped.read_bytes() if shipped.exists() else None) != before:
            shipped.write_bytes(before) if before is not None else shipped.unlink()


def test_corpus_shows_the_metadata_of_iso_639_3_codes_and_unknown_for_others(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"lang": lang, "unit": "a", "text": "text"})
                              for lang in ("en", "heb", "xx")))
    shown = run_cli("corpus", "--corpus", str(path), "--json", str(tmp_path / "c.json"))
    assert shown.returncode == 0
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in shown.stdout.splitlines()
                                          if line.startswith("| "))}
    assert rows["heb"][1:5] == ["Hebrew", "Hebr", "Afro-Asiatic (Semitic)", "3"]
    assert rows["xx"][2:5] == ["unknown", "unknown", "unknown"]
    assert "note: one language" not in shown.stdout
    path.write_text("\n".join(json.dumps({"lang": lang, "unit": "a", "text": "text"})
                              for lang in ("en", "he", "heb", "xx", "eng")))
    twice = run_cli("corpus", "--corpus", str(path)).stdout.splitlines()
    assert twice[-2:] == [
        "note: one language under several codes, each audited: he, heb (ISO 639-3 heb)",
        "note: eng names English, the reference: measured, compared with nothing"]
    # the same listing for a program, with what the table leaves out; unknowns left out
    written = json.loads((tmp_path / "c.json").read_text())
    assert written["units"] == ["a"] and written["corpus"] == str(path)
    by_code = {r["language"]: r for r in written["languages"]}
    assert by_code["heb"] == {"language": "heb", "name": "Hebrew", "iso639_3": "heb",
                              "script": "Hebr", "family": "Afro-Asiatic (Semitic)",
                              "resource_class": 3, "units": 1, "chars": 4, "bytes": 4}
    assert by_code["xx"] == {"language": "xx", "units": 1, "chars": 4, "bytes": 4}


def test_measure_says_english_under_another_code_and_a_language_under_two(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"lang": lang, "unit": "a", "text": text})
                              for lang, text in (("en", "All are equal."), ("eng", "All are."),
                                                 ("he", "כולם שווים."), ("heb", "כולם."))))
    alone = run_cli("measure", "tiny-gpt2", "--corpus", str(path), "--languages", "en,eng",
                    "--units", "1")
    assert alone.returncode == 0, alone.stderr
    assert "note: disparities compare languages with en, alone here" in alone.stdout
    assert "note: eng names English, the reference: measured, compared with nothing" in (
        alone.stdout)
    every = run_cli("measure", "tiny-gpt2", "--corpus", str(path), "--units", "1")
    assert "alone here" not in every.stdout and (
        "note: one language under several codes, each audited: he, heb (ISO 639-3 heb)"
        in every.stdout)


def test_measure_prints_the_table_writes_json_and_reuses_the_cache(tmp_path):
    out = tmp_path / "m.json"
    args = ["measure", "tiny-gpt2", "--strategy", "none", "--strategy", "L0", "--strategy",
            "none", "--languages", "en,he,zh", "--units", "3", "--json", str(out),
            "--strategy", "L0 + L0", "--threads", "1"]  # L0 again, in other words
    first = run_cli_process(*args)  # a process: transformers logs to the stderr it started with
    assert first.returncode == 0, first.stderr
    assert "attention_mask" not in first.stderr  # transformers' padding warning: not padded
    assert "| strategy" in first.stdout and "disparity [95% CI]" in first.stdout
    assert "scheme: int4  dtype: float32  units: 3" in first.stdout  # what the numbers are of
    assert first.stdout.count("Mean    KLD:") == 6 and "Same top p:" in first.stdout
    assert "note: with 3 units per language the bootstrap CIs understate" in first.stdout
    assert "alone here" not in first.stdout
    # random weights: English's perplexity is above the vocabulary's size, said once
    assert first.stdout.count("warning: the model itself guesses worse than uniformly") == 1
    written = json.loads(out.read_text())
    assert written["settings"]["device"] == "auto" and written["device"] == "cpu"
    assert written["threads"] == 1  # torch's, as set
    assert {code: meta["script"] for code, meta in written["language_metadata"].items()} == {
        "en": "Latn", "he": "Hebr", "zh": "Hans"}
    records = written["records"]
    assert all(r["kld_mean"] > 0 and 0 <= r["same_top"] <= 1 for r in records)
    assert sorted((r["strategy"], r["language"]) for r in records) == sorted(
        (s, lang) for s in ("none", "L0") for lang in ("en", "he", "zh"))  # each once
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in first.stdout.splitlines() if line.startswith("| ")]
    printed = {tuple(cells[:2]): cells[2:] for cells in rows}
    for r in records:  # perplexities to 5 significant digits: within 5e-5 of the measured value
        fp, q = map(float, printed[r["strategy"], r["language"]][:2])
        assert fp == pytest.approx(r["ppl_fp"], rel=5e-5)
        assert q == pytest.approx(r["ppl_q"], rel=5e-5)
        # the degradation with its CI, in percent: English's may not be told from 0
        value, low, high = map(float, re.findall(r"-?[\d.]+", printed[
            r["strategy"], r["language"]][4]))
        assert (value, low, high) == pytest.approx([100 * r[f"degradation{end}"] for end in (
            "", "_low", "_high")], abs=0.006)
    perplexities = [cell for cells in rows[1:] for cell in cells[2:4]]  # a column reads alike
    assert all(len(cell.replace("-", "").replace(".", "").partition("e")[0]) == 5
               for cell in perplexities), perplexities
    assert "the same weights" not in first.stdout
    other = run_cli("measure", "tiny-gpt2", "--strategy", "L1", "--strategy", "L1+L1.attn",
                    *args[8:12])  # in-process too; L1 in other words, which the note says
    assert "quantfair: evaluating tiny-gpt2 int4 protecting L1" in other.stderr
    assert "note: L1+L1.attn keeps the same weights as L1: the same numbers" in other.stdout
    second = run_cli(*args)
    assert second.returncode == 0 and "evaluating" not in second.stderr
    assert json.loads(out.read_text())["records"] == records
    english = run_cli(*args[:8], "--languages", "en", "--units", "6")
    assert english.returncode == 0
    assert "note: disparities compare languages with en, alone here: give another in " \
        "--languages" in english.stdout
    assert "understate" not in english.stdout


@pytest.mark.slow
def test_measure_smollm2_prints_distribution_statistics_and_reruns_from_the_cache(tmp_path):
    args = ["measure", "smollm2-135m", "--quant", "int4", "--languages", "en,he,zh",
            "--units", "2", "--json", str(tmp_path / "m.json")]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    for line in ("Mean    KLD:", "99.9%   KLD:", "Median  KLD:", "RMS     Δp:", "Same top p:",
                 "KLD disparity (per byte, vs en):"):
        assert first.stdout.count(line) == 3, line
    second = run_cli(*args)
    assert second.returncode == 0 and "evaluating" not in second.stderr
    assert second.stdout == first.stdout  # the same numbers, read back
    assert json.loads((tmp_path / "m.json").read_text())["records"][0]["kld_mean"] > 0


def test_a_percentage_without_an_interval_keeps_its_unit_beside_the_number():
    from quantfair.cli import _distribution_block

    keys = ("ln_ppl_ratio", "kld_mean", "kld_per_byte", "kld_disparity", "delta_p_mean",
            "delta_p_rms", "same_top")
    record = {"language": "de", "scheme": "int4", "strategy": "none", "kld_undefined": None,
              **{k: 0.5 for k in ("kld_max", "kld_p99_9", "kld_p99", "kld_p95", "kld_p90",
                                  "kld_median")},
              **{k + suffix: (0.25 if suffix == "" else None) for k in keys
                 for suffix in ("", "_low", "_high")}}
    lines = _distribution_block(record).splitlines()
    assert "Same top p:  25.000 % (too few units for an interval)" in lines
    record.update(same_top_low=0.2, same_top_high=0.3)
    assert "Same top p:  25.000 [20.000, 30.000] %" in _distribution_block(record).splitlines()
    record.update(kld_mean=-3e-9, kld_mean_low=-1e-8, kld_mean_high=2e-9, kld_median=-1e-12)
    lines = _distribution_block(record).splitlines()  # summation error is not a sign
    assert "Mean    KLD:   0.000000 [0.000000, 0.000000]" in lines
    assert "Median  KLD:   0.000000" in lines


def test_an_error_during_a_progress_bar_starts_a_line_of_its_own(monkeypatch, capsys,
                                                                  tmp_path):
    """In a log (stderr not a terminal) the bar's carriage returns stay: the error line must
    still begin a line."""
    from quantfair import cli, evaluate

    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path))  # nothing cached: it evaluates

    def fail(self, batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(evaluate.Evaluator, "_run", fail)
    assert cli.main(["measure", "tiny-gpt2", "--languages", "en,de", "--units", "2"]) == 3
    err = capsys.readouterr().err
    assert "tok" in err  # a bar was drawn
    assert any(line.startswith("quantfair: error: unexpected RuntimeError: boom")
               for line in err.split("\n")), err


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`quantfair corpus | head -1`: the pipe closes before the table is written. The exit
    is a shell's for a tool SIGPIPE ended, not 1 (`quantfair report`'s regression)."""
    process = subprocess.Popen([sys.executable, "-m", "quantfair", "corpus"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the command writes anything
    assert process.wait(timeout=60) == 128 + signal.SIGPIPE
    assert process.stderr.read() == ""


@pytest.mark.parametrize("args", [["corpus"], ["--help"], ["measure", "--help"]])
def test_a_closed_standard_output_is_one_line_not_a_silent_success(args):
    """`quantfair corpus >&-`: Python starts with no sys.stdout and print() drops the table
    (argparse's help went to stderr with exit 0)."""
    done = subprocess.run([sys.executable, "-m", "quantfair", *args], capture_output=False,
                          stderr=subprocess.PIPE, text=True, timeout=60,
                          preexec_fn=lambda: os.close(1))
    assert done.returncode == 2
    assert done.stderr == ("quantfair: error: standard output is closed; redirect it (to "
                           "/dev/null to discard what is printed)\n")


def test_a_corpus_from_a_pipe_says_it_is_not_a_file():
    result = run_cli("corpus", "--corpus", "/dev/stdin")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "quantfair: error: corpus /dev/stdin is not a regular file (a pipe or device): save it "
        "to a file and give that")


def test_a_reader_that_leaves_early_loses_no_json_file(tmp_path):
    """`quantfair measure ... --json FILE | head -3`: the numbers are the file, the table only
    their preview."""
    path = tmp_path / "m.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "quantfair", "measure", "tiny-gpt2", "--random-weights",
         "--languages", "en,he", "--units", "2", "--json", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    process.stdout.close()
    assert process.wait(timeout=300) == 128 + signal.SIGPIPE
    assert {r["language"] for r in json.loads(path.read_text())["records"]} == {"en", "he"}


def test_help_names_values_by_the_option_not_its_settings_key():
    result = run_cli("measure", "--help")
    assert result.returncode == 0
    assert "--device DEVICE" in result.stdout and "--embedding-type EMBEDDING_TYPE" in result.stdout
    assert "QUANTFAIR_DEVICE" not in result.stdout


def test_export_says_what_its_dtype_picks():
    """export evaluates nothing: its dtype picks the suggestion 'suggested' takes."""
    help_text = " ".join(run_cli("export", "--help").stdout.split())
    assert ("--dtype DTYPE takes the suggestion searched in this dtype for 'suggested': "
            "float32, bfloat16, float16 (default float32; export evaluates nothing)") in help_text
    assert "evaluate in this dtype" not in help_text
    assert "evaluate in this dtype" in run_cli("measure", "--help").stdout  # its own


def test_no_option_help_holds_a_percent_sign():
    """argparse %-formats a help (a bare `%` breaks `--help`, `%%` prints one), pytest's ini
    help prints it as written: a percent sign is wrong in one of the two."""
    from quantfair.config import OPTIONS

    assert [name for name, option in OPTIONS.items() if "%" in option.help] == []


def test_corpus_lists_every_language_by_default_as_its_help_says():
    from quantfair.corpus import load_corpus

    shown = run_cli("corpus")
    assert shown.returncode == 0, shown.stderr
    listed = [line.split("|")[1].strip() for line in shown.stdout.splitlines()[3:]]
    assert sorted(listed) == sorted(load_corpus(None).languages)
    help_text = " ".join(run_cli("corpus", "--help").stdout.split())
    assert "(default: all)" in help_text and "default en,de" not in help_text


def test_corpus_says_a_random_weight_model_counts_bytes_not_its_own_tokens():
    """gpt2 with random weights has no BPE here: its token counts are bytes (tok/char 1.00 in
    English), which a user planning budgets must be told."""
    shown = run_cli("corpus", "--model", "gpt2", "--random-weights", "--languages", "en")
    assert shown.returncode == 0, shown.stderr
    assert "tokens: gpt2's tokenizer (random weights, seed 0; a byte-level tokenizer" in (
        shown.stdout)


def test_an_os_error_without_errno_is_no_unexpected_error():
    """Exit 2, as any OSError, so its line must not ask for a bug report (exit 3's)."""
    from quantfair.cli import _error_text

    assert _error_text(OSError("497664 requested and 413632 written")) == (
        "497664 requested and 413632 written")


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    shown = run_cli("--version")
    assert shown.returncode == 0
    assert shown.stdout == f"quantfair {version('quantfair')}\n"


def test_a_measure_or_suggest_file_given_as_a_report_is_named_as_what_it_is(tmp_path):
    measured = tmp_path / "m.json"
    done = run_cli("measure", "tiny-gpt2", "--random-weights", "--languages", "en,he",
                   "--units", "1", "--json", str(measured))
    assert done.returncode == 0, done.stderr
    suggested = tmp_path / "s.json"
    suggested.write_text(json.dumps({"model": "tiny-gpt2", "budget": 0.05, "trace": []}))
    for path, command in ((measured, "measure"), (suggested, "suggest")):
        shown = run_cli("report", str(path))
        assert shown.returncode == 2
        assert shown.stderr.strip().endswith(
            f"is not a quantfair report (quantfair-report/6): quantfair {command} --json "
            "wrote it, not an audit run (pytest writes reports)"), shown.stderr


def test_every_option_with_a_default_names_it_in_its_help():
    import argparse

    from quantfair.cli import build_parser

    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    silent = [f"{name} {action.option_strings[0]}"
              for name, parser in commands.choices.items() for action in parser._actions
              if action.option_strings and "default" not in (action.help or "")
              and action.default not in (None, False, [], argparse.SUPPRESS)]
    assert silent == []


def test_one_unit_per_language_is_said_to_give_no_interval():
    shown = run_cli("measure", "tiny-gpt2", "--random-weights", "--languages", "en,he",
                    "--units", "1")
    assert shown.returncode == 0, shown.stderr
    assert "note: with 1 unit per language there is no interval (no exact paired test " \
        "reaches 5% below 6 units)" in shown.stdout
    assert "understate" not in shown.stdout
