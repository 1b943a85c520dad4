"""The plugin is loaded into every pytest run of an environment: it must leave other projects'
suites alone, take one configuration, and end every bad input or fault in one clear line."""

import fnmatch
import gc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
from test_plugin import PYTEST
from test_plugin import run as run_here

from quantfair.cli import main

AUDITS = Path(__file__).resolve().parents[1] / "quantfair" / "audits"
BASELINE = str(AUDITS / "test_baseline.py")
pytest_plugins = ["pytester"]


def run(pytester, *args):
    """A pytest process of its own, as another project's run is (`run_here`: in this one, for
    what only reads the audits' options, numbers and reports)."""
    return pytester.runpytest_subprocess(*PYTEST, *args, timeout=600)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


FOREIGN_OPTIONS = """
def pytest_addoption(parser):
    for name in {names}:
        parser.addoption("--" + name, default="theirs-" + name)
"""


def make_foreign_project(pytester):
    pytester.makeini("""
        [pytest]
        markers =
            slow: their own slow marker
            quick: their own quick marker
    """)
    pytester.makeconftest(FOREIGN_OPTIONS.format(names=["model", "device", "quant"]))
    sub = pytester.mkpydir("sub")
    (sub / "conftest.py").write_text(FOREIGN_OPTIONS.format(names=["report", "corpus"]))
    (sub / "test_theirs.py").write_text(
        "import sys\n"
        "import pytest\n\n"
        "@pytest.mark.slow\n"
        "def test_slow(request):\n"
        "    assert request.config.getoption('--model') == 'theirs-model'\n"
        "    assert request.config.getoption('--report') == 'theirs-report'\n\n"
        "@pytest.mark.quick\n"
        "def test_quick():  # nothing the plugin needs only to audit is imported\n"
        "    for name in ('torch', 'transformers', 'filelock', 'ctypes'):\n"
        "        assert name not in sys.modules, name\n")
    return sub


def test_a_foreign_project_with_the_same_option_and_marker_names_still_passes(pytester):
    make_foreign_project(pytester)
    result = run(pytester, "--strict-markers")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=2)
    assert "quantfair" in result.stdout.str()  # the plugin was loaded all the same


def test_a_foreign_project_with_its_own_model_option_runs_the_installed_suite(pytester):
    """`--pyargs quantfair.audits` from a checkout's editable install loads its conftest.py
    and the short option forms: theirs must win, not an argparse conflict."""
    pytester.makeconftest(FOREIGN_OPTIONS.format(names=["model", "units"]))
    result = run(pytester, "--pyargs", "quantfair.audits", "-k", "robustness",
                 "--quantfair-model", "tiny-gpt2", "--quantfair-languages", "en,de",
                 "--quantfair-units", "2", "--quantfair-no-report")
    assert result.ret in (0, 1), result.stdout.str() + result.stderr.str()
    assert "conflicting option" not in result.stdout.str() + result.stderr.str()
    assert "Measured: tiny-gpt2" in result.stdout.str()


def test_a_projects_own_quantfair_marker_leaves_its_tests_running(pytester):
    """A project that tags its integration tests `quantfair`: without a model only audits
    (which use the audit context) are skipped, not every test carrying the marker."""
    pytester.makeini("[pytest]\nmarkers =\n    quantfair: tests of our quantfair integration\n")
    pytester.makepyfile(test_ours="""
        import pytest

        @pytest.mark.quantfair
        def test_integration():
            assert True
    """)
    result = run(pytester, "test_ours.py", "--strict-markers")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert result.parseoutcomes() == {"passed": 1}
    assert "audits skipped" not in result.stdout.str()


def test_a_projects_own_quantfair_finding_attribute_is_not_taken_for_a_finding(pytester):
    """Only what `audit()` made is a finding; a project's decorator may name an attribute
    alike (collection crashed reading its `.id`)."""
    pytester.makepyfile(test_ours="""
        import pytest

        @pytest.fixture
        def case():
            return "theirs"

        def tag(test):
            test.quantfair_finding = "ours"
            return test

        @tag
        def test_tagged(case):
            assert case == "theirs"
    """)
    result = run(pytester, "test_ours.py")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert result.parseoutcomes() == {"passed": 1}


def test_a_projects_own_plugin_objects_of_any_kind_leave_its_run_alone(pytester):
    """A plugin object answering attributes with a KeyError (an attribute dict) made every run
    an INTERNALERROR as the plugin looked for conftest files."""
    pytester.makeconftest("""
        class AttrDict(dict):
            __getattr__ = dict.__getitem__
            __hash__ = object.__hash__

        def pytest_configure(config):
            config.pluginmanager.register(AttrDict(), "state")
    """)
    pytester.makepyfile(test_ours="def test_ours():\n    pass\n")
    for args in ((), ("-p", "quantfair.short_options")):
        result = run(pytester, *args)
        assert result.ret == 0, result.stdout.str() + result.stderr.str()
        assert result.parseoutcomes() == {"passed": 1}


def test_xdists_dist_each_is_refused_for_an_audit_run(pytester):
    """Each worker ran every audit: one copy's error (or its worker's crash) was hidden behind
    another's pass, the run exiting 1 as if every audit had been decided."""
    result = run_here(pytester, BASELINE, "-k", "robustness", "--quantfair-model", "tiny-gpt2",
                      "-n", "2", "--dist", "each")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-xdist's --dist each runs every audit on every "
                                 "worker *: use --dist load or loadgroup"])


def test_a_finding_in_a_conftest_is_a_usage_error_where_warnings_are_errors(pytester):
    """Its warning, raised as an error by `-W error`, was an INTERNALERROR."""
    pytester.makeconftest("""
        from quantfair.audit import Bound, Finding, LanguageBound, audit

        test_conf = audit(Finding(id="conf", experiments=("x",), claim="c",
                                  check=LanguageBound("L0", bound=Bound(max=9.0))))
    """)
    pytester.makepyfile(test_ours="def test_ours():\n    pass\n")
    result = run(pytester, "-W", "error")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(["ERROR: *conftest.py: finding 'conf' is assigned to test_conf "
                                 "in a conftest.py, which pytest collects no tests from: it "
                                 "never runs; move it to a test file"])


def test_short_forms_loaded_with_p_leave_a_projects_own_options_alone(pytester):
    """`-p quantfair.short_options` loads before conftest files: a root conftest's own
    `--model` must keep its name, not meet an argparse conflict; untaken forms still work."""
    pytester.makeconftest(FOREIGN_OPTIONS.format(names=["model", "report"]))
    pytester.makepyfile(test_theirs="""
        def test_theirs(request):
            assert request.config.getoption("--model") == "theirs-model"
    """)
    result = run(pytester, "-p", "quantfair.short_options", "test_theirs.py")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result = run(pytester, "-p", "quantfair.short_options", "--pyargs", "quantfair.audits",
                 "-k", "robustness", "--quantfair-model", "tiny-gpt2", "--languages", "en,de",
                 "--units", "2", "--quantfair-no-report")
    assert result.ret in (0, 1), result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["Measured: tiny-gpt2, scheme int4, 2 languages (en, de), "
                                 "2 units per language*"])


