"""Every check class, and every encoded finding (GPT-2/OPT-only ones included), run on
synthetic measurements built so that the claim holds, and so that it does not."""

import math
from pathlib import Path

import numpy as np
import pytest

from quantfair import audit as checks
from quantfair.audit import Bound, Finding
from quantfair.config import RELEASE_QUANTITIES
from quantfair.corpus import language
from quantfair.errors import NotInModel
from quantfair.metrics import Measurement
from quantfair.strategies import Overhead

AUDITS = Path(__file__).resolve().parents[1] / "quantfair" / "audits"
LANGUAGES = ("en", "de", "ru", "he", "ar", "zh", "ja", "ko", "hi", "th", "sw")
UNITS, TOKENS = 16, 100.0
LOW, HIGH = 1.0, 3.0
SWEEP_LAYERS = {"L0": 0, "L1": 1, "L2": 2, "Lmid": 6, "L-2": 10, "Llast": 11}


def build(quantity: str, values, noise: float = 0.01) -> Measurement:
    """A measurement whose `quantity` is `values` (one number, or per language)."""
    per_language = values if isinstance(values, dict) else dict.fromkeys(LANGUAGES, values)
    jitter = 1 + noise * np.sin(np.arange(UNITS) * 1.7)
    deltas = []
    for lang in LANGUAGES:
        value = per_language.get(lang, 2.0)
        if quantity == "degradation":
            per_token = math.log1p(value)
        elif quantity == "kld_disparity":
            per_token = 0.01  # the NLL side is neutral; the KLD side carries the value
        elif lang == "en":
            per_token = 0.01
        elif quantity == "disparity":
            per_token = 0.01 * value
        else:  # seed_disparity: degradation ratio to English
            per_token = math.log1p(value * math.expm1(0.01))
        deltas.append(per_token * TOKENS * (jitter if lang != "en" else np.ones(UNITS)))
    fp = np.full((len(LANGUAGES), UNITS), 300.0)
    tokens = np.full_like(fp, TOKENS)
    chars = tokens / (0.2 + 0.05 * np.arange(len(LANGUAGES)))[:, None]  # fertility grows
    if quantity != "kld_disparity":
        return Measurement(LANGUAGES, fp, fp + np.array(deltas), tokens, chars * 2, chars)
    ratio = np.array([1.0 if lang == "en" else per_language.get(lang, 2.0) for lang in LANGUAGES])
    kld = 0.001 * chars * 2 * ratio[:, None] * jitter  # nats: `ratio` x English's per byte
    return Measurement(LANGUAGES, fp, fp + np.array(deltas), tokens, chars * 2, chars, kld=kld,
                       same_top=tokens, delta_p=0 * tokens, delta_p_sq=0 * tokens,
                       kld_tokens=tuple(row / TOKENS for row in kld))


class World:
    """An AuditRun whose measurements and model facts are set by the test."""

    layers, languages, candidate, strict = 12, LANGUAGES, "suggested", False
    corpus_languages = LANGUAGES
    release_bounds = {name: {"*": 2.0} for name in RELEASE_QUANTITIES}

    def __init__(self, family: str) -> None:
        self.family = family
        self.measurements: dict[tuple, Measurement] = {}
        self.quantity = "disparity"
        self.facts: dict = {"overhead": {}, "statistics": {}, "variance": {}, "error": {}}

    def set(self, strategy, value, scheme=None, length=None, noise=0.01) -> None:
        self.measurements[(str(strategy), scheme, length)] = build(self.quantity, value, noise)

    def measure(self, strategy, scheme=None, length=None, distribution=False):
        for key in ((str(strategy), scheme, length), (str(strategy), None, length),
                    (str(strategy), None, None)):
            if key in self.measurements:
                return self.measurements[key]
        return build(self.quantity, 2.0)

    def overhead(self, strategy):
        return Overhead(round(self.facts["overhead"].get(strategy, 0.05) * 10**6), 10**6, 0.0)

    def protection_key(self, strategy):
        return str(strategy)

    def layer_index(self, token):
        return SWEEP_LAYERS[token]

    def candidate_text(self):
        return "L0"

    def suggestion(self):
        return {"strategy": "L0", "budget": 0.12}

    def layer_statistics(self):
        return self.facts["statistics"]

    def layer_variance(self):
        return self.facts["variance"]

    def layer_quant_error(self):
        return self.facts["error"]

    def value_weight_ratio(self):
        return self.facts["ratio"]

    def overlap(self, first, second):
        return self.facts["overlap"]

    def rescore_spread(self, strategy):
        return self.facts["spread"]

    def describe(self, scheme=None, length=None):
        return "synthetic"


