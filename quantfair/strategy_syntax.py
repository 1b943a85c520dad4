"""The grammar of strategy expressions (`L0+Llast+ln_f`, `act:5%`, aliases): checked without
a model or torch, so a typo is one line before anything loads. What a term protects on a model
is `quantfair.strategies`' business."""

from __future__ import annotations

import re
from collections.abc import Sequence

from quantfair.config import PERCENT_NUMBER, parse_percent
from quantfair.errors import UsageError

ALIASES = {
    "layer0_ln_only": "L0.ln",
    "layer0_attn": "L0.attn",
    "layer0": "L0",
    "all_ln": "ln",
    "even_layers": "even.weight",
    "odd_layers": "odd.weight",
    "recommended": "L0+Llast+ln_f+biases",
}
# The seed's Pareto table (GPT-2 names; L11 is GPT-2's last layer) and the overhead it reports.
SEED_PARETO = {
    "layer0_ln_only": ("layer0_ln_only", "0.002"),
    "layer0_attn": ("layer0_attn", "1.90"),
    "layer0": ("layer0", "5.70"),
    "L0+L11": ("L0+Llast", "11.39"),
    "L0+L11+ln_f+biases": ("L0+Llast+ln_f+biases", "11.46"),
    "L0+L11+all_ln": ("L0+Llast+all_ln", "11.42"),
    "even_layers": ("even_layers", "34.1"),
}
BLOCK_NAMES = {"attn": "attn", "mlp": "mlp", "ln": "norm", "norm": "norm"}
KINDS = ("weight", "bias")
VALID = (
    "none, L<i>, Llast, Lmid, L-<k>, even, odd, all "
    "(each optionally .attn/.mlp/.ln[.role][.weight|.bias]), "
    "ln, all_ln, ln_f, biases, embed, embed.tok, embed.pos, head, random:P%@seed, magnitude:P%, "
    "gradient:P%, variance:topK, act:P%, actgap:P%, superweights:K, seed:P%, an alias: "
    + ", ".join(ALIASES) + "; or alone, "
)
SUGGESTED = "suggested (the latest `quantfair suggest` result)"  # VALID's last words
VALID += SUGGESTED

SELECTORS = ("random", "magnitude", "gradient", "variance", "act", "actgap", "superweights",
             "seed")
ELEMENT_SELECTORS = ("random", "magnitude", "gradient", "act", "actgap", "superweights")
# Those choosing on calibration text (gradients, activations): other text, other entries.
CALIBRATED_SELECTORS = ("gradient", "act", "actgap", "superweights")
# L0, L12, L-1 (the last): no leading zero, no L-0 (it would be L0, not the last)
_LAYER_TOKEN = r"L(?:0|-?[1-9][0-9]{0,5})|Llast|Lmid|even|odd|all"
# With its sign, as --budget: `magnitude:0.05` could mean 5% or 0.05%.
_PERCENT = PERCENT_NUMBER + "%"
_SELECTOR_ARGUMENT = {
    "random": rf"{_PERCENT}(?:@[0-9]{{1,9}})?",
    "magnitude": _PERCENT,
    "gradient": _PERCENT,
    "variance": r"top[1-9][0-9]{0,5}",
    "act": _PERCENT,
    "actgap": _PERCENT,
    "superweights": r"[1-9][0-9]{0,5}",
    "seed": _PERCENT,
}
SHARE_SELECTORS = tuple(kind for kind, argument in _SELECTOR_ARGUMENT.items()
                        if argument.startswith(_PERCENT))  # a P% of the parameters
_ROLE = r"[a-z][a-z0-9_]*"


def _mistake(kind: str, argument: str) -> str:
    """What is wrong with a selector's `argument` where one thing is, else nothing."""
    share, _, seed = argument.partition("@")
    if kind in SHARE_SELECTORS:
        if re.fullmatch(PERCENT_NUMBER, share):  # `magnitude:0.05`: 5% or 0.05%?
            return "a share needs its % sign; "
        if share.startswith("-"):
            return "a share cannot be negative; "
    if seed and re.fullmatch(r"[0-9]{10,}", seed):
        return "a seed has at most 9 digits; "
    return ""


def _check_term(term: str) -> None:
    """Raise a UsageError when `term` (an alias already expanded) is not in the grammar."""
    if term == "none":
        return
    if ":" in term:
        kind, _, argument = term.partition(":")
        if kind not in SELECTORS:
            raise UsageError(f"unknown strategy term '{term}'; valid: {VALID}")
        if not re.fullmatch(_SELECTOR_ARGUMENT[kind], argument):
            example = {"random": "random:5%@0", "variance": "variance:top2",
                       "superweights": "superweights:4"}.get(kind, f"{kind}:5%")
            raise UsageError(f"strategy term '{term}': {_mistake(kind, argument)}"
                             f"expected e.g. {example}")
        if kind not in ("variance", "superweights"):
            percent_of_term(argument.partition("@")[0], term)
        return
    pieces = term.split(".")
    if len(pieces) > 1 and pieces[-1] in KINDS:
        pieces.pop()
    head, rest = pieces[0], pieces[1:]
    if head in ("ln", "ln_f", "biases"):
        valid = not rest
    elif head in ("embed", "head"):
        valid = len(rest) <= 1 and all(re.fullmatch(_ROLE, piece) for piece in rest)
    elif re.fullmatch(_LAYER_TOKEN, head):
        if rest and rest[0] not in BLOCK_NAMES:
            raise UsageError(
                f"strategy term '{term}': unknown block '{rest[0]}' (valid: attn, mlp, ln)")
        valid = len(rest) <= 2 and all(re.fullmatch(_ROLE, piece) for piece in rest[1:])
    else:
        valid = False
    if not valid:
        raise UsageError(f"unknown strategy term '{term}'; valid: {VALID}")


def check_given_strategies(expressions: Sequence[str]) -> None:
    """`check_strategy_syntax` of each strategy a user gave, before any model loads;
    'suggested' (the cached `quantfair suggest` result) is looked up once one has."""
    for expression in expressions:
        if expression != "suggested":
            check_strategy_syntax(expression)


def check_strategy_syntax(expression: str) -> str:
    """The expression's canonical text (terms stripped, joined by "+") if it follows the
    grammar; a UsageError listing what is valid otherwise. Needs no model: whether a term
    exists on a model (layer range, roles) is checked when it is resolved."""
    terms = [raw.strip() for raw in expression.split("+")]
    if not any(terms):
        raise UsageError(f"empty strategy; valid: {VALID}")
    for term in terms:
        if not term:
            raise UsageError(f"strategy '{expression}' has an empty term; valid: {VALID}")
        expanded = ALIASES.get(term, term)
        for part in expanded.split("+"):
            _check_term(part)
    return "+".join(terms)


def element_terms(expression: str) -> tuple[list[str], list[str]]:
    """(every term, the terms keeping single weights or columns) of a checked expression,
    aliases expanded: element selectors, which no GGUF or transformers file can store."""
    terms = [part for term in check_strategy_syntax(expression).split("+")
             for part in ALIASES.get(term, term).split("+")]
    return terms, [term for term in terms if term.partition(":")[0] in ELEMENT_SELECTORS]


def percent_of_term(text: str, term: str) -> float:
    return parse_percent(text, f"strategy term '{term}'")