def test_short_forms_follow_the_plugin_loaded_by_module_with_autoload_off(pytester, monkeypatch):
    """With entry points off, `-p quantfair.plugin` registers the plugin under its module's
    name: the short forms a conftest file asks for once went undeclared ("unrecognized
    arguments: --model")."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest('pytest_plugins = ["quantfair.short_options"]')
    result = run(pytester, "-p", "quantfair.plugin", "--pyargs", "quantfair.audits", "-k",
                 "robustness", "--model", "tiny-gpt2", "--languages", "en,de", "--units", "2",
                 "--no-report")
    assert result.ret in (0, 1), result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["Measured: tiny-gpt2, scheme int4, 2 languages (en, de), "
                                 "2 units per language*"])


def test_quantfair_registers_no_generic_marker(pytester):
    pytester.makepyfile(test_unregistered="""
        import pytest

        @pytest.mark.quick
        def test_marked():
            pass
    """)
    result = run(pytester, "--strict-markers")
    assert result.ret != 0
    assert "'quick' not found in `markers` configuration option" in result.stdout.str()


def _numbers(report: dict) -> list:
    return [(r["strategy"], r["language"], r["nll_fp"], r["nll_q"], r["disparity"])
            for r in report["measurements"]]


def test_short_and_namespaced_forms_give_the_same_numbers_and_a_small_junit_file(pytester):
    short, long = pytester.path / "short.json", pytester.path / "long.json"
    junit = pytester.path / "junit.xml"
    first = run_here(pytester, BASELINE, "--model", "tiny-gpt2", "-m", "quick", "--languages",
                     "de,he", "--report", str(short), f"--junitxml={junit}")
    second = run_here(pytester, BASELINE, "--quantfair-model", "tiny-gpt2", "-m", "quantfair_quick",
                      "--quantfair-languages", "de,he", "--quantfair-report", str(long))
    assert first.ret == second.ret == 1  # tiny-gpt2's Hebrew disparity is below 1
    a, b = load(short), load(long)
    assert _numbers(a) and _numbers(a) == _numbers(b)
    assert [x["outcome"] for x in a["audits"]] == [x["outcome"] for x in b["audits"]]
    assert junit.stat().st_size < 100_000
    assert "nll_fp" not in junit.read_text()


def test_cli_and_plugin_given_the_same_options_record_the_same_settings(pytester):
    options = {"quant": "int4-g128", "languages": "de,he", "units": "2"}
    measured = pytester.path / "measure.json"
    assert main(["measure", "tiny-gpt2", "--json", str(measured),
                 *[f"--{k}={v}" for k, v in options.items()]]) == 0
    path = pytester.path / "audit.json"
    run_here(pytester, BASELINE, "-k", "robustness", "--quantfair-model", "tiny-gpt2",
             "--quantfair-report", str(path), *[f"--quantfair-{k}={v}" for k, v in options.items()])
    plugin = {k: v for k, v in load(path)["settings"].items() if k not in ("strict", "workers")}
    assert load(measured)["settings"] == plugin
    assert plugin["scheme"] == "int4-g128" and plugin["languages"] == ["en", "de", "he"]


def _one_line_usage_error(result, message: str) -> None:
    assert result.ret == 4, result.stdout.str() + result.stderr.str()
    lines = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert "loading" not in result.stdout.str()  # nothing was loaded


def test_bad_strategy_syntax_fails_at_start_up_before_a_model_loads(pytester):
    result = run_here(pytester, BASELINE, "--quantfair-model", "tiny-gpt2",
                      "--quantfair-strategy", "L0+")
    _one_line_usage_error(result, "strategy 'L0+' has an empty term")


def test_an_empty_language_entry_is_a_usage_error(pytester):
    result = run_here(pytester, BASELINE, "--quantfair-model", "tiny-gpt2",
                      "--quantfair-languages", "de,he,")
    _one_line_usage_error(result, "--quantfair-languages has an empty entry")


def test_a_report_path_that_is_a_directory_is_a_usage_error(pytester):
    folder = pytester.mkdir("out")
    result = run_here(pytester, BASELINE, "--quantfair-model", "tiny-gpt2",
                      "--quantfair-report", str(folder))
    _one_line_usage_error(result, "is a directory")


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["serial", "one-worker"])
def test_a_report_that_cannot_be_written_keeps_the_summary_and_exits_3(pytester, workers):
    """The folder is writable when the run starts (checked then) and a file when it ends (an
    xdist controller reports before its workers' processes end, a serial run after its session
    fixtures: both after every other plugin's start of `pytest_sessionfinish`)."""
    blocker = pytester.mkdir("blocker")
    pytester.makepyfile(blocker_plugin="""
        import pathlib, shutil, pytest

        @pytest.hookimpl(wrapper=True)
        def pytest_sessionfinish(session):
            if pathlib.Path("blocker").is_dir():  # once, in the first process to end
                shutil.rmtree("blocker")
                pathlib.Path("blocker").write_text("a file, not a folder")
            return (yield)
    """)
    args = (BASELINE, "-k", "robustness", "--quantfair-model", "tiny-gpt2",
            "--quantfair-report", str(blocker / "r.json"), "-p", "blocker_plugin", *workers)
    # xdist workers load the test's plugin from their own path: a process of its own
    result = run(pytester, *args) if workers else run_here(pytester, *args)
    assert result.ret == 3
    result.stdout.fnmatch_lines(["*quantfair audit summary*",
                                 "quantfair: could not write the report */blocker/r.json or "
                                 "its .html: */blocker is not a directory"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_an_html_report_that_cannot_be_rendered_keeps_the_json_and_exits_3(pytester,
                                                                         monkeypatch):
    """A chart library raising (as adjustText's deprecated logging did under `-W error`) ended
    the run in a traceback and exit 1, which reads as a claim that did not hold."""
    import quantfair.html

    def broken(report):
        raise ValueError("a chart library's bug")

    monkeypatch.setattr(quantfair.html, "render_html", broken)
    path = pytester.path / "r.json"
    result = run_here(pytester, BASELINE, "-k", "robustness", "--quantfair-model", "tiny-gpt2",
                      "--quantfair-report", str(path))
    assert result.ret == 3
    result.stdout.fnmatch_lines(["quantfair: could not render the HTML report beside */r.json: "
                                 "ValueError: a chart library's bug"])
    assert load(path)["audits"] and not path.with_suffix(".html").exists()


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two-workers"])
def test_a_run_stopped_early_is_incomplete_and_the_selection_is_recorded(pytester, workers):
    path = pytester.path / "partial.json"
    result = run(pytester, BASELINE, "-x", "-k", "baseline_disparity",
                 "--quantfair-model", "tiny-gpt2", "--quantfair-report", str(path), *workers)
    assert result.ret == (2 if workers else 1)  # xdist ends it as an interruption
    report = load(path)
    # said as what it was, not as an interruption (serially it went unsaid)
    assert report["incomplete"][0] == ("the run stopped early (stopping after 1 failures: "
                                       "-x or --maxfail)")
    assert report["verdict"] == "incomplete"
    selection = report["selection"]
    assert selection["keyword"] == "baseline_disparity" and "-x" in selection["invocation"]
    assert selection["selected"] == 5 and selection["not_run"] >= 1
    assert selection["deselected"] == selection["collected"] - 5 > 0
    assert any("never ran" in reason for reason in report["incomplete"])
    assert "baseline_disparity" in path.with_suffix(".html").read_text()


def test_a_serial_run_stopped_by_a_projects_test_before_any_audit_is_incomplete(pytester):
    """Serially, a run that -x stopped before its first audit wrote no report ("no audit
    ran"), and one with a release maximum said its gate was "not checked" (exit 3): both are
    runs stopped early, exit 1 as pytest's own."""
    pytester.makepyfile(test_aaa="def test_fails():\n    assert False\n")
    for gate in ((), ("--quantfair-max-degradation", "10000%")):
        path = pytester.path / "stopped.json"
        result = run(pytester, "test_aaa.py", str(AUDITS / "test_release.py"), "-x",
                     "-p", "no:randomly", "--quantfair-model", "tiny-gpt2",
                     "--quantfair-report", str(path), *gate)
        assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
        report = load(path)
        assert report["verdict"] == "incomplete" and report["incomplete"][0] == (
            "the run stopped early (stopping after 1 failures: -x or --maxfail)")
        assert "not checked" not in result.stdout.str()
        path.unlink()


def test_an_xdist_run_that_maxfail_stops_after_its_last_audit_is_failed_not_incomplete(
        pytester):
    """xdist ends a run that --maxfail stopped as an interruption (exit 2) also where the
    limit was reached by the last audit: nothing was left unrun, so the verdict is failed, as
    the serial run's (three of these five audits fail on tiny-gpt2)."""
    path = pytester.path / "r.json"
    result = run(pytester, BASELINE, "-k", "baseline_disparity", "--maxfail", "3", "-n", "1",
                 "--quantfair-model", "tiny-gpt2", "--quantfair-report", str(path))
    result.assert_outcomes(passed=2, failed=3)
    report = load(path)
    assert (report["verdict"], report["incomplete"]) == ("failed", [])
    assert report["selection"]["not_run"] == 0


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["serial", "one-worker"])
def test_sigterm_finishes_the_session_with_an_incomplete_report(pytester, workers):
    """One worker runs both audits and is stopped in the second: it publishes nothing at its
    end, and the first audit's measurements must come with its test report."""
    started = pytester.path / "started"
    pytester.makepyfile(test_hangs=f"""
        import pathlib, time
        from dataclasses import dataclass

        from quantfair.audit import Case, Check, Finding, audit

        @dataclass(frozen=True)
        class Hang(Check):
            def cases(self, languages):
                return [Case("hang", None)]

            def run(self, ctx, case, bound):
                pathlib.Path({str(started)!r}).write_text("yes")
                time.sleep(600)

        test_hangs = audit(Finding(id="hangs", experiments=("000",), claim="hangs", check=Hang()))
    """)
    path = pytester.path / "term.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *PYTEST, BASELINE, "test_hangs.py",
         "-k", "robustness or hangs", "--quantfair-model", "tiny-gpt2", "-v",
         "--quantfair-report", str(path), *workers],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    chunks: list[str] = []  # read as written: pytest ends a result's line only at the next
    reader = threading.Thread(target=lambda: chunks.extend(iter(
        lambda: os.read(process.stdout.fileno(), 4096).decode(errors="replace"), "")))
    reader.start()

    def robustness_reported() -> bool:  # the controller has its test report
        return not workers or bool(re.search(r"(PASSED|FAILED) \S*robustness", "".join(chunks)))

    deadline = time.time() + 240
    while (not started.exists() or not robustness_reported()) and time.time() < deadline \
            and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    reader.join()
    out, err = "".join(chunks), process.stderr.read()
    assert process.returncode == 2, out + err
    report = load(path)
    assert report["verdict"] == "incomplete"
    assert any("SIGTERM" in reason for reason in report["incomplete"])
    assert "quantfair audit summary" in out
    # pytest's line for the stop, not a KeyboardInterrupt's location in quantfair's code
    assert re.search(r"^!+ \S*Terminated: terminated by SIGTERM !+$", out, re.MULTILINE), out
    assert "KeyboardInterrupt" not in out
    assert report["summary"]["counts"]["error"] == 0  # the audit cut off never ran: no error
    assert report["selection"]["selected"] == 2
    assert any(a["outcome"] in ("passed", "failed") for a in report["audits"])
    assert report["selection"]["not_run"] == 1
    # the finished audit's measurements are kept, though the worker that made them was
    # stopped before it could publish anything at its end
    assert {row["strategy"] for row in report["measurements"]} >= {"none"}
    assert report["model"]["name"] == "tiny-gpt2" and report["model"]["parameters"] > 0
    assert report["selection"]["deselected"] == report["selection"]["collected"] - 2 > 0
    if workers:
        assert report["settings"]["workers"] == int(workers[1]) and report["processes"]


@pytest.mark.parametrize(("hook", "workers"), [("pytest_sessionstart", ["-n", "1"]),
                                              ("pytest_sessionfinish", [])],
                         ids=["starting", "finishing"])
def test_sigterm_while_the_session_starts_or_finishes_still_writes_the_report(pytester, hook,
                                                                              workers):
    """A signal that arrives while the session starts (xdist bringing up its workers) is
    acted on once it has started, as pytest finishes only a started session; one that
    arrives once the tests have stopped (a CI runner's timeout while the report is written)
    no longer interrupts the writing. Either way the report is kept and the exit is 2."""
    pytester.makepyfile(sigterm_plugin=f"""
        import os, signal, pytest

        @pytest.hookimpl(tryfirst=True)
        def {hook}(session):
            os.kill(os.getpid(), signal.SIGTERM)
    """)
    path = pytester.path / "stopped.json"
    result = run(pytester, BASELINE, "-k", "robustness", "--quantfair-model", "tiny-gpt2",
                 "--quantfair-report", str(path), "-p", "sigterm_plugin", *workers)
    assert result.ret == 2
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    report = load(path)
    assert report["verdict"] == "incomplete"
    assert any("SIGTERM" in reason for reason in report["incomplete"])
    outcomes = [a["outcome"] for a in report["audits"] if a["outcome"] != "not run"]
    if hook == "pytest_sessionstart":
        assert outcomes == []
    else:
        assert outcomes in (["passed"], ["failed"]) and report["measurements"]


def test_a_report_another_run_wrote_meanwhile_is_replaced_with_a_warning(pytester):
    """Two runs given one --report: the second to finish replaced the first's without a
    word."""
    path = pytester.path / "shared.json"
    path.write_text("{}")  # an earlier run's: replaced without a word, as it always was
    os.utime(path, (0, 0))
    pytester.makepyfile(other_run=f"""
        def pytest_sessionstart(session):
            open({str(path)!r}, "w").write("{{}}")  # another run, finishing first
    """)
    args = (BASELINE, "-k", "robustness", "--quantfair-model", "tiny-gpt2",
            "--quantfair-report", str(path))
    assert "was written by another run" not in run_here(pytester, *args).stdout.str()
    result = run_here(pytester, *args, "-p", "other_run")
    result.stdout.fnmatch_lines([f"quantfair: warning: {path} was written by another run "
                                 "while this one ran: it is replaced by this run's report"])
    assert load(path)["audits"]  # this run's, whole


def test_sigterm_while_the_report_is_written_says_why_the_exit_is_2(pytester):
    """The report is whole (every audit had run), the exit 2: the run printed nothing to
    tell it from a run that exited 2 for no reason."""
    pytester.makepyfile(sigterm_plugin="""
        import os, signal
        import quantfair.report as report

        written = report.write_report

        def write_report(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return written(*args, **kwargs)

        report.write_report = write_report
    """)
    path = pytester.path / "whole.json"
    result = run(pytester, BASELINE, "-k", "robustness", "--quantfair-model", "tiny-gpt2",
                 "--quantfair-report", str(path), "-p", "sigterm_plugin")
    assert result.ret == 2
    assert load(path)["incomplete"] == []
    result.stdout.fnmatch_lines(["quantfair: terminated by SIGTERM once every audit had run: "
                                 "the report is whole, the exit code 2 (interrupted)"])


@pytest.mark.parametrize(("hook", "order", "workers"), [
    ("pytest_runtestloop", "tryfirst", []),
    ("pytest_xdist_node_collection_finished", "trylast", ["-n", "1"]),  # after quantfair's
], ids=["serial", "one-worker"])
def test_ctrl_c_before_any_audit_reports_still_writes_an_incomplete_report(pytester, hook,
                                                                         order, workers):
    """Ctrl-C in the first seconds (a worker has collected, and loads the model) stops the run
    before any audit has a result: the report still says what was selected and that it never
    ran. Against a baseline, the run stopped before it measured: not that they share
    nothing."""
    pytester.makepyfile(interrupt_plugin=f"""
        import pytest

        @pytest.hookimpl({order}=True)
        def {hook}(*args, **kwargs):
            raise KeyboardInterrupt
    """)
    args = [BASELINE, "-k", "robustness", "--quantfair-model", "tiny-gpt2"]
    assert run(pytester, *args, "--quantfair-report", "base.json").ret in (0, 1)
    path = pytester.path / "interrupted.json"
    result = run(pytester, *args, "--quantfair-report", str(path), "-p", "interrupt_plugin",
                 "--quantfair-baseline", "base.json", *workers)
    assert result.ret == 2
    report = load(path)
    assert report["verdict"] == "incomplete"
    assert report["incomplete"] == ["the run was interrupted", "1 of 1 selected audits never "
                                    "ran (the run stopped early)", "baseline: not compared: "
                                    "the run stopped before it measured anything"]
    assert report["comparison"] is None
    assert any(s.startswith("No release gate was checked (a baseline was given, but could "
                            "not be compared)") for s in report["summary"]["sentences"])
    assert report["selection"]["selected"] == report["selection"]["not_run"] == 1
    assert report["summary"]["counts"]["error"] == 0


def test_a_run_stopped_before_it_measured_compares_no_audits_alone(pytester):
    """Gates of no maximum are skipped without measuring; a stop before the first measurement
    left them compared with the baseline alone ("No regression ... (0 measurements and 3
    audits compared)"; under --quantfair-strict "passed -> skipped" regressions)."""
    pytester.makepyfile(interrupt_plugin="""
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_call(item):
            if "release_degradation" in item.nodeid:
                raise KeyboardInterrupt
    """)
    args = [str(AUDITS / "test_release.py"), "--quantfair-model", "tiny-gpt2", "-p",
            "no:randomly", "--quantfair-languages", "en,de", "--quantfair-units", "2"]
    gated = ("--quantfair-max-disparity", "1000", "--quantfair-max-degradation", "1000%")
    assert run(pytester, *args, *gated, "--quantfair-report", "base.json").ret in (0, 1)
    path = pytester.path / "stopped.json"
    result = run(pytester, *args, "--quantfair-max-degradation", "1000%", "-p",
                 "interrupt_plugin", "--quantfair-baseline", "base.json", "--quantfair-strict",
                 "--quantfair-report", str(path))
    assert result.ret == 2
    report = load(path)
    assert any(a["outcome"] == "skipped" for a in report["audits"])  # skipped before the stop
    assert not report["measurements"] and report["comparison"] is None
    assert "baseline: not compared: the run stopped before it measured anything" in \
        report["incomplete"]
    assert "REGRESSION" not in result.stdout.str()


def test_ctrl_c_in_a_run_that_selected_no_audit_writes_no_report(pytester):
    """A project's own tests, run with a model set (e.g. in its ini file): nothing to report."""
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n", interrupt_plugin="""
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtestloop(session):
            raise KeyboardInterrupt
    """)
    result = run(pytester, "test_plain.py", "--quantfair-model", "tiny-gpt2",
                 "-p", "interrupt_plugin")
    assert result.ret == 2
    assert not (pytester.path / "reports").exists()
    assert "quantfair audit summary" not in result.stdout.str()


def test_audits_with_the_plugin_disabled_are_skipped_with_the_reason(pytester):
    """A model set in the ini file's addopts: `-p no:quantfair` skips the audits."""
    pytester.makeini("[pytest]\naddopts = -p quantfair.short_options --model tiny-gpt2\n")
    result = run(pytester, BASELINE, "-p", "no:quantfair", "-k", "robustness", "-W", "error",
                 "-rs")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["SKIPPED * quantfair's plugin is disabled (-p no:quantfair)"])


