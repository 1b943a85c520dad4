"""One object owns the mutable state of an audit run: the model, its weight bank, the evaluator
and every measurement taken so far."""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Sequence
from itertools import zip_longest
from pathlib import Path

import numpy as np

from quantfair import models
from quantfair.artifact import Artifact, load_artifact
from quantfair.config import RunConfig, parse_percent
from quantfair.corpus import REFERENCE, Corpus, by_language
from quantfair.errors import QuantfairError
from quantfair.evaluate import (
    UNKNOWN_SHARE,
    Evaluator,
    Swap,
    UnitResult,
    check_finite,
    model_results,
)
from quantfair.llamacpp import llama_cpp_file
from quantfair.metrics import Measurement
from quantfair.models import LoadedModel, load_model
from quantfair.prefix import HiddenStates, decoder_layers
from quantfair.progress import notices_to
from quantfair.quantize import (
    QUANTIZER_DIGEST,
    QuantScheme,
    WeightBank,
    has_element_masks,
    weights_folder,
)
from quantfair.strategies import (
    Activations,
    Overhead,
    StrategyResolver,
    calibration_activations,
    calibration_gradients,
    protection_key,
)
from quantfair.text import first_line, units_text
from quantfair.workers import (
    CoreShare,
    configure_threads,
    return_freed_memory,
    tune_allocator,
)

Announce = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def hash_texts(texts: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]


def _calibration_languages(languages: Sequence[str]) -> list[str]:
    """One code per language, in code order (the order languages were given in changes no
    selection): a language under two codes of a user corpus (`he`, `heb`), or English again
    (`eng`), calibrates once, under its first code (`corpus.by_language`; English as `en`)."""
    return [REFERENCE if REFERENCE in codes else codes[0]
            for codes in by_language(sorted(languages)).values()]


