"""Protection strategies: which parameters stay in full precision.

Grammar, terms joined with "+":
  none | L<i> | Llast | Lmid | L-<k> | even | odd | all
                                  layers (L-1 is the last), optionally narrowed:
      .attn | .mlp | .ln  then a role (.qkv .q .k .v .o .fc_in .gate .up .fc_out .ln_1 .ln_2)
      then a kind (.weight | .bias), e.g. L0.mlp.fc_in, even.weight
  ln (all norms) | ln_f | biases | embed | embed.tok | embed.pos | head
  random:P%@seed | magnitude:P% | gradient:P%   per-tensor element budgets
  variance:topK                                 the K layers of highest weight variance
The seed's names are aliases (see ALIASES).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import math
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantfair.corpus import REFERENCE, names_reference
from quantfair.errors import NotInModel, UsageError
from quantfair.quantize import (
    QUANTIZER_DIGEST,
    Protection,
    QuantScheme,
    WeightBank,
    has_element_masks,
)
from quantfair.storage import atomic_write
from quantfair.strategy_syntax import (
    ALIASES,
    BLOCK_NAMES,
    KINDS,
    VALID,
    check_strategy_syntax,
    percent_of_term,
)
from quantfair.taxonomy import Component, num_layers
from quantfair.tensorfile import scratch
from quantfair.weights import layer_variance_ranking


@dataclass(frozen=True)
class Overhead:
    """What a protection costs: `protected` of `total` parameters kept in full precision,
    and the extra storage that adds over the fully quantized model, as a fraction of its
    bits (`bytes_fraction`, 0.158 for +15.8%). The report writes both as fractions
    (`overhead`, `overhead_bytes`); audits' details say percent."""

    protected: int
    total: int
    bytes_fraction: float  # extra storage over the fully quantized model

    @property
    def fraction(self) -> float:
        """Protected parameters over all parameters, in [0, 1]."""
        return self.protected / self.total if self.total else 0.0