def test_installed_audits_with_the_plugin_disabled_are_skipped_without_short_options(
        pytester, monkeypatch):
    """`--pyargs quantfair.audits` of an installed package: no conftest.py above it loads
    quantfair.short_options, and the audits are skipped, not errors for want of a fixture."""
    site = pytester.mkdir("site")  # the package as installed: outside the checkout
    (site / "quantfair").symlink_to(AUDITS.parent, target_is_directory=True)
    monkeypatch.setenv("PYTHONPATH", str(site))
    result = run(pytester, "--pyargs", "quantfair.audits", "-p", "no:quantfair", "-k",
                 "robustness or release", "-W", "error", "-rs")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(skipped=5)
    result.stdout.fnmatch_lines(["SKIPPED * quantfair's plugin is disabled (-p no:quantfair)"])
    gate = run(pytester, "--pyargs", "quantfair.audits", "-p", "no:quantfair", "-m",
               "quantfair_release")
    assert gate.ret == 4, gate.stdout.str()
    # not loaded at all, nor disabled: skipped audits would pass unchecked
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    absent = run(pytester, "--pyargs", "quantfair.audits", "-k", "robustness", "-W", "error")
    assert absent.ret == 4, absent.stdout.str()
    assert absent.stderr.lines[0] == (
        "ERROR: quantfair's plugin is not loaded (plugin autoloading is off: "
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD): add -p quantfair.plugin to run the audits")


def test_audit_options_typed_with_the_plugin_disabled_are_a_usage_error(pytester):
    """A release gate that also disables the plugin would pass having checked nothing."""
    result = run(pytester, BASELINE, "-p", "quantfair.short_options", "-p", "no:quantfair",
                 "--model", "tiny-gpt2", "--baseline=old.json", "-k", "robustness")
    assert result.ret == 4, result.stdout.str()
    assert result.stderr.lines[0] == (
        "ERROR: --model, --baseline given, but quantfair's plugin is disabled "
        "(-p no:quantfair): no audit would run; drop one or the other")


@pytest.mark.parametrize("key, meant", [("quantfair_max_degradaton", "quantfair_max_degradation"),
                                       ("quantfair_modle", "quantfair_model")])
def test_a_misspelled_quantfair_key_in_the_ini_file_is_a_usage_error(pytester, key, meant):
    """pytest only warns of an unknown ini key: a gate's misspelled maximum would pass on the
    other bounds, a misspelled model skip every audit. Other projects' keys stay warnings."""
    pytester.makeini(f"[pytest]\nquantfair_max_disparity = 8\n{key} = 0.01\nother_key = 1\n")
    result = run_here(pytester, "--pyargs", "quantfair.audits", "-m", "quantfair_release",
                      "--quantfair-model", "tiny-gpt2", "--quantfair-no-report")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([f"ERROR: unknown setting {key} in tox.ini (did you mean "
                                 f"{meant}?); quantfair's settings are the quantfair_* keys of "
                                 "`pytest --help`"])
    pytester.makeini("[pytest]\nother_key = 1\n")
    given = run_here(pytester, "--pyargs", "quantfair.audits", "-o", "quantfair_unit=3",
                     "--quantfair-model", "tiny-gpt2", "--quantfair-no-report")
    assert given.ret == pytest.ExitCode.USAGE_ERROR
    given.stderr.fnmatch_lines(["ERROR: unknown setting -o quantfair_unit (did you mean "
                                "quantfair_units?); *"])
    assert run_here(pytester, "--pyargs", "quantfair.audits", "-k",
                    "robustness").ret == pytest.ExitCode.OK
    pytester.makeini(f"[pytest]\nquantfair_model = tiny-gpt2\n{key} = 0.01\n")  # alone
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    assert run_here(pytester, "test_own.py").ret == pytest.ExitCode.OK
    audited = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "release")
    assert audited.ret == pytest.ExitCode.USAGE_ERROR
    audited.stdout.fnmatch_lines([f"*Interrupted: quantfair: unknown setting {key} in tox.ini*"])