def _selector_share(corpus: Corpus) -> list[str]:
    """The first units of `corpus` giving up to 32 calibration texts in all, the same number
    from each language (`_calibration_languages`)."""
    return corpus.units[:max(1, 32 // len(_calibration_languages(corpus.languages)))]


def unknown_warning(shares: dict[str, float], token: str | None) -> str:
    """What to say of languages whose text is more than UNKNOWN_SHARE the tokenizer's
    unknown `token` (`Evaluator.unknown_shares`), or "": a script the tokenizer cannot
    represent would look unhurt, its loss that of predicting one token."""
    unread = {lang: share for lang, share in shares.items() if share > UNKNOWN_SHARE}
    if not unread:
        return ""
    listed = ", ".join(f"{lang} {share:.0%}" for lang, share in unread.items())
    return (f"the tokenizer reads part of the text as its unknown token {token!r} ({listed} "
            "of tokens): those languages' numbers measure predictions of that token, not "
            "of their text")


class AuditSession:
    """Loads the model once (up front), keeps FP and quantized tensors, and measures strategies
    on demand."""

    def __init__(self, config: RunConfig, announce: Announce = _stderr,
                 progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
                 loaded: LoadedModel | None = None, workers: int | None = None,
                 run_folder: Path | None = None, quantizer: bool = True) -> None:
        """`loaded` hands in a model already in memory instead of loading `config.model`;
        `workers`: how many processes (xdist workers) share the machine's cores;
        `run_folder`: a folder the run's processes on this machine share, for hidden states
        (`prefix.HiddenStates`) and cores (`workers.CoreShare`); without `quantizer` a
        `llama.cpp:` scheme's file is not made (what needs only tensor names)."""
        self.config = config
        self.announce = announce
        self.progress = progress
        self.corpus, self.calibration = config.corpus_split
        tune_allocator()  # before the model loads: threads take their arena on first use
        threads = configure_threads(config.threads, workers)
        if threads:
            announce(threads)
        self.loads_before = models.load_count  # this session's are those after
        with notices_to(announce):  # what loading says: a GGUF converted, a file written again
            self._load(loaded, quantizer)
        loaded = self.loaded
        self.evaluator = Evaluator(loaded, announce=announce)
        self.tokenizer_warning = unknown_warning(self.evaluator.unknown_shares(
            {lang: units.values() for lang, units in self.corpus.texts.items()}),
            loaded.tokenizer.unk_token)
        if self.tokenizer_warning:
            announce(f"quantfair: warning: {self.tokenizer_warning}")
        self._check_forward()
        layers = decoder_layers(loaded.model, self.bank.parts)
        capacity = config.hidden_states_bytes
        if layers is not None and capacity and self.bank.folder is not None:  # not in memory
            shared = run_folder / "hidden-states" if run_folder is not None else None
            self.evaluator.hidden_states = HiddenStates(layers, self.bank.prefix_keys,
                                                        self.bank.folder, capacity, shared)
        # (not where the thread count keys the numbers: the worker keeps its share)
        share = (None if self.evaluator.reduced_cpu else
                 CoreShare.of_worker(run_folder, workers, config.threads))
        self.evaluator.before_forward = share.update if share is not None else None
        self._resolvers: dict[QuantScheme, StrategyResolver] = {}
        self._activation_stats: Activations | None = None
        self.measurements: dict[tuple[str, str, str], Measurement] = {}
        self._noted: set[tuple[str, str]] = set()

    def _check_forward(self) -> None:
        """One forward of a few tokens: a checkpoint whose own code fails on it (a config
        this transformers version rejects at run time) is one line before any audit, not an
        "unexpected error" in every audit's forward. Raises QuantfairError."""
        import torch

        ids = self.evaluator.token_ids("Hello world")[:8]
        try:
            with torch.no_grad():
                self.loaded.model(input_ids=torch.tensor([ids], device=self.loaded.device))
        except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise QuantfairError(
                f"{self.loaded.name}: the model fails on a forward of {len(ids)} tokens, before "
                f"any audit ({type(error).__name__}: {first_line(error)}): its config or "
                "checkpoint is one this transformers version does not run") from None

    def _load(self, loaded: LoadedModel | None, quantizer: bool) -> None:
        """The model (`loaded`, or `config.model` loaded), its weight bank and the quantized
        artifact, if any (`__init__`)."""
        config, announce = self.config, self.announce
        if loaded is None:
            announce(f"quantfair: loading {config.model}")
            loaded = load_model(config.model, config.device, config.random_weights, config.dtype)
        self.loaded = loaded
        self.scheme_warning = loaded.requantization_warning(config.scheme)
        if self.scheme_warning:
            announce(f"quantfair: warning: {self.scheme_warning}")
        folder = weights_folder(loaded.weight_hash())
        self.bank = WeightBank(loaded.model, folder)
        self.artifact: Artifact | None = None
        quantized = config.quantized
        if config.scheme.llama_type and quantizer:
            quantized = str(llama_cpp_file(loaded, config.scheme, folder, announce))
        if quantized:
            announce(f"quantfair: loading the quantized artifact {quantized}")
            self.artifact = load_artifact(quantized, config.scheme, loaded)
            self.artifact.tensors = self.bank.add_artifact(
                config.scheme, self.artifact.tensors, self.artifact.weight_hash,
                self.artifact.bits, self.artifact.unquantized)
            if len(self.artifact.unquantized) == len(self.artifact.tensors):
                self.scheme_warning = (f"the artifact {quantized} equals the FP model in every "
                                       "tensor: nothing in it is quantized, so no quantization "
                                       "damage can be measured")
                announce(f"quantfair: warning: {self.scheme_warning}")
            elif self.artifact.unquantized:
                announce(f"quantfair: the artifact leaves {len(self.artifact.unquantized)} "
                         "tensor(s) as in the FP model, e.g. "
                         f"{', '.join(self.artifact.unquantized[:3])}")
            if differences := self.artifact.config_differences:
                announce(f"quantfair: warning: the artifact's config differs from the model's "
                         f"in {', '.join(differences)}: the audit computes with the model's "
                         "config and the artifact's tensors")

    def resolver(self, scheme: QuantScheme | None = None) -> StrategyResolver:
        scheme = scheme or self.config.scheme
        if scheme not in self._resolvers:
            calibration = self._calibration_texts()
            prefix = (f"{self.loaded.weight_hash()}|{self.evaluator.identity}|"
                      f"{self._quantized_key(scheme)}{hash_texts(calibration)}")
            cache = (model_results(self.loaded) / "selections", prefix)
            self._resolvers[scheme] = StrategyResolver(self.bank, scheme, self._gradients, cache,
                                                       self._activations)
        return self._resolvers[scheme]

    def _quantized_key(self, scheme: QuantScheme) -> str:
        """What `scheme`'s tensors come from, in cache keys of its results: the artifact's
        weight hash (the label alone stays the same from one release to the next), or the
        quantizer's version (`QUANTIZER_DIGEST`: a quantfair or gguf upgrade that rounds
        otherwise never serves numbers of the old rounding)."""
        if not scheme.from_file:
            return f"{QUANTIZER_DIGEST}|"
        return f"{self.artifact.weight_hash[:16]}|" if self.artifact is not None else ""

    @property
    def selector_units(self) -> list[str]:
        """The held-out units whose text the selectors calibrate on (activations, gradients);
        empty when every unit is audited (the selectors then take the first sentences of the
        audit units)."""
        return [] if self.calibration is None else _selector_share(self.calibration)

    def _calibration_by_language(self) -> dict[str, list[str]]:
        """The selectors' calibration texts (`selector_units`), per language
        (`_calibration_languages`)."""
        texts = self.calibration or self.corpus.with_length("short")
        units = _selector_share(texts)
        return {lang: [texts.texts[lang][u] for u in units]
                for lang in _calibration_languages(texts.languages)}

    def selector_texts_digest(self) -> str:
        """The digest of the text calibrated selectors choose entries on: equal digests,
        equal selections."""
        return hash_texts(self._calibration_texts())

    def _calibration_texts(self) -> list[str]:
        """`_calibration_by_language`, one language after another round by round."""
        columns = zip_longest(*self._calibration_by_language().values())
        return [text for column in columns for text in column if text is not None]

    def _gradients(self):
        self.bank.restore()
        self.announce("quantfair: computing calibration gradients")
        return calibration_gradients(self.loaded, self._calibration_texts())

    def _activations(self) -> Activations:
        if self._activation_stats is None:
            self.bank.restore()
            self.announce("quantfair: recording calibration activations")
            self._activation_stats = calibration_activations(
                self.loaded, self.bank.parts, self._calibration_by_language())
        return self._activation_stats

    # -- measurements ----------------------------------------------------------------------
    def overhead(self, strategy: str, scheme: QuantScheme | None = None) -> Overhead:
        resolver = self.resolver(scheme)
        return resolver.overhead(resolver.resolve(strategy))

    def entry_percent(self, fraction: float) -> str:
        """The `P%` of an entry selector (`random:`, `magnitude:`, `gradient:`) that keeps at
        most `fraction` (0..1) of all parameters: these keep P% of the *quantized* parameters,
        rounded to the nearest entry (`strategies._entries`), so the share is rounded down to 6
        significant digits and lowered until the count fits (a selector over a budget cannot
        enter `suggest`'s search, nor be a fair baseline). `act:` and `actgap:` take the same
        share in whole input columns."""
        resolver = self.resolver()
        total = sum(c.numel for c in resolver.parts.values())
        quantized = sum(c.numel for c in resolver._quantized_parts()) or 1
        share = 100 * min(1.0, fraction * total / quantized)
        if share <= 0:
            return "0%"
        digits = min(9, max(0, 5 - math.floor(math.log10(share))))  # a term's decimals
        count = math.floor(share * 10**digits)

        def text(count: int) -> str:
            return f"{count / 10**digits:.{digits}f}"

        while count > 0 and resolver.entries_kept(
                parse_percent(text(count), "share")) / total > fraction + 1e-12:
            count -= 1
        return text(count).rstrip("0").rstrip(".") + "%"

    def _evaluate(self, config: str, label: str, corpus: Corpus, apply: Callable[[], None],
                  swap: Swap | None = None, distribution: bool = False
                  ) -> dict[tuple[str, str], UnitResult]:
        """Per-unit results of `config` (put in place by `apply`); with `distribution`, also the
        statistics against the FP reference (`swap` reaches it; None: `config` is the FP)."""
        keys = [(lang, unit) for lang, units in corpus.texts.items() for unit in units]
        texts = [corpus.texts[lang][unit] for lang, unit in keys]
        evaluator = self.evaluator
        lookup = evaluator.cached_distribution if distribution else evaluator.cached
        cached = lookup(config, texts)
        missing = [t for t in dict.fromkeys(texts) if t not in cached]
        if missing:
            tokens = sum(len(evaluator.token_ids(t)) for t in missing)
            self.announce(f"quantfair: evaluating {self.loaded.name} {label}: "
                          f"{units_text(len(missing))}, {tokens:,} tokens of text")
            apply()
            callback = self.progress(label) if self.progress else None
            if distribution:
                cached = evaluator.evaluate_distribution(config, texts, swap, callback, label)
            else:
                cached = evaluator.evaluate(config, texts, callback, label)
        results = {key: cached[text] for key, text in zip(keys, texts, strict=True)}
        check_finite(results, f"{self.loaded.name} {label}")
        return results

    def _note_kept_by_artifact(self, scheme: QuantScheme, strategy: str, protection) -> None:
        """Say once which matrices `strategy` protects that the artifact already leaves as in
        the FP model: protecting those changes no number."""
        if self.artifact is None or not scheme.from_file or (scheme.name, strategy) in self._noted:
            return
        self._noted.add((scheme.name, strategy))
        matrices = [name for name, keep in protection.items()
                    if keep is True and self.bank.parts[name].is_matrix]
        unquantized = set(self.artifact.unquantized)
        kept = [name for name in matrices if name in unquantized]
        if kept:
            self.announce(f"quantfair: {strategy} protects {len(kept)} of its {len(matrices)} "
                          "matrices where the artifact already has the FP model's values (e.g. "
                          f"{kept[0]}): protecting those changes no number")

    def measure(self, strategy: str, scheme: QuantScheme | None = None,
                corpus: Corpus | None = None, distribution: bool = False) -> Measurement:
        """Per-unit FP and quantized results of `strategy` under `scheme`, as a Measurement;
        with `distribution`, also llama.cpp's KL-divergence statistics against the FP model.
        What the weight files say (one written again, the cache not writable) is said with
        the session's lines."""
        with notices_to(self.announce):
            return self._measured(strategy, scheme, corpus, distribution)

    def _measured(self, strategy: str, scheme: QuantScheme | None, corpus: Corpus | None,
                  distribution: bool) -> Measurement:
        scheme = scheme or self.config.scheme
        corpus = corpus or self.corpus
        memo_key = (scheme.name, strategy, corpus.digest())
        known = self.measurements.get(memo_key)
        if known is not None and (known.kld is not None or not distribution):
            return known
        protection = self.resolver(scheme).resolve(strategy)
        self._note_kept_by_artifact(scheme, strategy, protection)
        # An element-level selection and the tensors composed for it leave large temporaries:
        # they go back to the system before the next step's peak comes on top of them.
        masked = has_element_masks(protection)
        if masked:
            return_freed_memory()
        fp = self._evaluate("fp", "FP reference", corpus, self.bank.restore,
                            distribution=distribution)

        def apply() -> None:
            self.bank.apply(scheme, protection)
            if masked:
                return_freed_memory()

        key = f"{scheme.name}|{self._quantized_key(scheme)}{protection_key(protection)}"
        q = self._evaluate(key, f"{scheme.name} protecting {strategy}", corpus, apply,
                           Swap(self.bank.restore, apply), distribution)
        languages = tuple(corpus.languages)

        def grid(source, attribute):
            return np.array([[getattr(source[(lang, u)], attribute) for u in corpus.units]
                             for lang in languages], dtype=np.float64)

        statistics = {}
        if distribution:
            statistics = {name: grid(q, name)
                          for name in ("kld", "same_top", "delta_p", "delta_p_sq")}
            statistics["kld_tokens"] = tuple(
                np.concatenate([q[(lang, u)].kld_values for u in corpus.units])
                for lang in languages)
        measurement = Measurement(
            languages=languages, nll_fp=grid(fp, "nll"), nll_q=grid(q, "nll"),
            tokens=grid(fp, "tokens"), bytes=grid(fp, "bytes"), chars=grid(fp, "chars"),
            **statistics)
        self.measurements[memo_key] = measurement
        return measurement