def inside(bound: Bound) -> float:
    if bound.min is not None and bound.max is not None:
        return (bound.min + bound.max) / 2
    if bound.max is not None:
        return bound.max / 2 if bound.max > 0 else bound.max - 0.3
    return bound.min * 2 if bound.min > 0 else bound.min + 0.3


def outside(bound: Bound) -> float:
    if bound.max is not None:
        return bound.max * 2 + 1 if bound.max > 0 else bound.max + 0.3
    return bound.min / 2 if bound.min > 0 else bound.min - 0.3


def correlated(xs: list[float], r: float) -> list[float]:
    """Values whose Pearson r with `xs` is exactly `r`."""
    x = np.asarray(xs, float)
    x = (x - x.mean()) / x.std()
    other = np.cos(np.arange(len(x)) * 2.3)
    other = other - other.mean() - (other - other.mean()) @ x / len(x) * x
    other = other / other.std()
    return list(5 + r * x + math.sqrt(1 - r * r) * other)


def target_r(bound: Bound, holds: bool) -> float:
    """An r far inside the bound (holds) or far beyond it: +/-0.95 for a one-sided bound, the
    middle of a two-sided one."""
    if bound.min is not None and bound.max is not None:
        return (bound.min + bound.max) / 2 if holds else 0.95
    return -0.95 if (bound.max is not None) == holds else 0.95


def correlation_points(check) -> int:
    per_language = check.x in ("resource_class", "fertility")
    return len(LANGUAGES) - 1 if per_language else len(set(SWEEP_LAYERS.values()))


def expected_status(check, bound: Bound | None, holds: bool) -> str:
    """passed / failed; inconclusive for a correlation bounded on both sides that these few
    points cannot show to hold: a Fisher-z 95% CI around r = 0 lies inside [-a, a] only from
    3 + (1.96 / atanh(a))^2 points on."""
    if (holds and type(check).__name__ == "Correlation" and bound.min is not None
            and bound.max is not None
            and correlation_points(check) < 3 + (1.96 / math.atanh(bound.max)) ** 2):
        return "inconclusive"
    return "passed" if holds else "failed"


def stage(world: World, check, bound: Bound | None, holds: bool) -> None:
    """Set up `world` so that `check` passes (holds) or fails."""
    good, bad = (LOW, HIGH) if holds else (HIGH, LOW)
    name = type(check).__name__
    world.quantity = getattr(check, "quantity", "disparity")
    if name == "Better":
        world.set(check.strategy, good, scheme=check.scheme)
        for than in check.than if isinstance(check.than, tuple) else (check.than,):
            world.set(than, bad, scheme=check.than_scheme or check.scheme)
        if world.quantity == "degradation":
            world.set(check.strategy, good / 10, scheme=check.scheme)
            for than in check.than if isinstance(check.than, tuple) else (check.than,):
                world.set(than, bad / 10, scheme=check.than_scheme or check.scheme)
    elif name == "Best":
        best, rest = (HIGH, LOW) if check.worst else (LOW, HIGH)
        for candidate in check.candidates:
            world.set(candidate, rest if holds else best)
        world.set(check.expected, best if holds else rest)
    elif name in ("LanguageBound", "MeanBound"):
        strategies = check.bounds if name == "MeanBound" else [check.strategy]
        scheme = getattr(check, "scheme", None)
        for strategy in strategies:
            target = check.bound_for(world.family, checks.Case(strategy, strategy))
            world.set(strategy, inside(target) if holds else outside(target), scheme=scheme)
    elif name == "ReleaseBound":
        limit = Bound(max=world.release_bounds[check.quantity]["*"])
        world.set(check.strategy, inside(limit) if holds else outside(limit))
    elif name == "GroupOrder":
        world.set(check.than, 4.0)
        world.set(check.strategy, {**{lang: 1.0 if holds else 2.0 for lang in check.first},
                                   **{lang: 2.0 if holds else 1.0 for lang in check.second}})
    elif name == "ReliableLength":
        world.set(check.strategy, 2.0, length=check.length, noise=0.01 if holds else 0.5)
        world.set(check.strategy, 2.0, length=check.than_length, noise=0.5 if holds else 0.01)
    elif name == "Correlation":
        r = target_r(bound, holds)
        if check.x in ("resource_class", "fertility"):
            others = [lang for lang in LANGUAGES if lang != "en"]
            measurement = build("disparity", 1.0)
            xs = ([language(lang).resource_class for lang in others] if check.x ==
                  "resource_class" else [measurement.tokens[LANGUAGES.index(lang)].sum() /
                                         measurement.chars[LANGUAGES.index(lang)].sum()
                                         for lang in others])
            world.set(check.strategy, dict(zip(others, correlated(xs, r))))
        else:
            layers = sorted(set(SWEEP_LAYERS.values()))
            xs = [0.01 * (1 + i) + 0.003 * (i % 2) for i in range(len(layers))]
            world.facts["variance" if check.x == "variance" else "error"] = dict(zip(layers, xs))
            for token, layer in SWEEP_LAYERS.items():
                world.set(token, correlated(xs, r)[layers.index(layer)])
    elif name == "OverheadBound":
        for strategy in check.bounds:
            target = check.bound_for(world.family, checks.Case(strategy, strategy))
            world.facts["overhead"][strategy] = (inside(target) if holds else outside(target)) / 100
    elif name == "WithinBudget":
        world.facts["overhead"]["L0"] = 0.10 if holds else 0.20
    elif name in ("LayerExtreme", "LayerValue"):
        stats = {layer: {check.statistic: 1.0 + layer} for layer in range(12)}
        if name == "LayerExtreme":
            extreme = 100.0 if check.highest else -100.0
            stats[0 if holds else 5][check.statistic] = extreme
        else:
            stats[check.layer][check.statistic] = inside(bound) if holds else outside(bound)
        world.facts["statistics"] = stats
    elif name == "ValueWeightRatio":
        world.facts["ratio"] = inside(bound) if holds else outside(bound)
    elif name == "SelectionOverlap":
        world.facts["overlap"] = (0.0 if holds else 0.5) if check.below_random else (
            inside(bound) if holds else outside(bound))
    elif name == "Deterministic":
        world.facts["spread"] = 0.0 if holds else 1.0
    else:
        raise AssertionError(f"no synthetic world for {name}")


