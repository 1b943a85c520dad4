"""Per-unit summed token NLL, memoised in memory and cached on disk.

Convention: each unit is tokenized without special tokens and prefixed with the tokenizer's BOS
token (or EOS when it has no BOS, as GPT-2 does), so every text token is predicted and counted.
Units longer than the context are scored with a sliding window (stride = half the window), each
token once, with at least half a window of left context.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock

from quantfair.errors import QuantfairError
from quantfair.models import LoadedModel, cache_root
from quantfair.storage import cache_writes

EVALUATOR_VERSION = "2"
MAX_WINDOW = 2048


@dataclass(frozen=True)
class UnitResult:
    nll: float  # summed over predicted tokens, nats
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes of the text
    chars: int


class NonFiniteLoss(QuantfairError):
    """A unit's loss was NaN or infinite; it is reported, never averaged in."""


def results_root() -> Path:
    if env := os.environ.get("QUANTFAIR_RESULTS_DIR"):
        return Path(env)
    return cache_root() / "results"


def model_results(loaded: LoadedModel) -> Path:
    """The folder of one model's cached results (keyed by its weights)."""
    return results_root() / loaded.weight_hash()[:16]


class ResultCache:
    """Append-only JSONL files, one per (model weights, configuration); a line whose checksum
    does not match is ignored (and recomputed), so a torn or foreign entry is never trusted.
    Appends take a file lock, so processes sharing the folder never interleave lines; reads
    need none (and so work in a read-only cache)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.memory: dict[str, dict[str, UnitResult]] = {}

    def _path(self, config: str) -> Path:
        return self.folder / f"{hashlib.sha256(config.encode()).hexdigest()[:24]}.jsonl"

    @staticmethod
    def _checksum(config: str, key: str, result: UnitResult) -> str:
        payload = json.dumps([config, key, asdict(result)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def load(self, config: str) -> dict[str, UnitResult]:
        if config in self.memory:
            return self.memory[config]
        found: dict[str, UnitResult] = {}
        try:
            text = self._path(config).read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""  # absent or unreadable: computed again
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                result = UnitResult(**entry["result"])
                if entry["check"] == self._checksum(config, entry["key"], result):
                    found[entry["key"]] = result
            except (ValueError, KeyError, TypeError):
                continue
        self.memory[config] = found
        return found

    def store(self, config: str, items: dict[str, UnitResult]) -> None:
        self.load(config).update(items)
        lines = "".join(
            json.dumps({"key": key, "result": asdict(result),
                        "check": self._checksum(config, key, result)}) + "\n"
            for key, result in items.items()
        )
        path = self._path(config)
        with cache_writes(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            with FileLock(path.with_suffix(".lock")), open(path, "ab") as handle:
                handle.write(lines.encode("utf-8"))


def tokenizer_identity(tokenizer) -> str:
    """A hash of everything that decides the token ids: the serialized pipeline (normalizer,
    pre-tokenizer, model, added tokens) or, for a tokenizer without one, its saved files."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:24]


def model_identity(loaded: LoadedModel) -> str:
    """A hash of what changes the logits besides the weights: the architecture's settings,
    the attention implementation, the dtype and the device class."""
    model = loaded.model
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}
    parts = [json.dumps(config, sort_keys=True, default=str),
             str(getattr(model.config, "_attn_implementation", None)),
             str(next(model.parameters()).dtype), loaded.device.type]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class _Window:
    key: str
    ids: list[int]
    score_from: int  # first position in `ids` whose token is scored (>= 1)


