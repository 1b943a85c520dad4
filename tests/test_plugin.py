"""End-to-end runs of the audit plugin on tiny random models (seconds, not minutes)."""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from markupsafe import escape

from quantfair.corpus import load_corpus
from quantfair.workers import available_cores

AUDITS = Path(__file__).resolve().parents[1] / "audits"
pytest_plugins = ["pytester"]
QUICK_FILES = [str(AUDITS / "test_synergy.py"), str(AUDITS / "test_baseline.py")]


# Every pytest run in a subprocess: no cache folder in the test's directory, and no
# hypothesis plugin (a second of imports per process, of no use to an audit run).
PYTEST = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def run(pytester, *args, subprocess=False):
    """pytest run on `args`, in this process (seconds of torch and transformers imports saved)
    unless `subprocess`: xdist workers loading a plugin the test wrote need it on their path."""
    if subprocess:
        return pytester.runpytest_subprocess(*PYTEST, *args, timeout=600)
    pytester.syspathinsert()  # plugins the test wrote (`-p name`)
    return pytester.runpytest_inprocess(*PYTEST, *args)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def exit_code_of(report: dict) -> int:
    """The exit code for a report's outcomes: 3 when an audit could not run, 1 when one
    failed, else 0."""
    counts = report["summary"]["counts"]
    return 3 if counts["error"] else 1 if counts["failed"] else 0


def test_audits_are_skipped_with_one_line_without_model(pytester):
    result = run(pytester, *QUICK_FILES)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["quantfair: * audits skipped: no model given"])
    assert result.parseoutcomes()["skipped"] > 0
    selected = run(pytester, *QUICK_FILES, "-k", "robustness")  # those that would have run
    assert selected.ret == 0
    selected.stdout.fnmatch_lines([f"quantfair: {selected.parseoutcomes()['skipped']} audits "
                                   "skipped: no model given"])


def test_quantfair_options_without_a_model_are_a_usage_error_not_a_pass(pytester):
    """A release gate whose model was lost (pytest took the baseline's folder for its rootdir
    and read no ini file) must not pass having audited nothing; ini settings alone keep the
    plugin inert."""
    baseline = pytester.mkdir("elsewhere") / "old.json"
    baseline.write_text("{}")
    result = run(pytester, *QUICK_FILES, "--quantfair-baseline", str(baseline),
                 "--quantfair-units", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --quantfair-units, --quantfair-baseline given but no "
                                 "model: give --quantfair-model, or quantfair_model in the ini "
                                 "file (pytest *, rootdir *)"])
    short = run(pytester, *QUICK_FILES, "-p", "quantfair.short_options", "--quant", "int8")
    assert short.ret == pytest.ExitCode.USAGE_ERROR  # named as typed
    short.stderr.fnmatch_lines(["ERROR: --quant given but no model: *"])
    for typed in (["-o", "quantfair_max_disparity=2.0"], ["-qo", "quantfair_max_disparity=2"],
                  ["-vvoquantfair_max_disparity=2"]):  # in a cluster of short flags too
        overridden = run(pytester, *QUICK_FILES, *typed)
        assert overridden.ret == pytest.ExitCode.USAGE_ERROR  # pytest's -o typed: an option
        overridden.stderr.fnmatch_lines(["ERROR: -o quantfair_max_disparity given but no "
                                         "model: *"])
    assert run(pytester, *QUICK_FILES, "-ro", "-k", "robustness").ret == 0  # -r's value "o"
    emptied = run(pytester, *QUICK_FILES, "-o", "quantfair_model=")
    assert emptied.ret == pytest.ExitCode.USAGE_ERROR
    emptied.stderr.fnmatch_lines(["ERROR: -o quantfair_model is empty: name a Hugging Face*"])
    for ini in ("quantfair_units = 2",  # settings of the project: defaults, as addopts are
                "addopts = --quantfair-no-report --quantfair-units=2 -o quantfair_units=3"):
        pytester.makeini(f"[pytest]\n{ini}\n")
        inert = run(pytester, *QUICK_FILES)
        assert inert.ret == 0, inert.stderr.str()
        inert.stdout.fnmatch_lines(["quantfair: * audits skipped: no model given"])


def test_failure_message_has_claim_value_bound_and_experiment(pytester):
    pytester.makepyfile(test_own_finding="""
        from quantfair.audit import Bound, Finding, OverheadBound, audit

        test_budget = audit(Finding(
            id="tight_budget", experiments=("999",),
            claim="The recommended strategy costs almost nothing",
            check=OverheadBound({"recommended": Bound(max=0.001)}),
        ))
    """)
    result = run(pytester, "--quantfair-model", "tiny-gpt2", "--quantfair-no-report")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*[[]tight_budget, experiment 999[]] The recommended strategy costs almost nothing"
        " -- measured overhead % = *; bound <= 0.001*",
    ])


def test_bad_options_are_one_line_usage_errors(pytester):
    for args, message in [
        (["--quant", "int9"], "bits must be between 2 and 8"),
        (["--languages", "en,xx"], "unknown language(s) xx"),
        (["--units", "many"], "--units must be an integer"),  # named as typed
        (["--units", "1_0"], "--units must be an integer"),  # int(): 10
        (["--units", "2\n3"], "--units must be an integer, got '2\\n3'"),  # one line
        (["--languages", "en," + "x" * 5000], "characters left out ...]"),
        (["--baseline=" + "y" * 5000 + ".json"], "File name too long: yyyy"),  # no traceback
        (["--threads", "0_1"], "--threads must be auto or a positive integer, got '0_1'"),
        (["--languages", "en,class:\u0661"], "--languages class:\u0661: a class is 0..5"),
        (["--strategy-typo"], "unrecognized arguments"),
        (["--languages", "en"], "give at least one other (`quantfair corpus` lists"),
        (["--units", "100"], "--units 100: the corpus has 31 units per language"),
        (["--quantfair-units=100"], "--quantfair-units 100: the corpus has 31 units"),
        (["--units", "5", "--quantfair-units", "100"],  # which would win?
         "--units 5, --quantfair-units 100: the option is given more than once, with "
         "different values; give it once"),
        (["-o", "quantfair_model=tiny-llama"],  # beside --model tiny-gpt2: ini's -o lost
         "-o quantfair_model=tiny-llama, --model tiny-gpt2: the option is given more than "
         "once"),
        (["--units", "2", "--override-ini=quantfair_units=3"],
         "-o quantfair_units=3, --units 2: the option is given more than once"),
        (["--no-report", "-oquantfair_no_report=false"],  # a switch too: no report, or one?
         "--no-report, -o quantfair_no_report=false: the option is given more than once"),
        (["--languages", ""], "--languages is empty; give comma-separated codes"),
        (["--report", "/proc/nowhere/r.json"], "--report: cannot write in /proc/nowhere"),
        (["--report", " "], "--report is empty; give the path of a .json file"),
        (["--report", "r.json", "--no-report"], "give --report r.json or --no-report, not both"),
        (["--strategy", ""], "--strategy is empty; give a strategy such as L0+Llast"),
        # an option not given is named as the others were written: short here
        (["--tolerance", "0.2"], "--tolerance 0.2 applies to a --baseline comparison"),
        (["--tolerance="], "--tolerance is empty: give a value"),
        (["--model="], "--model tiny-gpt2, --model '': the option is given more than once"),
        # an unset variable in a CI script must not gate on the defaults
        (["--quantized", ""], "--quantized is empty: give a value (see --help) or leave it out"),
        (["--quantfair-baseline", " "], "--quantfair-baseline is empty: give a value"),
        (["--device", ""], "--device is empty: give a value"),
    ]:
        result = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2", *args)
        assert result.ret == 4, (args, result.stderr.str())
        assert message in result.stderr.str()
        assert "Traceback" not in result.stderr.str()
    for args, message in [  # the model alone
        (["--quantfair-model", ""], "--quantfair-model is empty: name a Hugging Face"),
        (["--model="], "--model is empty: name a Hugging Face"),  # named as typed
    ]:
        result = run(pytester, QUICK_FILES[0], *args)
        assert result.ret == 4, (args, result.stderr.str())
        assert message in result.stderr.str()
        assert "Traceback" not in result.stderr.str()


