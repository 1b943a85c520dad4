"""One audit run under pytest: the per-process audit context, the evidence of every audit (from
whichever process ran it), what the run selected, and at the end, on the controller only, the
JSON/HTML report, baseline gating and the terminal summary.

Per-test evidence, the measurement rows each test added and, with a worker's first report,
what it publishes at its end (model and process facts, its selection) ride on the test
reports. Workers publish all they have again at their end through xdist's `workeroutput`;
the controller merges it in `pytest_testnodedown`. A worker that crashed or was stopped
publishes nothing at its end: what its finished audits measured is kept, the report is
marked incomplete, never presented as complete.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from quantfair.config import OPTIONS, RunConfig, check_folder_writable
from quantfair.errors import TERMINATED, QuantfairError, Terminated, UsageError
from quantfair.plugin import is_audit
from quantfair.storage import why_unwritable
from quantfair.summary import is_release

RUN_FOLDER = "quantfair_run_folder"  # workerinput: the folder the run's workers share
SELECTED_FILE = "selected_audits.json"  # in it: the audits the workers selected
BASELINE_MODEL = "quantfair_baseline_model"  # workerinput: `report.baseline_model`
DECIDED = ("passed", "failed", "inconclusive", "error")  # an audit's outcomes that decide
REPEATED_SIGNAL = 1.0  # seconds within which a second SIGINT is the same Ctrl-C


def _check_default_report_folder(folder: Path) -> None:
    """The report is written at the end of the run: a folder it cannot be written in is a
    UsageError now, not after the run (a --report PATH is checked the same way). Nothing is
    made for the check: a run that selects no audit writes no report."""
    try:
        check_folder_writable(folder, "the default report folder")
    except UsageError as error:
        raise UsageError(f"{error}; give --report PATH or --no-report") from None


class QuantfairRun:
    """Owns one pytest run of quantfair audits (one per process)."""

    def __init__(self, config: pytest.Config, run_config: RunConfig,
                 preflight: bool = False) -> None:
        """`preflight`: check the model and caches (`RunConfig.preflight`) before the first
        audit measures, not now."""
        from quantfair.report import baseline_model, load_report

        self.pytest_config = config
        self.config = run_config
        run_config.corpus_digest  # noqa: B018 (read now: the file may change or go by the end)
        try:
            self.baseline = load_report(run_config.baseline) if run_config.baseline else None
        except QuantfairError as error:  # named as the option, as a missing file is
            raise UsageError(f"--baseline {error}") from None
        self._check_label()
        self.started = time.time()
        self.is_worker = hasattr(config, "workerinput")
        # The baseline file is the controller's: its workers (on other machines, maybe
        # without it) get what they check before any audit runs (`pytest_configure_node`).
        self.baseline_model = config.workerinput.get(BASELINE_MODEL) if self.is_worker else (
            baseline_model(self.baseline) if self.baseline is not None else None)
        if not (self.is_worker or run_config.report or run_config.no_report):
            _check_default_report_folder(self._report_folder())
        # Made by an xdist controller for its workers; a worker on another machine has none.
        self.run_folder: Path | None = None
        if self.is_worker:
            folder = Path(config.workerinput.get(RUN_FOLDER, ""))
            self.run_folder = folder if folder.name and folder.is_dir() else None
        self._context = None
        self.threads_before: int | None = None  # torch's threads before the run set its own
        self.preflight = preflight
        self.froze = False  # this run froze the process's heap (`context`)
        self.audits: dict[str, dict] = {}
        self.crashed: list[str] = []
        self.others_failed: set[str] = set()  # tests (and test files) that are not audits,
        # failed or errored
        self.internal_errors: list[str] = []  # pytest's INTERNALERROR, a worker's included
        self.collect_errors: dict[str, str] = {}  # error line -> where (a file not collected)
        self.payloads: list[dict] = []  # evidence published by each process
        self.rows: list[dict] = []  # measurement rows, as the test reports bring them
        self.published_early = False  # a worker's first test report carried its payload
        self.published_selection = False  # ... or, before its model loaded, its selection
        self.xdist_ids: list[str] | None = None  # the tests xdist dealt out (a controller)
        self.after_decided: list[str] = []  # audits whose teardown failed once decided
        self.workers: int | None = None  # xdist's workers (`-n N` or `--tx`), not replacements
        self.selection: dict = {}
        self.terminated = False
        self.interrupted = False  # by SIGINT (Ctrl-C) while audits ran
        self._last_sigint: float | None = None  # when the last SIGINT came (time.monotonic)
        self._spared_finish = False  # a SIGINT let the finishing session write its report
        self.started_session = False  # pytest finishes a session only once it has started
        self.session: pytest.Session | None = None
        self.finishing = False  # the tests have stopped: the session is being finished
        self.report: dict | None = None
        self.report_paths: tuple[Path, Path] | None = None
        self.write_error: str | None = None
        self.replaced_meanwhile = False  # another run wrote the --report file during this one
        self.regressions: list[str] = []
        self.gate_error = False  # --baseline could not be compared, a release maximum not checked
        self._previous_handler = self._previous_sigint = None
        if not self.is_worker and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not another's
                self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        """Ctrl-C as Python's own handler takes it (KeyboardInterrupt), but for a second
        delivery of the same one within `REPEATED_SIGNAL` s (`timeout -s INT` signals pytest,
        then its process group: pytest's own handling of the first was cut by a traceback)
        and, once every audit has run, for the first: the run ends as it would have, its
        report whole (a later one interrupts)."""
        now, last = time.monotonic(), self._last_sigint
        self._last_sigint = now
        if last is not None and now - last < REPEATED_SIGNAL:
            return
        if self.finishing and not self._spared_finish:
            self._spared_finish = True
            return
        self.interrupted = True
        raise KeyboardInterrupt

    def _on_sigterm(self, signum, frame) -> None:
        deferred = not self.started_session and not self.terminated  # a second one is not
        self.terminated = True
        # Once finishing, let the report be written; before the session has started (xdist
        # starting its workers), the test loop stops it at once (`pytest_runtestloop`).
        if not self.finishing and not deferred:
            raise Terminated()  # pytest finishes the session as on Ctrl-C

    def _check_label(self) -> None:
        """A baseline of an artifact (`artifact:<label>`) audited alone, against a run that
        audits no artifact under that label (another `--quantized-label`, or no `--quantized`):
        none of its measurements can be compared, and the end would refuse a gate that
        compared nothing measured: a UsageError now, before any audit runs. A baseline that
        also measured computed schemes is compared on those, with a warning once the session
        starts (`pytest_sessionstart`) where the labels differ (`label_hint`)."""
        from quantfair.report import label_hint

        was = (self.baseline or {}).get("settings") or {}
        self.label_warning = ""
        scheme, now = was.get("scheme") or "", self.config.scheme.name
        if not scheme.startswith("artifact:") or scheme == now:
            return
        hint = label_hint(was, self.config.settings()) or (
            f"; give --quantized with the artifact and --quantized-label "
            f"{scheme.removeprefix('artifact:')} to compare an artifact with it")
        said = f"the baseline audited {scheme}, this run {now}: none of the artifact's measurements"
        rows = self.baseline.get("measurements") or []
        if rows and all(row["scheme"] == scheme for row in rows):
            raise UsageError(f"--baseline {self.config.baseline}: {said} could be compared{hint}")
        if now.startswith("artifact:"):
            self.label_warning = f"quantfair: warning: {said} will be compared{hint}"

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionstart(self, session: pytest.Session):
        self.session = session
        if self.label_warning and not self.is_worker:  # said now, not after the run
            from quantfair.plugin import in_pytest_terms

            _announcer(self.pytest_config)(in_pytest_terms(self.pytest_config,
                                                           self.label_warning))
        try:
            return (yield)
        finally:
            self.started_session = True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session):
        try:
            if self.terminated:  # a signal deferred while the session started
                raise Terminated()
            return (yield)
        finally:
            self.finishing = True
            if self.is_worker and self.run_folder is not None:  # its cores are free now
                from quantfair.workers import CoreShare

                CoreShare.finish(self.run_folder, self.pytest_config.workerinput["workerid"])

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.froze:
            gc.unfreeze()
        if self.threads_before is not None:
            # A process that goes on (`pytest.main` called in-process, the long-lived process
            # of an execnet socket server, whose next run would keep this run's share) gets
            # back its threads; a worker on another machine (a socket server's, idle until
            # the next run) also the memory of the model and weight bank, now.
            import torch

            from quantfair.workers import WORKER_HOST, return_freed_memory

            torch.set_num_threads(self.threads_before)
            self._context = None
            if self.is_worker and config.workerinput.get(WORKER_HOST):
                gc.collect()  # ~0.2 s, spared where the process ends or runs on at once
                return_freed_memory()
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
        if self.run_folder is not None and not self.is_worker:
            shutil.rmtree(self.run_folder, ignore_errors=True)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        """The workers of this run on this machine share hidden states and cores through a
        folder of the results cache (`AuditSession`'s `run_folder`), made here and removed at
        the end; where it cannot be made, each keeps its own. The baseline's model goes to
        each worker (`baseline_model`)."""
        if self.baseline_model is not None:
            node.workerinput[BASELINE_MODEL] = self.baseline_model
        if self.run_folder is None:
            import tempfile

            from quantfair.storage import RUN_PREFIX, results_root

            root = results_root()
            try:
                root.mkdir(parents=True, exist_ok=True)
                self.run_folder = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=root))
            except OSError:
                return
        node.workerinput[RUN_FOLDER] = str(self.run_folder)

    def context(self):
        if self._context is None:
            from quantfair.context import AuditContext
            from quantfair.session import AuditSession
            from quantfair.workers import xdist_workers

            if self.preflight:  # a bad setting: said once, the run stops (`quantfair_audit`)
                try:
                    self.config.preflight()
                except (QuantfairError, OSError) as error:  # OSError: a path too long
                    from quantfair.plugin import in_pytest_terms, setting_error

                    raise UsageError(in_pytest_terms(self.pytest_config,
                                                     setting_error(error))) from None
                self.preflight = False
            workers = (xdist_workers(self.pytest_config.workerinput) if self.is_worker
                       else None)
            import torch

            self.threads_before = torch.get_num_threads()  # given back at the end
            session = AuditSession(self.config, announce=_announcer(self.pytest_config),
                                   progress=_progress(self.pytest_config), workers=workers,
                                   run_folder=self.run_folder)
            self._context = AuditContext(session, candidate=self.config.strategy,
                                         strict=self.config.strict)
            if self.config.strategy == "suggested":  # no suggestion cached, or one searched
                self._context.candidate_text()  # on these units: said before any audit runs
            if self.baseline_model is not None:  # refused before any audit runs, not at the end
                from quantfair.report import model_refusal

                model = {"model": self._context.architecture()}
                if refusal := model_refusal(self.baseline_model, model):
                    raise UsageError(refusal)
            # The model, its libraries and the weight bank stay to the process's end: the
            # cyclic garbage collector need not walk them again in each full collection
            # (SmolLM2: 0.15 s each, 0.006 s frozen); reference counting still frees what
            # they drop. Unfrozen at the end (`pytest_unconfigure`) for a host process that
            # goes on (`pytest.main` called in-process); a host's own frozen heap is its own.
            if gc.get_freeze_count() == 0:
                gc.collect()
                gc.freeze()
                self.froze = True
        return self._context

    # -- selection ------------------------------------------------------------------------
    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        deselected = [i for i in items if is_audit(i)]
        self.selection["deselected"] = self.selection.get("deselected", 0) + len(deselected)

    def expect_gate(self, finding: str, cases: list[str], maximum: str | None) -> None:
        """A release gate's bounded cases as parametrized, before any selection (`-k`,
        `--deselect`, `--lf`): a gate decided for some languages only is not a gate passed.
        `maximum`: the quantity whose `--quantfair-max-*` it checks (a `ReleaseBound`); None
        for a gate with bounds of its own."""
        self.selection.setdefault("gate_cases", {})[finding] = cases
        if maximum is not None:
            self.selection.setdefault("maximum_gates", {})[finding] = maximum

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        selected = [i.nodeid for i in session.items if is_audit(i)]
        self.selection["selected_ids"] = selected
        if self.is_worker and self.run_folder is not None:  # for a controller stopped before
            from quantfair.storage import atomic_write  # any test reported (a worker of
            # this machine; one elsewhere says it with its first report: `report_extras`)
            with contextlib.suppress(OSError):
                atomic_write(self.run_folder / SELECTED_FILE, json.dumps(selected).encode())

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        """The controller's own record of the tests the workers selected, audits or not (a
        worker says which are audits with its first test report, which a run stopped while
        its workers start does not reach)."""
        if self.xdist_ids is None:
            self.xdist_ids = list(ids)

    def report_extras(self) -> str | None:
        """What this process adds to its next test report, as JSON (what xdist can carry): the
        measurement rows since the last one and, with a worker's first, what it publishes at
        its end (model, process, selection), so that a worker stopped before its end loses
        none of it."""
        extras: dict = {"rows": self._context.new_rows() if self._context is not None else []}
        if self.is_worker and not self.published_early:
            if self._context is not None:
                self.published_early = True
                payload = self._payload()
                if "error" not in payload:  # said at the end, where it fails the same way
                    extras["payload"] = {**payload, "rows": []}
            elif not self.published_selection:  # which tests are audits, before any ran: a
                self.published_selection = True  # project's own test may crash its worker
                extras["payload"] = {"selection": self.selection}
        extras = {key: value for key, value in extras.items() if value}
        return json.dumps(extras) if extras else None

    # -- collecting evidence (controller and serial runs) ---------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        extras = json.loads(getattr(report, "quantfair_run", None) or "{}")
        self.rows += extras.get("rows", [])
        if "payload" in extras:
            self.payloads.append(extras["payload"])
        crashed = report.failed and "crashed while running" in (report.longreprtext or "")
        evidence = getattr(report, "quantfair", None)
        if evidence is None and not crashed:
            if report.failed:
                self.others_failed.add(report.nodeid)
            return
        entry = self.audits.setdefault(report.nodeid, {"nodeid": report.nodeid})
        entry.update(evidence or {})
        if crashed:
            self.crashed.append(report.nodeid)
        if (report.when == "teardown" or crashed) and report.failed and entry.get(
                "outcome") not in (None, "error"):  # decided, then its teardown failed or
            if not crashed:  # its worker died (said among the crashes)
                self.after_decided.append(f"{report.nodeid}: its teardown failed once the "
                                          f"audit was decided: {_failure_line(report)}")
        elif report.when == "call" or report.failed or report.skipped:
            if report.skipped:
                reason = _skip_reason(report)
                inconclusive = reason.startswith("inconclusive:")
                entry["outcome"] = "inconclusive" if inconclusive else "skipped"
                entry["message"] = reason
            elif report.failed:
                audit_failed = report.when == "call" and not crashed and (
                    (evidence or {}).get("outcome") != "error")
                entry["outcome"] = "failed" if audit_failed else "error"
                if audit_failed and entry.pop("inconclusive", False):  # --quantfair-strict
                    entry["outcome"] = "inconclusive"
                if not entry.get("message"):
                    lines = (report.longreprtext or "").strip().splitlines()
                    entry["message"] = lines[-1] if lines else "error"
            else:
                entry["outcome"] = "passed"
            entry["duration_s"] = round(report.duration, 3)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """A file of findings that could not be collected (a finding written wrong): its
        audits are missing, so the run is incomplete (a serial run stops, unless
        --continue-on-collection-errors; xdist brings the controller each worker's error). A
        project's own test file, which never names quantfair, leaves the verdict alone: pytest
        counts its error."""
        if not report.failed:
            return
        text = (report.longreprtext or "").strip()
        path, line = _collect_error_source(text)
        if path is None and (node_path := report.nodeid.partition("::")[0]):
            path = str(self.pytest_config.rootpath / node_path)
        folder = self.pytest_config.invocation_params.dir
        if not _may_hold_findings(folder / path if path else None):
            self.others_failed.add(report.nodeid or path or "a file")  # pytest counts it
            return
        where = "a file"
        if path:  # as pytest shows paths: relative to where it was run, if inside it
            where = str((folder / path).resolve())
            where = os.path.relpath(where, folder) if where.startswith(f"{folder}/") else where
            where += f":{line}" if line else ""
        error = (text.splitlines() or ["error"])[-1].removeprefix("E").strip()
        self.collect_errors[error] = where

    def pytest_internalerror(self, excrepr, excinfo) -> None:
        """An error of pytest or a plugin, not of an audit; xdist brings a worker's here (its
        traceback as the message of an `assert False`) and would still end the run with
        exit 0."""
        lines = [line.strip() for line in excinfo.exconly().splitlines()]
        lines = [line for line in lines if line and line != "assert False"]
        self.internal_errors.append(lines[-1] if lines else excinfo.typename)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, config, specs) -> None:
        self.workers = len(specs)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        published = getattr(node, "workeroutput", {}).get("quantfair")
        if published:
            self.payloads.append(json.loads(published))

    # -- the end ----------------------------------------------------------------------------
    def _payload(self) -> dict:
        context = self._context
        try:
            payload = context.payload() if context is not None else {}
        except QuantfairError as error:  # e.g. the cache became unwritable: say so, go on
            payload = {"error": str(error)}
        return {**payload, "selection": self.selection}

    @pytest.hookimpl(trylast=True)  # after session fixtures are torn down
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            self.pytest_config.workeroutput["quantfair"] = json.dumps(self._payload())
        elif not self._xdist_controller():
            self._finish(session, exitstatus)

    @pytest.hookimpl(tryfirst=True, specname="pytest_sessionfinish")
    def pytest_sessionfinish_on_controller(self, session: pytest.Session, exitstatus: int) -> None:
        """An xdist controller runs no tests (no fixtures of its own to tear down) and has
        every worker's payload by now: it reports before xdist waits for the workers'
        processes to end, not after."""
        if self._xdist_controller():
            self._finish(session, exitstatus)

    def _stopped(self, exitstatus: int) -> bool:
        """Whether the run was cut short: SIGTERM, Ctrl-C, -x / --maxfail (`_failures_stop`)."""
        return (self.terminated or self.interrupted or exitstatus == pytest.ExitCode.INTERRUPTED
                or bool(self._failures_stop()))

    def _failures_stop(self) -> str:
        """pytest's "stopping after N failures" where -x or --maxfail stopped the run (a
        serial session's `shouldfail`, xdist's controller's `shouldstop`), else "". A serial
        run's was missed: its gates were "not checked" (exit 3) and, where no audit had run,
        no report was written."""
        reasons = (self._stop_reason(), getattr(self.session, "shouldfail", False))
        return next((reason for reason in reasons if isinstance(reason, str)
                     and reason.startswith("stopping after")), "")

    def _stop_reason(self) -> object:
        """`plugin.stop_reason` of this run's session (False before it starts)."""
        from quantfair.plugin import stop_reason

        return stop_reason(self.session) if self.session is not None else False

    @property
    def usage_error(self) -> str | None:
        """The bad setting that stopped the run after the model loaded (`quantfair_audit`: an
        artifact of another model), else None."""
        from quantfair.plugin import setting_stop

        return setting_stop(self.session) if self.session is not None else None

    def _xdist_controller(self) -> bool:
        return self.pytest_config.pluginmanager.has_plugin("dsession")

    def _finish(self, session: pytest.Session, exitstatus: int) -> None:
        from quantfair.progress import close_bars

        close_bars()  # one an interruption left open
        if self.pytest_config.getoption("collectonly", default=False):
            return  # --collect-only: nothing ran, no gate was asked to decide
        self.payloads.append(self._payload())
        unchecked = [] if self._stopped(exitstatus) else self._release_gates_not_run()
        partial = [] if self._stopped(exitstatus) else self._release_gates_partly_run()
        undecided = "" if self._stopped(exitstatus) else self._no_release_gate_decided()
        selected = self._selected_and_not_run()[0]
        if not self.audits and not self.internal_errors and self.baseline is None and not (
                unchecked or partial or undecided or self._stopped(exitstatus)
                and (selected is None or selected)):
            return  # no audit ran, and none was cut off (the selection may not be known yet);
        # with a baseline or a release maximum, a run that selected nothing is a gate not
        # checked (below)
        from quantfair.report import compare, settle_verdict, write_report

        report = self._build(exitstatus)
        if unchecked:
            report["incomplete"].append(
                f"{', '.join(unchecked)} given, but no release audit of it ran (marker "
                "quantfair_release: the shipped audits/test_release.py, or a ReleaseBound of "
                "your own; beside others, -m \"quick or quantfair_release\"): the gate was not "
                "checked")
            self.gate_error = True
        elif undecided:
            report["incomplete"].append(undecided)
            self.gate_error = True
        if partial:
            report["incomplete"] += partial
            self.gate_error = True
        # stopped before it measured (audits of no maximum may have been skipped): the
        # stop's exit, not a gate that compared nothing or audits alone
        cut_short = self._stopped(exitstatus) and not report["measurements"] and (
            self.baseline is not None and (self.baseline.get("measurements")
                                           or not report["audits"]))
        if cut_short:
            report["incomplete"].append("baseline: not compared: the run stopped before it "
                                        "measured anything")
        elif self.baseline is not None:
            try:
                report["comparison"] = compare(self.baseline, report, self.config.tolerance,
                                               strict=self.config.strict,
                                               baseline_file=str(self.config.baseline))
            except Exception as error:  # nothing compared: the gate was not checked
                from quantfair.plugin import in_pytest_terms

                why = (str(error) if isinstance(error, QuantfairError) else  # else a bug:
                       f"the comparison failed ({type(error).__name__}: {error}; please "
                       "report it)")  # the report, and what was measured, are kept
                if not any(why in reason for reason in report["incomplete"]):
                    report["incomplete"].append(  # not said twice
                        f"baseline: {in_pytest_terms(self.pytest_config, why)}")
                self.gate_error = True
            else:
                self.regressions = report["comparison"]["regressions"]
        settle_verdict(report)
        self.report = report
        if not self.config.no_report:
            path = self._json_path()
            with contextlib.suppress(OSError):  # two runs given one --report: the last wins
                self.replaced_meanwhile = path.stat().st_mtime >= self.started
            try:
                # latest.html only in the default reports folder, not beside a named report
                self.report_paths = write_report(report, path, latest=not self.config.report)
            except OSError as error:  # its message names a temporary file: say the report's
                self.write_error = (f"quantfair: could not write the report {path} or its "
                                    f".html: {why_unwritable(path.parent, error)}")
            except Exception as error:  # rendering: the JSON, written first, is kept
                self.write_error = (f"quantfair: could not render the HTML report beside "
                                    f"{path}: {type(error).__name__}: {error}")
        if self.terminated or self.interrupted:
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        elif self.usage_error:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        elif self.write_error or self.gate_error or self.internal_errors or (
                (report["summary"]["counts"]["error"] or self.collect_errors or self.crashed
                 or self.after_decided) and session.exitstatus == pytest.ExitCode.TESTS_FAILED):
            # 1 means a claim did not hold; an audit that could not run (or was not
            # collected, or whose worker crashed, or pytest itself failed) is not a finding
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        elif self.regressions and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = self.pytest_config.pluginmanager.getplugin("terminalreporter")
        if exitstatus == pytest.ExitCode.INTERNAL_ERROR and reporter is not None:
            self.pytest_terminal_summary(reporter)  # pytest skips it after an internal error

    def _parametrized(self, key: str) -> dict:
        """A release-gate table of the selection (`expect_gate`: "gate_cases",
        "maximum_gates"), merged over every process's parametrization (xdist workers')."""
        merged: dict = {}
        for payload in self.payloads:
            merged.update(payload.get("selection", {}).get(key, {}))
        return merged

    def _release_gates_not_run(self) -> list[str]:
        """The release maxima given on the command line (`--quantfair-max-<quantity>`: a gate
        was asked for) that no audit checking it ran (a `ReleaseBound`: a release gate with
        bounds of its own does not read them); one set in the ini file alone is a default,
        not a request."""
        checks = self._parametrized("maximum_gates")
        ran = {checks[a.get("finding")] for a in self.audits.values() if a.get("finding") in checks}
        return [f"--quantfair-max-{name.replace('_', '-')}" for name in self.config.release_bounds
                if name not in ran and self.pytest_config.getoption(
                    OPTIONS[f"max-{name.replace('_', '-')}"].dest, default=None)]

    def _release_gates_partly_run(self) -> list[str]:
        """Release gates decided (passed, failed, inconclusive, error) for some of their cases
        while others did not run (deselected, or left out by `--lf`): the incomplete reasons.
        None where the run stopped early (`-x`, `--maxfail`): its audits never run say so."""
        if self._selected_and_not_run()[1]:
            return []
        expected = self._parametrized("gate_cases")
        ran: dict[str, set[str]] = {}
        decided: set[str] = set()
        for entry in self.audits.values():
            if entry.get("outcome") is not None:
                ran.setdefault(entry.get("finding"), set()).add(entry.get("case"))
            if entry.get("outcome") in DECIDED:
                decided.add(entry.get("finding"))
        reasons = []
        for finding, cases in expected.items():
            missing = [case for case in cases if case not in ran.get(finding, ())]
            if finding in decided and missing:
                reasons.append(
                    f"the release gate {finding} ran for {len(cases) - len(missing)} of its "
                    f"{len(cases)} cases, not for {', '.join(missing)} (deselected, or left "
                    "out by --lf): it was not checked for every language it bounds")
        return reasons

    def _no_release_gate_decided(self) -> str:
        """Where the run asked for release gates (`-m quantfair_release`, or a selection of
        release audits only, by path or `-k`) and none passed or failed (each skipped: no
        maximum given, none selected), the incomplete reason saying so; empty otherwise."""
        from quantfair.plugin import selects_release_gates

        gates = [a for a in self.audits.values() if is_release(a)]
        by_marker = selects_release_gates(self.pytest_config)
        if not (by_marker or gates and len(gates) == len(self.audits)) or any(
                a.get("outcome") in DECIDED for a in gates):
            return ""
        reasons = list(dict.fromkeys(a.get("message") or "skipped" for a in gates))
        how = "-m quantfair_release" if by_marker else "the selection (only release audits)"
        return (f"{how} selected the release gates, but none was checked: "
                + ("; ".join(reasons) if reasons else "no release audit was collected"))

    def _build(self, exitstatus: int) -> dict:
        from quantfair.report import RunRecord, build_report

        selected, _, exact = self._selected_and_not_run()
        for nodeid in [n for n in self.crashed if exact and n not in selected]:
            self.crashed.remove(nodeid)  # a project's own test crashed its worker: pytest
            self.audits.pop(nodeid, None)  # counts it, the verdict is the audits'
            self.others_failed.add(nodeid)
        incomplete = [f"worker crashed running {nodeid}" for nodeid in self.crashed]
        incomplete += self.after_decided
        incomplete += [f"pytest internal error: {line}" for line in self.internal_errors]
        incomplete += [f"could not collect {where}: {error}"
                       for error, where in self.collect_errors.items()]
        incomplete += [f"measurements not published: {p['error']}" for p in self.payloads
                       if p.get("error")]
        early = ""  # why -x or --maxfail stopped the run, said where audits went unrun
        if self.terminated:
            incomplete.append(f"the run was {TERMINATED}")
        elif self.usage_error:
            incomplete.append("stopped by a bad setting: "
                              + self.usage_error.removeprefix("quantfair: "))
        elif not self.interrupted and (reason := self._failures_stop()):
            # incomplete only where audits were left unrun (below); xdist ends such a run as
            # an interruption (exit 2), a serial one exits 1
            early = f"the run stopped early ({reason}: -x or --maxfail)"
        elif exitstatus == pytest.ExitCode.INTERRUPTED or self.interrupted:
            incomplete.append("the run was interrupted")
        if self.usage_error:  # the audits it errored were cut off by it: not findings that
            for nodeid, entry in list(self.audits.items()):  # could not be measured
                if entry.get("outcome") == "error" and entry.get("message") == self.usage_error:
                    del self.audits[nodeid]
        stopped = self._stopped(exitstatus)
        if stopped:  # the signal reaches the workers too: what a worker was running when it
            for nodeid in self.crashed:  # died is cut off, not an error (its crash is said)
                self.audits.pop(nodeid, None)
        not_run = self._selected_and_not_run()[1]  # those crashed when stopped among them
        if not_run:
            incomplete += [early] if early else []
            incomplete.append(
                f"{len(not_run)} of {len(selected)} selected audits never ran (the run stopped "
                "early)" if exact else f"{len(not_run)} of {len(selected)} selected tests, "
                "audits among them, never ran (the run stopped before a worker said which "
                "are audits)")
        for nodeid, entry in list(self.audits.items()):
            if "outcome" in entry:
                continue
            if stopped and nodeid in not_run:  # cut off: counted among those never run
                del self.audits[nodeid]
            else:
                incomplete.append(f"no outcome for {nodeid}")
                entry["outcome"] = "error"
        deselected = max((p.get("selection", {}).get("deselected", 0) for p in self.payloads),
                         default=0)
        options = self.pytest_config.option
        selection = {
            "invocation": ["pytest", *self.pytest_config.invocation_params.args],
            "keyword": options.keyword or None, "markers": options.markexpr or None,
            "last_failed": bool(getattr(options, "lf", False)),
            "collected": len(selected or ()) + deselected, "selected": len(selected or ()),
            "deselected": deselected, "not_run": len(not_run),
            "other_tests_failed": sorted(self.others_failed),  # counted by the exit code
        }
        settings = {**self.config.settings(), "strict": self.config.strict,
                    "workers": self.workers}
        record = RunRecord(
            settings=settings, audits=list(self.audits.values()),
            # the processes' final rows last: a row a later test updated is the one kept
            rows=self.rows + [row for p in self.payloads for row in p.get("rows", [])],
            model=next((p["model"] for p in self.payloads if p.get("model")), {}),
            processes=sorted({(p["process"].get("host"), p["process"]["pid"]): p["process"]
                              for p in self.payloads if p.get("process")}.values(),
                             key=lambda p: (p.get("host") or "", p["pid"])),
            suggestion=next((p["suggestion"] for p in self.payloads if p.get("suggestion")),
                            None),
            selection=selection, incomplete=incomplete, duration_s=time.time() - self.started)
        return build_report(record)

    def _selected_and_not_run(self) -> tuple[list[str] | None, list[str], bool]:
        """The node ids of the audits selected (as the first process to publish them said),
        of those among them with no outcome (the run stopped before them), and whether they
        are known to be audits: where no process said (an xdist run stopped while its
        workers started), the tests xdist dealt out, audits or not; None where not even
        those are known."""
        selected = next((p["selection"]["selected_ids"] for p in self.payloads
                         if p.get("selection", {}).get("selected_ids") is not None), None)
        if selected is None and self.run_folder is not None:  # every worker collects alike
            with contextlib.suppress(OSError, ValueError):
                selected = json.loads((self.run_folder / SELECTED_FILE).read_text())
        exact = selected is not None
        selected = selected if exact else self.xdist_ids
        return selected, [n for n in selected or () if
                          self.audits.get(n, {}).get("outcome") is None], exact

    def _json_path(self) -> Path:
        if self.config.report:
            return self.config.report
        from quantfair.report import unique_report_path

        return unique_report_path(self._report_folder(), self.config.model)

    def _report_folder(self) -> Path:
        """Where the controller writes the report without --report."""
        return Path(self.pytest_config.invocation_params.dir) / "reports"

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.is_worker:
            return
        if self.report is None:  # no audit ran (`_finish`): a report asked for is not there
            if self.config.report and not self.config.no_report and not \
                    self.pytest_config.getoption("collectonly", default=False):
                terminalreporter.write_line(f"quantfair: no audit ran: no report written to "
                                            f"{self.config.report}", yellow=True)
            return
        from quantfair.report import summary_table

        tr = terminalreporter
        tr.section("quantfair audit summary")
        if self.report["audits"]:  # none when the run stopped before any had a result
            tr.write_line(summary_table(self.report["audits"]))
        summary = self.report["summary"]
        tr.write_line(f"verdict: {self.report['verdict']}  " + "  ".join(
            f"{k}: {v}" for k, v in summary["counts"].items()))
        # an incomplete run's headline lists its reasons, which the INCOMPLETE lines below say
        for sentence in summary["sentences"][1 if self.report["incomplete"] else 0:]:
            tr.write_line(sentence)
        from quantfair.corpus import code_notes
        from quantfair.report import other_code

        for note in code_notes(self.report["settings"].get("languages") or ()):
            tr.write_line(f"note: {note}")
        for process in other_code(self.report):
            tr.write_line(f"warning: ran other code than this controller: {process}",
                          yellow=True)
        if suggestion := self.report.get("suggestion"):
            from quantfair.report import (
                OTHER_LANGUAGES,
                searched_with,
                suggestion_warnings,
                unsearched_languages,
            )

            tr.write_line(f"--strategy suggested is {suggestion['strategy']}, the latest "
                          f"`quantfair suggest` result for {suggestion['scheme']} "
                          f"({searched_with(suggestion)})")
            for warning in suggestion_warnings(suggestion):
                tr.write_line(f"warning: {warning}", yellow=True)
            if why := suggestion.get("reselected"):
                tr.write_line(f"warning: the suggestion {suggestion['strategy']}: {why}",
                              yellow=True)
            if others := unsearched_languages(suggestion, self.config.languages or ()):
                tr.write_line(f"warning: {OTHER_LANGUAGES}: {', '.join(others)}", yellow=True)
        if self.config.strategy and not self.usage_error:  # else said as INCOMPLETE below
            from quantfair.audit import CANDIDATE
            from quantfair.plugin import in_pytest_terms

            def say(line: str, **markup) -> None:  # the option as this run took it
                tr.write_line(in_pytest_terms(self.pytest_config, line), **markup)

            ran = [a for a in self.report["audits"] if a.get("strategy") == CANDIDATE]
            errors = [a for a in ran if a["outcome"] == "error"]
            if errors and all(a["outcome"] in ("error", "skipped") for a in ran):
                say(f"--strategy {self.config.strategy} could not be audited: "
                    f"{errors[0]['message']}", red=True)
            elif ran and all(a["outcome"] == "skipped" for a in ran):
                say(f"--strategy {self.config.strategy} was not compared: "
                    f"{ran[0].get('message') or 'every audit of it was skipped'}")
            elif ran:
                if not self.report.get("suggestion"):
                    say(f"--strategy {self.config.strategy} is audited against no protection "
                        "and random protection at its budget")
            elif not (self.terminated or self.interrupted):  # else cut off before them
                say(f"--strategy {self.config.strategy} was given, but no audit of it was "
                    "selected (the audit suite's test_suggested.py audits it)")
            if any(is_release(a) and a["outcome"] != "skipped" for a in self.report["audits"]):
                tr.write_line(f"note: the release gates bound the {self.config.scheme.name} "
                              f"model without protection, not --strategy "
                              f"{self.config.strategy}: to gate a protected release, write it "
                              "(quantfair export --strategy ...) and gate that file "
                              "(--quantized)", yellow=True)
        if not self.config.strict and "--strict" in self.pytest_config.invocation_params.args:
            tr.write_line("note: --strict is pytest's own option (strict markers, xfail, ...): "
                          "inconclusive audits fail the run only with --quantfair-strict")
        for reason in self.report["incomplete"]:
            tr.write_line(f"INCOMPLETE: {reason}", red=True)
        if self.terminated and f"the run was {TERMINATED}" not in self.report["incomplete"]:
            tr.write_line(f"quantfair: {TERMINATED} once every audit had run: the report is "
                          "whole, the exit code 2 (interrupted)", yellow=True)
        if self.report.get("comparison"):
            from quantfair.report import comparison_notes, no_regression_line

            for note in comparison_notes(self.report["comparison"]):
                tr.write_line(note)
            if not self.regressions:  # exit 1 may still be a finding that did not hold
                tr.write_line(no_regression_line(self.report["comparison"]), green=True)
        for regression in self.regressions:
            tr.write_line(f"REGRESSION vs baseline: {regression}", red=True)
        if self.write_error:
            tr.write_line(self.write_error, red=True)
        if self.report_paths and self.replaced_meanwhile:
            tr.write_line(f"quantfair: warning: {self.report_paths[0]} was written by another "
                          "run while this one ran: it is replaced by this run's report",
                          yellow=True)
        if self.report_paths:
            tr.write_line(f"quantfair report: {self.report_paths[1]} (JSON: "
                          f"{self.report_paths[0]})")