class Evaluator:
    """Scores texts with the model in whatever state it is in; the caller names that state
    (`config`) so results are cached per state."""

    def __init__(self, loaded: LoadedModel, cache: ResultCache | None = None,
                 batch_tokens: int | None = None) -> None:
        self.loaded = loaded
        self.cache = cache or ResultCache(model_results(loaded))
        self.window = min(loaded.context_length, MAX_WINDOW)
        # One sequence per forward on CPU (padding costs more than it saves there).
        if batch_tokens is None:
            batch_tokens = 16384 if loaded.device.type == "cuda" else 0
        self.batch_tokens = batch_tokens
        tokenizer = loaded.tokenizer
        self.prefix = tokenizer.bos_token_id
        if self.prefix is None:
            self.prefix = tokenizer.eos_token_id
        self.forward_passes = 0
        self._tokenizer_id = tokenizer_identity(tokenizer)
        self._model_id = model_identity(loaded)

    def unit_key(self, text: str) -> str:
        """Covers everything besides the weights (the cache folder) that changes a number."""
        payload = "\0".join([EVALUATOR_VERSION, self._tokenizer_id, self._model_id,
                             str(self.window), str(self.prefix), text])
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def cached(self, config: str, texts: Iterable[str]) -> dict[str, UnitResult]:
        known = self.cache.load(config)
        return {t: known[k] for t in texts if (k := self.unit_key(t)) in known}

    def token_ids(self, text: str) -> list[int]:
        ids = self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ([self.prefix] if self.prefix is not None else []) + list(ids)

    def _windows(self, key: str, ids: list[int]) -> list[_Window]:
        if len(ids) <= self.window:
            return [_Window(key, ids, 1)]
        stride = self.window // 2
        windows, scored_to, begin = [], 1, 0
        while scored_to < len(ids):
            end = min(begin + self.window, len(ids))
            windows.append(_Window(key, ids[begin:end], scored_to - begin))
            scored_to, begin = end, begin + stride
        return windows

    def _batches(self, windows: list[_Window]) -> Iterable[list[_Window]]:
        ordered = sorted(windows, key=lambda w: -len(w.ids))
        batch: list[_Window] = []
        for window in ordered:
            if batch and len(batch[0].ids) * (len(batch) + 1) > self.batch_tokens:
                yield batch
                batch = []
            batch.append(window)
        if batch:
            yield batch

    @torch.inference_mode()
    def _score(self, batch: list[_Window]) -> list[float]:
        device = self.loaded.device
        length = max(len(w.ids) for w in batch)
        pad = self.loaded.tokenizer.pad_token_id or 0
        ids = torch.full((len(batch), length), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, window in enumerate(batch):
            ids[row, : len(window.ids)] = torch.tensor(window.ids)
            mask[row, : len(window.ids)] = 1
        ids = ids.to(device)
        self.forward_passes += 1
        padded = any(len(w.ids) < length for w in batch)
        # Without padding the mask is all ones; leaving it out keeps the fast causal path.
        logits = self.loaded.model(
            input_ids=ids, attention_mask=mask.to(device) if padded else None).logits
        vocab = logits.shape[-1]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, vocab).float(), ids[:, 1:].reshape(-1), reduction="none"
        ).reshape(len(batch), length - 1)
        return [losses[row, w.score_from - 1: len(w.ids) - 1].double().sum().item()
                for row, w in enumerate(batch)]

    def evaluate(self, config: str, texts: list[str],
                 progress: Callable[[int, int], None] | None = None) -> dict[str, UnitResult]:
        """NLL of each text under the model's current weights, cached under `config`."""
        results = self.cached(config, texts)
        todo = [t for t in dict.fromkeys(texts) if t not in results]
        if not todo:
            return results
        keyed = {self.unit_key(t): t for t in todo}
        ids = {key: self.token_ids(text) for key, text in keyed.items()}
        windows = [w for key in keyed for w in self._windows(key, ids[key])]
        pending = {key: sum(1 for w in windows if w.key == key) for key in keyed}
        sums = dict.fromkeys(keyed, 0.0)
        total, done = sum(len(w.ids) for w in windows), 0
        for batch in self._batches(windows):
            finished = {}
            for window, nll in zip(batch, self._score(batch), strict=True):
                sums[window.key] += nll
                pending[window.key] -= 1
                done += len(window.ids)
                if pending[window.key] == 0:
                    text = keyed[window.key]
                    finished[window.key] = UnitResult(
                        nll=sums[window.key], tokens=len(ids[window.key]) - 1,
                        bytes=len(text.encode("utf-8")), chars=len(text))
            if finished:
                self.cache.store(config, finished)
                results.update({keyed[k]: r for k, r in finished.items()})
            if progress:
                progress(done, total)
        return results


def check_finite(results: dict[tuple[str, str], UnitResult], what: str) -> None:
    """Raise one clear line naming every unit whose loss is not finite."""
    bad = [f"{lang}/{unit}" for (lang, unit), r in results.items() if not math.isfinite(r.nll)]
    if bad:
        shown = ", ".join(bad[:6]) + (" ..." if len(bad) > 6 else "")
        raise NonFiniteLoss(f"{what}: non-finite loss in {len(bad)} unit(s): {shown}")
