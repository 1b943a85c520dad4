"""What an audit sees: the session's measurements plus the model facts checks ask about."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from quantfair import models
from quantfair.audit import CANDIDATE, Case, Finding, Matched, Outcome, Strategy, layer_quant_error
from quantfair.audit import layer_statistics as _layer_statistics
from quantfair.evaluate import Evaluator, ResultCache
from quantfair.quantize import QuantScheme
from quantfair.report import measurement_records
from quantfair.session import AuditSession
from quantfair.strategies import layer_weight_variance, protection_key


class AuditContext:
    """Per-process audit state handed to every audit through the `quantfair_audit` fixture."""

    def __init__(self, session: AuditSession, candidate: str | None = None) -> None:
        self.session = session
        self.candidate = candidate  # the --strategy under audit
        self._recorded: set[tuple] = set()
        self._rows: dict[tuple, list[dict]] = {}
        self._facts: dict[str, object] = {}
        self._model_sent = False

    @property
    def family(self) -> str:
        return self.session.loaded.family

    @property
    def layers(self) -> int:
        return self.session.resolver().layers

    def describe(self) -> str:
        config = self.session.config
        return (f"model {self.session.loaded.name} ({self.family}), scheme {config.scheme.name}, "
                f"{len(self.session.corpus.languages)} languages x "
                f"{len(self.session.corpus.units)} units")

    def model_facts(self) -> dict:
        loaded, bank = self.session.loaded, self.session.bank
        return {"name": loaded.name, "family": loaded.family, "source": loaded.source,
                "weights_note": loaded.weights_note, "weight_hash": loaded.weight_hash(),
                "layers": self.session.resolver().layers,
                "parameters": sum(c.numel for c in bank.parts.values()),
                "layer_variance": {str(k): v for k, v in self.layer_variance().items()},
                "layer_statistics": {str(k): v for k, v in self.layer_statistics().items()}}

    # -- strategies and measurements ------------------------------------------------------
    def suggestion(self) -> dict | None:
        from quantfair.suggest import load_suggestion

        return self._fact("suggestion", lambda: load_suggestion(self.session))

    def candidate_text(self) -> str:
        """The strategy given with --strategy ('suggested': the cached search result)."""
        if not self.candidate:
            pytest.skip("no --strategy given to audit")
        if self.candidate != "suggested":
            return self.candidate
        found = self.suggestion()
        if found is None:
            pytest.skip(f"no suggestion cached for {self.session.loaded.name} with "
                        f"{self.session.config.scheme.name}: run `quantfair suggest` first")
        return found["strategy"]

    def strategy_text(self, strategy: Strategy) -> str:
        if strategy == CANDIDATE:
            return self.candidate_text()
        if isinstance(strategy, Matched):
            reference = self.strategy_text(strategy.reference)
            percent = 100 * self.session.overhead(reference).fraction
            seed = f"@{strategy.seed}" if strategy.selector == "random" else ""
            return f"{strategy.selector}:{percent:.4f}%{seed}"
        return strategy

    def protection_key(self, strategy: Strategy) -> str:
        resolver = self.session.resolver()
        return protection_key(resolver.resolve(self.strategy_text(strategy)))

    def layer_index(self, token: str) -> int:
        names = self.session.resolver().resolve(token)
        return self.session.bank.parts[next(iter(names))].layer

    def measure(self, strategy: Strategy, scheme: str | None = None, length: str | None = None):
        parsed = QuantScheme.parse(scheme) if scheme else self.session.config.scheme
        corpus = self.session.corpus.with_length(length) if length else self.session.corpus
        text = self.strategy_text(strategy)
        measurement = self.session.measure(text, parsed, corpus)
        label = text if strategy == CANDIDATE else str(strategy)
        key = (parsed.name, label, length or "medium")
        if key not in self._rows:
            overhead = self.session.overhead(text, parsed)
            self._rows[key] = measurement_records(
                measurement, strategy=label, scheme=parsed.name,
                length=length or "medium", overhead=overhead, resolved=text)
        return measurement

    # -- model facts ----------------------------------------------------------------------
    def _fact(self, name: str, compute):
        if name not in self._facts:
            self._facts[name] = compute()
        return self._facts[name]

    def layer_statistics(self):
        return self._fact("stats", lambda: _layer_statistics(self.session.bank))

    def layer_variance(self):
        return self._fact("variance", lambda: layer_weight_variance(self.session.bank))

    def layer_quant_error(self):
        return self._fact("quant_error", lambda: layer_quant_error(
            self.session.bank, self.session.config.scheme))

    def value_weight_ratio(self) -> float:
        bank = self.session.bank
        last = max(c.layer for c in bank.parts.values() if c.layer is not None)
        q, k, v = [], [], []
        for c in bank.parts.values():
            if c.layer != last or c.block != "attn" or c.kind != "weight":
                continue
            w = bank.fp[c.name].t() if c.transposed else bank.fp[c.name]
            if c.role == "qkv":  # fused (out = 3 * hidden): q, k, v stacked along outputs
                parts = w.reshape(3, -1, w.shape[-1]) if c.transposed else w.chunk(3, dim=0)
                q.append(parts[0]), k.append(parts[1]), v.append(parts[2])
            elif c.role in ("q", "k", "v"):
                {"q": q, "k": k, "v": v}[c.role].append(w)
        mean = lambda ws: torch.cat([w.abs().flatten() for w in ws]).mean().item()  # noqa: E731
        return mean(v) / mean(q + k)

    def overlap(self, first: str, second: str) -> float:
        resolver = self.session.resolver()
        a, b = resolver.resolve(first), resolver.resolve(second)
        inter = union = 0
        for name in set(a) | set(b):
            numel = self.session.bank.parts[name].numel
            mask_a = _mask(a.get(name, False), numel)
            mask_b = _mask(b.get(name, False), numel)
            inter += int((mask_a & mask_b).sum())
            union += int((mask_a | mask_b).sum())
        return inter / union if union else 0.0

    def rescore_spread(self, strategy: str) -> float:
        """Re-score two units of every language with a fresh, cache-less evaluator."""
        session = self.session
        measurement = self.measure(strategy)
        units = session.corpus.units[:2]
        texts = [session.corpus.texts[lang][u] for lang in session.corpus.languages for u in units]
        resolver = session.resolver()
        session.bank.apply(session.config.scheme, resolver.resolve(strategy))
        with tempfile.TemporaryDirectory() as folder:
            fresh = Evaluator(session.loaded, ResultCache(Path(folder))).evaluate("rescore", texts)
        spread = 0.0
        for i, lang in enumerate(session.corpus.languages):
            for j, unit in enumerate(units):
                nll = fresh[session.corpus.texts[lang][unit]].nll
                spread = max(spread, abs(nll - measurement.nll_q[i, j]))
        return spread

    # -- evidence -------------------------------------------------------------------------
    def record(self, finding: Finding, case: Case, outcome: Outcome, record_property) -> None:
        record_property("quantfair", {
            **finding.describe(case), **asdict(outcome),
            "message": None if outcome.passed else finding.message(outcome, self),
        })
        record_property("quantfair_process", {"pid": os.getpid(), "loads": models.load_count})
        if not self._model_sent:
            record_property("quantfair_model", self.model_facts())
            if self.candidate == "suggested" and self.suggestion():
                record_property("quantfair_suggestion", self.suggestion())
            self._model_sent = True
        fresh = [key for key in self._rows if key not in self._recorded]
        if fresh:
            record_property("quantfair_rows", [r for key in fresh for r in self._rows[key]])
            self._recorded.update(fresh)


def _mask(keep, numel: int) -> torch.Tensor:
    if isinstance(keep, torch.Tensor):
        return keep.flatten().cpu()
    return torch.full((numel,), bool(keep))