def test_release_gates_selected_with_the_plugin_disabled_are_a_usage_error(pytester):
    """The gates would be skipped, and the run pass (exit 0) having checked nothing; `-m`
    taking other tests too still runs them."""
    pytester.makeini("[pytest]\naddopts = -p quantfair.short_options --model tiny-gpt2\n")
    release = str(Path(BASELINE).with_name("test_release.py"))
    result = run(pytester, release, "-p", "no:quantfair", "-m", "quantfair_release")
    assert result.ret == 4, result.stdout.str()
    result.stderr.fnmatch_lines(["ERROR: -m 'quantfair_release' selects the release gates, but "
                                 "quantfair's plugin is disabled (-p no:quantfair): no gate "
                                 "would be checked; drop one or the other"])
    result = run(pytester, release, "-p", "no:quantfair", "-m", "quantfair_release or not slow")
    assert result.ret == 0, result.stdout.str()


def test_short_forms_with_the_plugin_disabled_leave_a_projects_own_options_alone(pytester):
    pytester.makeconftest(FOREIGN_OPTIONS.format(names=["model"]))
    pytester.makepyfile(test_theirs="""
        def test_theirs(request):
            assert request.config.getoption("--model") == "mine"
    """)
    result = run(pytester, "-p", "no:quantfair", "-p", "quantfair.short_options",
                 "--model", "mine", "test_theirs.py")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)


def test_works_without_xdist_under_strict_markers_warnings_as_errors_and_xunit2(pytester):
    junit = pytester.path / "j.xml"
    result = run(pytester, BASELINE, "-k", "robustness", "-p", "no:xdist", "--strict-markers",
                 "-W", "error", "-o", "junit_family=xunit2", f"--junitxml={junit}",
                 "--quantfair-model", "tiny-gpt2", "--quantfair-no-report")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=1)
    assert junit.exists()


def test_audits_ship_with_the_package(pytester):
    result = run(pytester, "--pyargs", "quantfair.audits.test_baseline", "-k", "robustness",
                 "--quantfair-model", "tiny-gpt2", "--quantfair-no-report")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=1)


def test_a_value_pytest_took_for_a_path_to_test_is_refused_before_the_ini_file_is_lost(
        pytester, tmp_path_factory):
    # pytest picks its rootdir and ini file before it knows plugin options, from the paths
    # among the arguments: a baseline outside the project, given as a separate argument, made
    # a gate run with --pyargs drop the project's ini file (its bounds) and pass.
    ini = pytester.makeini("[pytest]\nquantfair_max_disparity = 0.5\n")
    baseline = tmp_path_factory.mktemp("elsewhere") / "base.json"
    baseline.write_text("{}")
    gate = ("--pyargs", "quantfair.audits", "-m", "quantfair_release",
            "--quantfair-model", "tiny-gpt2", "--quantfair-no-report")
    moved = run_here(pytester, *gate, "--quantfair-baseline", str(baseline))
    assert moved.ret == pytest.ExitCode.USAGE_ERROR
    moved.stderr.fnmatch_lines([
        f"ERROR: pytest took --quantfair-baseline {baseline} for a path to test and chose its "
        f"rootdir * and no ini file from it, not {pytester.path} and ini file "
        f"{ini}: write --quantfair-baseline={baseline}"])
    for written in ([f"--quantfair-baseline={baseline}"],  # one argument: no path to test
                    ["--quantfair-baseline", "base.json"]):  # inside the project: same rootdir
        (pytester.path / "base.json").write_text("{}")
        kept = run_here(pytester, *gate, *written)
        assert "for a path to test" not in kept.stderr.str()
        kept.stderr.fnmatch_lines(  # read, and named as the option, as a missing file is
            ["ERROR: --quantfair-baseline *base.json is not a quantfair report*"])
        assert kept.ret == pytest.ExitCode.USAGE_ERROR


def test_a_run_in_a_host_process_leaves_its_garbage_collector_as_it_found_it(pytester):
    """A run freezes the heap its model and libraries hold (the collector need not walk them
    again), then thaws it at its end: `pytest.main` called in a process that goes on must not
    have its later garbage kept from the collector."""
    assert gc.get_freeze_count() == 0
    result = run_here(pytester, BASELINE, "--model", "tiny-gpt2", "-k", "robustness",
                      "--languages", "de", "--units", "2", "--no-report")
    assert result.ret in (0, 1) and "Measured: tiny-gpt2" in result.stdout.str()
    assert gc.get_freeze_count() == 0


def test_reports_of_runs_finishing_together_never_share_a_name(tmp_path):
    from quantfair.report import RunRecord, build_report, unique_report_path, write_report

    report = build_report(RunRecord(settings={}, audits=[], rows=[], model={}, processes=[],
                                    selection={}, incomplete=[], duration_s=0.0))
    paths = {unique_report_path(tmp_path, "org/model") for _ in range(50)}
    assert len(paths) == 50 and all(p.name.startswith("org_model-") for p in paths)
    first, second = sorted(paths)[:2]
    write_report(report, first), write_report(report, second)
    assert first.exists() and second.exists() and (tmp_path / "latest.html").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over
    # a model given as a relative path names no hidden file (artifact uploaders skip those)
    names = {model: unique_report_path(tmp_path, model).name
             for model in ("./my-model", "../m", ".", "-x")}
    assert [name.partition("-2")[0] for name in names.values()] == ["my-model", "m", "model",
                                                                     "x"]


def test_release_gates_take_their_maxima_from_options_with_per_language_overrides(pytester):
    release = str(AUDITS / "test_release.py")
    path = pytester.path / "release.json"
    args = [release, "--quantfair-model", "tiny-gpt2", "--quantfair-languages", "de,he", "-rs"]
    unset = run_here(pytester, *args, "--quantfair-no-report")
    assert unset.ret == pytest.ExitCode.INTERNAL_ERROR  # the gates ran, none was checked
    unset.stdout.fnmatch_lines(["*no release bound for disparity (--quantfair-max-disparity*"])
    gated = run_here(pytester, *args, "--quantfair-max-disparity", "100,de=0.5",
                     "--quantfair-max-kld-disparity", "100", "--quantfair-report", str(path))
    outcomes = {(a["finding"], a["language"]): a["outcome"] for a in load(path)["audits"]}
    assert outcomes[("release_disparity", "he")] == "passed"
    assert outcomes[("release_disparity", "de")] == "failed"  # its override, not the default
    assert outcomes[("release_kld_disparity", "he")] == "passed"
    assert outcomes[("release_degradation", "en")] == "skipped"
    assert gated.ret == 1
    rows = [r for r in load(path)["measurements"] if r["strategy"] == "none"]
    assert rows and all(r["kld_disparity"] is not None for r in rows if r["language"] != "en")


def test_a_release_maximum_whose_gate_did_not_run_is_a_gate_not_checked(pytester):
    """Given on the command line, a maximum asks for a gate: a run that never ran its audit
    (a project's own tests, or -m quick) must not pass it. Set in the ini file alone it is a
    default, and the project's own run stays as it was."""
    pytester.makepyfile(test_own="def test_ok():\n    pass\n")
    path = pytester.path / "r.json"
    given = ("--quantfair-model", "tiny-gpt2", "--quantfair-report", str(path))
    own = run_here(pytester, "test_own.py", *given, "--quantfair-max-disparity", "2",
                   "--quantfair-max-degradation", "0.5")
    assert own.ret == pytest.ExitCode.INTERNAL_ERROR
    own.stdout.fnmatch_lines([
        "INCOMPLETE: --quantfair-max-disparity, --quantfair-max-degradation given, but no "
        "release audit of it ran (marker quantfair_release: the shipped audits/test_release.py, "
        "or a ReleaseBound of your own; beside others, -m \"quick or quantfair_release\"): the "
        "gate was "
        "not checked"])
    assert load(path)["verdict"] == "incomplete"
    release = str(AUDITS / "test_release.py")  # one gate ran, the other was deselected
    one = run_here(pytester, release, "-k", "not degradation", *given,
                   "--quantfair-max-disparity", "100", "--quantfair-max-degradation", "10000%")
    assert one.ret == pytest.ExitCode.INTERNAL_ERROR
    one.stdout.fnmatch_lines(["INCOMPLETE: --quantfair-max-degradation given, but no release "
                              "audit of it ran*"])
    # a release gate of one's own with bounds of its own does not read the maximum; a
    # ReleaseBound of one's own does
    head = "from quantfair.audit import Bound, Finding, LanguageBound, ReleaseBound, audit\n"
    pytester.makepyfile(
        test_own_bound=head + "test_g = audit(Finding(id='own_bound', experiments=('051',), "
        "claim='c', release=True, check=LanguageBound('none', 'disparity', "
        "{'*': Bound(max=1e9)})))\n",
        test_own_maximum=head + "test_g = audit(Finding(id='own_maximum', experiments=('051',), "
        "claim='c', release=True, check=ReleaseBound('none', 'disparity')))\n")
    for test, checked in (("test_own_bound.py", False), ("test_own_maximum.py", True)):
        ran = run_here(pytester, test, *given, "--quantfair-max-disparity", "1e9")
        assert (ran.ret != pytest.ExitCode.INTERNAL_ERROR) == checked, test
        assert ("INCOMPLETE: --quantfair-max-disparity given, but no release audit of it ran"
                in ran.stdout.str()) != checked, test
    pytester.makeini("[pytest]\nquantfair_model = tiny-gpt2\nquantfair_max_disparity = 2\n")
    assert run_here(pytester, "test_own.py").ret == pytest.ExitCode.OK