def test_values_read_alike_are_one_value_given_twice(pytester):
    """`--device CPU --device cpu` was "given more than once, with different values"."""
    listed = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2", "--collect-only", "-q",
                 "--device", "CPU", "--quantfair-device", "cpu", "--units", "2",
                 "-o", "quantfair_units=02", "--dtype", "BFloat16", "--quantfair-dtype",
                 " bfloat16")
    assert listed.ret == 0, listed.stderr.str()
    codes = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2", "--collect-only", "-q",
                "--languages", "He", "-o", "quantfair_languages=he")
    assert "the option is given more than once" in codes.stderr.str()  # codes: case matters
    twice = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2", "--collect-only", "-q",
                "-o", "quantfair_units=2", "-o", "quantfair_units=3")  # pytest keeps the last
    assert ("-o quantfair_units=2, -o quantfair_units=3: the option is given more than once"
            in twice.stderr.str())
    for entries in (["quantfair_units=2", "quantfair_units="],  # the empty one unset it: 8
                    ["quantfair_no_report=true", "quantfair_no_report=false"]):
        twice = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2", "--collect-only", "-q",
                    "-o", entries[0], "-o", entries[1])
        assert f"-o {entries[0]}, -o {entries[1]}: the option is given more than once" in (
            twice.stderr.str())
    listed = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2", "--collect-only", "-q",
                 "--languages", "en,he", "--quantfair-languages", "en, he",
                 "--quantfair-max-disparity", "2,he=3", "-o", "quantfair_max_disparity=2.0, "
                 "he=3")  # maxima entry by entry, as their values
    assert listed.ret == 0, listed.stderr.str()
    for first in (["--languages="], ["--languages", ""]):  # pytest kept the last, silently
        empty = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2", "--collect-only", "-q",
                    *first, "--languages", "he")
        assert ("--languages '', --languages he: the option is given more than once"
                in empty.stderr.str())
    lists = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2", "--collect-only", "-q",
                "--languages", "en,he", "-o", "quantfair_languages=he, de")  # read apart
    assert ("-o quantfair_languages='he, de', --languages 'en,he': the option is given more "
            "than once") in lists.stderr.str()


def test_an_option_not_given_is_named_as_the_given_ones_were_written(pytester):
    long = run(pytester, QUICK_FILES[0], "--quantfair-model", "tiny-gpt2",
               "--quantfair-tolerance", "0.2")
    assert long.ret == 4
    assert "--quantfair-tolerance 0.2 applies to a --quantfair-baseline comparison" \
        in long.stderr.str()


def test_an_option_from_pytest_addopts_is_named_as_given_there(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_ADDOPTS", "--units 100")
    result = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2")
    assert result.ret == 4 and "ERROR: --units 100: the corpus" in result.stderr.str()


def test_a_bad_hidden_state_capacity_is_one_usage_error_before_any_audit(pytester, monkeypatch):
    monkeypatch.setenv("QUANTFAIR_HIDDEN_STATES_MB", "lots")
    result = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2")
    assert result.ret == 4, result.stderr.str()
    assert result.stderr.str().count("QUANTFAIR_HIDDEN_STATES_MB must be a number of MiB") == 1
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_missing_offline_model_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run(pytester, QUICK_FILES[0], "--model", "no-org/no-model")
    assert result.ret == 4
    assert "not in the local Hugging Face cache" in result.stderr.str()


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/folder"], "model path not found: /no/such/folder"),
    (["--model", "notes.txt"], "model notes.txt: a file that is not .gguf"),
    (["--model", "tiny-gpt2", "--device", "tpu"], "--device tpu: unknown device"),
    (["--model", "tiny-gpt2", "--device", "meta"], "--device meta: not supported"),
    (["--model", "tiny-gpt2", "--quantized", "notes.txt"],
     "--quantized notes.txt: a file"),  # named as typed
    (["--model", "smollm2-135m", "--quantized", "smollm2-135m"], "--quantized smollm2-135m "
     "names a model quantfair ships, not its quantized weights"),
    (["--model", "tiny-gpt2", "--quantized", "tiny-llama"], "--quantized tiny-llama names"),
])
def test_settings_checked_before_any_audit_are_one_usage_error(pytester, args, message):
    """Found before the first audit, not as an error in each of them."""
    pytester.makefile(".txt", notes="not a model")
    result = run(pytester, QUICK_FILES[0], *args)
    assert result.ret == 4, result.stdout.str()
    assert message in result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_an_unwritable_results_cache_is_one_usage_error(pytester, monkeypatch):
    blocker = pytester.makefile(".txt", blocker="a file, not a folder")
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(blocker))
    result = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2")
    assert result.ret == 4, result.stdout.str()
    assert f"cannot write the quantfair cache at {blocker}" in result.stderr.str()
    assert "QUANTFAIR_RESULTS_DIR" in result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def _comparable(report: dict) -> dict:
    report = dict(report)
    for key in ("created", "duration_s", "environment", "processes"):
        report.pop(key)
    report["settings"] = {k: v for k, v in report["settings"].items() if k != "workers"}
    report["selection"] = {k: v for k, v in report["selection"].items() if k != "invocation"}
    report["audits"] = [{k: v for k, v in a.items() if k != "duration_s"}
                        for a in report["audits"]]
    return report


def test_serial_and_xdist_runs_give_the_same_report(pytester):
    """Two xdist gateways given as `--tx` (the form remote hosts use: `--tx ssh=...`) give the
    serial run's report; `-n 2` is the same two local gateways."""
    serial, parallel = pytester.path / "serial.json", pytester.path / "parallel.json"
    first = run(pytester, *QUICK_FILES, "--model", "tiny-gpt2", "-m", "quick",
                "--report", str(serial))
    second = run(pytester, *QUICK_FILES, "--model", "tiny-gpt2", "-m", "quick",
                 "--report", str(parallel), "--tx", "2*popen", "--dist", "loadgroup")
    a, b = load(serial), load(parallel)
    assert first.ret == second.ret == 1  # tiny-gpt2's Hebrew disparity is below 1 under int4
    assert {x["nodeid"] for x in a["audits"] if x["outcome"] == "failed"} == {
        x["nodeid"] for x in b["audits"] if x["outcome"] == "failed"} != set()
    assert a["measurements"] and a["audits"]
    assert _comparable(a) == _comparable(b)
    assert b["settings"]["workers"] == 2
    assert (pytester.path / "parallel.html").exists()


def test_a_report_asked_for_that_no_audit_wrote_is_said(pytester):
    """A `-k` matching no audit ends as pytest's exit 5; a CI step then looked for the file
    --report named, with no word of why it was not there."""
    path = pytester.path / "r.json"
    for workers in ((), ("-n", "2")):
        result = run(pytester, *QUICK_FILES, "--model", "tiny-gpt2", "-k", "nosuchaudit",
                     "--report", str(path), *workers, subprocess=bool(workers))
        assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
        result.stdout.fnmatch_lines([f"quantfair: no audit ran: no report written to {path}"])
        assert not path.exists()
    unnamed = run(pytester, *QUICK_FILES, "--model", "tiny-gpt2", "-k", "nosuchaudit")
    assert "no report written" not in unnamed.stdout.str()  # none was asked for


def test_the_strategy_given_is_audited_in_the_quick_subset_too(pytester):
    """`--strategy X -m quick` left X's audits out with one terminal line: the user asked
    for X to be audited."""
    files = [str(AUDITS / "test_suggested.py"), str(AUDITS / "test_synergy.py")]

    def collected(*args: str) -> list[str]:
        listed = run(pytester, *files, "--model", "tiny-gpt2", "--collect-only", "-q", *args)
        return sorted(line.split("::")[1].split("[")[0] for line in listed.stdout.lines
                      if "test_suggested.py::" in line)

    audits = ["test_candidate_beats_none", "test_candidate_beats_random",
              "test_candidate_within_budget"]
    assert collected("-m", "quick") == []  # nothing to audit: not in the quick subset
    assert collected("-m", "quick", "--strategy", "L0") == audits
    assert collected("-m", "quantfair_quick", "--strategy", "L0") == audits
    assert collected("-m", "not quick", "--strategy", "L0") == []