def all_findings() -> list[Finding]:
    import sys

    sys.path.insert(0, str(AUDITS.parents[1] / "scripts"))
    from seed_index import findings

    return findings()


FINDINGS = all_findings()


@pytest.mark.parametrize("finding", FINDINGS, ids=[f.id for f in FINDINGS])
@pytest.mark.parametrize("holds", [True, False], ids=["holds", "fails"])
def test_every_finding_on_synthetic_measurements(finding, holds):
    world = World(finding.families[0] if finding.families else "gpt2")
    case = finding.check.cases(LANGUAGES)[0]
    bound = finding.check.bound_for(world.family, case)
    stage(world, finding.check, bound, holds)
    outcome = finding.verify(world, case)
    assert outcome.status == expected_status(finding.check, bound, holds), outcome


def test_every_check_class_is_exercised():
    used = {type(f.check).__name__ for f in FINDINGS}
    defined = {name for name, value in vars(checks).items()
               if isinstance(value, type) and issubclass(value, checks.Check)
               and value is not checks.Check}
    assert defined <= used, f"check classes without a synthetic test: {defined - used}"


def test_too_few_points_for_a_correlation_is_inconclusive():
    world = World("gpt2")
    world.set("none", {lang: 2.0 for lang in LANGUAGES})  # every language the same
    outcome = checks.Correlation("fertility", Bound(max=0.0)).run(
        world, checks.Case("f"), Bound(max=0.0))
    assert outcome.status == "inconclusive"