def test_a_release_gate_decided_for_some_languages_only_is_a_gate_not_checked(pytester):
    """`-k` (or `--deselect`) and `--lf` (which filters without deselecting) can leave some of a
    gate's languages out: the languages that ran passing is not the gate passing."""
    release = str(AUDITS / "test_release.py")
    path = pytester.path / "r.json"
    args = (release, "--quantfair-model", "tiny-gpt2", "--quantfair-languages", "de,he",
            "--quantfair-report", str(path))
    cache = ("-p", "no:hypothesispytest", "-o", f"cache_dir={pytester.path / 'cache'}")
    failing = pytester.runpytest_inprocess(*cache, *args, "--quantfair-max-degradation",
                                           "10000%,de=0")
    assert failing.ret == pytest.ExitCode.TESTS_FAILED  # de fails: en and he are recorded
    retried = pytester.runpytest_inprocess(*cache, *args, "--quantfair-max-degradation", "10000%",
                                           "--lf")
    assert retried.ret == pytest.ExitCode.INTERNAL_ERROR
    retried.stdout.fnmatch_lines(["INCOMPLETE: the release gate release_degradation ran for 1 "
                                  "of its 3 cases, not for none-en, none-he (deselected, or "
                                  "left out by --lf): it was not checked for every language "
                                  "it bounds"])
    assert load(path)["verdict"] == "incomplete"
    deselected = run_here(pytester, *args, "--quantfair-max-degradation", "10000%", "-k",
                          "not (release_degradation and he)")
    assert deselected.ret == pytest.ExitCode.INTERNAL_ERROR
    deselected.stdout.fnmatch_lines(["INCOMPLETE: the release gate release_degradation ran "
                                     "for 2 of its 3 cases, not for none-he*"])
    assert run_here(pytester, *args, "--quantfair-max-degradation", "10000%").ret == 0
    # the languages a maximum bounds all decided: a case without one is not left out
    nodeid = f"{Path(release).relative_to(AUDITS.parents[1])}::test_release_degradation"
    assert run_here(pytester, *args, "--quantfair-max-degradation", "he=10000%", "--deselect",
                    f"{nodeid}[none-de]").ret == pytest.ExitCode.OK
    # a serial run stopped by -x: a failed gate (exit 1), its other cases never run, not left out
    stopped = run_here(pytester, *args, "--quantfair-max-degradation", "0", "-x")
    assert stopped.ret == pytest.ExitCode.TESTS_FAILED
    assert "release gate release_degradation ran for" not in stopped.stdout.str()


def test_help_names_the_options_as_pytest_takes_them(pytester):
    """A project's own --corpus or --baseline is not the plugin's: its help said "all of a
    --corpus file" and "the --baseline tolerance"."""
    from quantfair.config import OPTIONS

    def named(*args: str) -> tuple[str, set[str]]:
        shown = run_here(pytester, "--help", *args).stdout.str()
        return shown, set(re.findall(r"(?<![\w-])--([a-z][\w-]*)", shown))

    shown, options = named()
    assert "--quantfair-corpus file" in shown and "--quantfair-baseline tolerance" in shown
    # ini keys typed as they are read: a number only where one is meant
    types = dict(re.findall(r"^  (quantfair_\w+) \(([^)]*)\)", shown, re.MULTILINE))
    assert types["quantfair_model"] == "string" and types["quantfair_strict"] == "bool"
    if pytest.version_tuple >= (9, 2):  # TOML's numbers in pytest's native table
        assert types["quantfair_units"] == types["quantfair_max_disparity"] == (
            "string | int | float")
    # none by its short form (not loaded here), but those pytest has itself (--strict)
    assert not options & set(OPTIONS) - named("-p", "no:quantfair")[1]


def test_a_file_of_findings_beside_the_projects_tests_imports_no_torch(pytester):
    """Collecting a file of findings (deselected here) imports no torch: every run of a project
    keeping one once paid seconds of imports for a type hint."""
    pytester.makeini("[pytest]\nquantfair_model = tiny-gpt2\n")
    pytester.makepyfile(test_own="import sys\n\ndef test_no_torch():\n"
                                 "    assert 'torch' not in sys.modules\n",
                        test_mine="""
        from quantfair.audit import Bound, Finding, LanguageBound, audit

        test_mine = audit(Finding(id="mine", experiments=("051",), claim="c",
                                  check=LanguageBound("L0", bound=Bound(max=2.0))))
    """)
    result = pytester.runpytest_subprocess(*PYTEST, "-k", "no_torch")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert result.parseoutcomes()["passed"] == 1 and result.parseoutcomes()["deselected"] > 0


def test_a_model_set_in_the_ini_file_leaves_the_projects_own_runs_as_they_were(
        pytester, monkeypatch):
    """A shared ini file's model is checked once an audit runs: the project's own tests,
    `--collect-only` and `--help` neither import torch nor need the model or a writable
    cache, and `--help` shows help whatever the quantfair_ settings say."""
    pytester.makeini("[pytest]\nquantfair_model = nosuchmodel\nquantfair_max_degradation = 0.5\n")
    pytester.makepyfile(test_own="import sys\n\ndef test_no_torch():\n"
                                 "    assert 'torch' not in sys.modules\n")
    monkeypatch.setenv("QUANTFAIR_CACHE_DIR", "/proc/quantfair-cache")
    assert pytester.runpytest_subprocess(*PYTEST, "test_own.py").ret == pytest.ExitCode.OK
    assert run_here(pytester, "--collect-only", "test_own.py").ret == pytest.ExitCode.OK
    shown = run_here(pytester, "--help", "-o", "quantfair_units=abc", "-o",
                     "quantfair_max_degradaton=1")
    assert shown.ret == pytest.ExitCode.OK
    shown.stdout.fnmatch_lines(["*quantfair_max_degradation*"])
    monkeypatch.delenv("QUANTFAIR_CACHE_DIR")
    audited = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "release")
    assert audited.ret == pytest.ExitCode.USAGE_ERROR  # once an audit runs: said, then stopped
    audited.stdout.fnmatch_lines(["*Interrupted: quantfair: model 'nosuchmodel' is not in the "
                                  "local Hugging Face cache*--quantfair-random-weights with *"])
    assert audited.parseoutcomes()["errors"] == 1
    # said in the error, as incomplete and as pytest's interruption (and in pytest's short
    # summary, cut to the terminal's width): not a fourth time
    said = [line for line in audited.stdout.lines if not line.startswith("ERROR ")]
    assert sum("is not in the local Hugging Face cache" in line for line in said) == 3


@pytest.mark.parametrize("setting, message", [
    ("quantfair_quantized = " + "n" * 300 + ".gguf", "File name too long: *"),  # an OSError
    ("quantfair_model = " + "n" * 300 + ".gguf", "File name too long: *"),  # at the audit
    ("quantfair_baseline = missing.json", "missing.json: no such report file"),
    ("quantfair_corpus = missing.jsonl", "corpus file not found"),
    ("quantfair_quantized = missing.gguf", "missing.gguf"),
    ("quantfair_threads = lots", "--quantfair-threads must be auto or a positive integer"),
    ("quantfair_units = 100", "the corpus has 31 units"),
    ("quantfair_device = garbage", "--quantfair-device garbage: unknown device; use auto, *"
                                   "(set by quantfair_device in tox.ini)"),  # named, with where
])
def test_any_bad_setting_of_the_ini_file_alone_waits_for_an_audit(pytester, setting, message):
    """The project's own tests and `--collect-only` run as without quantfair; the first audit
    says the setting once and stops the run (exit 4), serially and under xdist. The same
    setting beside a quantfair option on the command line is refused at once."""
    model = "" if setting.startswith("quantfair_model") else "quantfair_model = tiny-gpt2\n"
    pytester.makeini(f"[pytest]\n{model}{setting}\n")
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    assert run_here(pytester, "test_own.py").ret == pytest.ExitCode.OK
    assert run_here(pytester, "--collect-only", "test_own.py").ret == pytest.ExitCode.OK
    for workers in ((), ("-n", "2")):
        audited = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "release", *workers)
        assert audited.ret == pytest.ExitCode.USAGE_ERROR, audited.stdout.str()
        audited.stdout.fnmatch_lines([f"*Interrupted: quantfair: *{message}*"])
        assert "Traceback" not in audited.stdout.str() + audited.stderr.str()
    given = run_here(pytester, "test_own.py", "--quantfair-no-report")
    assert given.ret == pytest.ExitCode.USAGE_ERROR
    given.stderr.fnmatch_lines([f"ERROR: *{message}*"])


@pytest.mark.parametrize("model", ["", "quantfair_model = tiny-gpt2\n"
                                      "quantfair_baseline = missing.json\n"])
def test_audits_not_yet_configured_are_named_by_the_settings_languages(pytester, model):
    """Without a model, or with a bad setting waiting for the first audit, the test ids are
    those of the languages set (`--lf`, `-k he` select as the run would), not the defaults."""
    pytester.makeini(f"[pytest]\n{model}quantfair_languages = he\n")
    listed = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "baseline_disparity",
                      "--collect-only", "-q")
    assert "test_baseline_disparity[none-he]" in listed.stdout.str()
    assert "[none-de]" not in listed.stdout.str()
    pytester.makeini(f"[pytest]\n{model}quantfair_languages = class:7\n")  # unreadable
    listed = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "baseline_disparity",
                      "--collect-only", "-q")
    assert "test_baseline_disparity[none-de]" in listed.stdout.str()  # the defaults


def test_options_in_addopts_are_the_projects_settings_that_wait_for_an_audit(pytester):
    """`addopts = --quantfair-no-report` is the project's default, as an ini key is: its own
    tests run as without quantfair though a setting is bad; typed, the option is refused."""
    pytester.makeini("[pytest]\nquantfair_model = tiny-gpt2\nquantfair_baseline = missing.json\n"
                     "addopts = --quantfair-no-report\n")
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    assert run_here(pytester, "test_own.py").ret == pytest.ExitCode.OK
    typed = run_here(pytester, "test_own.py", "--quantfair-units=2")
    assert typed.ret == pytest.ExitCode.USAGE_ERROR
    typed.stderr.fnmatch_lines(["ERROR: *missing.json: no such report file*"])