@contextmanager
def socket_server(folder: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """An execnet socket server on this machine (in `env`, else this one): to xdist a gateway
    like another host's (`--tx socket=HOST:PORT`), whose processes the controller takes for
    remote ones. Yields the `--tx` value, working in `folder`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "execnet.script.socketserver",
                               f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the socket server did not start"
                time.sleep(0.1)
        yield f"socket=127.0.0.1:{port}//chdir={folder}"
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def socket_gateway(tmp_path):
    with socket_server(tmp_path) as gateway:
        yield gateway


@pytest.mark.parametrize("setting, message", [
    (("--quantfair-threads", str(available_cores() + 1)), "this process may run on"),
    (("--quantfair-device", "cuda:99"), "cuda:99"),
])
def test_remote_workers_check_their_own_cores_and_device(pytester, socket_gateway, setting,
                                                         message):
    """The controller of remote workers (`--tx ssh=...`, `socket=...`) does not bound the
    threads by its own cores nor look for the device on its own machine; each worker checks
    its own, says a bad setting once and stops the run (exit 4) rather than crash at start
    (xdist would replace it and crash again until the timeout)."""
    result = pytester.runpytest_subprocess(
        *PYTEST, "--pyargs", "quantfair.audits", "-k", "release_disparity",
        "--quantfair-model", "tiny-gpt2", "--quantfair-random-weights", "--quantfair-units", "2",
        "--quantfair-no-report", *setting, "--tx", socket_gateway, "--dist", "loadgroup",
        timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert result.parseoutcomes().get("errors") == 1  # a worker said it: not the controller
    result.stdout.fnmatch_lines([f"*Interrupted: quantfair: *{message}*"])
    assert "crashed" not in result.stdout.str()


def test_a_setting_bad_on_one_host_of_several_is_said_as_on_one(pytester, tmp_path):
    """One host's results cache is a file there (good on the other): its worker, stopped by
    the setting, collected the audits unsorted (longest first is the run's), so xdist ended
    with "Different tests were collected between gw0 and gw1" (exit 1, no quantfair line)."""
    bad = tmp_path / "results-file"
    bad.write_text("")
    with socket_server(tmp_path, {**os.environ, "QUANTFAIR_RESULTS_DIR": str(bad)}) as host:
        result = pytester.runpytest_subprocess(
            *PYTEST, "--pyargs", "quantfair.audits", "-m", "quick",
            "--quantfair-model", "tiny-gpt2", "--quantfair-random-weights",
            "--quantfair-units", "2", "--quantfair-no-report", "--tx", "popen", "--tx", host,
            "--dist", "loadgroup", timeout=180)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stdout.fnmatch_lines([f"*Interrupted: quantfair: *{bad}*"])
    assert "Different tests were collected" not in result.stdout.str()


def test_a_host_needs_neither_the_baseline_nor_the_report_folder(pytester, tmp_path):
    """The baseline and the report are the controller's files: a worker on another machine
    (here a socket gateway working in an empty folder) refused the run for a baseline it
    did not have (`--quantfair-baseline=base.json`: "no such report file", exit 4)."""
    args = ["--pyargs", "quantfair.audits", "-k", "robustness", "--quantfair-model",
            "tiny-gpt2", "--quantfair-languages", "en,he", "--quantfair-units", "2"]
    assert pytester.runpytest_subprocess(*PYTEST, *args,
                                         "--quantfair-report=base.json").ret == 0
    host = tmp_path / "host"
    host.mkdir()
    (pytester.path / "out").mkdir()
    with socket_server(host) as gateway:
        result = pytester.runpytest_subprocess(
            *PYTEST, *args, "--quantfair-baseline=base.json", "--quantfair-report=out/now.json",
            "--tx", gateway, "--dist", "loadgroup", timeout=180)
    assert result.ret == 0, result.stdout.str()
    report = load(pytester.path / "out" / "now.json")
    assert report["comparison"]["regressions"] == []
    assert report["comparison"]["rows"]
    (process,) = report["processes"]  # which host ran it, with which code
    assert process["host"] == socket.gethostname()
    assert process["environment"]["quantfair"] == report["environment"]["quantfair"]
    assert "ran other code" not in result.stdout.str()
    assert not list(host.rglob("*.json"))  # nothing written on the host


def test_a_process_that_ran_other_code_than_the_controller_is_named():
    from quantfair.report import other_code

    ours = {"quantfair": "0.1.0", "quantfair_source": "aaa", "git_commit": "c1"}
    report = {"environment": {**ours, "platform": "x"}, "processes": [
        {"pid": 1, "host": "a", "environment": ours},
        # another checkout's commit (the controller's may be another project's): told only
        {"pid": 2, "host": "b", "environment": {**ours, "git_commit": "c2"}},
        {"pid": 3, "host": "c", "environment": {**ours, "quantfair_source": "bbb",
                                                "torch": "2.1"}},
        {"pid": 4, "device": "cpu"}]}  # a host with older code records none (it went unsaid)
    assert other_code(report) == ["pid 3 on c: quantfair_source bbb (the controller's aaa), "
                                  "torch 2.1 (the controller's unknown)",
                                  "pid 4 on its host: an older quantfair, which records no "
                                  "environment"]
    # a report written before processes recorded their code: nothing to compare
    assert other_code({"environment": {"quantfair": "0.1.0"}, "processes": [{"pid": 4}]}) == []


def test_a_worker_given_other_settings_than_the_controller_stops_the_run(pytester, tmp_path,
                                                                        monkeypatch):
    """A gateway on another machine is given the typed arguments alone and reads its own
    PYTEST_ADDOPTS and ini file: a gate's settings in the controller's PYTEST_ADDOPTS were
    unknown to its workers (every audit skipped for want of a model, exit 0; or languages
    the report did not measure)."""
    with socket_server(tmp_path, {k: v for k, v in os.environ.items()
                                  if k != "PYTEST_ADDOPTS"}) as host:
        monkeypatch.setenv("PYTEST_ADDOPTS", "--quantfair-languages=en,he")
        result = pytester.runpytest_subprocess(
            *PYTEST, "--pyargs", "quantfair.audits", "-k", "robustness",
            "--quantfair-model=tiny-gpt2", "--quantfair-units=2", "--quantfair-no-report",
            "--tx", host, "--dist", "loadgroup", timeout=180)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stdout.fnmatch_lines([
        "*Interrupted: quantfair: --quantfair-languages is 'en,he' on the controller and unset "
        f"on this worker: *give quantfair's options on the command line (worker gw0 on "
        f"{socket.gethostname()})*"])


def test_a_host_without_the_corpus_or_with_another_is_said(pytester, tmp_path):
    """A corpus file missing on one host of two stopped that worker before it knew the
    corpus's languages: its audits, made for the default ones, were other tests than the
    other worker's ("Different tests were collected", exit 1). A host whose file at that
    path holds other languages measured them."""
    corpus = load_corpus().select(["en", "he", "fr"])

    def write(path: Path, languages: list[str]) -> None:
        path.write_text("".join(json.dumps({"lang": lang, "unit": unit,
                                            "text": corpus.texts[lang][unit][:120]}) + "\n"
                                for lang in languages for unit in corpus.units[:2]))

    write(pytester.path / "my.jsonl", ["en", "he", "fr"])
    host = tmp_path / "host"
    host.mkdir()
    for there, said in ((None, "corpus file not found: my.jsonl"),
                        (["en", "he"], "the corpus here gives the languages en, he, the "
                                       "controller's en, he, fr")):
        if there:
            write(host / "my.jsonl", there)
        with socket_server(host) as gateway:
            result = pytester.runpytest_subprocess(
                *PYTEST, "--pyargs", "quantfair.audits", "-m", "quick",
                "--quantfair-model=tiny-gpt2", "--quantfair-corpus=my.jsonl",
                "--quantfair-no-report", "--tx", "popen", "--tx", gateway, "--dist",
                "loadgroup", timeout=180)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
        result.stdout.fnmatch_lines([f"*Interrupted: quantfair: {said}* (worker gw1 on *)*"])


def test_workers_share_the_cores_of_their_own_machine():
    """Two hosts' workers each took half their host's cores (the run's worker count was
    read for each machine's)."""
    from types import SimpleNamespace

    import execnet

    from quantfair.plugin import pytest_configure_node
    from quantfair.workers import HOST_WORKERS, gateway_host, xdist_workers

    specs = [execnet.XSpec(text) for text in (
        "popen", "popen", "socket=10.0.0.2:8888", "socket=10.0.0.2:8889",
        "ssh=me@host-3//python=/srv/q/.venv/bin/python", "popen//via=proxy")]
    assert [gateway_host(spec) for spec in specs] == [
        None, None, "10.0.0.2", "10.0.0.2", "host-3", "via proxy"]
    from quantfair.plugin import RUN

    run = SimpleNamespace(config=SimpleNamespace(languages=("en", "he")))
    config = SimpleNamespace(stash={RUN: run}, getoption=lambda *_, **__: None,
                             getini=lambda name: "", inipath=None)
    shares = []
    for spec in specs:
        node = SimpleNamespace(config=config, workerinput={"workercount": 6},
                               gateway=SimpleNamespace(spec=spec),
                               nodemanager=SimpleNamespace(specs=specs))
        pytest_configure_node(node)
        shares.append(xdist_workers(node.workerinput))
    assert shares == [2, 2, 2, 2, 1, 1]
    assert xdist_workers({"workercount": 6}) == 6  # a controller of before: the run's count
    assert HOST_WORKERS == "quantfair_host_workers"


def test_gateways_without_dist_run_here_and_are_checked_here(pytester):
    """`--tx` without `--dist` starts no gateway: the audits run in this process, whose cores
    bound `--threads` (the controller took them for remote workers and let 64 threads pass
    on two cores)."""
    too_many = str(available_cores() + 1)
    result = run(pytester, QUICK_FILES[1], "--model", "tiny-gpt2", "--threads", too_many,
                 "--tx", "socket=127.0.0.1:1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "this process may run on" in result.stderr.str()


def test_a_path_in_two_words_is_refused_before_remote_gateways_start(pytester):
    """xdist's remote gateways send each argument naming an existing path and stopped at
    `--quantfair-report r.json` (once r.json existed) with a 40-line INTERNALERROR, exit 3."""
    (pytester.path / "r.json").write_text("{}")
    result = run(pytester, QUICK_FILES[1], "--model", "tiny-gpt2", "--quantfair-report",
                 "r.json", "--tx", "socket=127.0.0.1:1", "--dist", "loadgroup")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quantfair-report r.json: pytest-xdist's remote gateways "
                                 "*: write --quantfair-report=r.json"])


def test_a_process_that_goes_on_gets_its_threads_back(pytester):
    """A process running several pytest sessions (an execnet socket server's, `pytest.main`
    in a host process) kept the first run's torch threads for the next (a host recorded 1
    thread where it has 2) and reported every model loaded since it started."""
    script = pytester.makepyfile(host=f"""
        import json, sys
        import pytest, torch

        torch.set_num_threads(3)
        seen = []
        for run in range(2):
            code = pytest.main([*{list(PYTEST)!r}, {QUICK_FILES[1]!r}, "-k", "robustness",
                                "--model", "tiny-gpt2", "--languages", "en,he", "--units", "2",
                                "--threads", "1", "--report", f"r{{run}}.json", "-q"])
            (process,) = json.load(open(f"r{{run}}.json"))["processes"]
            seen.append([int(code), process["threads"], process["loads"],
                         torch.get_num_threads()])
        print("SEEN", json.dumps(seen))
    """)
    result = pytester.run(sys.executable, str(script), timeout=300)
    line = next(line for line in result.outlines if line.startswith("SEEN "))
    # each run: exit 0, one thread while it ran, one model loaded; the process's 3 after it
    assert json.loads(line.removeprefix("SEEN ")) == [[0, 1, 1, 3], [0, 1, 1, 3]]


def test_xdist_workers_run_element_selections_first(pytester):
    """The longest single audits (a selection over every weight and a composed model) start
    first under xdist, whatever their place in the files."""
    files = [QUICK_FILES[0], str(AUDITS / "test_selection.py")]  # synergy, then selection
    result = run(pytester, *files, "--model", "tiny-gpt2", "-m", "quick", "-v", "-n", "1")
    ran = [line for line in result.outlines if line.startswith("[gw0]") and "::test_" in line]
    assert len(ran) == 6 and "test_random_fails" in ran[0], ran


def test_each_worker_loads_the_model_once(pytester):
    path = pytester.path / "r.json"
    result = run(pytester, *QUICK_FILES, "--model", "tiny-opt", "-n", "2", "--report", str(path))
    assert result.ret == exit_code_of(load(path))
    processes = load(path)["processes"]
    assert len({p["pid"] for p in processes}) == 2
    assert all(p["loads"] == 1 and p["device"] == "cpu" for p in processes)  # auto, resolved
    if not os.environ.get("OMP_NUM_THREADS"):  # each its share of the cores, recorded as
        # it ended: the worker that finished first kept it; the other may have taken its cores
        threads = sorted(p["threads"] for p in processes)
        assert threads[0] == max(1, available_cores() // 2) and threads[1] <= available_cores()


def test_workers_share_a_folder_of_the_run_and_the_controller_imports_no_torch(
        pytester, monkeypatch):
    """The controller makes one folder in the results cache for its workers (hidden states
    of the top layer, which worker has finished) and removes it at the end. Only workers load
    models: importing torch in the controller cost every xdist run seconds."""
    results = pytester.path / "results"
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(results))
    pytester.makepyfile(seen=f"""
        import json
        import sys
        from pathlib import Path

        def pytest_sessionfinish(session):
            given = getattr(session.config, "workerinput", {{}})
            if "workerid" in given:
                folder = given.get("quantfair_run_folder")
                found = [str(p.relative_to(folder).parent if p.suffix else p.name)
                         for p in Path(folder).rglob("*") if p.is_file()] if folder else []
                Path({str(pytester.path)!r}, f"seen-{{given['workerid']}}.json").write_text(
                    json.dumps({{"folder": folder, "found": sorted(set(found))}}))
            else:
                Path({str(pytester.path)!r}, "controller.json").write_text(json.dumps(
                    [name for name in sys.modules if name.split(".")[0] == "torch"]))
    """)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    path = pytester.path / "r.json"
    result = run(pytester, *QUICK_FILES, "--model", "tiny-opt", "-m", "quick", "-n", "2",
                 "-p", "seen", "--report", str(path), subprocess=True)
    assert result.ret == exit_code_of(load(path))
    seen = [load(pytester.path / f"seen-gw{i}.json") for i in (0, 1)]
    folder = Path(seen[0]["folder"])
    assert seen[1]["folder"] == str(folder) and folder.parent == results
    # what the workers left there: hidden states, and that this worker had finished
    assert {"hidden-states", "finished-gw0"} <= set(seen[0]["found"])
    assert not folder.exists()
    assert load(pytester.path / "controller.json") == []


def test_report_html_lists_each_audit_once_with_evidence(pytester):
    path = pytester.path / "r.json"
    run(pytester, *QUICK_FILES, "--model", "tiny-llama", "-m", "quick", "--report", str(path))
    report = load(path)
    html = path.with_suffix(".html").read_text()
    assert report["audits"] and html.count('<tr class="audit') == len(report["audits"])
    assert "http://" not in html.replace("http://www.w3.org", "") and "<script src" not in html
    failed = [a for a in report["audits"] if a["outcome"] == "failed"]
    for audit in failed:
        assert audit["message"] and escape(audit["claim"]) in html
    assert not (pytester.path / "latest.html").exists()  # only beside unnamed reports


def test_a_comparison_that_fails_keeps_the_report_and_leaves_the_gate_unchecked(
        pytester, monkeypatch):
    """A bug in the comparison once ended the run with a traceback, exit 1 (a regression, so
    it read) and no report: what was measured is kept, and the gate is not checked (3)."""
    base, now = pytester.path / "base.json", pytester.path / "now.json"
    args = [QUICK_FILES[1], "--model", "tiny-gpt2", "-k", "robustness", "--languages", "en,he"]
    assert run(pytester, *args, "--report", str(base)).ret == 0

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr("quantfair.report.compare", broken)
    result = run(pytester, *args, "--baseline", str(base), "--report", str(now))
    assert result.ret == 3
    report = load(now)
    assert report["verdict"] == "incomplete" and report["comparison"] is None
    assert report["incomplete"] == [
        "baseline: the comparison failed (ValueError: boom; please report it)"]
    assert [a["outcome"] for a in report["audits"]] == ["passed"]


def _recomputed(report: dict) -> dict:
    """`report` with each measurement's totals, disparity and degradation computed again from
    its per-unit values, as a run measuring them would have written them."""
    import numpy as np

    from quantfair.metrics import Measurement

    groups: dict[tuple, list[dict]] = {}
    for row in report["measurements"]:
        groups.setdefault((row["scheme"], row["strategy"], row["length"]), []).append(row)
    for rows in groups.values():
        values = [np.array([row["per_unit"][name] for row in rows], dtype=float)
                  for name in ("nll_fp", "nll_q", "tokens")]
        m = Measurement(tuple(row["language"] for row in rows), *values, values[2], values[2])
        for row, (disparity, degradation) in zip(rows, zip(
                m.disparity().values(), m.degradation().values(), strict=True), strict=True):
            row["nll_q"] = sum(row["per_unit"]["nll_q"])
            for name, estimate in (("disparity", disparity), ("degradation", degradation)):
                row.update({name: estimate.value, f"{name}_low": estimate.low,
                            f"{name}_high": estimate.high})
    return report


def test_baseline_gates_regressions_and_fails_a_run_whose_audits_passed(pytester):
    base, now = pytester.path / "base.json", pytester.path / "now.json"
    args = [QUICK_FILES[1], "--model", "tiny-gpt2", "-k", "robustness", "--languages", "en,he"]
    assert run(pytester, *args, "--report", str(base)).ret == 0
    same = run(pytester, *args, "--baseline", str(base), "--no-report")
    assert same.ret == 0 and "REGRESSION" not in same.stdout.str()
    same.stdout.fnmatch_lines(["compared with the baseline of *", "0 regressions against the "
                               "baseline (no growth beyond 10%, the tolerance)"])
    report = load(base)
    assert report["verdict"] == "passed"
    rows = [r for r in report["measurements"] if r["language"] == "he" and r["disparity"]]
    assert rows
    for row in rows:  # the baseline was far fairer: Hebrew's loss fell on every unit
        units = row["per_unit"]
        units["nll_q"] = [fp - 10 * abs(q - fp) - 1 for fp, q in zip(units["nll_fp"],
                                                                     units["nll_q"])]
    base.write_text(json.dumps(_recomputed(report)))
    result = run(pytester, *args, "--baseline", str(base), "--report", str(now))
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*REGRESSION vs baseline: disparity int4/none/medium/he*"])
    result.stdout.fnmatch_lines(["verdict: failed*", "1 regression(s) against the baseline*"])
    assert "0 regressions" not in result.stdout.str()
    regressed = load(now)
    assert regressed["verdict"] == "failed"
    assert regressed["summary"]["headline"].startswith("1 regression(s) against the baseline")
    html = now.with_suffix(".html").read_text()
    assert ('<div class="headline">RELEASE GATE FAILED; SEED FINDINGS PASSED &mdash; 1 '
            'regression(s)') in html


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two-workers"])
def test_a_baseline_of_another_model_stops_the_run_before_its_audits(pytester, workers):
    """Known as soon as the model has loaded: no audit is measured for a gate that cannot be
    checked (a usage error, said once)."""
    base = pytester.path / "base.json"
    args = [QUICK_FILES[1], "-k", "robustness", "--languages", "en,he"]
    assert run(pytester, *args, "--model", "tiny-gpt2", "--report", str(base)).ret == 0
    now = pytester.path / "now.json"
    result = run(pytester, *args, "--model", "tiny-llama", "--baseline", str(base),
                 "--report", str(now), *workers)
    assert result.ret == 4, result.stdout.str()
    result.stdout.fnmatch_lines(["INCOMPLETE: *the baseline is of another model (model tiny-"
                                 "gpt2*; gpt2, * than this run (llama, *"])
    assert result.stdout.str().count("INCOMPLETE: stopped by") == 1
    result.stdout.fnmatch_lines(["INCOMPLETE: 1 of 1 selected audits never ran *"])
    assert "REGRESSION" not in result.stdout.str()
    report = load(now)
    assert report["audits"] == []  # cut off by the stop, not a finding that errored
    assert not report["measurements"] and report["verdict"] == "incomplete"


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two-workers"])
def test_a_baseline_sharing_nothing_with_the_run_is_an_error_not_a_regression(pytester, workers):
    """Exit 3 (the gate could not be checked), as `quantfair report` refuses the same pair;
    1 would say a claim did not hold."""
    base = pytester.path / "base.json"
    args = [QUICK_FILES[1], "--model", "tiny-gpt2"]
    assert run(pytester, *args, "-k", "robustness", "--quant", "int8",
               "--report", str(base)).ret in (0, 1)
    result = run(pytester, *args, "-k", "baseline_disparity", "--baseline", str(base),
                 "--no-report")
    assert result.ret == 3
    result.stdout.fnmatch_lines(["INCOMPLETE: baseline:*nothing was compared*"])
    assert "REGRESSION" not in result.stdout.str()
    # a -k selecting nothing: pytest's exit 5 is often taken for a pass in CI scripts
    now = pytester.path / "now.json"
    result = run(pytester, *args, "-k", "no_such_audit", "--baseline", str(base),
                 "--report", str(now), *workers)
    assert result.ret == 3, result.stdout.str()
    result.stdout.fnmatch_lines(["INCOMPLETE: baseline:*nothing was compared*"])
    assert load(now)["verdict"] == "incomplete"


def test_a_finding_file_not_collected_under_xdist_makes_the_report_incomplete(pytester):
    """xdist runs the files it could collect: the report once said "passed", leaving the
    broken file's findings out without a word, and the run exited 1 (a claim failed)."""
    pytester.makepyfile(test_broken="""
        from quantfair.audit import Bound, Finding, LanguageBound, audit

        test_typo = audit(Finding(id="typo", experiments=("x",), claim="c",
                                  check=LanguageBound("L0+Lsat", bound=Bound(max=2.0))))
    """, test_unclosed="""
        from quantfair.audit import audit

        findings = (
    """)
    path = pytester.path / "broken.json"
    result = run(pytester, "test_broken.py", "test_unclosed.py", QUICK_FILES[1], "--model",
                 "tiny-gpt2", "-n", "2", "-k", "robustness or typo", "--report", str(path))
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    report = load(path)
    assert report["verdict"] == "incomplete"
    # where: the line of the finding, or of the syntax error (not a frame of pytest's)
    assert sorted(r for r in report["incomplete"] if r.startswith("could not collect")) == [
        "could not collect test_broken.py:4: ValueError: LanguageBound's strategy: unknown "
        "strategy term 'Lsat'" + report["incomplete"][0].partition("'Lsat'")[2],
        "could not collect test_unclosed.py:3: SyntaxError: '(' was never closed"]
    assert any(a["outcome"] == "passed" for a in report["audits"])


@pytest.mark.parametrize("workers", [["--continue-on-collection-errors"], ["-n", "2"]],
                         ids=["serial", "two-workers"])
def test_a_project_test_file_not_collected_leaves_the_verdict_to_the_audits(pytester, workers):
    """A project's own test file that cannot be imported is pytest's error (exit 1), not a
    file of findings: the report once said "incomplete" and the run exited 3."""
    pytester.makepyfile(test_theirs="""
        import not_installed_package

        def test_theirs():
            pass
    """)
    path = pytester.path / "mixed.json"
    result = run(pytester, "test_theirs.py", QUICK_FILES[1], "--model", "tiny-gpt2", "-k",
                 "robustness or theirs", "--report", str(path), *workers)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    report = load(path)
    assert report["incomplete"] == [] and report["verdict"] == "passed"
    assert [a["outcome"] for a in report["audits"]] == ["passed"]


def test_checks_of_single_values_resolve_the_audited_strategy_and_matched_selectors(pytester):
    """CANDIDATE and Matched once reached the strategy parser as written ("unknown strategy
    term 'candidate'", an AttributeError, a pytest id error) in these checks."""
    pytester.makepyfile(test_mine="""
        from quantfair.audit import (CANDIDATE, Bound, Deterministic, Finding, LayerValue,
                                     Matched, OverheadBound, SelectionOverlap, audit)

        def finding(id, check):
            return audit(Finding(id=id, experiments=("x",), claim="c", check=check))

        test_overhead = finding("overhead", OverheadBound({CANDIDATE: Bound(max=99),
                                                           Matched("random", "L0"): Bound(max=99)}))
        test_overlap = finding("overlap", SelectionOverlap(CANDIDATE, "L0", bound=Bound(min=0.1)))
        # a random share of each tensor overlaps L0 at chance, give or take an entry per
        # tensor: a bound of chance itself would decide on rounding, not on resolution
        test_random = finding("random", SelectionOverlap(Matched("random", "L0"), "L0",
                                                         bound=Bound(max=0.5)))
        test_rescore = finding("rescore", Deterministic(CANDIDATE))
        test_layer = finding("layer", LayerValue("variance", Bound(min=0), layer=99))
    """)
    path = pytester.path / "r.json"
    result = run(pytester, "test_mine.py", "--quantfair-model", "tiny-gpt2", "--quantfair-units",
                 "2", "--quantfair-strategy", "L0+Llast", "--quantfair-report", str(path))
    outcomes = {a["case"]: (a["outcome"], a.get("message")) for a in load(path)["audits"]}
    assert result.ret == pytest.ExitCode.OK, outcomes
    assert {case: outcome for case, (outcome, _) in outcomes.items()} == {
        "candidate": "passed", "random@budget(L0)": "passed", "candidate&L0": "passed",
        "random@budget(L0)&L0": "passed", "candidate-rescore": "passed",
        "L99-variance": "skipped"}
    assert outcomes["L99-variance"][1] == "names layer 99; this model has 4"


def test_a_finding_written_wrong_shows_its_own_line_and_the_message(pytester):
    """The collection error once went on through four frames of quantfair's checks."""
    pytester.makepyfile(test_mine="""
        from quantfair.audit import Bound, Finding, LanguageBound, audit

        test_typo = audit(Finding(id="typo", experiments=("x",), claim="c",
                                  check=LanguageBound("L0+Lsat", bound=Bound(max=2.0))))
    """)
    result = run(pytester, "test_mine.py", "--quantfair-model", "tiny-gpt2")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["test_mine.py:4: in <module>", "*", "*", "<string>:*", "*",
                                 "E   ValueError: LanguageBound's strategy: unknown strategy "
                                 "term 'Lsat'*"], consecutive=True)


def test_two_findings_of_one_id_are_refused_naming_both(pytester):
    """Reports key findings by id: two were merged into one row under the first's claim, and
    the summary counted them as one."""
    pytester.makepyfile(test_mine="""
        from quantfair.audit import Better, Finding, audit

        test_first = audit(Finding(id="dup", experiments=("x",), claim="first",
                                   check=Better("L0", than="none")))
        test_second = audit(Finding(id="dup", experiments=("x",), claim="second",
                                    check=Better("L0", than="none")))
    """, test_class="""
        from quantfair.audit import Better, Finding, audit

        class TestMine:  # its instance once arrived as the audit's context: AttributeError
            test_third = audit(Finding(id="third", experiments=("x",), claim="c",
                                       check=Better("L0", than="none")))
    """)
    result = run(pytester, "test_mine.py", "test_class.py", "--quantfair-model", "tiny-gpt2")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error, as pytest's own
    # one line each under the file's header, pytest's frames left out
    result.stdout.fnmatch_lines(["*ERROR collecting test_mine.py*",
                                 "finding id 'dup' is defined twice, differently: "
                                 "test_mine.py::test_first and test_mine.py::test_second "
                                 "(reports key findings by id)",
                                 "*ERROR collecting test_class.py*",
                                 "audit() makes a module-level test: assign finding 'third' "
                                 "outside class TestMine"], consecutive=True)
    assert "pluggy/" not in result.stdout.str()  # no frame of its


def test_a_finding_collected_from_two_files_is_audited_once(pytester):
    """A finding imported into a second test file is one finding: its cases were audited
    twice and the summary counted each failure twice."""
    pytester.makepyfile(test_mine="""
        from quantfair.audit import Bound, Finding, LanguageBound, audit

        test_tight = audit(Finding(id="tight", experiments=("x",), claim="c",
                                   check=LanguageBound("none", "degradation",
                                                       bound=Bound(min=1e9))))
    """, test_theirs="from test_mine import test_tight\n")
    path = pytester.path / "r.json"
    args = ("--quantfair-model", "tiny-gpt2", "--quantfair-languages", "en,de,he",
            "--quantfair-units", "2", "--quantfair-report", str(path))
    result = run(pytester, "test_mine.py", "test_theirs.py", *args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["quantfair: finding 'tight' is collected twice "
                                 "(test_mine.py::test_tight and test_theirs.py::test_tight): "
                                 "its 2 audits run once"])
    result.assert_outcomes(failed=2, deselected=2)
    report = load(path)
    assert sorted(a["case"] for a in report["audits"]) == ["none-de", "none-he"]
    assert report["summary"]["counts"]["failed"] == 2
    alone = run(pytester, "test_mine.py", "test_theirs.py", "-k", "theirs", *args)
    alone.assert_outcomes(failed=2, deselected=2)  # -k chose the other copy


def test_a_finding_pytest_never_collects_is_warned_of(pytester):
    """Assigned to a name without the test_ prefix, or in a conftest.py, a finding never ran,
    and the run passed without a word; an alias of a collected finding is no such case."""
    finding = ('audit(Finding(id="{}", experiments=("x",), claim="c", check=LanguageBound('
               '"L0", bound=Bound(max=9.0))))')
    header = ("from unittest import mock\nfrom quantfair.audit import Bound, Finding, "
              "LanguageBound, audit\nanything = mock.MagicMock()  # has every attribute\n")
    pytester.makepyfile(test_mine=header + f"my_audit = {finding.format('never')}\n"
                        f"test_ok = {finding.format('ok')}\nalias = test_ok\n")
    pytester.makeconftest(header + f"test_in_conftest = {finding.format('conf')}\n")
    result = run(pytester, "test_mine.py", "--quantfair-model", "tiny-gpt2",
                 "--quantfair-languages", "en,de", "--quantfair-units", "2",
                 "--quantfair-no-report")
    result.stdout.fnmatch_lines([  # each at the line that assigns it
        "*test_mine.py:4: PytestCollectionWarning: finding 'never' is assigned to my_audit, "
        "which pytest does not collect (python_functions): it never runs; name it test_...",
        "*conftest.py:4: PytestCollectionWarning: finding 'conf' is assigned to "
        "test_in_conftest in a conftest.py, which pytest collects no tests from: it never "
        "runs; move it to a test file"])
    assert "'ok'" not in result.stdout.str() and result.stdout.str().count("never runs") == 2


def test_a_finding_naming_a_language_of_no_corpus_is_refused(pytester):
    """`languages=("hebrew", "ar")` once ran Arabic alone and passed: a language the run does
    not audit is left out, but one that no corpus has is a typo."""
    pytester.makepyfile(test_mine="""
        from quantfair.audit import Bound, Finding, LanguageBound, audit

        test_typo = audit(Finding(id="typo", experiments=("x",), claim="c", check=LanguageBound(
            "L0", bound=Bound(max=9.0), languages=("hebrew", "ar", "sw"))))
    """)
    result = run(pytester, "test_mine.py", "--quantfair-model", "tiny-gpt2")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting test_mine.py*",
                                 "finding 'typo' names unknown language(s) hebrew: neither in "
                                 "the corpus (en, de, *) nor in the shipped languages"],
                                consecutive=True)
    assert "pluggy/" not in result.stdout.str()  # no frame of its


