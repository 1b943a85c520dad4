"""What an audit sees: the session's measurements plus the model facts checks ask about
(the `quantfair.audit.AuditRun` protocol), and the evidence this process publishes."""

from __future__ import annotations

import os
import socket
import tempfile
from functools import cached_property
from pathlib import Path

import torch

from quantfair import models, weights
from quantfair.audit import CANDIDATE, Matched, NotApplicable, Strategy
from quantfair.errors import UsageError
from quantfair.evaluate import Evaluator, ResultCache, model_results
from quantfair.metrics import Measurement
from quantfair.quantize import QuantScheme
from quantfair.report import measurement_records
from quantfair.session import AuditSession
from quantfair.storage import shared_json
from quantfair.strategies import Overhead, protection_key
from quantfair.text import units_text

RESCORE_BATCH_TOKENS = 512  # padded batches of several units, logits of bounded size

class AuditContext:
    """Per-process audit state handed to every audit through the `quantfair_audit` fixture."""

    def __init__(self, session: AuditSession, candidate: str | None = None,
                 strict: bool = False) -> None:
        self.session = session
        self.candidate = candidate  # the --strategy under audit
        self.strict = strict  # inconclusive comparisons fail
        self.family = session.loaded.family
        self.layers = session.resolver().layers
        self.languages = tuple(session.corpus.languages)
        self.corpus_languages = tuple(session.config.full_corpus.languages)
        self.release_bounds = session.config.release_bounds
        self._rows: dict[tuple, list[dict]] = {}
        self._unsent: dict[tuple, None] = {}  # keys of rows measured since `new_rows`
        self._facts: dict[str, object] = {}

    def describe(self, scheme: str | None = None, length: str | None = None) -> str:
        """The model, the scheme an audit measured (`scheme`, else the run's) and its units
        (at `length`: long texts join units, so there are fewer)."""
        corpus = self.session.corpus.with_length(length) if length else self.session.corpus
        return (f"model {self.session.loaded.name} ({self.family}), scheme "
                f"{scheme or self.session.config.scheme.name}, {len(corpus.languages)} "
                f"languages x {units_text(len(corpus.units))}")

    def architecture(self) -> dict:
        """What a new checkpoint of the same model keeps (`report.architecture`)."""
        loaded = self.session.loaded
        return {"family": loaded.family, "layers": self.session.resolver().layers,
                "parameters": sum(c.numel for c in self.session.bank.parts.values()),
                "vocabulary": loaded.vocabulary}

    def model_facts(self) -> dict:
        loaded = self.session.loaded
        return {"name": loaded.name, "source": loaded.source,
                "weights_note": loaded.weights_note, "weight_hash": loaded.weight_hash(),
                "scheme_warning": self.session.scheme_warning,
                "tokenizer_warning": self.session.tokenizer_warning,
                "artifact": self.session.artifact.provenance() if self.session.artifact else None,
                **self.architecture(),
                "bias_parameters": sum(c.numel for c in self.session.bank.parts.values()
                                       if c.kind == "bias"),
                "layer_variance": {str(k): v for k, v in self.layer_variance().items()},
                "layer_statistics": {str(k): v for k, v in self.layer_statistics().items()}}

    # -- strategies and measurements ------------------------------------------------------
    def suggestion(self) -> dict | None:
        from quantfair.suggest import load_suggestion

        return self._fact("suggestion", lambda: load_suggestion(self.session))

    def candidate_text(self) -> str:
        """The strategy given with --strategy ('suggested': the cached search result)."""
        if not self.candidate:
            raise NotApplicable("no --strategy given to audit")
        if self.candidate != "suggested":
            return self.candidate
        from quantfair.suggest import no_suggestion, search_units_given, searched_units
        from quantfair.text import some

        found = self.suggestion()
        if found is None:
            raise no_suggestion(self.session)
        if seen := searched_units(found, self.session):
            units = len(self.session.corpus.units)
            fix = (f"give {search_units_given(found)} as in the search, or search again with "
                   "these") if units != len(found.get("audit_units") or []) else (
                "the same number of units, sampled otherwise: the corpus file lists its "
                "units in another order than when it was searched (the sample follows the "
                "file's order); search again")
            raise UsageError(f"the suggestion was searched on {some(seen)}, which this run "
                             f"audits ({units} units): not a held-out test; {fix}")
        return found["strategy"]

    def strategy_text(self, strategy: Strategy) -> str:
        if strategy == CANDIDATE:
            return self.candidate_text()
        if isinstance(strategy, Matched):
            reference = self.strategy_text(strategy.reference)
            percent = self.session.entry_percent(self.session.overhead(reference).fraction)
            seed = f"@{strategy.seed}" if strategy.selector == "random" else ""
            return f"{strategy.selector}:{percent}{seed}"
        return strategy

    def protection_key(self, strategy: Strategy) -> str:
        resolver = self.session.resolver()
        return protection_key(resolver.resolve(self.strategy_text(strategy)))

    def layer_index(self, token: str) -> int:
        names = self.session.resolver().resolve(token)
        return self.session.bank.parts[next(iter(names))].layer

    def overhead(self, strategy: Strategy) -> Overhead:
        return self.session.overhead(self.strategy_text(strategy))

    def measure(self, strategy: Strategy, scheme: str | None = None,
                length: str | None = None, distribution: bool = False) -> Measurement:
        parsed = QuantScheme.parse(scheme) if scheme else self.session.config.scheme
        corpus = self.session.corpus.with_length(length) if length else self.session.corpus
        text = self.strategy_text(strategy)
        measurement = self.session.measure(text, parsed, corpus, distribution)
        label = text if strategy == CANDIDATE else str(strategy)
        key = (parsed.name, label, length or "medium")
        if key not in self._rows or distribution:  # rows gain the KL-divergence fields
            overhead = self.session.overhead(text, parsed)
            self._rows[key] = measurement_records(
                measurement, units=corpus.units, strategy=label, scheme=parsed.name,
                length=length or "medium", overhead=overhead, resolved=text)
            self._unsent[key] = None
        return measurement

    def new_rows(self) -> list[dict]:
        """The measurement rows added or updated since the last call: each test report
        carries them, so a run stopped early keeps what its finished audits measured."""
        keys, self._unsent = self._unsent, {}
        return [row for key in keys for row in self._rows[key]]

    # -- model facts ----------------------------------------------------------------------
    def _fact(self, name: str, compute):
        if name not in self._facts:
            self._facts[name] = compute()
        return self._facts[name]

    def layer_statistics(self) -> dict[int, dict[str, float]]:
        """`weights.layer_statistics`, computed once for all processes sharing the results
        cache (xdist workers each publish model facts)."""
        def shared() -> dict[int, dict[str, float]]:
            path = (model_results(self.session.loaded) / "facts" /
                    f"layer-statistics-{weights.STATISTICS_DIGEST}.json")
            stored = shared_json(path, lambda: {
                str(k): v for k, v in weights.layer_statistics(self.session.bank).items()})
            return {int(k): v for k, v in stored.items()}

        return self._fact("stats", shared)

    def layer_variance(self) -> dict[int, float]:
        return self._fact("variance", lambda: weights.layer_weight_variance(self.session.bank))

    def layer_quant_error(self) -> dict[int, float]:
        return self._fact("quant_error", lambda: weights.layer_quant_error(
            self.session.bank, self.session.config.scheme))

    def value_weight_ratio(self) -> float:
        return weights.value_weight_ratio(self.session.bank)

    def overlap(self, first: Strategy, second: Strategy) -> float:
        resolver = self.session.resolver()
        return weights.overlap(self.session.bank, resolver.resolve(self.strategy_text(first)),
                               resolver.resolve(self.strategy_text(second)))

    def rescore_spread(self, strategy: Strategy) -> float:
        """Re-score two units of every language with a fresh, cache-less evaluator that puts
        them in padded batches (up to RESCORE_BATCH_TOKENS tokens, several units each); the
        largest relative NLL difference."""
        session = self.session
        measurement = self.measure(strategy)
        units = session.corpus.units[:2]
        texts = [session.corpus.texts[lang][u] for lang in session.corpus.languages for u in units]
        session.bank.apply(session.config.scheme,
                           session.resolver().resolve(self.strategy_text(strategy)))
        with tempfile.TemporaryDirectory() as folder:
            fresh = Evaluator(session.loaded, ResultCache(Path(folder)),
                              batch_tokens=RESCORE_BATCH_TOKENS).evaluate("rescore", texts)
        spread = 0.0
        for i, lang in enumerate(session.corpus.languages):
            for j, unit in enumerate(units):
                nll = fresh[session.corpus.texts[lang][unit]].nll
                spread = max(spread, abs(nll - measurement.nll_q[i, j]) / abs(nll))
        return spread

    # -- evidence -------------------------------------------------------------------------
    @cached_property
    def _environment(self) -> dict:
        """The code this process runs (`report.process_environment`): a host of a run on
        several machines may have another checkout or library version than its controller."""
        from quantfair.report import process_environment

        return process_environment()

    def payload(self) -> dict:
        """What this process publishes to the report: measurement rows, model facts, the
        number of model loads, the device the model ran on and torch's threads (a CPU's
        parallelism, which keys a reduced dtype's results), and the audited suggestion (with
        `reselected`, where its calibrated selectors may keep other entries here than
        those it scored: `suggest.reselected`)."""
        suggestion = self.suggestion() if self.candidate == "suggested" else None
        if suggestion:
            from quantfair.suggest import reselected

            suggestion = {**suggestion, "reselected": reselected(suggestion, self.session) or None}
        return {"rows": [row for rows in self._rows.values() for row in rows],
                "model": self.model_facts(),
                "process": {"pid": os.getpid(), "host": socket.gethostname(),
                            "environment": self._environment,
                            "loads": models.load_count - self.session.loads_before,
                            "device": str(self.session.loaded.device),
                            "threads": torch.get_num_threads()},
                "suggestion": suggestion}
