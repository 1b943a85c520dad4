"""Find the parameters worth keeping in full precision for *this* model, within a budget.

Greedy search over protection units (whole layers ordered by weight variance, then, once no
whole layer fits the budget, their attention, MLP and norm halves, and model-wide norms,
biases and position embeddings), scored on
calibration units that are disjoint from the audit units, so the audit afterwards is a
held-out test. The score of a protected set is the mean over non-reference languages of
damage(l) / damage(en, unprotected), where damage is the summed |NLL change| over units: the
disparity with a fixed denominator, so a step that also helps English is not penalised; a
step may not increase English's own damage.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

from quantfair.corpus import REFERENCE
from quantfair.errors import UsageError
from quantfair.evaluate import model_results
from quantfair.metrics import Estimate
from quantfair.session import AuditSession
from quantfair.storage import atomic_write, cache_writes
from quantfair.weights import layer_variance_ranking

WIDTH = 3  # whole layers tried per step (highest variance first)


@dataclass(frozen=True)
class Step:
    step: int
    candidate: str
    strategy: str
    score: float
    overhead: float
    english_delta: float
    chosen: bool


@dataclass
class Suggestion:
    model: str
    scheme: str
    budget: float
    strategy: str
    overhead: float
    score: float
    trace: list[Step] = field(default_factory=list)
    comparison: list[dict] = field(default_factory=list)
    forward_passes: int = 0
    wall_s: float = 0.0
    calibration_units: list[str] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict:
        return {**asdict(self), "trace": [asdict(s) for s in self.trace]}


def _damage(m) -> list[float]:
    """Per language, the summed |NLL change| over units: quantization damage in either
    direction (a random model's loss can also fall)."""
    return abs(m.nll_q - m.nll_fp).sum(axis=1)


def _estimate_dict(estimate: Estimate) -> dict:
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high,
            "undefined": estimate.undefined or None}


class Search:
    def __init__(self, session: AuditSession, budget: float, calibration, width: int = WIDTH):
        self.session = session
        self.budget = budget
        self.calibration = calibration
        self.width = width
        self.resolver = session.resolver()
        self._none = session.measure("none", corpus=calibration)
        self.english_none = float(_damage(self._none)[self._none.ref])

    def overhead(self, units: list[str]) -> float:
        return self.session.overhead("+".join(units) or "none").fraction

    def score(self, units: list[str]) -> tuple[float, float]:
        """(score, English delta NLL) of protecting `units`, on calibration units."""
        m = self.session.measure("+".join(units) or "none", corpus=self.calibration)
        delta = _damage(m)
        others = [i for i, lang in enumerate(m.languages) if lang != REFERENCE]
        if self.english_none <= 0:
            return float(sum(delta[others]) / len(others)), float(delta[m.ref])
        return float(sum(delta[others]) / len(others) / self.english_none), float(delta[m.ref])

    def _exists(self, term: str) -> bool:
        try:
            return bool(self.resolver.resolve(term))
        except UsageError:  # e.g. no position embedding in this architecture
            return False

    def candidates(self, chosen: list[str]) -> list[str]:
        globals_ = [u for u in ("ln", "ln_f", "biases", "embed.pos")
                    if self._exists(u) and u not in chosen]
        ranked = [f"L{layer}" for layer in layer_variance_ranking(self.resolver.bank)
                  if f"L{layer}" not in chosen][: self.width]
        fits = [c for c in ranked if self.overhead(chosen + [c]) <= self.budget + 1e-12]
        # Halves of layers only once whole layers no longer fit: the search stays affordable.
        halves = [] if fits else [f"{layer}.{block}" for layer in ranked
                                  for block in ("attn", "mlp", "ln")
                                  if f"{layer}.{block}" not in chosen]
        return [c for c in globals_ + fits + halves
                if self.overhead(chosen + [c]) <= self.budget + 1e-12
                and set(self.resolver.resolve("+".join(chosen + [c])))
                != set(self.resolver.resolve("+".join(chosen) or "none"))]

    def run(self, announce) -> tuple[list[str], float, list[Step]]:
        chosen: list[str] = []
        best, english = self.score(chosen)
        trace = [Step(0, "none", "none", best, 0.0, english, True)]
        step = 0
        while True:
            step += 1
            options = self.candidates(chosen)
            if not options:
                break
            announce(f"quantfair suggest: step {step}, {len(options)} candidates")
            scored = []
            for candidate in options:
                units = chosen + [candidate]
                score, english_delta = self.score(units)
                scored.append((score, english_delta, candidate))
            allowed = [s for s in scored if s[1] <= english + 1e-9 * abs(english)]
            pick = min(allowed) if allowed else None
            if pick is not None and pick[0] >= best:
                pick = None  # no candidate improves on what is already protected
            for score, english_delta, candidate in scored:
                trace.append(Step(step, candidate, "+".join(chosen + [candidate]), score,
                                  self.overhead(chosen + [candidate]), english_delta,
                                  pick is not None and candidate == pick[2]))
            if pick is None:
                break
            best, english = pick[0], pick[1]
            chosen.append(pick[2])
        return chosen, best, trace