def test_crashed_worker_makes_the_report_incomplete(pytester):
    pytester.makepyfile(test_crash="""
        import os
        import pytest

        @pytest.mark.quantfair
        def test_dies(quantfair_audit):
            os._exit(3)
    """)
    path = pytester.path / "crash.json"
    result = run(pytester, "test_crash.py", QUICK_FILES[1], "--model", "tiny-gpt2", "-n", "2",
                 "-k", "dies or robustness", "--report", str(path))
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR  # a crash is not a finding (exit 1)
    report = load(path)
    assert report["verdict"] == "incomplete"
    assert any("crashed" in reason for reason in report["incomplete"])
    assert any(a["outcome"] == "error" for a in report["audits"])


def test_a_projects_own_test_that_crashes_its_worker_is_no_audit(pytester):
    """It was recorded as an audit that could not run: the run incomplete, exit 3, though
    every audit was decided."""
    pytester.makepyfile(test_crash="import os\n\ndef test_dies():\n    os._exit(3)\n")
    path = pytester.path / "crash.json"
    result = run(pytester, "test_crash.py", QUICK_FILES[1], "--model", "tiny-gpt2", "-n", "2",
                 "-k", "dies or robustness", "--report", str(path))
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # pytest's, for its own test
    report = load(path)
    assert (report["verdict"], report["incomplete"]) == ("passed", [])
    assert [a["outcome"] for a in report["audits"]] == ["passed"]
    (crashed,) = report["selection"]["other_tests_failed"]
    assert crashed.endswith("::test_dies")
    assert report["settings"]["workers"] == 2  # not counting the worker that replaced it