class StrategyResolver:
    """Turns strategy expressions into protected sets for one model and scheme."""

    def __init__(
        self,
        bank: WeightBank,
        scheme: QuantScheme,
        gradients: Callable[[], dict[str, torch.Tensor]] | None = None,
        selector_cache: tuple[Path, str] | None = None,
        activations: Callable[[], Activations] | None = None,
    ) -> None:
        self.bank = bank
        self._activations = activations
        self.parts = bank.parts
        self.scheme = scheme
        self.layers = num_layers(self.parts)
        self._gradients = gradients
        self._gradient_cache: dict[str, torch.Tensor] | None = None
        self._memo: dict[str, Protection] = {}
        self.selector_cache = selector_cache  # (folder, key prefix) for selector masks on disk

    # -- structural terms ---------------------------------------------------------------
    def _layer_set(self, token: str, term: str) -> list[int]:
        if token == "even":
            return list(range(0, self.layers, 2))
        if token == "odd":
            return list(range(1, self.layers, 2))
        if token == "Llast":
            return [self.layers - 1]
        if token == "Lmid":
            return [self.layers // 2]
        if token == "all":
            return list(range(self.layers))
        match = re.fullmatch(r"L(-?[0-9]+)", token)
        if not match:
            raise UsageError(f"unknown strategy term '{term}'; valid: {VALID}")
        index = int(match[1])
        resolved = self.layers + index if index < 0 else index
        if not 0 <= resolved < self.layers:
            raise NotInModel(
                f"strategy term '{term}': layer {index} out of range, the model has "
                f"{self.layers} layers (L0..L{self.layers - 1}, Llast, L-1..L-{self.layers})"
            )
        return [resolved]

    def _structural(self, term: str) -> list[str]:
        pieces = term.split(".")
        kind = pieces.pop() if len(pieces) > 1 and pieces[-1] in KINDS else None
        head, rest = pieces[0], pieces[1:]
        if head == "ln" and not rest:
            chosen = [c for c in self.parts.values() if c.block == "norm"]
        elif head == "ln_f" and not rest:
            chosen = [c for c in self.parts.values() if c.role == "ln_f"]
        elif head == "biases" and not rest:
            chosen = [c for c in self.parts.values() if c.kind == "bias"]
        elif head in ("embed", "head") and len(rest) <= 1:
            chosen = [c for c in self.parts.values() if c.block == head]
            if rest:
                chosen = self._with_role(chosen, rest[0], term)
        else:
            layers = set(self._layer_set(head, term))
            chosen = [c for c in self.parts.values() if c.layer in layers]
            if rest:
                if rest[0] not in BLOCK_NAMES:
                    raise UsageError(
                        f"strategy term '{term}': unknown block '{rest[0]}' "
                        "(valid: attn, mlp, ln)"
                    )
                chosen = [c for c in chosen if c.block == BLOCK_NAMES[rest[0]]]
            if len(rest) == 2:
                chosen = self._with_role(chosen, rest[1], term)
            elif len(rest) > 2:
                raise UsageError(f"unknown strategy term '{term}'; valid: {VALID}")
        if kind:
            chosen = [c for c in chosen if c.kind == kind]
        return [c.name for c in chosen]

    @staticmethod
    def _with_role(chosen: list[Component], role: str, term: str) -> list[Component]:
        roles = sorted({c.role for c in chosen})
        if role not in roles:
            raise UsageError(
                f"strategy term '{term}': no role '{role}' here (valid: {', '.join(roles)})"
            )
        return [c for c in chosen if c.role == role]

    # -- budgeted selectors ---------------------------------------------------------------
    def _quantized_parts(self) -> list[Component]:
        return [c for c in self.parts.values() if self.bank.quantizes(c, self.scheme)]

    def entries_kept(self, fraction: float) -> int:
        """How many parameters an entry selector (`random:`, `magnitude:`, `gradient:`) at
        `fraction` of the quantized parameters keeps, without selecting them (the count of
        `_top_elements`, whatever the scores)."""
        return sum(_entries(fraction, [c.numel for c in self._quantized_parts()]))

    def _top_elements(self, parts: list[Component],
                      score: Callable[[Component, torch.Tensor], torch.Tensor],
                      fraction: float, ties: Sequence[int] | None = None) -> Protection:
        """Per tensor, its `_entries` count of highest-scoring elements (ties cut in order,
        `_top_mask`; `ties`: the order of tensors in a tie for a last entry, see `_entries`).
        `score(part, out)` is called one part at a time and may write the
        part's scores into `out` (float32, the part's shape), a view of one mapped buffer as
        large as the largest part (a token embedding's scores are 100+ MB); the masks are views
        of another (`_mask_views`)."""
        protection: Protection = {}
        views = _mask_views([c.numel for c in parts], self.bank.folder)
        buffer = scratch(max((c.numel for c in parts), default=0), torch.float32,
                         self.bank.folder)
        counts = _entries(fraction, [c.numel for c in parts], ties)
        for c, view, keep in zip(parts, views, counts, strict=True):
            if keep == 0:
                continue
            out = buffer[:c.numel].view(c.shape)
            flat = score(c, out).detach().flatten().float().cpu().numpy()
            if keep >= flat.size:
                protection[c.name] = True
                continue
            _top_mask(flat, keep, view.numpy())
            protection[c.name] = view.view(c.shape)
        return protection

    def _selector(self, term: str) -> Protection:
        kind, _, argument = term.partition(":")
        fp = self.bank.fp
        if kind == "random":
            budget, _, seed_text = argument.partition("@")
            fraction = percent_of_term(budget, term)
            seed = int(seed_text) if seed_text.isdigit() else 0
            generator = torch.Generator().manual_seed(seed)
            parts = self._quantized_parts()
            ties = np.random.default_rng(seed).permutation(len(parts)).tolist()
            return self._top_elements(
                parts, lambda c, out: torch.rand(c.shape, generator=generator, out=out),
                fraction, ties)
        if kind == "magnitude":
            fraction = percent_of_term(argument, term)
            return self._top_elements(self._quantized_parts(),
                                      lambda c, out: out.copy_(fp[c.name]).abs_(), fraction)
        if kind == "gradient":
            fraction = percent_of_term(argument, term)
            if self.entries_kept(fraction) == 0:  # nothing to rank: no calibration pass
                return {}
            gradients = self._gradient_scores()
            return self._top_elements(self._quantized_parts(),
                                      lambda c, _: gradients[c.name], fraction)
        if kind == "variance":
            match = re.fullmatch(r"top(\d+)", argument)
            if not match:
                raise UsageError(f"strategy term '{term}': expected variance:topK, e.g. top2")
            count = int(match[1])
            if count > self.layers:
                raise UsageError(f"strategy term '{term}': the model has {self.layers} layers")
            ranked = layer_variance_ranking(self.bank)
            chosen = set(ranked[:count])
            return {c.name: True for c in self.parts.values() if c.layer in chosen}
        if kind == "act":
            return self._act_columns(percent_of_term(argument, term))
        if kind == "actgap":
            return self._gap_columns(percent_of_term(argument, term))
        if kind == "superweights":
            return self._super_weights(int(argument), term)
        if kind == "seed":
            return self._seed_scaled(percent_of_term(argument, term))
        raise UsageError(f"unknown strategy term '{term}'; valid: {VALID}")

    def _calibration_activations(self) -> Activations:
        if self._activations is None:
            raise UsageError("activation selection needs calibration text (none configured)")
        return self._activations()

    def _act_columns(self, fraction: float) -> Protection:
        """Input channels (whole columns of the logical (out, in) matrix) of each linear layer,
        those with the largest mean |input| on calibration text first (averaged over
        languages: AWQ's saliency measure, arXiv:2306.00978, used here to keep columns rather
        than to rescale them). The budget, `fraction` of the quantized parameters, is spent
        on the linear layers alone: each keeps the same share of its columns, rounded down,
        and the parameters left go to the layers with the largest remainders (Hamilton's
        apportionment), so that the selection never exceeds the budget."""
        stats = self._calibration_activations()
        linear = [c for c in self._quantized_parts() if c.name in stats.mean_abs]
        quantized = sum(c.numel for c in self._quantized_parts())
        size = sum(c.numel for c in linear)
        budget = min(fraction * quantized, size)
        columns = [stats.mean_abs[c.name].numel() for c in linear]
        ideal = [budget / max(1, size) * n for n in columns]
        counts = [math.floor(x + 1e-9) for x in ideal]
        rows = [c.numel // n for c, n in zip(linear, columns, strict=True)]
        left = budget - sum(k * r for k, r in zip(counts, rows, strict=True))
        for i in sorted(range(len(linear)), key=lambda i: counts[i] - ideal[i]):
            if ideal[i] > counts[i] and rows[i] <= left + 1e-9:
                counts[i] += 1
                left -= rows[i]
        protection: Protection = {}
        for c, count in zip(linear, counts, strict=True):
            if count == 0:
                continue
            saliency = stats.mean_abs[c.name]
            kept = torch.zeros(saliency.numel(), dtype=torch.bool)
            kept[torch.topk(saliency, count).indices] = True
            protection[c.name] = _column_mask(c, kept)
        return protection

    def _gap_columns(self, fraction: float) -> Protection:
        """Input columns whose keeping lowers the other languages' expected damage more than
        English's. Column j of a linear weight W adds about e_j * s_l,j to language l's output
        error, with e_j = sum_i (Wq - W)_ij^2 its squared quantization error under the scheme
        and s_l,j the mean x_j^2 of its input on l's calibration text (the first-order error
        ||(Wq - W) x||^2 without cross terms). As shares of each language's total, the gap
        g_j = mean over the other languages of share_l,j - share_en,j is what keeping the
        column does to the damage ratios; columns of every linear layer are kept by gap per
        weight (g_j / rows), largest first, while the gap is positive and `fraction` of the
        quantized parameters is not spent."""
        stats = self._calibration_activations()
        others = [lang for lang in stats.mean_sq if not names_reference(lang)]
        if REFERENCE not in stats.mean_sq or not others:
            raise UsageError("actgap: needs calibration text in English and another language")
        linear = [c for c in self._quantized_parts() if c.name in stats.mean_abs]
        quantized = self.bank.quantized(self.scheme)
        errors = [_column_error(self.bank.fp[c.name], quantized[c.name], c.transposed)
                  for c in linear]

        def shares(lang: str) -> torch.Tensor:
            damage = torch.cat([e * stats.mean_sq[lang][c.name]
                                for c, e in zip(linear, errors, strict=True)]).double()
            return damage / (damage.sum() or 1.0)

        rows = torch.cat([torch.full((e.numel(),), c.numel // e.numel(), dtype=torch.float64)
                          for c, e in zip(linear, errors, strict=True)])
        gap = (sum(shares(lang) for lang in others) / len(others) - shares(REFERENCE)) / rows
        order = torch.argsort(gap, descending=True)
        budget = fraction * sum(c.numel for c in self._quantized_parts())
        chosen = torch.zeros(gap.numel(), dtype=torch.bool)
        chosen[order[(torch.cumsum(rows[order], 0) <= budget) & (gap[order] > 0)]] = True
        protection: Protection = {}
        for c, columns in zip(linear, chosen.split([e.numel() for e in errors]), strict=True):
            if columns.any():
                protection[c.name] = _column_mask(c, columns)
        return protection

    def _super_weight_layers(self) -> list[Component]:
        stats = self._calibration_activations()
        return [c for c in self._quantized_parts() if c.name in stats.max_abs]

    def super_weight_candidates(self) -> int:
        """How many single weights `superweights:K` can keep: one per quantized linear layer."""
        return len(self._super_weight_layers())

    def _super_weights(self, count: int, term: str) -> Protection:
        """The `count` single weights most likely to be super weights (Yu et al. 2024,
        arXiv:2411.07191): per linear layer, the input channel with the largest |input| on
        calibration text and, in its column, the weight whose product with that input is
        largest; layers ranked by that product, the largest first. UsageError when `count`
        exceeds the linear layers (one candidate each)."""
        stats = self._calibration_activations()
        found = []
        for c in self._super_weight_layers():
            channel = int(stats.max_abs[c.name].argmax())
            weight = self.bank.fp[c.name]
            column = (weight[channel] if c.transposed else weight[:, channel]).abs()
            row = int(column.argmax())
            found.append((float(column[row]) * float(stats.max_abs[c.name][channel]),
                          c.name, row, channel))
        if count > len(found):
            raise UsageError(f"strategy term '{term}': the model has {len(found)} quantized "
                             "linear layers, one super weight candidate each")
        protection: Protection = {}
        for _, name, row, channel in sorted(found, reverse=True)[:count]:
            keep = torch.zeros(self.parts[name].shape, dtype=torch.bool)
            keep[(channel, row) if self.parts[name].transposed else (row, channel)] = True
            protection[name] = keep
        return protection

    def _seed_scaled(self, fraction: float) -> Protection:
        """The seed's recipe (`recommended`: L0, Llast, ln_f, biases, in that order) within a
        budget of `fraction` of the parameters: each term in turn, skipped when adding it
        would exceed the budget."""
        protection: Protection = {}
        for term in ALIASES["recommended"].split("+"):
            trial = {**protection, **self._structural_term(term)}
            if self.overhead(trial).fraction <= fraction:
                protection = trial
        return protection

    def _gradient_scores(self) -> dict[str, torch.Tensor]:
        """|gradient x quantization error|: first-order loss change from quantizing each
        element."""
        if self._gradients is None:
            raise UsageError("gradient selection needs calibration text (none configured)")
        if self._gradient_cache is None:
            gradients = self._gradients()
            quantized = self.bank.quantized(self.scheme)
            self._gradient_cache = {
                c.name: (gradients[c.name] * (self.bank.fp[c.name] - quantized[c.name])).abs()
                for c in self._quantized_parts()
            }
        return self._gradient_cache

    # -- public -------------------------------------------------------------------------------
    def _cached_selector(self, term: str) -> Protection:
        """A budgeted selection, kept on disk as bit masks: selections (gradients above all)
        cost far more than reading them back."""
        if self.selector_cache is None:
            return self._selector(term)
        folder, prefix = self.selector_cache
        key = hashlib.sha256(f"{prefix}|{self.scheme.name}|{term}|{SELECTOR_DIGEST}"
                             .encode()).hexdigest()[:24]
        path = folder / f"{key}.npz"
        try:
            with np.load(path) as stored:
                masked = [n for n in stored.files if stored[n].size]
                protection: Protection = dict.fromkeys(stored.files, True)
                sizes = [self.parts[n].numel for n in masked]
                for name, view in zip(masked, _mask_views(sizes, self.bank.folder),
                                      strict=True):
                    view.numpy()[:] = np.unpackbits(stored[name], count=view.numel())
                    protection[name] = view.view(self.parts[name].shape)
                return protection
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # absent or damaged: select again
        protection = self._selector(term)
        packed = io.BytesIO()
        np.savez(packed, **{name: np.zeros(0, np.uint8) if keep is True else
                            np.packbits(keep.flatten().cpu().numpy())
                            for name, keep in protection.items()})
        # a cache of what is selected again where missing: `inspect` runs without one
        with contextlib.suppress(OSError):
            atomic_write(path, packed.getvalue())
        return protection

    def resolve(self, expression: str) -> Protection:
        """The protected set named by `expression`; a UsageError lists what is valid."""
        if expression not in self._memo:
            protection = self._resolve(expression)
            if has_element_masks(protection):
                # element masks take a byte per parameter: keep one set in memory (the
                # selector cache on disk has the others)
                self._memo = {key: known for key, known in self._memo.items()
                              if not has_element_masks(known)}
            self._memo[expression] = protection
        return self._memo[expression]

    def _head_is_embedding(self) -> bool:
        model = self.bank.model
        head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        return head is not None and embedding is not None and \
            head.weight is embedding.weight

    def _structural_term(self, term: str) -> Protection:
        tied = term.split(".")[0] == "head" and self._head_is_embedding()
        try:
            names = self._structural(term)
        except UsageError:
            if not tied:
                raise
            names = []
        if tied and not names:
            raise UsageError(
                f"strategy term '{term}' keeps nothing: this model's output head is the token "
                "embedding (one tied tensor, one decision); use embed.tok")
        return {name: True for name in names}

    def _resolve(self, expression: str) -> Protection:
        text = ALIASES.get(expression.strip(), expression.strip())
        check_strategy_syntax(text)
        protection: Protection = {}
        structural = []  # structural terms: naming them promises that something is kept
        for raw in text.split("+"):
            term = ALIASES.get(raw.strip(), raw.strip())
            if term == "none":
                continue
            if "+" in term:
                part = self.resolve(term)
            elif ":" in term:
                part = self._cached_selector(term)
            else:
                part = self._structural_term(term)
                structural.append(term)
            for name, keep in part.items():
                protection[name] = _union(protection.get(name, False), keep)
        if structural and not protection:
            raise NotInModel(
                f"strategy '{expression}' keeps no parameter of this model in full precision "
                "(write none if that is meant)")
        return protection

    def overhead(self, protection: Protection) -> Overhead:
        """Protected parameters, and the storage they add: protected parameters are kept in
        half precision (16 bits) beside the codes, which take each tensor's stored bits per
        weight (`WeightBank.bits`); parameters the scheme leaves alone count 16 bits. A tensor
        stored in 16 bits or more (an artifact saved as float safetensors) adds nothing: its
        file already takes what full precision would."""
        total = sum(c.numel for c in self.parts.values())
        protected = sum(_count(keep, self.parts[name].numel) for name, keep in protection.items())
        fp_bits = 16
        bits = {c.name: self.bank.bits(c.name, self.scheme) for c in self._quantized_parts()}
        base_bits = sum(c.numel * bits.get(c.name, fp_bits) for c in self.parts.values())
        extra_bits = sum(_count(keep, self.parts[name].numel) * max(fp_bits - bits[name], 0)
                         for name, keep in protection.items() if name in bits)
        return Overhead(protected, total, extra_bits / base_bits if base_bits else 0.0)


def _entries(fraction: float, sizes: Sequence[int], ties: Sequence[int] | None = None
             ) -> list[int]:
    """Entries an entry selector keeps of each tensor of these sizes: `fraction` of them all,
    rounded to the nearest entry, each tensor its share rounded down and the entries left one
    each to the tensors with the largest remainders (Hamilton's apportionment, as `act:`), so
    that a budget of a few weights keeps them rather than rounding to nothing in every
    tensor. Equal remainders go in the order `ties` (indices; default: the tensors' order)."""
    ideal = [fraction * n for n in sizes]
    counts = [math.floor(x) for x in ideal]
    left = max(0, round(fraction * sum(sizes)) - sum(counts))
    rank = {i: position for position, i in enumerate(ties or range(len(sizes)))}
    for i in sorted(range(len(sizes)), key=lambda i: (counts[i] - ideal[i], rank[i]))[:left]:
        counts[i] += 1
    return counts


def _mask_views(sizes: list[int], folder: Path | None) -> list[torch.Tensor]:
    """Flat boolean tensors of these sizes, views of one zeroed buffer: element masks take a
    byte per parameter, so the buffer is a temporary file's memory map in `folder` (the
    weight bank's; `tensorfile.scratch`), in process memory only where that fails."""
    buffer = scratch(sum(sizes), torch.bool, folder)
    offsets = np.cumsum([0, *sizes])
    return [buffer[begin:end] for begin, end in zip(offsets[:-1], offsets[1:], strict=True)]


def _top_mask(scores: np.ndarray, keep: int, out: np.ndarray) -> None:
    """Set `out` (bools, the shape of `scores`) to the `keep` highest of `scores` (float32
    without NaN, 0 < keep < size), ties cut in order (the first tied entries are kept).

    The threshold, the keep-th largest score, is found by bisection over the float32 values
    in their order as integers (at most 32 counting passes): unlike a partition, it needs no
    copy of the scores, which for a token embedding is 100+ MB."""
    def value(key: int) -> np.float32:  # inverse of the order-preserving float -> int map
        return np.array(key if key >= 0 else key ^ 0x7FFFFFFF, np.int32).view(np.float32)

    def order(number: np.float32) -> int:
        key = int(np.array(number, np.float32).view(np.int32))
        return key if key >= 0 else key ^ 0x7FFFFFFF

    low, high = order(scores.min()), order(scores.max())
    while low < high:  # invariant: at least `keep` scores >= value(low)
        middle = (low + high + 1) // 2
        if np.count_nonzero(scores >= value(middle)) >= keep:
            low = middle
        else:
            high = middle - 1
    threshold = value(low)
    np.greater_equal(scores, threshold, out=out)
    excess = int(np.count_nonzero(out)) - keep
    if excess > 0:
        out[np.flatnonzero(scores == threshold)[-excess:]] = False


def _count(keep: bool | torch.Tensor, numel: int) -> int:
    return (numel if keep is True else int(torch.count_nonzero(keep))  # no int64 copy
            if isinstance(keep, torch.Tensor) else 0)


def _union(a: bool | torch.Tensor, b: bool | torch.Tensor) -> bool | torch.Tensor:
    if a is True or b is True:
        return True
    if a is False:
        return b
    if b is False:
        return a
    return a | b


def protection_key(protection: Protection) -> str:
    """A stable hash of a protected set, for cache keys."""
    digest = hashlib.sha256()
    for name in sorted(protection):
        keep = protection[name]
        digest.update(name.encode())
        if isinstance(keep, torch.Tensor):  # kept entries leave their group's scale alone
            digest.update(b"mask-outside-scale" + keep.cpu().numpy().tobytes())
        else:
            digest.update(b"all" if keep else b"none")
    return digest.hexdigest()[:20]


def _column_mask(component: Component, columns: torch.Tensor) -> torch.Tensor:
    """The element mask of a linear weight keeping whole input columns ([in_features] bools)."""
    keep = columns[:, None] if component.transposed else columns[None, :]
    return keep.expand(component.shape).clone()


def _column_error(fp: torch.Tensor, quantized: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Squared quantization error per input channel of a linear weight, [in_features]."""
    error = (quantized.float() - fp.float()).square()
    return error.sum(1 if transposed else 0)


@dataclass(frozen=True)
class Activations:
    """Per linear layer's weight (parameter name): statistics of its input over calibration
    text, vectors of length in_features: the mean |x| per input channel (each language's
    tokens averaged, then the languages), the largest |x| seen, and per language the mean
    x^2 (`mean_sq[language][name]`)."""

    mean_abs: dict[str, torch.Tensor]
    max_abs: dict[str, torch.Tensor]
    mean_sq: dict[str, dict[str, torch.Tensor]]


@torch.no_grad()
def calibration_activations(loaded_model, parts: dict[str, Component],
                            texts: dict[str, Sequence[str]], max_tokens: int = 256
                            ) -> Activations:
    """`Activations` of the linear layers (attention, MLP, output head) from one forward pass
    per calibration text (`texts`: language -> texts, at most `max_tokens` tokens each)."""
    model, tokenizer = loaded_model.model, loaded_model.tokenizer
    linear = {c.name: c for c in parts.values()
              if c.is_matrix and c.kind == "weight" and c.block in ("attn", "mlp", "head")}
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    peaks: dict[str, torch.Tensor] = {}
    per_language: dict[str, list[torch.Tensor]] = {name: [] for name in linear}
    mean_sq: dict[str, dict[str, torch.Tensor]] = {}
    hooks = []

    def record(name: str):
        def hook(_module, args):
            x = args[0].detach().float().abs().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + x.sum(0).double().cpu()
            squares[name] = squares.get(name, 0) + x.square().sum(0).double().cpu()
            peaks[name] = torch.maximum(peaks.get(name, x.amax(0).cpu()), x.amax(0).cpu())
        return hook

    for name in linear:
        module = model.get_submodule(name.rpartition(".")[0])
        if not isinstance(module, torch.nn.Embedding):
            hooks.append(module.register_forward_pre_hook(record(name)))
    try:
        for lang, lang_texts in texts.items():
            sums.clear()
            squares.clear()
            tokens = 0
            for text in lang_texts:
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
                ids = ids[:, :min(max_tokens, loaded_model.context_length)]
                if ids.shape[1] == 0:
                    continue
                ids = ids.to(loaded_model.device)
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
                tokens += ids.shape[1]
            for name, total in sums.items():
                per_language[name].append(total / max(1, tokens))
            mean_sq[lang] = {name: (total / max(1, tokens)).float()
                             for name, total in squares.items()}
    finally:
        for hook in hooks:
            hook.remove()
    mean_abs = {name: torch.stack(means).mean(0).float()
                for name, means in per_language.items() if means}
    return Activations(mean_abs, {name: peaks[name] for name in mean_abs},
                       {lang: stats for lang, stats in mean_sq.items() if stats})


def calibration_gradients(
    loaded_model, texts: Sequence[str], max_tokens: int = 256
) -> dict[str, torch.Tensor]:
    """Summed loss gradients over short calibration texts, one text's graph at a time."""
    model, tokenizer = loaded_model.model, loaded_model.tokenizer
    params = dict(model.named_parameters())
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    model.requires_grad_(True)
    try:
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            ids = ids[:, :min(max_tokens, loaded_model.context_length)].to(loaded_model.device)
            if ids.shape[1] < 2:
                continue
            model.zero_grad(set_to_none=True)
            # The mean next-token cross-entropy, as transformers' causal-LM loss computes it
            # (float32 logits), without its warnings about loss_type and padding.
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:]).backward()
            for name, p in params.items():
                if p.grad is not None:
                    sums[name] += p.grad
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)
    return sums


# Part of every cached selection's key: a change to how selectors choose (or to the quantizer
# some of them read) never serves a selection made the old way.
SELECTOR_SOURCES = (StrategyResolver, percent_of_term, _entries, _top_mask, _column_mask,
                    _column_error, calibration_activations, calibration_gradients,
                    layer_variance_ranking)
SELECTOR_DIGEST = hashlib.sha256("".join(
    [*map(inspect.getsource, SELECTOR_SOURCES), QUANTIZER_DIGEST]).encode()).hexdigest()[:12]