def suggest(session: AuditSession, budget: float, calibration_units: int = 4, seed: int = 0,
            announce=print, width: int = WIDTH) -> Suggestion:
    """Search a protection strategy for `session`'s model and scheme within `budget` (0..1)."""
    if not 0 <= budget <= 1:
        raise UsageError(f"budget must be between 0% and 100%, got {100 * budget:g}%")
    start = time.perf_counter()
    session.loaded  # noqa: B018
    passes_before = session.evaluator.forward_passes
    config = session.config
    result = Suggestion(model=session.loaded.name, scheme=config.scheme.name, budget=budget,
                        strategy="none", overhead=0.0, score=math.nan)
    held_out = session.calibration
    if budget == 0 or held_out is None:
        result.note = ("budget 0%: nothing is protected" if budget == 0 else
                       "no units left for calibration: lower --units")
        if held_out is None and budget > 0:
            raise UsageError("no held-out units left for calibration: lower --units")
        return result
    resolver = session.resolver()
    smallest = min(session.overhead(u).fraction for u in ("ln_f", "ln", "L0.ln")
                   if resolver.resolve(u))
    if budget < smallest:
        result.note = (f"budget {100 * budget:g}% is below the smallest protection unit "
                       f"({100 * smallest:.4f}% of parameters): nothing is protected")
        return result
    calibration = held_out.select(units=held_out.sample_units(calibration_units, seed))
    result.calibration_units = calibration.units
    search = Search(session, budget, calibration, width)
    chosen, score, trace = search.run(announce)
    result.strategy = "+".join(chosen) or "none"
    result.overhead = session.overhead(result.strategy).fraction
    result.score, result.trace = score, trace
    result.comparison = compare_on_audit_units(session, result.strategy, result.overhead)
    result.forward_passes = session.evaluator.forward_passes - passes_before
    result.wall_s = time.perf_counter() - start
    save(session, result)
    return result


def compare_on_audit_units(session: AuditSession, suggested: str, overhead: float) -> list[dict]:
    """The suggestion against none, the seed's recommendation and budget-matched baselines,
    on the audit units (held out from the search)."""
    percent = 100 * overhead
    per_layer = session.overhead("L0").fraction
    rows = [("suggested", suggested), ("none", "none"), ("recommended", "recommended"),
            ("random (same budget)", f"random:{percent:.4f}%@0")]
    if per_layer <= overhead and overhead > 0:
        rows.append(("variance (same budget)", f"variance:top{int(overhead // per_layer)}"))
    comparison = []
    for label, strategy in rows:
        if strategy.startswith("random:0.0000%"):
            strategy = "none"
        m = session.measure(strategy)
        comparison.append({"label": label, "strategy": strategy,
                           "overhead": session.overhead(strategy).fraction,
                           "mean_disparity": _estimate_dict(m.mean_disparity()),
                           "english_degradation": m.degradation()[REFERENCE].value})
    return comparison


def _path(session: AuditSession):
    return (model_results(session.loaded) /
            f"suggested-{session.config.scheme.name}.json")


def save(session: AuditSession, suggestion: Suggestion) -> None:
    path = _path(session)
    with cache_writes(path.parent):
        atomic_write(path, json.dumps(suggestion.to_json(), indent=2).encode())


def load_suggestion(session: AuditSession) -> dict | None:
    """The latest suggestion for this model's weights and scheme, if one was searched."""
    path = _path(session)
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and "strategy" in data else None
    except (OSError, ValueError):
        return None
