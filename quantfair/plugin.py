"""pytest glue: options, the session fixture, parametrization of findings, results collection
across xdist workers, the terminal summary, the JSON/HTML report and baseline gating."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from quantfair.errors import QuantfairError

DEFAULT_LANGUAGES = "en,de,ru,he,ar,zh"
DEFAULT_UNITS = "8"
DEFAULT_QUANT = "int4"  # 4-bit, per tensor, symmetric, every parameter: the seed's baseline
OPTIONS = {
    # name: (default, help)
    "model": (None, "model to audit: smollm2-135m, a Hugging Face id, a directory or a .gguf"),
    "quant": (DEFAULT_QUANT, "quantization scheme, e.g. int4, int4-g128, int8-channel"),
    "languages": (DEFAULT_LANGUAGES, "comma-separated language codes (en is always added)"),
    "units": (DEFAULT_UNITS, "audit a seeded sample of this many units per language (0: all)"),
    "device": (None, "auto (default), cpu, cuda, cuda:N"),
    "corpus": (None, "JSONL corpus with fields lang, unit, text (default: shipped UDHR)"),
    "report": (None, "path of the JSON report (HTML beside it); default reports/<model>-<time>"),
    "baseline": (None, "earlier JSON report: fail when a disparity regresses beyond tolerance"),
    "tolerance": (None, "relative disparity growth counted as a regression (default 0.10)"),
    "strategy": (None, "a strategy to audit against none and random protection at its budget; "
                       "'suggested' takes the latest `quantfair suggest` result for this model"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quantfair", "quantization fairness audits")
    for name, (_default, help_text) in OPTIONS.items():
        group.addoption(f"--{name}", dest=f"quantfair_{name}", default=None, help=help_text)
        parser.addini(f"quantfair_{name}", help_text, default=None)
    group.addoption("--random-weights", dest="quantfair_random_weights", action="store_true",
                    help="build the model from a shipped config with random weights")
    group.addoption("--no-report", dest="quantfair_no_report", action="store_true",
                    help="do not write the JSON/HTML report")


def option(config: pytest.Config, name: str):
    value = config.getoption(f"quantfair_{name}")
    if value is None:
        value = config.getini(f"quantfair_{name}") or None
    return value if value is not None else OPTIONS[name][0]


def pytest_configure(config: pytest.Config) -> None:
    for marker in ("quantfair: a quantfair audit (needs --model)",
                   "quick: audits small enough for CI on two CPU cores",
                   "slow: long end-to-end checks"):
        config.addinivalue_line("markers", marker)
    if option(config, "model"):
        try:
            settings = _settings(config)
        except QuantfairError as error:
            raise pytest.UsageError(str(error)) from None
        config.pluginmanager.register(QuantfairRun(config, settings), "quantfair-run")


def _settings(config: pytest.Config) -> dict:
    """Validated options; any mistake is a usage error before a model is loaded."""
    from quantfair.corpus import load_corpus
    from quantfair.errors import UsageError
    from quantfair.models import check_available
    from quantfair.quantize import QuantScheme
    from quantfair.report import DEFAULT_TOLERANCE, load_report

    model = option(config, "model")
    random_weights = bool(config.getoption("quantfair_random_weights"))
    scheme = QuantScheme.parse(option(config, "quant"))
    languages = [c.strip() for c in option(config, "languages").split(",") if c.strip()]
    try:
        units = int(option(config, "units"))
    except ValueError:
        raise UsageError(f"--units must be an integer, got {option(config, 'units')}") from None
    if units < 0:
        raise UsageError("--units must be 0 (all) or positive")
    corpus = load_corpus(option(config, "corpus")).select(languages)
    if len(corpus.languages) < 2:
        raise UsageError("--languages needs at least one language besides en")
    tolerance = option(config, "tolerance")
    try:
        tolerance = float(tolerance) if tolerance is not None else DEFAULT_TOLERANCE
    except ValueError:
        raise UsageError(f"--tolerance must be a number, got {tolerance}") from None
    baseline = option(config, "baseline")
    check_available(model, random_weights)
    return {
        "model": model, "random_weights": random_weights, "scheme": scheme,
        "languages": corpus.languages, "units": units or None,
        "corpus": option(config, "corpus"), "device": option(config, "device"),
        "report": option(config, "report"),
        "no_report": bool(config.getoption("quantfair_no_report")),
        "baseline": load_report(baseline) if baseline else None,
        "baseline_path": baseline, "tolerance": tolerance,
        "strategy": option(config, "strategy"),
    }


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    finding = getattr(metafunc.function, "quantfair_finding", None)
    if finding is None or "case" not in metafunc.fixturenames:
        return
    languages = option(metafunc.config, "languages").split(",")
    languages = ["en", *[lang.strip() for lang in languages if lang.strip() != "en"]]
    cases = finding.check.cases(languages)
    metafunc.parametrize("case", [
        pytest.param(case, id=case.id, marks=pytest.mark.xdist_group(case.group))
        for case in cases
    ])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if option(config, "model"):
        return
    skip = pytest.mark.skip(reason="quantfair audits need --model (e.g. --model smollm2-135m)")
    audits = [item for item in items if item.get_closest_marker("quantfair")]
    for item in audits:
        item.add_marker(skip)
    if audits:
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter:
            reporter.write_line(f"quantfair: {len(audits)} audits skipped: no --model given")


@pytest.fixture(scope="session")
def quantfair_audit(request: pytest.FixtureRequest):
    """The per-process audit context: one model, one evaluator, shared by every audit."""
    run = request.config.pluginmanager.get_plugin("quantfair-run")
    if run is None:
        pytest.skip("quantfair audits need --model")
    return run.context()


def _announcer(config: pytest.Config):
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None or hasattr(config, "workerinput"):
        return lambda message: print(message, file=sys.stderr, flush=True)

    def announce(message: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(message)

    return announce


class QuantfairRun:
    """Owns one run: builds the context lazily (per process) and, on the controller, gathers
    every audit's evidence from test reports, whichever process produced them."""

    def __init__(self, config: pytest.Config, settings: dict) -> None:
        self.config = config
        self.settings = settings
        self.started = time.time()
        self._context = None
        self.audits: dict[str, dict] = {}
        self.rows: list[dict] = []
        self.model: dict = {}
        self.crashed: list[str] = []
        self.processes: dict[int, int] = {}  # pid -> models loaded there
        self.suggestion: dict | None = None
        self.report_paths: tuple[Path, Path] | None = None
        self.regressions: list[str] = []

    def context(self):
        if self._context is None:
            from quantfair.context import AuditContext
            from quantfair.session import AuditSession, SessionConfig

            s = self.settings
            session = AuditSession(
                SessionConfig(model=s["model"], scheme=s["scheme"], languages=s["languages"],
                              units=s["units"], corpus=s["corpus"], device=s["device"],
                              random_weights=s["random_weights"]),
                announce=_announcer(self.config))
            self._context = AuditContext(session, candidate=s["strategy"])
        return self._context

    # -- collecting (controller and serial runs) -------------------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        crashed = report.failed and "crashed while running" in (report.longreprtext or "")
        if "quantfair" not in report.keywords and not crashed:
            return
        properties = dict(report.user_properties)
        if "quantfair_rows" in properties:
            self.rows.extend(properties["quantfair_rows"])
        if "quantfair_process" in properties:
            process = properties["quantfair_process"]
            self.processes[process["pid"]] = max(process["loads"],
                                                 self.processes.get(process["pid"], 0))
        if "quantfair_model" in properties:
            self.model = properties["quantfair_model"]
        if "quantfair_suggestion" in properties:
            self.suggestion = properties["quantfair_suggestion"]
        entry = self.audits.setdefault(report.nodeid, {"nodeid": report.nodeid})
        if "quantfair" in properties:
            entry.update(properties["quantfair"])
        if crashed:
            self.crashed.append(report.nodeid)
        if report.when == "call" or report.failed or report.skipped:
            if report.skipped:
                outcome = "skipped"
                entry["message"] = _skip_reason(report)
            elif report.failed:
                outcome = "failed" if report.when == "call" and not crashed else "error"
                if not entry.get("message"):
                    lines = (report.longreprtext or "").strip().splitlines()
                    entry["message"] = lines[-1] if lines else "error"
            else:
                outcome = "passed"
            entry["outcome"] = outcome
            entry["duration_s"] = round(report.duration, 3)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(self.config, "workerinput") or not self.audits:
            return
        from quantfair.report import build_report, compare, write_report

        incomplete = [f"worker crashed running {nodeid}" for nodeid in self.crashed]
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            incomplete.append("the run was interrupted")
        missing = [n for n, e in self.audits.items() if "outcome" not in e]
        incomplete += [f"no outcome for {n}" for n in missing]
        for entry in self.audits.values():
            entry.setdefault("outcome", "error")
        s = self.settings
        settings = {"model": s["model"], "random_weights": s["random_weights"],
                    "scheme": s["scheme"].name, "languages": s["languages"],
                    "units": s["units"], "corpus": s["corpus"] or "udhr (shipped)",
                    "device": s["device"] or "auto", "args": list(self.config.args),
                    "workers": getattr(self.config.option, "numprocesses", None)}
        report = build_report(model=self.model, settings=settings,
                              audits=list(self.audits.values()), rows=self.rows,
                              incomplete=incomplete, duration_s=time.time() - self.started)
        report["suggestion"] = self.suggestion
        report["processes"] = [{"pid": pid, "loads": loads}
                               for pid, loads in sorted(self.processes.items())]
        if s["baseline"] is not None:
            report["comparison"] = compare(s["baseline"], report, s["tolerance"])
            self.regressions = report["comparison"]["regressions"]
            if self.regressions and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if not s["no_report"]:
            self.report_paths = write_report(report, self._json_path())
        self.report = report

    def _json_path(self) -> Path:
        if self.settings["report"]:
            return Path(self.settings["report"]).with_suffix(".json")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.settings["model"].strip("/"))
        return Path(self.config.invocation_params.dir) / "reports" / f"{name}-{stamp}.json"

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if hasattr(self.config, "workerinput") or not self.audits:
            return
        from quantfair.cli import _table
        from quantfair.report import experiment_span

        tr = terminalreporter
        tr.section("quantfair audit summary")
        rows = []
        for entry in sorted(self.audits.values(), key=lambda e: e["nodeid"]):
            value = entry.get("value")
            low, high = entry.get("low"), entry.get("high")
            spread = f"{(high - low) / 2:.3g}" if low is not None and high is not None else ""
            rows.append((entry.get("finding", entry["nodeid"]),
                         experiment_span(entry.get("experiments", [])), entry.get("case", ""),
                         entry.get("quantity", ""),
                         f"{value:.4g}" if isinstance(value, float) else "", spread,
                         entry.get("bound", ""), entry["outcome"]))
        tr.write_line(_table(["Finding", "Exp", "Case", "Metric", "Value", "±", "Bound",
                              "Outcome"], rows))
        report = getattr(self, "report", None)
        if report is not None:
            tr.write_line(f"verdict: {report['verdict']}  " + "  ".join(
                f"{k}: {v}" for k, v in sorted(report["summary"].items())))
            for reason in report["incomplete"]:
                tr.write_line(f"INCOMPLETE: {reason}", red=True)
        for regression in self.regressions:
            tr.write_line(f"REGRESSION vs baseline: {regression}", red=True)
        if self.report_paths:
            tr.write_line(f"quantfair report: {self.report_paths[1]} (JSON: "
                          f"{self.report_paths[0]})")


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr or "skipped")