def test_an_audit_decided_before_its_teardown_failed_keeps_its_outcome(pytester):
    """It became an error, "could not be measured", though its claim had been decided (the
    run is still incomplete: exit 3)."""
    pytester.makepyfile(broken_plugin="""
        import pytest

        @pytest.fixture(autouse=True)
        def broken_teardown():
            yield
            raise RuntimeError("teardown broke")
    """)
    path = pytester.path / "r.json"
    result = run(pytester, "-p", "broken_plugin", QUICK_FILES[1], "--model", "tiny-gpt2",
                 "-k", "robustness", "--report", str(path))
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    report = load(path)
    assert [a["outcome"] for a in report["audits"]] == ["passed"]
    assert report["verdict"] == "incomplete" and len(report["incomplete"]) == 1
    assert report["incomplete"][0].endswith(": its teardown failed once the audit was decided: "
                                            "RuntimeError: teardown broke")
    assert not any("could not be measured" in s for s in report["summary"]["sentences"])


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two-workers"])
def test_an_audit_with_no_case_among_the_languages_is_skipped_saying_why(pytester, workers):
    """language_families compares Semitic and CJK languages: with German alone it has no
    case, and pytest's empty parameter set carries none to report on."""
    path = pytester.path / "r.json"
    result = run(pytester, str(AUDITS / "test_languages.py"), "--model", "tiny-gpt2",
                 "--languages", "de", "--units", "2", "-k", "language_families", "-rs",
                 "--report", str(path), *workers)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*language_families: none of its cases is among the audited "
                                 "languages (en, de)*"])
    report = load(path)
    assert report["verdict"] == "passed" and report["incomplete"] == []
    assert [(a["finding"], a["outcome"]) for a in report["audits"]] == [
        ("language_families", "skipped")]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two-workers"])