@pytest.mark.parametrize(("points", "r", "bound", "expected"), [
    (5, -0.75, Bound(max=0.0), "inconclusive"),  # p = 0.14: the direction is not shown
    (5, 0.25, Bound(min=-0.5, max=0.5), "inconclusive"),
    (6, 0.0, Bound(min=-0.5, max=0.5), "inconclusive"),
    (20, 0.0, Bound(min=-0.5, max=0.5), "passed"),
    (8, -0.95, Bound(max=0.0), "passed"),
    (8, 0.95, Bound(max=0.0), "failed"),
    (20, 0.9, Bound(min=-0.5, max=0.5), "failed"),
])
def test_a_correlation_is_decided_on_its_confidence_interval(monkeypatch, points, r, bound,
                                                             expected):
    xs = [float(i) for i in range(points)]
    ys = correlated(xs, r)
    monkeypatch.setattr(checks.Correlation, "_series", lambda self, ctx: (xs, ys, "points", set()))
    outcome = checks.Correlation("fertility", bound).run(World("gpt2"), checks.Case("f"), bound)
    half_width = 1.96 / math.sqrt(points - 3)
    assert outcome.status == expected, outcome
    assert outcome.value == pytest.approx(r, abs=1e-9)
    assert outcome.low == pytest.approx(math.tanh(math.atanh(r) - half_width), rel=1e-3)
    assert outcome.high == pytest.approx(math.tanh(math.atanh(r) + half_width), rel=1e-3)
    if expected == "inconclusive":
        nearest = min(abs(math.atanh(r) - math.atanh(e)) for e in (bound.min, bound.max)
                      if e is not None)
        needed = math.ceil(3 + (1.96 / nearest) ** 2)
        most = len(LANGUAGES) - 1
        assert (f"about {needed} languages would decide at this r, "
                + ("of" if needed <= most else "more than") + f" the corpus's {most}"
                ) in outcome.detail


def test_a_layer_correlation_says_when_the_sweep_cannot_decide(monkeypatch):
    """|r| <= 0.5 around r = 0 needs 3 + (1.96 / atanh(0.5))^2 = 15.7, so 16 points, more than the
    6 layers of a sweep."""
    xs = [float(i) for i in range(len(SWEEP_LAYERS))]
    monkeypatch.setattr(checks.Correlation, "_series",
                        lambda self, ctx: (xs, correlated(xs, 0.0), "layers", set()))
    bound = Bound(min=-0.5, max=0.5)
    outcome = checks.Correlation("variance", bound).run(World("gpt2"), checks.Case("v"), bound)
    assert outcome.status == "inconclusive"
    assert "about 16 layers would decide at this r; the layer sweep has 6, so no run of " \
        "this audit can" in outcome.detail


@pytest.mark.parametrize(("value", "noise", "straddles"), [(2.0, 0.5, True), (1.0, 0.01, False)])
def test_a_bound_says_when_its_interval_straddles_it(value, noise, straddles):
    world = World("gpt2")
    world.set("none", value, noise=noise)
    bound = Bound(max=2.05)
    check = checks.LanguageBound("none", bound=bound)
    outcome = check.run(world, check.cases(LANGUAGES)[0], bound)
    assert outcome.status == "passed"  # decided on the point estimate either way
    assert (outcome.low < 2.05 < outcome.high) == straddles
    assert ("straddles the bound" in outcome.detail) == straddles


def test_a_group_order_compares_the_audited_languages_of_each_group():
    """Each group is its languages the run measured (he for Semitic where ar is not audited)."""
    world = World("gpt2")
    world.set("none", 4.0)
    world.set("L0", {"he": 1.0, "ja": 2.0, "ar": 8.0, "zh": 0.5})
    order = checks.GroupOrder("L0", than="none", first=("xx", "he"), second=("ja", "yy"))
    outcome = order.run(world, order.cases(LANGUAGES)[0], None)
    assert outcome.status == "passed", outcome  # he improves 4x, ja 2x: ar and zh left out
    assert outcome.detail.startswith("he: 4") and ", ja: 2" in outcome.detail
    world.set("L0", {"he": 1.0, "ja": -0.5, "ar": 8.0, "zh": 0.5})  # ja's loss fell
    fell = order.run(world, order.cases(LANGUAGES)[0], None)
    assert fell.status == "inconclusive" and fell.value is None
    assert fell.detail == "undefined: a disparity at or below 0 has no improvement factor"
    alone = checks.GroupOrder("L0", than="none", first=("xx", "yy"), second=("ja",))
    with pytest.raises(checks.NotApplicable, match=r"needs one of xx, yy and one of ja "):
        alone.run(world, alone.cases(LANGUAGES)[0], None)