@pytest.mark.parametrize("ini", ["[pytest]\nquantfair_model = nosuchmodel\n",
                                 "[pytest]\nquantfair_model = tiny-gpt2\n"
                                 "quantfair_baseline = missing.json\n"])
def test_a_bad_setting_that_stops_a_run_under_x_and_xdist_is_still_a_usage_error(pytester,
                                                                                  ini):
    """Under `-x -n 2` xdist keeps its own stop reason ("stopping after 1 failures"), not the
    worker's: the run is a usage error (4) all the same, not an interrupted one (2)."""
    pytester.makeini(ini)
    for stop in (("-x",), ("--maxfail", "1")):
        result = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "release", *stop,
                          "-n", "2")
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()


def test_ini_settings_beside_a_quantfair_option_are_checked_before_the_run(pytester):
    """The model (caches, device) of the ini file is checked at once once quantfair is asked
    for on the command line; a value the ini file cannot hold (a TOML number for the model)
    leaves the project's own runs alone when it stands alone."""
    pytester.makeini("[pytest]\nquantfair_model = nosuchmodel\n")
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    given = run_here(pytester, "test_own.py", "--quantfair-units", "2")
    assert given.ret == pytest.ExitCode.USAGE_ERROR
    given.stderr.fnmatch_lines(["ERROR: model 'nosuchmodel' is not in the local Hugging Face*"])
    (pytester.path / "tox.ini").unlink()
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\nquantfair_model = ["tiny-gpt2"]\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        listed = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "release")
    assert not [w for w in caught if "not a string" in str(w.message)]  # said once, below
    assert listed.ret == pytest.ExitCode.USAGE_ERROR  # one value, not a list joined by commas
    listed.stdout.fnmatch_lines(["*Interrupted: quantfair: quantfair_model in pyproject.toml: "
                                 "expects one value, got a list: ?'tiny-gpt2'? !"])
    pytester.makepyprojecttoml("[tool.pytest]\nquantfair_model = true\n")
    assert run_here(pytester, "test_own.py").ret == pytest.ExitCode.OK
    audited = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "release")
    assert audited.ret == pytest.ExitCode.USAGE_ERROR
    audited.stdout.fnmatch_lines(["*Interrupted: quantfair: quantfair_model in pyproject.toml*"
                                  "got bool: True*"])


@pytest.mark.skipif(pytest.version_tuple < (9, 2), reason="pytest 9.2 reads TOML unions")
def test_pytests_native_toml_table_takes_numbers_as_toml_writes_them(pytester):
    """`[tool.pytest]` is strict about types: `quantfair_units = 0` is an integer there."""
    pytester.makepyprojecttoml('[tool.pytest]\nquantfair_model = "tiny-gpt2"\n'
                               'quantfair_units = 0\nquantfair_max_disparity = 50.0\n'
                               'quantfair_languages = ["en", "he"]\n'
                               'quantfair_report = "r.json"\n')
    result = run_here(pytester, "--pyargs", "quantfair.audits", "-m", "quantfair_release")
    assert result.ret in (0, 1), result.stdout.str()
    settings = json.loads((pytester.path / "r.json").read_text())["settings"]
    assert settings["units"] is None and settings["release_maxima"] == "disparity 50"


@pytest.mark.parametrize("default", ["-o quantfair_units=1", "--quantfair-units=1"])
def test_a_typed_override_beats_a_default_of_addopts(pytester, default):
    """addopts is the project's default: a typed `-o` of another value overrides it (it was
    refused as given twice, its text found in the typed `quantfair_units=12`, or lost to
    addopts' option)."""
    pytester.makeini(f"[pytest]\naddopts = {default}\nquantfair_model = tiny-gpt2\n")
    path = pytester.path / "r.json"
    result = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "release_disparity",
                      "-o", "quantfair_units=12", "--quantfair-languages=en,de",
                      "--quantfair-max-disparity=1000", f"--quantfair-report={path}")
    assert result.ret in (0, 1), result.stdout.str() + result.stderr.str()
    assert load(path)["settings"]["units"] == 12


def test_a_toml_zero_is_said_with_where_it_was_set(pytester):
    """An integer 0 read from the TOML table lost the "(set by ...)" that 1.5 there had."""
    pytester.makepyprojecttoml('[tool.pytest]\nquantfair_model = "tiny-gpt2"\n'
                               'quantfair_threads = 0\n')
    result = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "release_disparity")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*Interrupted: quantfair: --quantfair-threads must be auto or "
                                 "a positive integer, got 0 (set by quantfair_threads in "
                                 "pyproject.toml)*"])


@pytest.mark.skipif(pytest.version_tuple < (9, 2), reason="pytest 9.2 reads TOML unions")
@pytest.mark.parametrize("value, message", [
    ('["", "he"]', "quantfair_languages in pyproject.toml: an empty entry in [[]'', 'he']"),
    ('["he", "", "ar"]', "quantfair_languages in pyproject.toml: an empty entry in [[]'he', '', "
                         "'ar']"),
    ('"de,he"', "quantfair_languages in pyproject.toml: *'de,he'; write a TOML array, such as "
                '[[]"de", "he"]'),
])
def test_languages_in_a_toml_table_are_an_array_without_empty_entries(pytester, value,
                                                                       message):
    """As on the command line, where `--languages ,he` is refused: no empty entry is dropped
    unsaid; a string in pytest's native table, which wants an array, is named once."""
    pytester.makepyprojecttoml('[tool.pytest]\nquantfair_model = "tiny-gpt2"\n'
                               f"quantfair_languages = {value}\n")
    result = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "robustness",
                      "--quantfair-no-report")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert len(lines) == 1 and fnmatch.fnmatchcase(lines[0], f"ERROR: {message}"), lines
    assert str(pytester.path) not in lines[0]


def test_paths_in_the_ini_file_are_relative_to_its_folder_and_a_bad_one_leaves_nothing(
        pytester, monkeypatch):
    """As pytest's own path settings: a gate run from a subfolder reads the project's
    baseline and writes its report where the ini file says; a usage error makes no folder."""
    pytester.makeini("[pytest]\nquantfair_model = tiny-gpt2\nquantfair_baseline = base.json\n"
                     "quantfair_report = out/r.json\nquantfair_languages = en,he\n")
    sub = pytester.mkdir("sub")
    monkeypatch.chdir(sub)
    audits = ("--pyargs", "quantfair.audits", "-k", "robustness")
    missing = run_here(pytester, *audits)
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stdout.fnmatch_lines([f"quantfair: *{pytester.path / 'base.json'}*"])
    assert not (pytester.path / "out").exists() and not (sub / "out").exists()
    first = run_here(pytester, *audits, "-o", "quantfair_baseline=",
                     "--quantfair-report", str(pytester.path / "base.json"))
    assert first.ret in (0, 1)
    gated = run_here(pytester, *audits)
    assert gated.ret in (0, 1)
    gated.stdout.fnmatch_lines(["0 regressions against the baseline (*the tolerance)"])
    assert (pytester.path / "out" / "r.json").exists() and not (sub / "out").exists()


def test_a_model_written_as_a_path_in_the_ini_file_is_named_from_its_folder(pytester,
                                                                         monkeypatch):
    """`quantfair_model = ./my-model` is a path (no model or Hugging Face id is written so):
    missing, it is named where it was looked for, not as typed and read from elsewhere."""
    pytester.makeini("[pytest]\nquantfair_model = ./missing-model\n")
    monkeypatch.chdir(pytester.mkdir("sub"))
    missing = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "robustness")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stdout.fnmatch_lines([f"*model path not found: {pytester.path / 'missing-model'}*"])


def test_a_path_setting_starting_with_a_tilde_is_in_the_home_folder(pytester, monkeypatch):
    """No shell expands `~` in an ini file or in `--option=~/...`: quantfair does."""
    home = pytester.mkdir("home")
    monkeypatch.setenv("HOME", str(home))
    pytester.makeini("[pytest]\nquantfair_model = tiny-gpt2\nquantfair_report = ~/r.json\n"
                     "quantfair_languages = en,he\nquantfair_units = 2\n")
    audits = ("--pyargs", "quantfair.audits", "-k", "robustness")
    assert run_here(pytester, *audits).ret in (0, 1)
    assert (home / "r.json").is_file() and not (pytester.path / "~").exists()
    missing = run_here(pytester, *audits, "--quantfair-baseline=~/base.json")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines([f"*--quantfair-baseline {home / 'base.json'}: no such report "
                                  "file*"])
    # a user without a home folder: os.path leaves `~name` as it is (a folder `~name` here),
    # pathlib raised RuntimeError (a traceback)
    nobody = "~quantfair-no-such-user"
    for option in ("--quantfair-report", "--quantfair-model"):
        refused = run_here(pytester, *audits, f"{option}={nobody}/x")
        assert refused.ret == pytest.ExitCode.USAGE_ERROR
        named = "model path" if option.endswith("model") else option
        refused.stderr.fnmatch_lines([f"ERROR: {named} {nobody}/x: {nobody} names no user's "
                                      "home folder"])
    assert not (pytester.path / nobody).exists()
    assert main(["measure", f"{nobody}/m"]) == 2


