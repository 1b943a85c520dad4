"""Find the parameters worth keeping in full precision for *this* model, within a budget.

Every candidate is scored on calibration units disjoint from the audit units (so the audit
afterwards is a held-out test) by disparity as the audits measure it: each language's NLL
change on the units over English's on the same texts (`Measurement.disparity`), as mean +
worst over the non-reference languages (fairness, not only the average), English's change
never counted above the unprotected model's (`calibration_score`). Beside it, the
damage: the KL divergence of the quantized model's next-token distributions from the FP
model's, summed over the tokens (`_damage`). The KL divergence is not what the audits judge
(the NLL change at the observed token is its expectation only for text sampled from the FP
model, and a corpus is not): under int4-g128-linear on Gemma 3, keeping the largest 32% of
the weights raised the KL disparity on four calibration units (mean 1.85 -> 1.86, worst
2.36 -> 2.55) while it lowered the NLL disparity there (mean 1.56 -> 0.81) as on the 22
audit units; over every baseline selector of twelve cells (two models, two schemes, three
budgets), the NLL score orders 82% of pairs as the audit units do, the KL score 68%
(`benchmarks/score_ranking.py`).
A candidate may not raise the damage above the unprotected model's, neither English's own nor
the languages' (each over English's unprotected damage, mean + worst): fairness is not bought
by making the model worse. Candidates, all within the budget (a fraction of the parameters):

1. a portfolio of selectors spending the whole budget: the seed's recipe scaled to it
   (`seed:`), the highest-variance whole layers (`variance:`), and where the scheme can keep
   single entries (round-to-nearest schemes; block formats and artifacts keep whole tensors)
   the most salient input columns (`act:`), the columns the other languages lean on more
   than English (`actgap:`), the largest weights (`magnitude:`) and super weights
   (`superweights:`);
   super weights whose protection removes at least half the damage (`REPAIR`) are kept
   first, whatever they do to disparity, and the search goes on from them: what they keep
   breaks the model where it sits (Yu et al. 2024); so is any selector repairing a model the
   scheme destroys (English's perplexity up more than `DESTROYED`-fold: disparities there are
   ratios of noise). Elsewhere a selector spreading the budget over the
   model that removes as much (at larger budgets the largest weights, or `act:`) repairs the
   scheme's coarseness rather than one broken part, and may or may not make the model
   fairer: it is a finalist (3.), whatever its calibration score. Kept first, such
   selectors were not fairer than no protection on the audit units on SmolLM2 under
   int4-g128-linear at 5% and 12% (`act:` raised both disparities at 5%), while on Gemma 3 at
   1% the largest weights were fairer there and scored above no protection on the
   calibration units: the finalists' round, on more units, decides;
2. a greedy structural search over protection units (whole layers ordered by the score of
   keeping each alone, every layer measured once if one can still be kept:
   `Search.layer_ranking`, then, once no whole layer fits, their attention, MLP and norm
   halves, or where the budget is below every half their single tensors, and model-wide
   norms, biases and position embeddings); a unit that removes at
   least half the damage is taken first, like such a selector, whatever it does to
   disparity;
3. the best of these, refined by adding small units (norms, biases, super weights) while the
   score improves. "Best" is decided in two rounds: the `FINALISTS` candidates scoring
   lowest on the calibration units, the greedy path stopped at each earlier step, and no
   protection (or what breaks the model, kept first), are scored again on every unit of the
   search's pool, the calibration units and the others no candidate was scored or chosen on
   (where the pool has no others, every held-out unit, the selectors' calibration text too:
   `confirmation_pool`), and the lowest there is refined: on a few units candidates often
   differ by less than the noise, and the lowest of many noisy scores is biased low (the
   winner's curse). Lowest of those proven fairer than no protection there (`proven_fairer`:
   the paired bootstrap CI of it - none below 0 in mean and in worst-language disparity),
   where any is: a suggestion is to be proven on held-out text, and a lower score within the
   noise proves nothing (on SmolLM2 under int4-g128-linear at 12%, the largest weights
   scored 4.96 on the pool's 9 units and the greedy path 4.99, with it - none in mean -0.32
   [-1.33, 1.19] and -0.50 [-0.61, -0.37]). Held-out units are few (9 of the corpus's 31
   when 22 are audited), so the round keeps the calibration units too: the greedy path,
   chosen on them, gains a bias there, but on 5 units alone two whole-layer sets within ~0.1
   swap places by chance (on Gemma 3 under gguf:Q4_0 at 5%, the 5 other units put layers 0
   and 11 ahead of the seed's layers 0 and 17; all 9, as 22 audit units do significantly,
   not).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property, partial

import numpy as np

from quantfair.config import require_other_languages
from quantfair.corpus import Corpus
from quantfair.errors import UsageError
from quantfair.evaluate import model_results
from quantfair.metrics import MIN_UNITS, TOO_FEW_UNITS, paired_difference
from quantfair.report import searched_with
from quantfair.schemes import ARTIFACT
from quantfair.session import AuditSession
from quantfair.storage import atomic_write, cache_writes, json_digest, json_safe
from quantfair.strategies import StrategyResolver
from quantfair.strategy_syntax import CALIBRATED_SELECTORS, element_terms
from quantfair.text import plural

WIDTH = 3  # whole layers tried per step (lowest score alone first: `Search.layer_ranking`)
REPAIR = 0.5  # a protection removing at least this share of the damage repairs the model
# A scheme multiplying English's perplexity by more than this destroys the model (plain int4
# on SmolLM2: x900,000 and more; int4-g128-linear x2.1-2.4 and gguf:Q4_0 x1.2-1.8 on SmolLM2
# and Gemma 3): there any selector repairing the model is kept first.
DESTROYED = 10.0
FINALISTS = 3  # candidates scored again on the whole search pool before one is refined
# A candidate must lower the score by more than this share: float32 summation order (which
# units share a CPU batch) moves a score by ~1e-7, and a unit protecting nothing that matters
# (norms a GGUF file keeps in F32 anyway) must not be taken for that.
IMPROVEMENT = 1e-6
# What a suggestion's scores are: a cached suggestion searched with another score is not
# shown as this search's result (its trace's numbers would mean something else).
SCORE = "mean + worst NLL disparity, English's NLL change capped at its unprotected value"


@dataclass(frozen=True)
class Step:
    step: int  # 0: the portfolio, 1.. the structural search, then the refinement
    candidate: str
    strategy: str
    score: float  # mean + worst disparity on calibration units (lower is better)
    overhead: float
    english_damage: float  # English's summed KL divergence on calibration units, nats
    chosen: bool
    mean_disparity: float = math.nan
    worst_disparity: float = math.nan
    phase: str = "structural"  # "portfolio", "structural" or "refinement"
    damage: float = math.nan  # mean + worst damage over English's unprotected damage
    allowed: bool = True  # False: it raises the damage (`Search.allowed`), so not taken


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
    # the finalists scored again on the whole pool: strategy, score, mean and worst
    # disparity
    confirmation: list[dict] = field(default_factory=list)
    confirmation_units: list[str] = field(default_factory=list)
    audit_units: list[str] = field(default_factory=list)  # those `comparison` was measured on
    note: str = ""
    score_definition: str = SCORE
    languages: list[str] = field(default_factory=list)  # those searched on, English first
    evaluator: str = ""  # the model's tokenizer and settings (`Evaluator.identity`)
    computed_with: dict = field(default_factory=dict)  # the same by part (`Evaluator.computes`)
    corpus: str = ""  # the corpus searched on, as the report's settings name it
    corpus_digest: str = ""  # its text's digest (`Corpus.digest`): unit names are its own
    # the digest of the text calibrated selectors (act:, superweights:, ...) chose entries on
    selector_texts: str = ""
    dtype: str = ""  # the --dtype searched in: each has its own results folder (`_path`)

    def to_json(self) -> dict:
        """Strict JSON: an undefined score (infinite: English's NLL did not rise) is null."""
        return json_safe({**asdict(self), "trace": [asdict(s) for s in self.trace]})


def _nll_change(m) -> np.ndarray:
    """Per language [languages], the quantized minus the FP NLL summed over every scored
    token of the units, nats: the numerator of the audits' disparity."""
    return (m.nll_q - m.nll_fp).sum(axis=1)


def _damage(m) -> np.ndarray:
    """Per language [languages], the KL divergence sum_v p_fp(v) (log p_fp(v) - log p_q(v))
    summed over every scored token of the units, nats (llama.cpp's KLD, summed): the
    expectation, under the FP model's next-token distribution, of the NLL change at the next
    token; never negative, zero only where the distributions agree, so free of the noise of
    the one observed token: how much of the model a protection repairs. Sums, not per-byte
    means: the texts say the same in every language, as for the audits' disparity. Raises
    ValueError for a measurement without distribution statistics."""
    return m.sums("kld").sum(axis=1)


@dataclass(frozen=True)
class Score:
    value: float  # mean + worst disparity: what the search lowers (inf: undefined)
    mean: float  # mean disparity (NLL change over English's under the same protection)
    worst: float  # worst-language disparity
    damage: float  # mean + worst damage over English's unprotected damage: may not grow
    english: float  # English's summed KL divergence, nats
    english_change: float = math.nan  # English's summed NLL change, nats
    english_tokens: float = math.nan  # English's scored tokens

    @property
    def destroys(self) -> bool:
        """Whether English's perplexity rose more than `DESTROYED`-fold: exp of its NLL
        change per token."""
        return self.english_change > math.log(DESTROYED) * self.english_tokens


def calibration_score(m, none: Score | None = None) -> Score:
    """The score of a calibration measurement `m`, on the same units as `none`, the
    unprotected model's score (None: `m` is that measurement). Its value is disparity as the
    audits measure it, each non-reference language's NLL change (`_nll_change`) over English's,
    as mean + worst (fairness, not only the average), with English's NLL change capped at its
    unprotected value where that is positive: a protection that raises English's NLL change
    gets no credit for the ratio falling (on SmolLM2 under gguf:Q4_0, whole layers raised it
    on a few calibration units by chance, and not on the audit units). Infinite where English's
    NLL does not rise (a ratio to nothing: the audits call it undefined). Beside it the
    damage, the KL divergence (`_damage`) of each language over English's *unprotected* KL
    divergence, as mean + worst: the damage removed, with the worst language weighted up."""
    change, damage = _nll_change(m), _damage(m)
    english, english_change = float(damage[m.ref]), float(change[m.ref])
    cap = (english_change if none is None or not none.english_change > 0
           else min(english_change, none.english_change))
    others = m.per_language(change)  # each language once
    own = others / cap if cap > 0 else np.full(len(others), math.inf)
    fixed = m.per_language(damage) / max(english if none is None else none.english, 1e-9)
    return Score(float(own.mean() + own.max()), float(own.mean()), float(own.max()),
                 float(fixed.mean() + fixed.max()), english, english_change,
                 float(m.tokens[m.ref].sum()))


class Search:
    def __init__(self, session: AuditSession, budget: float, calibration, width: int = WIDTH,
                 pool: Corpus | None = None):
        """`calibration`: the units candidates are scored on; `pool`: the units the
        finalists are scored on again, the calibration units and others (None: no second
        round)."""
        self.session = session
        self.budget = budget
        self.calibration = calibration
        self.pool = pool
        self.confirmed: list[dict] = []
        self.width = width
        self.resolver = session.resolver()
        self._started = time.monotonic()
        self._paces: list[float] = []  # seconds per token scored of each measurement (`phase`)
        self.none = calibration_score(self.measure([]))
        # that measurement ran every layer on text not scored before (the FP side's too): the
        # pace on other units, not the search's, which reuses the layers candidates share
        self._fresh_pace = self._paces.pop() if self._paces else None
        self.floor = self.none  # the damage no candidate may exceed (`allowed`)
        self.kept: list[str] = []  # the units kept first because they break the model
        self._ranking: list[str] | None = None
        self.announce = print

    def overhead(self, units: list[str]) -> float:
        return self.session.overhead("+".join(units) or "none").fraction

    def fits(self, units: list[str]) -> bool:
        return self.overhead(units) <= self.budget + 1e-12

    def measure(self, units: list[str], corpus: Corpus | None = None):
        """Protecting `units`, measured with the distribution statistics the score needs, on
        `corpus` (the calibration units when None)."""
        corpus, started = corpus or self.calibration, time.monotonic()
        evaluator = self.session.evaluator
        tokens = evaluator.tokens_computed
        measured = self.session.measure("+".join(units) or "none", corpus=corpus,
                                        distribution=True)
        if scored := evaluator.tokens_computed - tokens:  # else read from the cache
            self._paces.append((time.monotonic() - started) / scored)
        return measured

    def phase(self, what: str, count: int, corpus: Corpus | None = None) -> None:
        """Say that a phase of `count` measurements on `corpus` (the calibration units when
        None) starts, with the search's time so far and about how long the phase takes (one-off
        costs, such as a selector's calibration, left out): on the calibration units at the
        median pace of the search's measurements so far; elsewhere on its units not
        calibrated on, with their FP reference, at the pace of the first measurement, which
        ran every layer (the search reuses the hidden states of layers candidates share)."""
        elapsed = time.monotonic() - self._started
        pace = float(np.median(self._paces)) if self._paces else None
        if corpus is None:
            tokens = count * self._calibration_tokens
        else:
            tokens = (count + 1) * self._tokens(corpus, leave_out=self.calibration)
            pace = self._fresh_pace if self._fresh_pace is not None else pace
        about = f", about {_duration(tokens * pace)} at the pace so far" if pace else ""
        self.announce(f"quantfair suggest: {what}{about} ({_duration(elapsed)} so far)")

    @cached_property
    def _calibration_tokens(self) -> int:
        return self._tokens(self.calibration)  # the same text at every step's phase line

    def _tokens(self, corpus: Corpus, leave_out: Corpus | None = None) -> int:
        """Tokens the model scores on `corpus`'s texts, but those of `leave_out`'s units (a
        text's first id, BOS where it has one, is context, as `UnitResult.tokens` counts)."""
        units = set(corpus.units) - set(leave_out.units if leave_out else ())
        token_ids = self.session.evaluator.token_ids
        return sum(len(token_ids(text)) - 1 for texts in corpus.texts.values()
                   for unit, text in texts.items() if unit in units)

    def score(self, units: list[str]) -> Score:
        """The calibration score of protecting `units`."""
        return calibration_score(self.measure(units), self.none)

    def allowed(self, score: Score) -> bool:
        """Neither English's damage nor the languages' damage may grow above the unprotected
        model's by more than float noise (`_lower`): a protection may not buy fairness by
        making the model worse."""
        return (not _lower(self.none.english, score.english)
                and not _lower(self.floor.damage, score.damage))

    def repairs(self, score: Score) -> bool:
        """Whether what `score` measured removes at least `REPAIR` of the unprotected model's
        damage beyond what is already kept for that reason: quantizing it breaks the model."""
        return self.allowed(score) and (
            score.damage <= self.floor.damage - REPAIR * self.none.damage)

    def step(self, number: int, phase: str, chosen: list[str], candidate: str, score: Score,
             picked: bool) -> Step:
        return Step(number, candidate, "+".join(chosen + [candidate]), score.value,
                    self.overhead(chosen + [candidate]), score.english, picked, score.mean,
                    score.worst, phase, score.damage, self.allowed(score))

    def _exists(self, term: str) -> bool:
        return bool(_resolved(self.resolver, term))

    def portfolio(self) -> list[str]:
        """Selectors spending the budget (see the module docstring), those that fit."""
        element = ("act", "actgap", "magnitude", "superweights")
        chosen = [strategies[0] for label, strategies in budget_selectors(self.session,
                                                                           self.budget).items()
                  if label in ("seed recipe", "variance")
                  or (label in element and self.session.config.scheme.keeps_entries)]
        return [o for o in chosen if self._exists(o) and self.fits([o])]

    def layer_ranking(self) -> list[str]:
        """Every whole layer, ordered by the score of keeping it beside what is kept first
        (`kept`), lowest first, those breaking the model (`repairs`) before the others and
        those whose keeping raises the damage (`allowed`) after them: measured once for
        the search, whether or not a layer fits the budget, as it orders the layers whose
        halves are tried too. Which layer matters is model-specific, and the weights do not
        say: on SmolLM2 under gguf:Q4_0 none of the four layers whose keeping alone lowered
        disparity significantly on the audit units was among the three of highest weight
        variance (the order used before)."""
        if self._ranking is None:
            layers = [layer for layer in _layers(self.resolver) if layer not in self.kept]
            self.phase(f"each of {len(layers)} layers kept alone", len(layers))
            scores = {layer: self.score(self.kept + [layer]) for layer in layers}

            def order(layer: str) -> tuple[int, float]:
                score = scores[layer]
                return (0 if self.repairs(score) else 1 if self.allowed(score) else 2,
                        score.value)

            self._ranking = sorted(layers, key=order)
        return self._ranking

    def structural(self, chosen: list[str]) -> list[str]:
        globals_ = [u for u in ("ln", "ln_f", "biases", "embed.pos")
                    if self._exists(u) and u not in chosen]
        # Every layer is measured only if one of them, or a part of one, can still be kept:
        # what is kept first may spend the whole budget (a whole layer holds its parts).
        if self._ranking is None and not self._new(chosen, self.parts(_layers(self.resolver))):
            return self._new(chosen, globals_)
        ranked = [layer for layer in self.layer_ranking() if layer not in chosen][: self.width]
        fits = [c for c in ranked if self.fits(chosen + [c])]
        # Parts of layers only once whole layers no longer fit: the search stays affordable.
        parts = [] if fits else [h for h in self.parts(ranked) if h not in chosen]
        return self._new(chosen, globals_ + fits + parts)

    @cached_property
    def parts(self) -> Callable[[Iterable[str]], list[str]]:
        """The finest parts of layers the search tries: their halves, or single tensors where
        the budget is below every half (`_halves`, `_tensors`)."""
        if self._new([], _halves(_layers(self.resolver))):
            return _halves
        return partial(_tensors, self.resolver)

    def _kept(self, units: list[str]) -> set[str]:
        """The quantized tensors protecting `units` keeps, wholly or in part: tensors the
        scheme leaves alone (norms a GGUF file keeps in F32, an artifact's tensors equal to
        the FP model's) are not counted."""
        protection = self.resolver.resolve("+".join(units) or "none")
        return {name for name in protection
                if self.resolver.bank.quantizes(self.resolver.parts[name], self.resolver.scheme)}

    def _new(self, chosen: list[str], options: list[str]) -> list[str]:
        """The options that fit beside `chosen` and keep another quantized tensor (selectors
        of single entries are always new): any other would cost a forward pass per
        calibration unit to change nothing."""
        before = self._kept(chosen)
        return [c for c in options if self.fits(chosen + [c])
                and (self._kept(chosen + [c]) != before or ":" in c)]

    def greedy(self, chosen: list[str], best: Score, options, phase: str, first_step: int
               ) -> tuple[list[str], Score, list[Step]]:
        """Add the best-scoring option of `options(chosen)` while one improves the score. An
        option whose quantization breaks the model (keeping it removes at least `REPAIR` of
        the damage) is added first, whatever it does to disparity (as a selector is in
        `run`), of several such the one scoring lowest; what follows may not undo it."""
        trace, number = [], first_step
        while candidates := options(chosen):
            self.phase(f"{phase} step {number}, {plural(len(candidates), 'candidate')}",
                       len(candidates))
            scored = [(self.score(chosen + [c]), c) for c in candidates]
            broken = [(s.value, i) for i, (s, _) in enumerate(scored) if self.repairs(s)]
            good = broken or [(s.value, i) for i, (s, _) in enumerate(scored)
                              if self.allowed(s) and _lower(s.value, best.value)]
            pick = scored[min(good)[1]] if good else None
            trace += [self.step(number, phase, chosen, c, s, pick is not None and c == pick[1])
                      for s, c in scored]
            if pick is None:
                break
            best, chosen, number = pick[0], chosen + [pick[1]], number + 1
            if broken:
                self.floor, self.kept = best, chosen
        return chosen, best, trace

    def confirm(self, finalists: list[tuple[Score, list[str]]]) -> tuple[Score, list[str]]:
        """The finalist (calibration score, units), best first, to refine: of those proven
        fairer than no protection on the pool's units (`proven_fairer`), else of all, the one
        scoring lowest there; the first when there is no pool or a single finalist."""
        if self.pool is None or len(finalists) < 2:
            return finalists[0]
        self.phase(f"{len(finalists)} finalists on {len(self.pool.units)} units per language",
                   len(finalists) + 1, self.pool)
        unprotected = self.measure([], self.pool)
        none = calibration_score(unprotected)
        self.confirmed = []
        for _, units in finalists:
            measured = self.measure(units, self.pool)
            score = calibration_score(measured, none)
            versus = difference_from_none(measured, unprotected)
            self.confirmed.append({"strategy": "+".join(units) or "none", "score": score.value,
                                   "mean_disparity": score.mean,
                                   "worst_disparity": score.worst, **versus,
                                   "proven": proven_fairer(versus)})
        return finalists[min(range(len(finalists)), key=lambda i: (
            not self.confirmed[i]["proven"], self.confirmed[i]["score"]))]

    def run(self, announce) -> tuple[list[str], Score, list[Step]]:
        self.announce = announce
        trace = [self.step(0, "portfolio", [], "none", self.none, False)]
        portfolio = self.portfolio()
        self.phase(f"portfolio of {plural(len(portfolio), 'selector')}", len(portfolio))
        scores = {option: self.score([option]) for option in portfolio}
        trace += [self.step(0, "portfolio", [], o, s, False) for o, s in scores.items()]
        # Super weights (Yu et al. 2024) whose keeping removes at least half the damage break
        # the model where they sit: kept first, whatever that does to disparity; the rest may
        # not undo it. So is any selector that repairs a model the scheme destroys (its
        # disparities are ratios of noise). Elsewhere a selector spreading the budget over the
        # model that removes as much repairs the scheme's coarseness, not one broken part: a
        # finalist whatever its score on the calibration units, decided on the pool.
        repairs = {o for o, s in scores.items() if self.repairs(s)}
        local = sorted((scores[o].value, o) for o in repairs
                       if o.startswith("superweights:") or self.none.destroys)
        if local:
            self.floor, self.kept = scores[local[0][1]], [local[0][1]]
        spread = set() if self.none.destroys else repairs - {*self.kept}
        results = [(s, [o]) for o, s in scores.items()]
        structural, score, steps = self.greedy(self.kept, self.floor, self.structural,
                                               "structural", 1)
        trace += steps
        start = self.floor  # no protection, or what breaks the model kept
        results.append((score, structural))
        ranked = sorted((s.value, i) for i, (s, units) in enumerate(results)
                        if self.allowed(s) and (_lower(s.value, start.value)
                                                or "+".join(units) in spread))
        finalists = {"+".join(results[i][1]): results[i] for _, i in ranked}
        # Where the greedy path stops is decided on the pool too: each step lowered the
        # score on the calibration units, by as little as their noise (on SmolLM2 under
        # gguf:Q4_0 at 12%, layer 4, which lowers both disparities significantly on the 22
        # audit units, then four layers that undid it there).
        shorter = [(self.score(structural[:n]), structural[:n])
                   for n in range(len(self.kept) + 1, len(structural))]
        first = list(finalists)[:FINALISTS]
        first += [name for name in finalists if name in spread and name not in first]
        finalists = [*[finalists[name] for name in first],
                     *[f for f in shorter if "+".join(f[1]) not in finalists],
                     (start, self.kept)]
        best, chosen = self.confirm(finalists)
        if chosen != self.kept and self.repairs(best):  # a spread selector repairing the
            self.floor = best  # scheme's coarseness: an extra is added for its score only
        base = "+".join(chosen)
        trace = [replace(s, chosen=True) if s.phase == "portfolio" and s.strategy == base
                 else s for s in trace]
        extras = ["ln_f", "ln", "biases", "embed.pos"]
        if self.session.config.scheme.keeps_entries:  # block formats keep whole tensors
            extras.insert(0, "superweights:8")
        chosen, best, steps = self.greedy(
            chosen, best, lambda units: self._new(units, [e for e in extras if e not in units
                                                         and self._exists(e)]),
            "refinement", (steps[-1].step + 1) if steps else 1)
        trace += steps
        return chosen, best, trace


def _resolved(resolver: StrategyResolver, term: str) -> dict:
    """What `term` keeps on the resolver's model; nothing where it names nothing there (e.g.
    `embed.pos` in an architecture without position embeddings)."""
    try:
        return resolver.resolve(term)
    except UsageError:
        return {}


def _smallest_unit(session: AuditSession) -> tuple[float, str]:
    """The smallest protection unit that keeps a tensor the scheme quantizes, as (fraction of
    parameters, name): one weight where the scheme can keep single entries, else the smallest
    of the search's structural units, single tensors the finest (a GGUF file keeps its norms
    in F32 anyway)."""
    resolver = session.resolver()
    if resolver.scheme.keeps_entries:
        return 1 / sum(c.numel for c in resolver.parts.values()), "one weight"
    sizes = []
    for unit in ("ln_f", "ln", "biases", "embed.pos", *_tensors(resolver, _layers(resolver))):
        kept = _resolved(resolver, unit)
        if any(resolver.bank.quantizes(resolver.parts[name], resolver.scheme) for name in kept):
            sizes.append((session.overhead(unit).fraction, unit))
    return min(sizes, default=(math.inf, "none"))


def _layers(resolver: StrategyResolver) -> list[str]:
    """Every layer of the model as a strategy term: "L0", "L1", ..."""
    return [f"L{layer}" for layer in range(resolver.layers)]


def _halves(layers: Iterable[str]) -> list[str]:
    """The attention, MLP and norm halves of `layers` ("L3" -> "L3.attn", ...)."""
    return [f"{layer}.{block}" for layer in layers for block in ("attn", "mlp", "ln")]


def _tensors(resolver: StrategyResolver, layers: Iterable[str]) -> list[str]:
    """The single tensors of `layers` as strategy terms ("L3" -> "L3.attn.q", ...; a weight
    and its bias are one term), in the order of the halves."""
    names = {"attn": "attn", "mlp": "mlp", "norm": "ln"}
    terms = []
    for layer in layers:
        parts = [c for c in resolver.parts.values() if f"L{c.layer}" == layer]
        terms += [f"{layer}.{names[block]}.{role}" for block in names
                  for role in dict.fromkeys(c.role for c in parts if c.block == block)]
    return terms


def difference_from_none(measured, unprotected) -> dict[str, dict]:
    """The paired bootstrap difference measured - unprotected of the audits' mean and
    worst-language disparity on the same units (`mean_vs_none`, `worst_vs_none`: value,
    95% CI low and high, p-value; NaN where either is undefined). The CI is the plain
    2.5%-97.5% percentile interval, not the audits' expanded one (README, Metrics)."""
    ours, none = _averaged([measured]), _averaged([unprotected])
    return {f"{name}_vs_none": _difference(ours[name], none[name]) for name in ("mean", "worst")}


def proven_fairer(versus: dict[str, dict]) -> bool:
    """Whether the plain 95% CI of it - none (`difference_from_none`) lies below 0 in mean and in
    worst-language disparity: fairer than no protection beyond the units' noise."""
    return all(versus[f"{name}_vs_none"]["high"] < 0 for name in ("mean", "worst"))


def _lower(score: float, than: float) -> bool:
    """Whether `score` is lower than `than` by more than float noise (`IMPROVEMENT`); every
    finite score is lower than an undefined one (infinite: English's NLL did not rise)."""
    return score < than - (IMPROVEMENT * abs(than) if math.isfinite(than) else 0.0)


def search_pool(session: AuditSession, count: int) -> Corpus:
    """The held-out units the search may score on: those neither audited nor in the
    selectors' calibration text where there are at least `count` (otherwise a selector would
    be scored on its own calibration text), else any held-out units; under a block format
    every held-out unit (its candidates, whole tensors, are not chosen on any text)."""
    held_out = session.calibration
    unseen = [u for u in held_out.units if u not in session.selector_units]
    if len(unseen) < count or not session.config.scheme.keeps_entries:
        return held_out
    return held_out.select(units=unseen)


def search_units(session: AuditSession, count: int, seed: int = 0) -> Corpus:
    """`count` units of the search pool (`search_pool`) to score candidates on: a seeded
    sample, drawn as suggestions already cached drew theirs (the audit's nested sample,
    `Corpus.sample_units`, would draw other units at some counts and make them stale)."""
    pool = search_pool(session, count)
    if count >= len(pool.units):
        return pool
    chosen = set(random.Random(seed).sample(pool.units, count))
    return pool.select(units=[u for u in pool.units if u in chosen])


def confirmation_pool(session: AuditSession, calibration: Corpus) -> Corpus | None:
    """The units the finalists are scored on again: the search's pool (`search_pool`) where
    it has units beyond `calibration`, else every held-out unit, the selectors' calibration
    text too (which favours a selector chosen on it: on SmolLM2 under int4-g128-linear at 5%,
    `act:` lost all the same); None where no held-out unit is beyond `calibration`."""
    for pool in (search_pool(session, len(calibration.units)), session.calibration):
        if pool is not None and set(pool.units) - set(calibration.units):
            return pool
    return None


def suggest(session: AuditSession, budget: float, calibration_units: int = 4, seed: int = 0,
            announce=print, width: int = WIDTH) -> Suggestion:
    """Search a protection strategy for `session`'s model and scheme within `budget` (0..1)."""
    if not 0 <= budget <= 1:
        raise UsageError(f"budget must be between 0% and 100%, got {100 * budget:g}%")
    require_other_languages(session.config.languages)
    config = session.config
    config.check_search(calibration_units, budget)
    start = time.perf_counter()
    session.loaded  # noqa: B018
    passes_before = session.evaluator.forward_passes
    result = Suggestion(model=session.loaded.name, scheme=config.scheme.name, budget=budget,
                        strategy="none", overhead=0.0, score=math.nan,
                        languages=list(session.corpus.languages),
                        corpus=config.settings()["corpus"],
                        corpus_digest=config.full_corpus.digest(),
                        selector_texts=session.selector_texts_digest())
    if budget == 0:
        result.note = "budget 0%: nothing is protected"
        save(session, result)  # the latest suggestion, what `--strategy suggested` uses
        return result
    smallest, unit = _smallest_unit(session)
    if budget < smallest:
        result.note = (f"budget {100 * budget:g}% is below the smallest protection unit "
                       f"that changes the quantized model ({unit}: {100 * smallest:.2g}% of "
                       "parameters): nothing is protected")
        save(session, result)
        return result
    calibration = search_units(session, calibration_units, seed)
    confirmation = confirmation_pool(session, calibration)
    result.calibration_units = calibration.units
    search = Search(session, budget, calibration, width, confirmation)
    chosen, score, trace = search.run(announce)
    result.confirmation = search.confirmed
    result.confirmation_units = search.pool.units if search.confirmed else []
    result.strategy = "+".join(chosen) or "none"
    result.overhead = session.overhead(result.strategy).fraction
    result.score, result.trace = score.value, trace
    if not math.isfinite(score.value):
        result.note = ("the suggestion's disparity on the calibration units is undefined "
                       "(English's NLL did not rise under it), so the search could not rank it "
                       "by fairness there; the comparison on the audit units is the evidence")
    baselines = budget_selectors(session, budget)
    search.phase(f"the suggestion and {plural(len(baselines), 'baseline selector')} on "
                 f"{plural(len(session.corpus.units), 'audit unit')} per language",
                 1 + sum(map(len, baselines.values())), session.corpus)
    result.comparison = compare_on_audit_units(session, result.strategy, baselines)
    result.audit_units = session.corpus.units
    result.forward_passes = session.evaluator.forward_passes - passes_before
    result.wall_s = time.perf_counter() - start
    save(session, result)
    return result


RANDOM_SEEDS = (0, 1, 2)


def budget_selectors(session: AuditSession, budget: float) -> dict[str, list[str]]:
    """Label -> strategies of every baseline selector at `budget` (a fraction of the
    parameters; element selectors take the matching share of the quantized parameters):
    several strategies make one baseline averaged over them (random: three seeds)."""
    resolver = session.resolver()
    total = sum(c.numel for c in resolver.parts.values())
    percent = session.entry_percent(budget)
    rows = {"none": ["none"], "seed recipe": [f"seed:{100 * budget:.6g}%"],
            "act": [f"act:{percent}"], "actgap": [f"actgap:{percent}"],
            "magnitude": [f"magnitude:{percent}"],
            "gradient": [f"gradient:{percent}"],
            f"random ({len(RANDOM_SEEDS)} seeds)": [f"random:{percent}@{seed}"
                                                   for seed in RANDOM_SEEDS]}
    weights = int(budget * total)
    if weights >= 1:
        count = min(64, weights, resolver.super_weight_candidates())
        rows["superweights"] = [f"superweights:{count}"]
    per_layer = session.overhead("L0").fraction
    if per_layer <= budget:
        rows["variance"] = [f"variance:top{min(resolver.layers, int(budget // per_layer))}"]
    return rows


def _averaged(measurements) -> dict:
    """Mean and worst-language disparity (value, resamples) averaged over `measurements`."""
    means, worsts = zip(*[(m.mean_draws(), m.worst_draws()) for m in measurements], strict=True)
    return {name: (float(np.mean([d[0] for d in draws])),
                   np.mean([d[1] for d in draws], axis=0), draws[0][2])
            for name, draws in (("mean", means), ("worst", worsts))}


def _estimate(draws: tuple[float, np.ndarray, str]) -> dict:
    value, samples, reason = draws
    defined = samples.size and not np.isnan(samples).all()
    low, high = np.nanpercentile(samples, [2.5, 97.5]) if defined else (math.nan,) * 2
    return {"value": value, "low": float(low), "high": float(high), "undefined": reason or None}


def _difference(a: tuple[float, np.ndarray, str], b: tuple[float, np.ndarray, str]) -> dict:
    """The paired bootstrap difference a - b of two (value, resamples, undefined reason)
    disparities; undefined where either is."""
    if a[2] or b[2]:
        return {"value": math.nan, "low": math.nan, "high": math.nan, "p_value": math.nan,
                "undefined": a[2] or b[2]}
    d = paired_difference(a[:2], b[:2], units=None)  # as `_estimate`: the plain interval
    return {"value": d.difference, "low": d.low, "high": d.high, "p_value": d.p_value}


def compare_on_audit_units(session: AuditSession, suggested: str,
                           baselines: dict[str, list[str]]) -> list[dict]:
    """The suggestion against every baseline selector at the same budget (`baselines`, as
    `budget_selectors` gives them), on the audit units (held out from the search): mean and
    worst-language disparity with 95% CIs, the paired bootstrap difference suggested -
    baseline of each (`mean_difference`, `worst_difference`),
    each row's own difference from no protection (`mean_vs_none`, `worst_vs_none`: whether any
    selector at this budget is fairer than none at all), and whether the scheme can store the
    selection (`storable`: a block format such as GGUF holds one type per tensor, so single
    kept entries are only simulated there)."""
    resolver = session.resolver()

    def storable(strategies: list[str]) -> bool:
        return resolver.scheme.keeps_entries or all(
            keep is True for s in strategies for keep in resolver.resolve(s).values())

    selectors = {"suggested": [suggested], **baselines}
    measured = {label: [session.measure(s) for s in strategies]
                for label, strategies in selectors.items()}
    draws = {label: _averaged(m) for label, m in measured.items()}
    english = {label: _english_degradation(m) for label, m in measured.items()}
    few = TOO_FEW_UNITS if len(session.corpus.units) < MIN_UNITS else ""  # one unit: no CI
    comparison = []
    for label, strategies in selectors.items():
        row = {"label": label, "strategies": strategies,
               "overhead": float(np.mean([session.overhead(s).fraction for s in strategies])),
               "storable": storable(strategies),
               "english_degradation": english[label][0]}
        if label != "none":
            row["english_vs_none"] = _difference((*english[label], few), (*english["none"], few))
        for name in ("mean", "worst"):
            row[f"{name}_disparity"] = _estimate(draws[label][name])
            if label != "suggested":
                row[f"{name}_difference"] = _difference(draws["suggested"][name],
                                                       draws[label][name])
            if label != "none":
                row[f"{name}_vs_none"] = _difference(draws[label][name], draws["none"][name])
        comparison.append(row)
    return comparison


def _english_degradation(measurements) -> tuple[float, np.ndarray]:
    """English's degradation (ppl_q / ppl_fp - 1) averaged over `measurements`, over the shared
    bootstrap resamples."""
    value, samples = zip(*[m.draws("degradation")[:2] for m in measurements], strict=True)
    ref = measurements[0].ref
    return float(np.mean([v[ref] for v in value])), np.mean([s[ref] for s in samples], axis=0)


def _duration(seconds: float) -> str:
    """`seconds` as "45 s", "12 min" or "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _path(session: AuditSession):
    """Per model weights and scheme; under an artifact scheme, per artifact file too (its
    label stays the same across releases)."""
    artifact = f"-{session.artifact.weight_hash[:16]}" if session.artifact else ""
    return (model_results(session.loaded) /
            f"suggested-{session.config.scheme.name}{artifact}.json")


def save(session: AuditSession, suggestion: Suggestion) -> None:
    """Cache `suggestion` as the latest for the session's model (as it computes now) and
    scheme."""
    suggestion.evaluator = session.evaluator.identity
    suggestion.computed_with = session.evaluator.computes
    suggestion.dtype = session.config.dtype
    path = _path(session)
    previous, new = _read(path, session), suggestion.to_json()
    if previous and searched_with(previous) != searched_with(new):  # a search took minutes
        session.announce(f"quantfair: this replaces the cached suggestion "
                         f"{previous['strategy']} ({searched_with(previous)}) as --strategy "
                         f"suggested for {session.config.scheme.name}")
    with cache_writes(path.parent):
        atomic_write(path, json.dumps({**new, "checksum": _checksum(new)}, indent=2,
                                      allow_nan=False).encode())


def _checksum(data: dict) -> str:
    """Of a suggestion's fields but its checksum: a file edited or damaged in place is not
    taken for a search's result."""
    return json_digest({k: v for k, v in data.items() if k != "checksum"})[:16]


def no_suggestion(session: AuditSession, artifacts: bool = True) -> UsageError:
    """The error of `--strategy suggested` where `load_suggestion` finds none; it names the
    schemes that have one for this model (an artifact's only where the command takes
    `--quantized`: `artifacts`)."""
    where = " for this artifact file" if session.artifact else ""
    found = (_read(path, session) for path in _path(session).parent.glob("suggested-*.json"))
    others = sorted({data.get("scheme") for data in found if data} - {session.config.scheme.name,
                                                                        None})
    named = [f"--quantized FILE --quantized-label {name.partition(':')[2]}"
             if name.startswith(f"{ARTIFACT}:") else f"--quant {name}" for name in others
             if artifacts or not name.startswith(f"{ARTIFACT}:")]
    named += [f"--dtype {dtype}" for dtype in _in_other_dtypes(session)]
    elsewhere = f" (there is one under {', '.join(named)})" if named else ""
    why = _checked(_path(session), session)[1]
    unusable = f" ({_path(session)} {why})" if why else ""
    return UsageError(f"no suggestion cached for {session.loaded.name} with "
                      f"{session.config.scheme.name} in {session.config.dtype}{where}{unusable}"
                      f": run `quantfair suggest` first{elsewhere} (a search is kept per model, "
                      "scheme and --dtype)")


def _in_other_dtypes(session: AuditSession) -> list[str]:
    """The other --dtype values a search of this model (by name) and scheme is cached in:
    weights loaded in another dtype hash to another results folder."""
    own = _path(session)
    found = set()
    for path in own.parent.parent.glob(f"*/{own.name}"):
        try:
            data = json.loads(path.read_text()) if path != own else None
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("model") == session.loaded.name:
            found.add(data.get("dtype") or None)
    return sorted(found - {None, session.config.dtype})


def load_suggestion(session: AuditSession) -> dict | None:
    """The latest suggestion for this model's weights and scheme, if one was searched with
    this search's score (`SCORE`) on the model as it computes now (tokenizer, settings)."""
    return _read(_path(session), session)


def searched_units(found: dict, session: AuditSession) -> list[str]:
    """Those of the session's units that the suggestion `found` (`load_suggestion`) was
    searched on, its calibration and confirmation units: measured there, it is not a
    held-out test. None where it was searched on another corpus (`other_corpus`): the same
    unit names hold other text there."""
    if other_corpus(found, session):
        return []
    searched = {*found.get("calibration_units", []), *found.get("confirmation_units", [])}
    return [unit for unit in session.corpus.units if unit in searched]


def other_corpus(found: dict, session: AuditSession) -> str:
    """The corpus the suggestion `found` was searched on where it is not the session's (its
    text differs), else "" (also where the suggestion does not record one)."""
    digest = found.get("corpus_digest")
    if not digest or digest == session.config.full_corpus.digest():
        return ""
    return found.get("corpus") or "another corpus"


def reselected(found: dict, session: AuditSession) -> str:
    """Why the entries of the suggestion's calibrated selectors (`act:`, `actgap:`,
    `superweights:`, `gradient:`) may differ here from those it was searched with: they are
    chosen on each session's calibration text, which other languages or units, or a corpus
    edited since, change; "" where they are the same, or the recipe has none."""
    terms = [t for t in element_terms(found["strategy"])[1]
             if t.partition(":")[0] in CALIBRATED_SELECTORS]
    if not terms or found.get("selector_texts") == session.selector_texts_digest():
        return ""
    chosen = f"its {', '.join(terms)} choose{'s' if len(terms) == 1 else ''} entries on the "
    if other_corpus(found, session):  # the languages and units as in the search change nothing
        return (chosen + "calibration text of this corpus, not the one it was searched on, so "
                "the entries kept may not be those it scored; `quantfair suggest` again fits "
                "the recipe to this text")
    return (chosen + "calibration text of the languages and units given here, which differs "
            "from the search's, so the entries kept may not be those it scored; give "
            f"--languages {','.join(found.get('languages') or [])} "
            f"{search_units_given(found)} as in the search to keep the same")


def search_units_given(found: dict) -> str:
    """The --units the search of `found` audited on, as a hint ("--units 8")."""
    units = len(found.get("audit_units") or [])
    return f"--units {units}" if units else "--units"


def _read(path, session: AuditSession) -> dict | None:
    return _checked(path, session)[0]


def _checked(path, session: AuditSession) -> tuple[dict | None, str]:
    """(the suggestion file at `path` if it is this search's, for the model as it computes
    now; else None and why not: "" when there is no file)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # none; a file where the cache would be
        return None, ""
    except (OSError, ValueError):
        return None, "is damaged"
    if not isinstance(data, dict) or "strategy" not in data or "checksum" in data and \
            data["checksum"] != _checksum(data):
        return None, "is damaged or was edited"
    if data.get("checksum") is None or data.get("score_definition") != SCORE:
        return None, "was searched by another version of quantfair"
    if data.get("evaluator") != session.evaluator.identity:
        return None, f"was searched with {_changed(data, session)}"
    return data, ""


CHANGES = {"evaluation": "another version of quantfair's evaluation",
           "tokenizer": "another tokenizer (other token ids for the same text)",
           # the dtype too, but another one keeps its own suggestions (`_path`)
           "model settings": "other model settings (its configuration, attention "
                             "implementation or device)",
           "window": "another window", "first token": "another first token (BOS)"}


def _changed(found: dict, session: AuditSession) -> str:
    """What of `Evaluator.computes` differs between the search of `found` and the session
    (a suggestion before these were kept: either of quantfair's version or the model's)."""
    then, now = found.get("computed_with") or {}, session.evaluator.computes
    changed = [CHANGES[part] + (f" ({then[part]} tokens, now {now[part]})"
                                if part == "window" else "")
               for part in CHANGES if part in then and then[part] != now[part]]
    return ", ".join(changed) or "another version of quantfair or of the model's settings"