def _may_hold_findings(path: Path | None) -> bool:
    """Whether a file pytest could not collect may define audits: one that names quantfair
    (`from quantfair.audit import ...`), or one that cannot be read as such (no path, a
    folder, an unreadable file)."""
    try:
        return path is None or "quantfair" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True


# Where a collection error's traceback names the file that failed, first match first: the
# module's own frame (a finding refused where it is defined, an import it makes), the line
# of a syntax error, the module pytest could not import. pytest's own frames are not where.
COLLECT_ERROR_SOURCES = (r"^(?P<file>\S+?\.py):(?P<line>\d+): in <module>$",
                         r'^E +File "(?P<file>[^"]+)", line (?P<line>\d+)$',
                         r"^ImportError while importing test module '(?P<file>[^']+)'")


def _collect_error_source(traceback: str) -> tuple[str | None, int | None]:
    """(file, line) of a collection error's traceback (`COLLECT_ERROR_SOURCES`; the file as
    pytest shows it, relative to the invocation folder or absolute), None where not named."""
    for pattern in COLLECT_ERROR_SOURCES:
        if found := re.search(pattern, traceback, re.MULTILINE):
            line = found.groupdict().get("line")
            return found["file"], int(line) if line else None
    return None, None


def _failure_line(report: pytest.TestReport) -> str:
    """What failed, in one line: the exception pytest shows last (`E   RuntimeError: ...`),
    else the report's last line."""
    crash = (getattr(getattr(report.longrepr, "reprcrash", None), "message", "") or "").strip()
    if crash:
        return crash.splitlines()[0]
    lines = (report.longreprtext or "").strip().splitlines()
    return lines[-1] if lines else "error"


def _announcer(config: pytest.Config):
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None or hasattr(config, "workerinput"):
        return lambda message: print(message, file=sys.stderr, flush=True)

    def announce(message: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(message)

    return announce


def _progress(config: pytest.Config):
    """Token bars with an ETA on a terminal, drawn with output capture suspended; none in an
    xdist worker (its stderr reaches no terminal) or a log (the announced lines say what runs)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None or hasattr(config, "workerinput"):
        return None
    with capture.global_and_fixture_disabled():
        if not sys.stderr.isatty():
            return None
    from quantfair.progress import token_bars

    return token_bars(capture.global_and_fixture_disabled)


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr or "skipped")