def test_findings_name_a_language_under_a_corpus_code_and_compare_nothing_with_eng():
    """A finding's `he` and `ar` are a user corpus's `heb` and `arb` (one language each, by
    ISO 639-3 code); a language under two codes (`he`, `heb`) counts once, the mean of its
    codes; English under another code (`eng`) counts in no mean."""
    codes = ("en", "he", "heb", "arb", "cmn", "eng")
    per_token = {"en": 1.0, "he": 5.0, "heb": 3.0, "arb": 2.0, "cmn": 1.5, "eng": 1.0}
    jitter = 1 + 0.01 * np.sin(np.arange(UNITS) * 1.7)
    fp = np.full((len(codes), UNITS), 300.0)
    q = fp + np.array([per_token[c] * TOKENS * jitter for c in codes])
    tokens = np.full_like(fp, TOKENS)
    m = Measurement(codes, fp, q, tokens, tokens * 4, tokens * 2)

    class Run:
        languages = corpus_languages = codes

        def measure(self, strategy, scheme=None, length=None, distribution=False):
            return m

    # Hebrew (5 + 3) / 2 = 4 once, not twice; nor eng's 1
    assert m.mean_draws()[0] == pytest.approx((4.0 + 2.0 + 1.5) / 3, rel=0.02)
    assert m.worst_draws()[0] == pytest.approx(4.0, rel=0.02)
    bound = checks.LanguageBound("none", languages=("he", "ar"))
    assert [case.language for case in bound.cases(codes)] == ["he", "heb", "arb"]
    better = checks.Better("L0", than="none", languages=("he", "ar"))
    assert better._draws(Run(), "none", better.cases(codes)[0], None)[0] == pytest.approx(
        3.0, rel=0.02)  # Hebrew's 4 and Arabic's 2
    order = checks.GroupOrder("L0", than="none", first=("he", "ar"), second=("zh", "cmn"))
    outcome = order.run(Run(), order.cases(codes)[0], None)  # not "needs one of he, ar"
    assert outcome.status == "inconclusive" and "improvement factor" in outcome.quantity
    fertility = checks.Correlation("fertility", Bound(max=0.5))
    xs, ys, over, _ = fertility._series(Run())  # one point per language
    assert over == "languages he+heb,arb,cmn" and ys == pytest.approx([4.0, 2.0, 1.5],
                                                                      rel=0.02)


class Shallow(World):
    """A model of `layers` layers: strategies naming a layer past its last are refused."""

    def __init__(self, layers: int) -> None:
        super().__init__("llama")
        self.layers = layers

    def layer_index(self, token):
        index = SWEEP_LAYERS[token] if token in SWEEP_LAYERS else int(token[1:])
        if token in ("Llast", "Lmid", "L-2"):
            return {"Llast": self.layers - 1, "Lmid": self.layers // 2,
                    "L-2": max(0, self.layers - 2)}[token]
        if index >= self.layers:
            raise NotInModel(f"strategy term '{token}': layer {index} out of range")
        return index

    def measure(self, strategy, scheme=None, length=None, distribution=False):
        for term in str(strategy).replace("<", "+").split("+"):
            if term.startswith("L") and term[1:].isdigit():
                self.layer_index(term)
        return super().measure(strategy, scheme, length, distribution)


def test_a_findings_strategy_naming_a_layer_the_model_lacks_skips_it():
    """On a 1-layer model the shipped audits naming L2 (synergy), and layer 0 against the
    others (no other), errored: `min() arg is an empty sequence`."""
    world = Shallow(1)
    synergy = Finding(id="synergy", experiments=("mine",), claim="c",
                      check=checks.Better("L0+Llast", than="L2+Llast"))
    (case,) = synergy.check.cases(world)
    outcome = synergy.verify(world, case)
    assert (outcome.status, outcome.detail) == (
        "skipped", "synergy: strategy term 'L2': layer 2 out of range")
    extreme = Finding(id="layer0", experiments=("mine",), claim="c",
                      check=checks.LayerExtreme("outlier_share", highest=False))
    world.facts["statistics"] = {0: {"outlier_share": 0.1}}
    outcome = extreme.verify(world, extreme.check.cases(world)[0])
    assert (outcome.status, outcome.detail) == (
        "skipped", "a 1-layer model has no other layer to compare layer 0 with")
    # a layer correlation sweeps the layers the model has (L1 and L2 of a 2-layer model: L1)
    two = Shallow(2)
    assert checks._swept_layers(two) == {"L0": 0, "L1": 1, "Lmid": 1, "L-2": 0, "Llast": 1}


def test_the_users_own_strategy_naming_a_layer_the_model_lacks_stays_an_error():
    world = Shallow(1)
    world.candidate_text = lambda: "L5"
    mine = Finding(id="mine", experiments=("mine",), claim="c",
                   check=checks.Better(checks.CANDIDATE, than="none"))
    world.measure = lambda strategy, *args, **kwargs: world.layer_index(
        world.candidate_text() if strategy == checks.CANDIDATE else "L0")
    with pytest.raises(NotInModel, match="layer 5 out of range"):
        mine.verify(world, mine.check.cases(world)[0])