def test_an_option_given_twice_with_different_values_is_a_usage_error(pytester):
    """`--model a --quantfair-model b` audited b and passed; an ini file's addopts is a
    default the command line overrides, and a project's own `--model` is its own."""
    twice = run_here(pytester, "-p", "quantfair.short_options", BASELINE, "-k", "robustness",
                     "--model", "tiny-gpt2", "--quantfair-model", "tiny-llama", "--no-report")
    assert twice.ret == pytest.ExitCode.USAGE_ERROR
    twice.stderr.fnmatch_lines(["ERROR: --model tiny-gpt2, --quantfair-model tiny-llama: the "
                                "option is given more than once, with different values; "
                                "give it once"])
    same = run_here(pytester, BASELINE, "-k", "robustness", "--quantfair-units=2",
                    "--quantfair-units", "2", "--quantfair-model", "tiny-gpt2",
                    "--quantfair-languages", "en,he", "--quantfair-no-report")
    assert same.ret in (0, 1)
    pytester.makeini("[pytest]\naddopts = --quantfair-units 3\n")  # read with --pyargs
    override = run_here(pytester, "--pyargs", "quantfair.audits", "-k", "robustness",
                        "--quantfair-units", "2",
                        "--quantfair-model", "tiny-gpt2", "--quantfair-languages", "en,he",
                        "--quantfair-no-report")
    assert override.ret in (0, 1) and "2 units per language" in override.stdout.str()
    pytester.makeini("[pytest]\n")
    pytester.makeconftest("def pytest_addoption(parser):\n"
                          "    parser.addoption('--model', action='append')\n")
    pytester.makepyfile(test_own="def test_ok(request):\n"
                        "    assert request.config.getoption('model') == ['a', 'b']\n")
    own = run_here(pytester, "test_own.py", "--model", "a", "--model", "b")
    assert own.ret == pytest.ExitCode.OK


def test_report_settings_in_addopts_are_defaults_the_command_line_overrides(pytester):
    audits = ("--pyargs", "quantfair.audits", "-k", "robustness", "--quantfair-model",
              "tiny-gpt2", "--quantfair-languages", "en,he")  # the rootdir and ini file here
    pytester.makeini("[pytest]\naddopts = --quantfair-no-report --quantfair-tolerance 0.2\n")
    path = pytester.path / "r.json"
    written = run_here(pytester, *audits, "--quantfair-report", str(path))
    assert written.ret in (0, 1) and path.exists()  # the tolerance waits for a baseline
    pytester.makeini(f"[pytest]\naddopts = --quantfair-report {path}\n")
    path.unlink()
    quiet = run_here(pytester, *audits, "--quantfair-no-report")
    assert quiet.ret in (0, 1) and not path.exists()
    both = run_here(pytester, *audits, "--quantfair-no-report", "--quantfair-report", "x.json")
    assert both.ret == pytest.ExitCode.USAGE_ERROR
    both.stderr.fnmatch_lines(["ERROR: give --quantfair-report x.json or --quantfair-no-report, "
                               "not both"])
    pytester.makeini("[pytest]\nquantfair_no_report = true\n")
    path.unlink(missing_ok=True)
    asked = run_here(pytester, *audits, "--quantfair-report", str(path))
    assert asked.ret in (0, 1) and path.exists()  # typed, it wins over the ini file's setting
    pytester.makeini("[pytest]\n")
    typed = run_here(pytester, *audits, "--quantfair-tolerance", "0.2")
    assert typed.ret == pytest.ExitCode.USAGE_ERROR
    typed.stderr.fnmatch_lines(["ERROR: --quantfair-tolerance 0.2 applies to a "
                                "--quantfair-baseline comparison; none given"])


def test_release_gates_run_beside_a_strategy_say_they_bound_no_protection(pytester):
    result = run_here(pytester, str(AUDITS / "test_release.py"), "-k", "release_disparity",
                      "--quantfair-model", "tiny-gpt2", "--quantfair-languages", "en,he",
                      "--quantfair-strategy", "L0", "--quantfair-max-disparity", "100",
                      "--quantfair-no-report")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["note: the release gates bound the int4 model without "
                                 "protection, not --strategy L0: to gate a protected release, "
                                 "write it (quantfair export --strategy ...) and gate that file "
                                 "(--quantized)"])


def test_release_gates_selected_by_marker_that_decide_nothing_are_a_gate_not_checked(pytester):
    """`-m quantfair_release` asks for a gate: with no maximum given every release audit skips,
    and without a model every audit does; neither is a pass."""
    gate = ("--pyargs", "quantfair.audits", "-m", "quantfair_release and not slow")
    path = pytester.path / "r.json"
    unset = run_here(pytester, *gate, "--quantfair-model", "tiny-gpt2", "--quantfair-report",
                     str(path))
    assert unset.ret == pytest.ExitCode.INTERNAL_ERROR
    unset.stdout.fnmatch_lines(["INCOMPLETE: -m quantfair_release selected the release gates, "
                                "but none was checked: no release bound for *"])
    assert load(path)["verdict"] == "incomplete"
    listed = run_here(pytester, *gate, "--quantfair-model", "tiny-gpt2", "--collect-only",
                      "--quantfair-baseline", str(path))
    assert listed.ret == pytest.ExitCode.OK and "INCOMPLETE" not in listed.stdout.str()
    assert not (pytester.path / "reports").exists()
    both = run_here(pytester, "--pyargs", "quantfair.audits", "-m",
                    "quantfair and quantfair_release", "--quantfair-model", "tiny-gpt2",
                    "--quantfair-no-report")  # release audits carry both markers
    assert both.ret == pytest.ExitCode.INTERNAL_ERROR
    given = run_here(pytester, *gate, "--quantfair-model", "tiny-gpt2", "--quantfair-no-report",
                     "--quantfair-max-disparity", "100")
    assert given.ret == pytest.ExitCode.OK and "INCOMPLETE" not in given.stdout.str()
    pytester.makeini("[pytest]\nquantfair_max_disparity = 2\n")  # the ini file has no model
    modelless = run_here(pytester, *gate)
    assert modelless.ret == pytest.ExitCode.USAGE_ERROR
    modelless.stderr.fnmatch_lines(["ERROR: -m quantfair_release (the release gates) given but "
                                    "no model: give --quantfair-model, or quantfair_model in "
                                    "the ini file*"])
    assert run_here(pytester, "--pyargs", "quantfair.audits", "-m",
                    "not quantfair_release", "-k", "robustness").ret == pytest.ExitCode.OK
    # the gates selected by file or -k rather than by marker ask for a gate too
    pytester.makeini("[pytest]\n")  # no maximum
    for selection in (["--pyargs", "quantfair.audits.test_release"],
                      ["--pyargs", "quantfair.audits", "-k", "release"]):
        unmarked = run_here(pytester, *selection, "--quantfair-model", "tiny-gpt2",
                            "--quantfair-no-report")
        assert unmarked.ret == pytest.ExitCode.INTERNAL_ERROR, selection
        unmarked.stdout.fnmatch_lines(["INCOMPLETE: the selection (only release audits) "
                                       "selected the release gates, but none was checked: no "
                                       "release bound for *"])
    # a project's own slow tests beside the gates, without a model: its run, not a gate's
    pytester.makeini("[pytest]\nmarkers = slow: slow\n")
    pytester.makepyfile(test_own="import pytest\n@pytest.mark.slow\ndef test_ok():\n    pass\n")
    for expression, code in (("quantfair_release or slow", pytest.ExitCode.OK),
                             ("quantfair_release or not slow",  # selects none of its tests
                              pytest.ExitCode.NO_TESTS_COLLECTED)):
        assert run_here(pytester, "test_own.py", "-m", expression).ret == code
    listed = run_here(pytester, "--pyargs", "quantfair.audits", "-m", "quantfair_release",
                      "--collect-only")  # lists the gates, runs none: no model needed
    assert listed.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("bound, message", [
    ("2.0,he=lots", "--quantfair-max-disparity must be a number, got 'lots' (the maximum of "
     "he)"),
    ("2.0,he=-1", "--quantfair-max-disparity must be a finite non-negative number, got -1 (the "
     "maximum of he)"),
    ("2.0,HE=3", "HE is not among the audited languages (en, de, ru, he, ar, zh); codes are "
     "case-sensitive: he?"),
    ("2 he=3", "2 he is not among the audited languages (en, de, ru, he, ar, zh); separate "
     "maxima with commas, e.g. 2.0,he=3.0"),
    ("2.0,script:Hebr=3", "--quantfair-max-disparity 2.0,script:Hebr=3: script:Hebr is a "
     "selector; a maximum is given per language code (e.g. he=3), selectors are for "
     "--quantfair-languages"),
    ("inf", "--quantfair-max-disparity must be a finite non-negative number, got inf"),
    ("2.0,xx=3", "--quantfair-max-disparity 2.0,xx=3: xx is not among the audited languages"),
    ("2,he=3,he=4", "--quantfair-max-disparity 2,he=3,he=4: he is given twice"),
    ("2.0,he=3.0,", "--quantfair-max-disparity 2.0,he=3.0,: an empty entry"),
    ("2.0,3.0", "--quantfair-max-disparity 2.0,3.0: two maxima for every language"),
    ("2.0,he=", "--quantfair-max-disparity 2.0,he=: 'he=' names no maximum; give LANG=VALUE"),
    ("=3", "--quantfair-max-disparity =3: '=3' names no language; give LANG=VALUE, or VALUE"),
    ("2.0,he:3", "--quantfair-max-disparity must be a number, got 'he:3'"),
    ("1_0", "--quantfair-max-disparity must be a number, got '1_0'"),  # float(): 10
    ("2,he=\u0663", "--quantfair-max-disparity must be a number, got '\u0663'"),  # float(): 3
    ("", "--quantfair-max-disparity is empty: give a maximum"),
    ("2.0,en=1.5", "--quantfair-max-disparity 2.0,en=1.5: disparities are relative to en"),
])
def test_a_bad_release_bound_is_a_usage_error(pytester, bound, message):
    result = run_here(pytester, str(AUDITS / "test_release.py"), "--quantfair-model", "tiny-gpt2",
                      "--quantfair-max-disparity", bound)
    _one_line_usage_error(result, message)


def test_a_bad_maximum_of_a_quantity_named_in_two_words_names_its_option(pytester):
    result = run_here(pytester, str(AUDITS / "test_release.py"), "--quantfair-model", "tiny-gpt2",
                      "--quantfair-max-kld-disparity", "1.5,he=lots")
    _one_line_usage_error(result, "--quantfair-max-kld-disparity must be a number, got 'lots' "
                                  "(the maximum of he)")  # not --max-kld_disparity