def test_an_internal_error_is_an_error_not_a_pass(pytester, workers):
    """xdist ends a run whose worker had an INTERNALERROR with exit 0: a release gate would
    pass. A serial run exits 3 but pytest prints no terminal summary: the report's path and
    why it is incomplete must still be said."""
    pytester.makepyfile(buggy_plugin="""
        def pytest_runtest_logfinish(nodeid, location):
            raise RuntimeError("a plugin's bug")
    """)
    path = pytester.path / "r.json"
    result = run(pytester, "-p", "buggy_plugin", QUICK_FILES[1], "--model", "tiny-gpt2",
                 "-k", "robustness", "--report", str(path), *workers, subprocess=bool(workers))
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    report = load(path)
    assert report["verdict"] == "incomplete"
    assert "pytest internal error: RuntimeError: a plugin's bug" in report["incomplete"]
    result.stdout.fnmatch_lines([
        "*INCOMPLETE: pytest internal error: RuntimeError: a plugin's bug*",
        f"quantfair report: {path.with_suffix('.html')}*"])


def test_a_worker_dying_as_the_run_is_interrupted_is_cut_off_not_an_error(pytester):
    """`timeout -s INT` or Ctrl-C in a terminal signals the workers too: one may die before
    the controller stops the run. Its audit never ran; the report says the worker crashed."""
    pytester.makepyfile(test_crash="""
        import os
        import pytest

        @pytest.mark.quantfair
        def test_dies(quantfair_audit):
            os._exit(3)
    """, interrupt_plugin="""
        import pytest

        @pytest.hookimpl(trylast=True)  # after quantfair has the crash
        def pytest_runtest_logreport(report):
            if "crashed while running" in (report.longreprtext or ""):
                raise KeyboardInterrupt
    """)
    path = pytester.path / "crash.json"
    result = run(pytester, "test_crash.py", "--quantfair-model", "tiny-gpt2", "-n", "1",
                 "--quantfair-report", str(path), "-p", "interrupt_plugin", subprocess=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = load(path)
    assert report["verdict"] == "incomplete"
    assert any("crashed running test_crash.py::test_dies" in r for r in report["incomplete"])
    assert report["summary"]["counts"]["error"] == 0
    assert report["selection"]["not_run"] == 1


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["serial", "xdist"])
def test_a_ctrl_c_delivered_twice_interrupts_the_run_once(pytester, workers):
    """`timeout -s INT` signals pytest, then its process group: the same Ctrl-C came twice,
    the second inside pytest's handling of the first (a traceback, exit 130, no report)."""
    pytester.makepyfile(test_signal="""
        import os
        import subprocess
        import time

        import pytest

        @pytest.mark.quantfair
        def test_interrupted(quantfair_audit, request):
            worker = hasattr(request.config, "workerinput")  # not the environment: this run
            controller = os.getppid() if worker else os.getpid()  # may be inside a worker
            subprocess.Popen(["sh", "-c", f"kill -INT {controller}; kill -INT {controller}"])
            time.sleep(30)
    """)
    path = pytester.path / "r.json"
    result = run(pytester, "test_signal.py", "--quantfair-model", "tiny-gpt2",
                 "--quantfair-report", str(path), *workers, subprocess=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    report = load(path)
    assert "the run was interrupted" in report["incomplete"]
    assert report["summary"]["counts"]["error"] == 0


def test_strategy_option_audits_a_given_strategy(pytester):
    path = pytester.path / "r.json"
    result = run(pytester, str(AUDITS / "test_suggested.py"), "--model", "tiny-gpt2",
                 "--strategy", "L0+Llast", "--report", str(path), "-rs")
    audited = [a["outcome"] for a in load(path)["audits"] if a["outcome"] != "skipped"]
    assert len(audited) == 2 and set(audited) <= {"passed", "failed", "inconclusive"}
    result.stdout.fnmatch_lines(["--strategy L0+Llast is audited against no protection*",
                                 "*the budget check applies to --strategy suggested*"])
    assert load(path)["settings"]["strategy"] == "L0+Llast"


def test_a_strategy_that_protects_nothing_is_not_compared_with_none(pytester):
    """`--strategy none` (or a suggestion of budget 0%) against no protection differs by 0 on
    every unit: it was an inconclusive audit asking for more units."""
    result = run(pytester, str(AUDITS / "test_suggested.py"), "--model", "tiny-gpt2",
                 "--strategy", "none", "-k", "beats", "--no-report", "-rs")
    assert result.ret == pytest.ExitCode.OK
    assert result.parseoutcomes()["skipped"] == 2 and "passed" not in result.parseoutcomes()
    assert "is audited against" not in result.stdout.str()
    result.stdout.fnmatch_lines(["--strategy none was not compared: none protects what none "
                                 "protects: nothing to compare",
                                 "SKIPPED * none protects what none protects: nothing to "
                                 "compare",
                                 "SKIPPED * none protects what random:0%* protects: nothing "
                                 "to compare"])


def test_a_strategy_naming_a_layer_the_model_lacks_is_said_not_to_be_audited(pytester):
    """An audit that could not run is an error for pytest's summary and JUnit XML too (only
    setup and teardown have errors there), not a failed claim."""
    junit = pytester.path / "j.xml"
    result = run(pytester, str(AUDITS / "test_suggested.py"), "--model", "tiny-gpt2",
                 "--strategy", "L99", "--no-report", f"--junitxml={junit}")
    assert result.ret == 3
    assert result.parseoutcomes()["errors"] == 2 and "failed" not in result.parseoutcomes()
    assert 'errors="2" failures="0"' in junit.read_text()
    assert "is audited against" not in result.stdout.str()
    result.stdout.fnmatch_lines(["--strategy L99 could not be audited: strategy term 'L99': "
                                 "layer 99 out of range, the model has 4 layers*"])
    assert "UsageError" not in result.stdout.str()  # one line of quantfair's, said as it is


def test_a_strategy_none_of_whose_audits_was_selected_is_not_said_to_be_audited(pytester):
    result = run(pytester, QUICK_FILES[1], "--model", "tiny-gpt2", "-k", "robustness",
                 "--strategy", "L0", "--no-report")
    assert "is audited against" not in result.stdout.str()
    result.stdout.fnmatch_lines(["--strategy L0 was given, but no audit of it was selected "
                                 "(the audit suite's test_suggested.py audits it)"])
    # a project's own findings beside it, the option given in its long form: named so
    pytester.makepyfile(test_mine="""
        from quantfair.audit import Bound, Finding, LanguageBound, audit

        test_mine = audit(Finding(id="mine", experiments=("x",), claim="c",
                                  check=LanguageBound("none", bound=Bound(max=1e9))))
    """)
    mine = run(pytester, "test_mine.py", "--quantfair-model", "tiny-gpt2",
               "--quantfair-strategy", "L0", "--quantfair-no-report")
    mine.stdout.fnmatch_lines(["--quantfair-strategy L0 was given, but no audit of it was "
                               "selected (the audit suite's test_suggested.py audits it)"])


def test_suggested_strategy_is_audited_and_reported(pytester, capsys):
    from quantfair.cli import main

    assert main(["suggest", "tiny-llama", "--budget", "30%", "--languages", "en,he,zh",
                 "--calibration-units", "2"]) == 0
    assert ("audit it: --strategy suggested with this model, scheme, languages and corpus, and "
            "--units 8 as here") in capsys.readouterr().out  # the audit below refuses others
    path = pytester.path / "s.json"
    result = run(pytester, str(AUDITS / "test_suggested.py"), "--model", "tiny-llama",
                 "--strategy", "suggested", "--report", str(path))
    report = load(path)
    assert result.ret == exit_code_of(report)
    assert report["suggestion"]["budget"] == 0.30
    result.stdout.fnmatch_lines([f"--strategy suggested is {report['suggestion']['strategy']}, "
                                 "the latest `quantfair suggest` result for int4 (budget 30%, "
                                 "en,he,zh)"])
    result.stdout.fnmatch_lines(["warning: the suggestion was searched without these languages "
                                 "of this run, so their audits test how it carries over to "
                                 "them: de, ru, ar"])  # the default languages
    assert {a["finding"] for a in report["audits"] if a["outcome"] != "skipped"} == {
        "candidate_beats_none", "candidate_beats_random", "candidate_within_budget"}
    html = path.with_suffix(".html").read_text()
    assert "within a budget of 30.0% in en, he, zh, on calibration units" in html
    assert "so their audits test how it carries over to them: de, ru, ar.</p>" in html
    assert ("On the held-out audit units of the search's own run (8 per language, measured by "
            "<code>quantfair suggest</code>, not by this run's audits)") in html  # its --units
    audited = run(pytester, str(AUDITS / "test_suggested.py"), "--model", "tiny-llama",
                  "--strategy", "suggested", "--quantfair-units", "0", "--quantfair-no-report")
    audited.stdout.fnmatch_lines(["quantfair: the suggestion was searched on *: not a held-out "
                                  "test; give --quantfair-units 8 as in the search*"])
    searched = run(pytester, str(AUDITS / "test_suggested.py"), "--model", "tiny-llama",
                   "--strategy", "suggested", "--quantfair-languages", "en,zh",
                   "--quantfair-no-report")
    assert "--strategy suggested is" in searched.stdout.str()
    assert "searched without these languages" not in searched.stdout.str()


def test_suggested_without_a_search_stops_the_run_before_its_audits(pytester):
    """A usage error known as soon as the model has loaded, as the CLI refuses it (the run
    once measured every other audit first, then errored the suggestion's at its end)."""
    path = pytester.path / "r.json"
    result = run(pytester, QUICK_FILES[1], str(AUDITS / "test_suggested.py"), "--model",
                 "tiny-bloom", "--strategy", "suggested", "-k", "robustness or candidate",
                 "--report", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    report = load(path)
    assert report["verdict"] == "incomplete" and not report["measurements"]
    # the first audit's setup said it, then the run stopped: each audit was cut off, not one
    # finding that could not be measured
    assert report["audits"] == [] and report["summary"]["counts"]["error"] == 0
    assert "run `quantfair suggest` first" in report["incomplete"][0]
    assert report["incomplete"][1].startswith("4 of 4 selected audits never ran")
    out = result.stdout.str()  # said once, no traceback
    assert out.count("INCOMPLETE: stopped by a bad setting: no suggestion cached for tiny-bloom"
                     " with int4") == 1
    assert "\nE   " not in out, out
    assert "no audit of it" not in out  # they were selected; the run stopped before them


def test_what_the_searchs_audit_units_said_against_the_suggestion_is_said_by_the_run(
        pytester, monkeypatch, tmp_path):
    """`quantfair suggest` warned that its suggestion is significantly less fair than no
    protection; an audit run of that suggestion said nothing of it. Nor, under xdist, that
    its calibrated selectors choose entries on other text here (a worker's own line)."""
    from quantfair.config import RunConfig
    from quantfair.quantize import QuantScheme
    from quantfair.session import AuditSession
    from quantfair.suggest import Suggestion, save

    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(tmp_path / "results"))
    session = AuditSession(RunConfig(model="tiny-llama", scheme=QuantScheme(bits=4),
                                     languages=("en", "he"), units=4),
                           announce=lambda message: None)
    disparity = {"value": 2.0, "low": 1.5, "high": 2.5}
    rows = [{"label": label, "strategies": ["L0" if versus else "none"], "overhead": 0.1,
             "storable": True, "english_degradation": 0.5, "mean_disparity": disparity,
             "worst_disparity": disparity, **versus}
            for label, versus in (("suggested", {"mean_vs_none": {"value": 0.4, "low": 0.1,
                                                                  "high": 0.7}}),
                                  ("none", {}))]
    save(session, Suggestion("tiny-llama", "int4", 0.3, "L0+superweights:2", 0.25, 1.0,
                             languages=["en", "he"], comparison=rows,
                             audit_units=[f"article_{i}" for i in range(1, 9)],
                             selector_texts="the search's own text"))
    path = pytester.path / "r.json"
    result = run(pytester, str(AUDITS / "test_suggested.py"), "--model", "tiny-llama",
                 "--strategy", "suggested", "--languages", "en,he", "--units", "2",
                 "-k", "within_budget", "-n", "2", "--report", str(path))
    assert result.ret in (0, 1), result.stdout.str()
    less_fair = ("on the search's held-out audit units the suggestion is significantly less "
                 "fair than no protection (mean disparity)")
    other_text = "its superweights:2 chooses entries on the calibration text of the languages"
    result.stdout.fnmatch_lines([
        "--strategy suggested is L0+superweights:2, the latest `quantfair suggest` result*",
        f"warning: {less_fair}*", f"warning: the suggestion L0+superweights:2: {other_text}*"])
    html = path.with_suffix(".html").read_text()
    assert escape(less_fair) in html and other_text in html


def test_an_audit_that_raises_is_an_error_and_exits_3_not_1(pytester):
    """A strategy naming a layer the model lacks is found when the audit runs: it must not
    read as an honest finding (exit 1, verdict failed)."""
    path = pytester.path / "r.json"
    result = run(pytester, str(AUDITS / "test_suggested.py"), "--model", "tiny-gpt2",
                 "--strategy", "L99", "--report", str(path))
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    report = load(path)
    assert report["verdict"] == "error" and report["summary"]["counts"]["failed"] == 0
    errors = [a for a in report["audits"] if a["outcome"] == "error"]
    assert errors and all("layer 99 out of range" in a["message"] for a in errors)


def test_the_summary_says_a_language_under_two_codes_and_english_under_another(pytester):
    """As `quantfair corpus` and the HTML page do: `he` and `heb` are one language, counted
    once; `eng` is English, compared with nothing."""
    corpus = pytester.path / "texts.jsonl"
    text = "Everyone has the right to life, liberty and security of person."
    corpus.write_text("\n".join(json.dumps({"lang": lang, "unit": unit, "text": text})
                                for lang in ("en", "he", "heb", "eng") for unit in "ab"))
    result = run(pytester, QUICK_FILES[0], "--model", "tiny-gpt2", "--quantfair-corpus",
                 str(corpus), "-k", "none", "--no-report")
    result.stdout.fnmatch_lines([
        "note: one language under several codes, each audited: he, heb (ISO 639-3 heb)",
        "note: eng names English, the reference: measured, compared with nothing"])