def test_a_cache_lost_before_the_session_ends_leaves_a_report_that_says_so(pytester,
                                                                           monkeypatch):
    """The model facts published at the end are computed into the results cache: if it
    cannot be written then, the report says what was not published (no traceback)."""
    results = pytester.path / "results"
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(results))
    pytester.makepyfile(cache_breaker=f"""
        import pathlib, shutil, pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish(session):
            shutil.rmtree({str(results)!r})
            pathlib.Path({str(results)!r}).write_text("a file, not a folder")
    """)
    path = pytester.path / "r.json"
    result = run_here(pytester, BASELINE, "-k", "robustness", "--quantfair-model", "tiny-gpt2",
                      "--quantfair-report", str(path), "-p", "cache_breaker")
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    report = load(path)
    assert report["verdict"] == "incomplete"
    assert any(reason.startswith("measurements not published: cannot write the quantfair "
                                 "cache") for reason in report["incomplete"])


@pytest.mark.parametrize("config, text", [
    ("pyproject.toml", """
        [tool.pytest.ini_options]
        quantfair_model = "tiny-gpt2"
        quantfair_languages = ["de", "he"]
    """),
    ("pytest.ini", """
        [pytest]
        quantfair_model = tiny-gpt2
        quantfair_languages = de, he
    """),
    ("pytest.ini", """
        [pytest]
        quantfair_model = tiny-gpt2
        quantfair_languages = de,
            he
    """),
])
def test_languages_in_a_config_file_as_a_toml_array_or_a_comma_list(pytester, config, text):
    (pytester.path / config).write_text(textwrap.dedent(text))
    path = pytester.path / "r.JSON"  # a report path ending in .json, in any case, is kept
    result = run_here(pytester, BASELINE, "-c", config, "-k", "robustness", "-W", "error",
                      "-W", "ignore::pytest.PytestAssertRewriteWarning",  # run in this process
                      "--quantfair-report", str(path))
    assert result.ret in (0, 1), result.stdout.str() + result.stderr.str()
    assert load(path)["settings"]["languages"] == ["en", "de", "he"]
    assert sorted(p.name for p in pytester.path.glob("r.*")) == ["r.JSON", "r.html"]


@pytest.mark.parametrize("setting, message", [
    ("quantfair_units = abc",
     "--quantfair-units must be an integer, got 'abc' (set by quantfair_units in pytest.ini)"),
    ("quantfair_strict = maybe", "quantfair_strict in pytest.ini: invalid truth value 'maybe'"),
    ("quantfair_quant = int9", "--quantfair-quant: quantization scheme 'int9': bits must be "
                               "between 2 and 8, got 9 (set by quantfair_quant in pytest.ini)"),
    ("quantfair_languages = en,xx", "--quantfair-languages: unknown language(s) xx; this corpus "
                                    "has * (set by quantfair_languages in pytest.ini)"),
    *((f"quantfair_languages = {value}", "--quantfair-languages * an empty entry* (set by "
                                         "quantfair_languages in pytest.ini)")
      for value in ("he,", ",", "he,\n    ,zh")),  # lines joined by a comma: not the last
])
def test_a_bad_value_in_the_ini_file_is_one_line_naming_its_key(pytester, setting, message):
    """Said by the first audit, which stops the run; at once where a quantfair option is
    given on the command line."""
    (pytester.path / "pytest.ini").write_text(f"[pytest]\nquantfair_model = tiny-gpt2\n{setting}\n")
    result = run_here(pytester, BASELINE, "-c", "pytest.ini")
    assert result.ret == 4
    result.stdout.fnmatch_lines([f"! Interrupted: quantfair: {message} !"])
    given = run_here(pytester, BASELINE, "-c", "pytest.ini", "--quantfair-no-report")
    assert given.ret == 4
    lines = [line for line in given.stderr.str().splitlines() if line.strip()]
    assert len(lines) == 1 and fnmatch.fnmatchcase(lines[0], f"ERROR: {message}"), lines


def test_a_bad_override_of_an_ini_value_is_named_as_the_override(pytester):
    result = run_here(pytester, BASELINE, "-o", "quantfair_model=tiny-gpt2", "-o",
                      "quantfair_units=abc")
    assert result.ret == 4
    lines = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert lines == ["ERROR: --quantfair-units must be an integer, got 'abc' (set by -o "
                     "quantfair_units)"], result.stderr.str()


def test_a_report_path_that_would_replace_its_baseline_or_is_no_file_is_refused(pytester):
    baseline = pytester.path / "old.json"
    baseline.write_text("{}")
    blocker = pytester.path / "a-file"
    blocker.write_text("")
    (pytester.path / "h.html").mkdir()
    for report, message, old in (
            (pytester.path / "h.json", "the HTML report beside it, ", baseline),
            (baseline, "would overwrite the --quantfair-baseline", baseline),
            (Path(os.devnull), "is not a regular file", baseline),
            (blocker / "r.json", f"cannot write in {blocker} ({blocker} is not a directory)",
             baseline),
            (pytester.path / "r.json", "--quantfair-baseline . is a directory", Path(".")),
            (f"{pytester.path / 'new'}/", "is a directory; give the path of a .json", baseline)):
        result = run_here(pytester, BASELINE, "--quantfair-model", "tiny-gpt2",
                          "--quantfair-report", str(report), "--quantfair-baseline", str(old))
        assert result.ret == 4, result.stdout.str()
        assert message in result.stderr.str()
    assert baseline.read_text() == "{}"


def test_a_report_path_onto_a_file_the_run_reads_is_refused(pytester):
    """The corpus and a model saved as a folder are inputs: a report written there would
    destroy them (it once replaced the corpus and a model's config)."""
    model = pytester.path / "model"
    model.mkdir()
    (model / "config.json").write_text("config")
    corpus = pytester.path / "texts.json"
    corpus.write_text("".join(json.dumps({"lang": lang, "unit": "a", "text": "hi there"}) + "\n"
                              for lang in ("en", "he")))
    for model_given, report, message in (
            (str(model), model / "config.json",
             "config.json is in the folder the model was loaded from: write another"),
            ("tiny-gpt2", corpus, "texts.json is the --quantfair-corpus file: write another"),
            ("tiny-gpt2", pytester.path / "texts.html",
             "texts.json is the --quantfair-corpus file")):
        result = run_here(pytester, BASELINE, "--quantfair-model", model_given,
                          "--quantfair-corpus", str(corpus), "--quantfair-report", str(report))
        assert result.ret == 4, result.stdout.str()
        assert message in result.stderr.str(), result.stderr.str()
    assert (model / "config.json").read_text() == "config"
    assert corpus.read_text().startswith('{"lang": "en"')


def test_a_default_report_folder_it_cannot_write_in_is_refused_before_any_audit(pytester):
    """The report is written at the end of the run: a `reports` folder that cannot be made
    is a usage error up front, not a run that measured everything and then exits 3."""
    (pytester.path / "reports").write_text("")  # a file where the folder would go
    result = run_here(pytester, BASELINE, "--quantfair-model", "tiny-gpt2", "-k", "robustness")
    assert result.ret == 4, result.stdout.str()
    assert ("the default report folder: cannot write in" in result.stderr.str()
            and "give --quantfair-report PATH or --quantfair-no-report" in result.stderr.str())
    assert "quantfair: evaluating" not in result.stderr.str() + result.stdout.str()
    result = run_here(pytester, BASELINE, "--quantfair-model", "tiny-gpt2", "-k", "robustness",
                      "--quantfair-no-report")
    assert result.ret == 0, result.stdout.str()


def test_a_keyword_selects_audits_by_their_names_not_by_an_unread_marker(pytester):
    """xdist's group marker, added whenever xdist was installed, made `-k group` (say, for a
    GroupOrder finding of one's own) select every audit; it is added only under
    `--dist loadgroup`, which reads it."""
    pytester.makepyfile(test_own="def test_group_order():\n    pass\n")
    chosen = run_here(pytester, "test_own.py", BASELINE, "--quantfair-model", "tiny-gpt2",
                      "--collect-only", "-q", "-k", "group")
    assert chosen.ret == pytest.ExitCode.OK
    assert [line.rpartition("::")[2] for line in chosen.outlines if "::" in line] == [
        "test_group_order"]
    grouped = run_here(pytester, BASELINE, "--quantfair-model", "tiny-gpt2", "--collect-only",
                       "-q", "-k", "group", "-n", "2", "--dist", "loadgroup")
    assert grouped.ret == pytest.ExitCode.OK  # under loadgroup the marker is there to read


@pytest.mark.parametrize("given, written", [
    ("r", "r.json"), ("r.html", "r.json"), ("r.JSON", "r.JSON"),
    ("release-1.2", "release-1.2.json"), ("r.log", "r.log.json"),
])
def test_a_report_path_keeps_its_own_name_and_gets_json_added(tmp_path, given, written):
    from quantfair.config import RunConfig

    config = RunConfig.build({"model": "tiny-gpt2", "report": str(tmp_path / given)}.get)
    assert config.report == tmp_path / written  # never a neighbour's name: release-1.json


def test_a_failing_test_that_is_no_audit_is_named_beside_a_passed_verdict(pytester):
    """pytest exits 1 for the project's own failing test; the summary says why, though every
    audit passed."""
    pytester.makepyfile(test_theirs="def test_theirs():\n    assert False\n",
                        test_broken="import not_installed_package\n")
    result = run_here(pytester, BASELINE, "test_theirs.py", "test_broken.py",
                      "--continue-on-collection-errors", "--quantfair-model", "tiny-gpt2",
                      "-k", "robustness or theirs", "--quantfair-report", "r.json")
    assert result.ret == 1
    report = load(pytester.path / "r.json")
    assert report["verdict"] == "passed"
    # and the report, whose reader sees no terminal, says so too; a file of the project's
    # that could not be collected is named too (it was left out)
    failed = report["selection"]["other_tests_failed"]
    assert len(failed) == 2 and "test_broken.py" in failed and any(
        nodeid.endswith("::test_theirs") for nodeid in failed)
    sentence = (f"2 test(s) or test file(s) that are not audits failed or errored ({failed[0]}, "
                f"{failed[1]}): pytest's exit code counts them, the verdict is the audits' "
                "alone")
    assert f"{sentence}." in report["summary"]["sentences"]
    assert result.stdout.str().count(sentence) == 1  # said once (it was twice)
