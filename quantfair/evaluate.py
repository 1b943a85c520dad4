"""Per-unit summed token NLL and, on request, the FP-vs-quantized distribution statistics of
llama.cpp's `llama-perplexity --kl-divergence`, memoised in memory and cached on disk.

Convention: each unit is tokenized without special tokens and prefixed with the tokenizer's BOS
token (or EOS when it has no BOS, as GPT-2 does), so every text token is predicted and counted
(a tokenizer with neither leaves the first token unscored: counts are of the tokens scored).
Units longer than the window (the context, at most MAX_WINDOW = 2048 tokens) are scored with
a sliding window (stride = half the window), each token once, with at least half a window of
left context.

Distribution statistics, per scored token, as llama.cpp's `tools/perplexity/perplexity.cpp`
defines them: KLD = sum_v p_fp(v) (log p_fp(v) - log p_q(v)) in nats, same top = argmax p_fp ==
argmax p_q, delta-p = p_q(correct) - p_fp(correct). The FP side is computed once per text and
kept on disk without the vocabulary dimension: for a linear head z = W h + b,
sum_v p_fp(v) log p_q(v) = u . h_q + p_fp . b - logsumexp(z_q) with u = W^T p_fp, so caching
sum(p_fp log p_fp), the FP argmax, p_fp(correct), u and p_fp . b per token (one u per head
weight the run meets) makes the quantized side exact at the cost of one dot product per token.
Heads that are not plain linear maps (logit soft-capping, logit scaling), and heads not in
float32 (whose rounded logits the exact cross term would not match: `caches_fp_side`), fall
back to an FP forward beside every quantized one.

Memory: with a plain linear head the model's forward stops at the head's input and the logits
are computed a block of positions at a time (`_Logits`), so a batch's [batch, length, vocab]
logits never exist whole (a 2048-token window at Gemma 3's 262k vocabulary would be 2 GiB in
float32, and its softmax as much again): what a pass holds beyond the model's activations is
one block, whatever the length of the text.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn

from quantfair.errors import QuantfairError
from quantfair.models import LoadedModel
from quantfair.prefix import HiddenStates
from quantfair.storage import atomic_write, cache_writes, model_folder

# 3: short units batched on CPU; 4: the head run on blocks of positions; 5: special-token
# markup in a text (a literal "<|endoftext|>") scored as text
EVALUATOR_VERSION = "5"
DISTRIBUTION_VERSION = "3"  # bump when the FP side cache or the statistics change
MAX_WINDOW = 2048
UNKNOWN_SHARE = 0.01  # a language more of whose tokens are the unknown token is warned of
LOGITS_BLOCK_BYTES = 32 << 20  # float32 logits of the positions scored at a time, at most,
MIN_BLOCK_ROWS = 128  # but never fewer positions than this (each block reads the whole head)
VOCAB_SLAB_BYTES = 32 << 20  # float64 head rows at a time in the FP side's u = W^T p_fp
CLAIM_TOKENS = 512  # tokens of units claimed at a time (on CPU; a batch on CUDA)
CPU_BATCH_TOKENS = 512  # padded tokens per forward on CPU, at most (a longer window runs alone)
CPU_BATCH_LOGITS = 96 << 20  # bytes of float32 logits per forward on CPU, at most, where the
# model's own logits are used (a head that is not a plain linear map)
GROUP_BATCHES = 8  # units are batched a group of this many batches' worth of tokens at a time
CLAIM_STRIPES = 256  # lock files per model folder that claims are spread over
WAIT_NOTICE_S = 30.0  # a waiting process says so again after this long

# The evaluator leaves the attention mask out of unpadded batches (the fast causal path) and
# passes it with padded ones: transformers' warning that ids starting with a pad-like token
# (a BOS equal to the pad token) "may be padded" never applies here.
logging.getLogger("transformers.modeling_utils").addFilter(
    lambda record: "since your input_ids may be padded" not in record.getMessage())


@dataclass(frozen=True)
class UnitResult:
    nll: float  # summed over predicted tokens, nats
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes of the text
    chars: int


@dataclass(frozen=True)
class UnitDistribution(UnitResult):
    """A unit's NLL plus its sums of llama.cpp's KL-divergence statistics against the FP model."""

    kld: float  # summed over predicted tokens, nats
    same_top: int  # predicted tokens whose FP and quantized argmax agree
    delta_p: float  # sum of p_q(correct) - p_fp(correct)
    delta_p_sq: float  # sum of squares of the same
    kld_tokens: str  # per-token KLD, float32 little-endian, base64 (for exact percentiles)

    @property
    def kld_values(self) -> np.ndarray:
        """Per-token KLD in nats, shape [tokens], float32 as llama.cpp keeps them."""
        return np.frombuffer(base64.b64decode(self.kld_tokens), dtype="<f4")


class NonFiniteLoss(QuantfairError):
    """A unit's loss was NaN or infinite; it is reported, never averaged in."""


def model_results(loaded: LoadedModel) -> Path:
    """The folder of one model's cached results (keyed by its weights)."""
    return model_folder(loaded.weight_hash())


class ResultCache:
    """Append-only JSONL files, one per (model weights, configuration); a line whose checksum
    does not match is ignored (and recomputed), so a torn or foreign entry is never trusted.
    Appends take a file lock, so processes sharing the folder never interleave lines; reads
    need none (and so work in a read-only cache)."""

    def __init__(self, folder: Path, result_type: type[UnitResult] = UnitResult,
                 version: str = "") -> None:
        self.folder = folder
        self.result_type = result_type
        self.version = version  # part of every file's name: a new one never reads the old
        self.memory: dict[str, dict[str, UnitResult]] = {}
        self._read_to: dict[str, int] = {}  # bytes of each configuration's file read so far
        self.damaged: dict[str, int] = {}  # lines of a configuration's file not trusted

    def _path(self, config: str) -> Path:
        name = f"{config}{self.version}".encode()
        return self.folder / f"{hashlib.sha256(name).hexdigest()[:24]}.jsonl"

    @staticmethod
    def _checksum(config: str, key: str, result: UnitResult) -> str:
        payload = json.dumps([config, key, asdict(result)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def _read(self, config: str, start: int) -> tuple[dict[str, UnitResult], int]:
        """The entries of the file from byte `start` up to its last complete line, and the
        byte after that line (an append in progress is read next time)."""
        try:
            with open(self._path(config), "rb") as handle:
                handle.seek(start)
                data = handle.read()
        except OSError:
            return {}, start  # absent or unreadable: computed again
        end = data.rfind(b"\n") + 1
        found: dict[str, UnitResult] = {}
        for line in data[:end].decode("utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                result = self.result_type(**entry["result"])
                trusted = entry["check"] == self._checksum(config, entry["key"], result)
            except (ValueError, KeyError, TypeError):
                trusted = False
            if not trusted:  # torn by a crash, or edited
                self.damaged[config] = self.damaged.get(config, 0) + 1
            elif _finite(result):  # (an older version's non-finite entry: again)
                found[entry["key"]] = result
        return found, start + end

    def load(self, config: str) -> dict[str, UnitResult]:
        if config not in self.memory:
            self.memory[config], self._read_to[config] = self._read(config, 0)
        return self.memory[config]

    def refresh(self, config: str) -> dict[str, UnitResult]:
        """`load`, plus what other processes appended to the file since it was read."""
        known = self.load(config)
        try:
            size = self._path(config).stat().st_size
        except OSError:
            size = 0
        read_to = self._read_to.get(config, 0)
        if size < read_to:  # not the file read before (the cache cleared): read it whole,
            kept = self.memory.pop(config)  # keeping what this process has (the same key:
            known = self.load(config)  # the same model, scheme and text, so the same result)
            for key, result in kept.items():
                known.setdefault(key, result)
            return known
        if size > read_to:
            found, self._read_to[config] = self._read(config, read_to)
            known.update(found)
        return known

    def store(self, config: str, items: dict[str, UnitResult]) -> None:
        """Keep `items` in memory and append them to the file, but for a non-finite result:
        an error (`check_finite`), whose cause (e.g. a damaged weights file) may go."""
        self.load(config).update(items)
        items = {key: result for key, result in items.items() if _finite(result)}
        if not items:
            return
        lines = "".join(
            json.dumps({"key": key, "result": asdict(result),
                        "check": self._checksum(config, key, result)}) + "\n"
            for key, result in items.items()
        )
        path = self._path(config)
        with cache_writes(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            with FileLock(path.with_suffix(".lock")), open(path, "a+b") as handle:
                if handle.seek(0, os.SEEK_END) and _last_byte(handle) != b"\n":
                    lines = "\n" + lines  # a line torn by a crash ends here, never read
                handle.write(lines.encode("utf-8"))


def _non_finite(result: UnitResult) -> list[str]:
    """The names of the result's float fields that are NaN or infinite."""
    return [name for name, value in asdict(result).items()
            if isinstance(value, float) and not math.isfinite(value)]


def _finite(result: UnitResult) -> bool:
    return not _non_finite(result)


def _last_byte(handle) -> bytes:
    handle.seek(-1, os.SEEK_END)
    return handle.read(1)


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


class ReferenceCache:
    """The FP side of the distribution statistics, per unit, as .npz files: `<unit>.base.npz`
    holds per scored token sum(p_fp log p_fp) `plogp`, the FP argmax `top` and `p_correct`;
    `<unit>.<head>.npz` holds `u` = W^T p_fp [tokens, hidden] (float32) and `c` = p_fp . b for
    one head weight W, b (named by its content hash). Each file keeps the SHA-256 of its
    arrays: one edited, cut or of another unit's length reads as missing, and is built again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / f"fp-distribution-v{DISTRIBUTION_VERSION}"

    def _path(self, key: str, part: str) -> Path:
        return self.folder / f"{key}.{part}.npz"

    def load(self, key: str, head: str, tokens: int) -> dict[str, np.ndarray] | None:
        """The unit's arrays, each of `tokens` scored tokens, or None where a file is missing
        or not as it was written."""
        arrays: dict[str, np.ndarray] = {}
        for part in ("base", head):
            try:
                with np.load(self._path(key, part)) as stored:
                    kept = {name: stored[name] for name in stored.files}
            except (OSError, ValueError, zipfile.BadZipFile):
                return None
            if str(kept.pop("sha256", "")) != _arrays_digest(kept) or any(
                    len(array) != tokens for array in kept.values()):
                return None
            arrays.update(kept)
        return arrays

    def has(self, key: str, head: str) -> bool:
        """Whether both files are there (each is written whole or not at all)."""
        return all(self._path(key, part).is_file() for part in ("base", head))

    def store(self, key: str, head: str, arrays: dict[str, np.ndarray]) -> None:
        for part, names in (("base", ("plogp", "top", "p_correct")), (head, ("u", "c"))):
            buffer = io.BytesIO()
            kept = {name: arrays[name] for name in names}
            np.savez(buffer, **kept, sha256=np.array(_arrays_digest(kept)))
            with cache_writes(self.folder):  # readers never see a half-written file
                atomic_write(self._path(key, part), buffer.getvalue())

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.glob("*.npz"))


def found_once(keys: Collection[str], found: Callable[[str], bool]) -> Callable[[], set[str]]:
    """A `finished` for `Evaluator._shared`: the keys for which `found` holds, each asked
    again only until it does (`found` may read and hash a unit's files: asked of every unit
    once per unit waited for, two processes sharing a KL-divergence run's FP reference took
    minutes)."""
    done: set[str] = set()

    def finished() -> set[str]:
        done.update(key for key in keys if key not in done and found(key))
        return set(done)

    return finished


def _note_holder(lock: FileLock) -> None:
    """Beside a claim just taken, this process's id: one waiting for it can tell a holder
    that is stopped (Ctrl-Z, SIGSTOP) from one that is working."""
    with contextlib.suppress(OSError):
        Path(f"{lock.lock_file}.pid").write_text(str(os.getpid()))


def _stopped_holder(lock: FileLock) -> str:
    """"; the process holding it ... is stopped" where the claim's holder is (Linux /proc),
    else ""."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(Path(f"{lock.lock_file}.pid").read_text())
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state in ("T", "t"):
            return (f"; the process holding it (pid {pid}) is stopped: resume it (kill -CONT "
                    f"{pid}) or end it")
    return ""


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Swap:
    """Switches the live model to the FP reference and back to the evaluated configuration."""

    to_reference: Callable[[], None]
    to_config: Callable[[], None]


def linear_head(model: nn.Module) -> bool:
    """Whether the logits are the output embedding's linear map of its input, with no
    soft-capping or scaling after it (what the cached FP side needs to be exact)."""
    config = model.config
    return (isinstance(model.get_output_embeddings(), nn.Linear)
            and not getattr(config, "final_logit_softcapping", None)
            and getattr(config, "logit_scale", None) in (None, 1.0))


Block = Callable[[int, int], torch.Tensor]  # (start, stop) -> float32 logits [stop - start, vocab]


def _blocks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    return [(first, min(stop, first + size)) for first in range(start, stop, size)]


def _times_weight(p: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """p [n, vocab] (float64) times a head weight [vocab, hidden] in float64, a slab of the
    vocabulary at a time: the whole weight in float64 would take 8 bytes per parameter of the
    head (1.25 GiB on Gemma 3)."""
    step = max(1, VOCAB_SLAB_BYTES // (8 * weight.shape[1]))
    return sum(p[:, first:stop] @ weight[first:stop].double()
               for first, stop in _blocks(0, weight.shape[0], step))


def _last_block_kept(block: Block) -> Block:
    """`block`, computed once for calls in a row on the same positions."""
    last: dict[tuple[int, int], torch.Tensor] = {}

    def rows(start: int, stop: int) -> torch.Tensor:
        if (start, stop) not in last:
            last.clear()
            last[start, stop] = block(start, stop)
        return last[start, stop]
    return rows


def _reference_side(fp: Block, targets: torch.Tensor, rows: int,
                    weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                    logits: Block | None = None
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """FP side of one window from its FP logits (`fp`, `rows` positions at a time; targets
    [n]): `plogp`, `top`, `p_correct`, and with `weight` [vocab, hidden] (and `bias`) `u` and
    `c`; with the evaluated `logits`, also the exact cross term sum_v p_fp(v) z_q(v) [n]."""
    parts: dict[str, list[torch.Tensor]] = {
        "plogp": [], "p_correct": [], "u": [], "c": [], "top": []}
    cross = []
    for start, stop in _blocks(0, len(targets), rows):
        z = fp(start, stop)
        log_p = torch.log_softmax(z.double(), dim=-1)
        p = log_p.exp()
        parts["top"].append(z.argmax(-1))
        parts["plogp"].append((p * log_p).sum(-1))
        parts["p_correct"].append(p.gather(1, targets[start:stop, None])[:, 0])
        if logits is not None:
            cross.append((p * logits(start, stop).double()).sum(-1))
        if weight is not None:
            parts["u"].append(_times_weight(p, weight).float())
            parts["c"].append(p @ bias.double() if bias is not None
                              else torch.zeros_like(p[:, 0]))
    side = {name: torch.cat(values) for name, values in parts.items() if values}
    return side, torch.cat(cross) if cross else None


@dataclass(frozen=True)
class _WindowStatistics:
    first: int
    nll: float
    kld: np.ndarray  # [scored tokens], nats
    same_top: int
    delta_p: float
    delta_p_sq: float


def _window_statistics(first: int, side: dict[str, torch.Tensor], cross: torch.Tensor,
                       logits: Block, targets: torch.Tensor, rows: int) -> _WindowStatistics:
    """llama.cpp's per-token statistics: KLD = sum p_fp log p_fp - sum p_fp z_q + lse(z_q),
    from the evaluated logits (`rows` positions at a time; targets [n])."""
    parts: dict[str, list[torch.Tensor]] = {"nll": [], "arg_top": [], "lse": [], "z": []}
    for start, stop in _blocks(0, len(targets), rows):
        z, wanted = logits(start, stop), targets[start:stop, None]
        parts["nll"].append(torch.nn.functional.cross_entropy(z, wanted[:, 0], reduction="none"))
        top, arg_top = z.max(dim=-1)
        parts["arg_top"].append(arg_top)
        # lse kept in float64: rounded to float32 it would be off by up to 1e-6 nats per token.
        parts["lse"].append(top.double() + (z - top[:, None]).exp().sum(-1).double().log())
        parts["z"].append(z.gather(1, wanted)[:, 0].double())
    nll, arg_top, lse, z_correct = (torch.cat(parts[name])
                                    for name in ("nll", "arg_top", "lse", "z"))
    nll = nll.double()
    kld = side["plogp"] - cross + lse
    p_correct = torch.exp(z_correct - lse)
    delta_p = p_correct - side["p_correct"]
    return _WindowStatistics(
        first=first, nll=nll.sum().item(), kld=kld.cpu().numpy(),
        same_top=int((arg_top == side["top"]).sum()),
        delta_p=delta_p.sum().item(), delta_p_sq=(delta_p * delta_p).sum().item())


class _Logits:
    """The logits of one padded batch, a block of positions of one row at a time (float32
    [stop - start, vocab]). With `head` (a plain linear head), `output` is the head's input
    [batch, length, hidden] and a block is the head applied to its positions only; otherwise
    `output` is the model's own logits [batch, length, vocab]. A block is computed with the
    head's weights as they are when it is asked for."""

    def __init__(self, output: torch.Tensor, head: nn.Module | None) -> None:
        self.output, self.head = output, head

    def rows(self, row: int, start: int, stop: int) -> torch.Tensor:
        block = self.output[row, start:stop]
        if self.head is not None:
            block = torch.nn.functional.linear(block, self.head.weight, self.head.bias)
        return block.float()

    def window(self, row: int, offset: int) -> Block:
        """`rows` of one row, positions counted from `offset`."""
        return lambda start, stop: self.rows(row, offset + start, offset + stop)


@contextmanager
def _without_head(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, the model's forward returns its output head's input in place of the logits
    (the head is swapped for an identity and put back); yields the head."""
    head = model.get_output_embeddings()
    model.set_output_embeddings(nn.Identity())
    try:
        yield head
    finally:
        model.set_output_embeddings(head)


@dataclass(frozen=True)
class _Window:
    key: str
    ids: list[int]
    score_from: int  # first position in `ids` whose token is scored (>= 1)
    first: int = 0  # index of its first scored token among the unit's scored tokens


def _window_tokens(windows: list[_Window]) -> dict[str, int]:
    tokens: dict[str, int] = {}
    for window in windows:
        tokens[window.key] = tokens.get(window.key, 0) + len(window.ids)
    return tokens


class _Progress:
    """Tokens scored of a set of units, here or by another process, for a progress callback."""

    def __init__(self, callback: Callable[[int, int], None] | None,
                 sizes: dict[str, int], before: int = 0) -> None:
        self.callback = callback
        self.sizes = sizes  # unit key -> tokens of its windows
        self.total = sum(sizes.values()) + before  # `before`: the FP forwards of a reference
        self.done = 0  # tokens scored by this process
        self.mine: set[str] = set()
        self.finished: set[str] = set()
        self.report()  # the bar's end: the tokens these windows score

    def advance(self, tokens: int) -> None:
        self.done += tokens

    def seen(self, keys: Iterable[str], mine: bool = False) -> set[str]:
        """Note finished units (ours if `mine`); every finished unit among ours so far."""
        keys = {key for key in keys if key in self.sizes}
        if mine:
            self.mine |= keys
        self.finished |= keys
        return set(self.finished)

    def report(self) -> None:
        if self.callback:
            others = sum(self.sizes[key] for key in self.finished - self.mine)
            self.callback(min(self.done + others, self.total), self.total)


class Evaluator:
    """Scores texts with the model in whatever state it is in; the caller names that state
    (`config`) so results are cached per state."""

    def __init__(self, loaded: LoadedModel, cache: ResultCache | None = None,
                 batch_tokens: int | None = None,
                 announce: Callable[[str], None] | None = None) -> None:
        self.loaded = loaded
        self.announce = announce or (lambda message: None)
        self.cache = cache or ResultCache(model_results(loaded))
        self._said: set[tuple[int, str]] = set()  # damaged files said (`_note_damaged`)
        self.window = min(loaded.context_length, MAX_WINDOW)
        # On CPU, units of similar length share a forward of at most 512 tokens (~12% faster
        # than one at a time for ~120-token units; a longer window runs alone), whose logits
        # fit in 96 MiB where the model's own logits are used.
        vocabulary = loaded.model.get_output_embeddings().weight.shape[0]
        # In bfloat16 or float16 on a CPU, a unit's NLL depends on the windows that share its
        # forward (SmolLM2: up to 1.4%, as much as int8's damage) and on the thread count,
        # so which units a run finds cached would change the others' numbers: each window
        # runs alone, and the thread count keys its results (`unit_key`).
        self.reduced_cpu = (loaded.device.type == "cpu"
                            and next(loaded.model.parameters()).dtype != torch.float32)
        if batch_tokens is None and self.reduced_cpu:
            batch_tokens = 1
        elif batch_tokens is None and loaded.device.type == "cuda":
            batch_tokens = 16384
        elif batch_tokens is None and linear_head(loaded.model):
            batch_tokens = CPU_BATCH_TOKENS
        elif batch_tokens is None:
            batch_tokens = min(CPU_BATCH_TOKENS, CPU_BATCH_LOGITS // (4 * vocabulary))
        self.batch_tokens = batch_tokens
        # Positions whose logits are computed at a time: 170 (32 MiB) at SmolLM2's 49k
        # vocabulary; 128 (128 MiB) at Gemma 3's 262k, where 64 slowed its head by a fifth.
        self.block_rows = max(MIN_BLOCK_ROWS, LOGITS_BLOCK_BYTES // (4 * vocabulary))
        tokenizer = loaded.tokenizer
        self.prefix = tokenizer.bos_token_id
        if self.prefix is None:
            self.prefix = tokenizer.eos_token_id
        self.forward_passes = 0
        self.distribution_cache = ResultCache(self.cache.folder, UnitDistribution,
                                              version=f"|distribution-v{DISTRIBUTION_VERSION}")
        self.references = ReferenceCache(self.cache.folder)
        self._tokenizer_id = tokenizer_identity(tokenizer)
        self._model_id = model_identity(loaded)
        self._claims: dict[Path, FileLock] = {}
        self.units_computed = 0  # units this process scored (not those another one did)
        self.tokens_computed = 0  # and their scored tokens
        # Set by the owner of the weights (`prefix.HiddenStates`): layers below the first one
        # whose weights differ from an earlier pass over the same tokens are not run again.
        self.hidden_states: HiddenStates | None = None
        # Set by an xdist worker's session: its share of the cores, given again before each
        # forward pass (`workers.CoreShare`).
        self.before_forward: Callable[[], None] | None = None

    @property
    def computes(self) -> dict[str, str]:
        """What besides the weights changes what the model computes on a text, by name: this
        code's version, the tokenizer, the model's settings, the window, the first token."""
        return {"evaluation": EVALUATOR_VERSION, "tokenizer": self._tokenizer_id,
                "model settings": self._model_id, "window": str(self.window),
                "first token": str(self.prefix)}

    @property
    def identity(self) -> str:
        """`computes` as 16 hex digits: keys caches of what is derived from forward passes
        over other text, such as calibration selections and suggestions."""
        return hashlib.sha256("\0".join(self.computes.values()).encode()).hexdigest()[:16]

    def unit_key(self, text: str) -> str:
        """Covers everything besides the weights (the cache folder) that changes a number:
        `computes`, and in bfloat16 or float16 on a CPU the thread count, which rounds its
        sums (not a part of `identity`: a suggestion or selection searched with other
        threads is still this model's)."""
        rounding = [f"threads {torch.get_num_threads()}"] if self.reduced_cpu else []
        payload = "\0".join([*self.computes.values(), *rounding, text])
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def cached(self, config: str, texts: Iterable[str]) -> dict[str, UnitResult]:
        known = self.cache.load(config)
        return {t: known[k] for t in texts if (k := self.unit_key(t)) in known}

    def token_ids(self, text: str) -> list[int]:
        """The ids the model scores `text` by: the prefix (BOS), then the text's tokens, a
        special token's markup in it ("<|endoftext|>") tokenized as text, as llama.cpp's
        perplexity tool does (`parse_special` false): a corpus is text, not a chat
        template."""
        ids = self.loaded.tokenizer(text, add_special_tokens=False,
                                    split_special_tokens=True)["input_ids"]
        return ([self.prefix] if self.prefix is not None else []) + list(ids)

    def unknown_shares(self, texts: dict[str, Iterable[str]]) -> dict[str, float]:
        """Per language of `texts` (language -> its texts): the share of its texts' tokens
        that are the tokenizer's unknown token (0 for a tokenizer without one, such as a
        byte-level BPE). Raises QuantfairError where the tokenizer gives an id the model's
        embedding has no row for (a tokenizer of another model; the forward would fail on
        it)."""
        rows = self.loaded.model.get_input_embeddings().weight.shape[0]
        unknown = self.loaded.tokenizer.unk_token_id
        shares = {}
        for lang, group in texts.items():
            ids = [self.token_ids(text) for text in group]  # the prefix too: it is embedded
            flat = [i for unit in ids for i in unit]
            if flat and max(flat) >= rows:
                raise QuantfairError(
                    f"{self.loaded.name}: its tokenizer gives token id {max(flat)} for {lang} "
                    f"text, where the model's embedding has {rows} rows (ids 0 to "
                    f"{rows - 1}): the tokenizer is not the model's")
            scored = len(flat) - (len(ids) if self.prefix is not None else 0)
            shares[lang] = (flat.count(unknown) / scored if scored and unknown is not None
                            else 0.0)
        return shares

    def _windows(self, key: str, ids: list[int]) -> list[_Window]:
        if len(ids) <= self.window:
            return [_Window(key, ids, 1)]
        stride = self.window // 2
        windows, scored_to, begin = [], 1, 0
        while scored_to < len(ids):
            end = min(begin + self.window, len(ids))
            windows.append(_Window(key, ids[begin:end], scored_to - begin, scored_to - 1))
            scored_to, begin = end, begin + stride
        return windows

    def _batches(self, windows: list[_Window]) -> Iterable[list[_Window]]:
        """Batches of `windows` (listed unit by unit) of at most `batch_tokens` padded tokens,
        longest first among the units of a group of `GROUP_BATCHES` batches' worth: a
        unit's windows end up in batches close together, so it is done (and stored)
        soon after it starts, and an interrupted run keeps what it finished."""
        limit = GROUP_BATCHES * self.batch_tokens
        group: list[_Window] = []
        tokens = 0
        for _, unit in itertools.groupby(windows, key=lambda w: w.key):
            unit = list(unit)
            group += unit
            tokens += sum(len(w.ids) for w in unit)
            if tokens >= limit:
                yield from self._padded(group)
                group, tokens = [], 0
        yield from self._padded(group)

    def _padded(self, windows: list[_Window]) -> Iterable[list[_Window]]:
        batch: list[_Window] = []
        for window in sorted(windows, key=lambda w: -len(w.ids)):
            if batch and len(batch[0].ids) * (len(batch) + 1) > self.batch_tokens:
                yield batch
                batch = []
            batch.append(window)
        if batch:
            yield batch

    def _run(self, batch: list[_Window]) -> tuple[torch.Tensor, _Logits]:
        """Token ids [batch, length] and the logits of one padded batch."""
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
        if self.before_forward is not None:
            self.before_forward()
        padded = any(len(w.ids) < length for w in batch)
        # Without padding the mask is all ones; leaving it out keeps the fast causal path.
        mask = mask.to(device) if padded else None
        reuse = self.hidden_states.forward(ids, mask) if self.hidden_states else nullcontext()
        exact = self.exact_head
        with reuse, _without_head(self.loaded.model) if exact else nullcontext() as head:
            output = self.loaded.model(input_ids=ids, attention_mask=mask).logits
        return ids, _Logits(output, head)

    @torch.inference_mode()
    def _score(self, batch: list[_Window]) -> list[float]:
        ids, logits = self._run(batch)
        sums = []
        for row, window in enumerate(batch):
            first, end = window.score_from - 1, len(window.ids) - 1
            losses = [torch.nn.functional.cross_entropy(
                logits.rows(row, start, stop), ids[row, start + 1:stop + 1], reduction="none")
                for start, stop in _blocks(first, end, self.block_rows)]
            sums.append(torch.cat(losses).double().sum().item() if losses else 0.0)
        return sums

    def _plan(self, todo: list[str]) -> tuple[dict[str, str], dict[str, list[int]],
                                               list[_Window], dict[str, int]]:
        """Texts to score by unit key, their token ids, their windows, and how many windows
        each unit has left."""
        keyed = {self.unit_key(t): t for t in todo}
        ids = {key: self.token_ids(text) for key, text in keyed.items()}
        windows = [w for key in keyed for w in self._windows(key, ids[key])]
        pending = {key: sum(1 for w in windows if w.key == key) for key in keyed}
        return keyed, ids, windows, pending

    def evaluate(self, config: str, texts: list[str],
                 progress: Callable[[int, int], None] | None = None,
                 label: str | None = None) -> dict[str, UnitResult]:
        """NLL of each text under the model's current weights, cached under `config`. Units
        that another process sharing the cache is scoring under `config` are left to it (and
        waited for, named by `label`, else by `config`)."""
        results = self.cached(config, texts)
        todo = [t for t in dict.fromkeys(texts) if t not in results]
        if not todo:
            return results
        self._note_damaged(self.cache, config, label)
        keyed, ids, windows, _ = self._plan(todo)
        tracker = _Progress(progress, _window_tokens(windows))

        def finished() -> set[str]:
            return tracker.seen(self.cache.refresh(config).keys())

        def compute(keys: list[str]) -> None:
            self._evaluate_units(config, {key: keyed[key] for key in keys}, ids, tracker)

        self._shared(f"nll\0{config}", label or config, tracker.sizes, finished, compute)
        return {**results, **self.cached(config, todo)}

    def _note_damaged(self, cache: ResultCache, config: str, label: str | None) -> None:
        """Say once that `config`'s file holds lines not trusted (a crash tore them, or they
        were edited), as units of it are about to be scored: what they held is scored again
        (the file is append-only: the lines stay, and are said again only where results are
        missing)."""
        if (count := cache.damaged.get(config)) and (id(cache), config) not in self._said:
            self._said.add((id(cache), config))
            self.announce(f"quantfair: {count} damaged line(s) in the results cache "
                          f"{cache._path(config)} ({label or config}) not trusted: what they "
                          "held is scored again")

    def _evaluate_units(self, config: str, keyed: dict[str, str], ids: dict[str, list[int]],
                        tracker: _Progress) -> None:
        windows = [w for key in keyed for w in self._windows(key, ids[key])]
        pending = {key: sum(1 for w in windows if w.key == key) for key in keyed}
        sums = dict.fromkeys(keyed, 0.0)
        for batch in self._batches(windows):
            finished = {}
            for window, nll in zip(batch, self._score(batch), strict=True):
                sums[window.key] += nll
                pending[window.key] -= 1
                tracker.advance(len(window.ids))
                if pending[window.key] == 0:
                    text = keyed[window.key]
                    finished[window.key] = UnitResult(
                        nll=sums[window.key], tokens=len(ids[window.key]) - 1,
                        bytes=len(text.encode("utf-8")), chars=len(text))
            if finished:
                self._store(config, finished, tracker)
            tracker.report()

    def _store(self, config: str, finished: dict[str, UnitResult], tracker: _Progress) -> None:
        """Cache the results of units this process just scored, and count them as its own."""
        self.cache.store(config, finished)
        self.units_computed += len(finished)
        self.tokens_computed += sum(result.tokens for result in finished.values())
        tracker.seen(finished, mine=True)

    # -- sharing work with other processes -----------------------------------------------
    def _claim(self, tag: str, key: str) -> FileLock:
        """The lock that claims unit `key` of the work `tag` (one of a fixed set of lock files:
        an unrelated unit may share it, which only delays)."""
        digest = hashlib.sha256(f"{tag}\0{key}".encode()).hexdigest()
        path = self.cache.folder / "claims" / f"{int(digest[:8], 16) % CLAIM_STRIPES:02x}.lock"
        if path not in self._claims:
            with cache_writes(path.parent):
                path.parent.mkdir(parents=True, exist_ok=True)
            self._claims[path] = FileLock(path)
        return self._claims[path]

    def _try_claim(self, tag: str, key: str) -> bool:
        lock = self._claim(tag, key)
        with cache_writes(Path(lock.lock_file).parent):
            try:  # (filelock's Timeout is an OSError: caught before cache_writes sees it)
                lock.acquire(timeout=0)
            except Timeout:
                return False
        _note_holder(lock)
        return True

    def _shared(self, tag: str, label: str, sizes: dict[str, int],
                finished: Callable[[], set[str]], compute: Callable[[list[str]], None],
                group_tokens: int | None = None) -> None:
        """Compute every unit of `sizes` (unit key -> tokens) that is not `finished()` yet,
        dividing the work with other processes that ask for the same units of `tag`: units
        are claimed with a file lock a group at a time (`group_tokens`, default a batch),
        skipping those another process holds; a claimed unit is computed only if still
        missing once claimed, and stored before its claim is let go. Then this process waits
        for the units it skipped (they are normally done by then) and computes any left
        behind by a process that died (the lock goes with the process)."""
        limit = group_tokens or max(self.batch_tokens, CLAIM_TOKENS)
        # Longest first: a group (and so a batch) holds units of similar length, little padding.
        pending, skipped = sorted(sizes, key=sizes.__getitem__, reverse=True), []
        while pending:
            group, held, tokens, rest = [], [], 0, []
            for position, key in enumerate(pending):
                if group and tokens + sizes[key] > limit:
                    rest = pending[position:]
                    break
                if not self._try_claim(tag, key):
                    skipped.append(key)
                    continue
                lock = self._claim(tag, key)
                held.append(lock)
                group.append(key)
                tokens += sizes[key]
            pending = rest
            try:
                done = finished() if group else set()
                todo = [key for key in group if key not in done]
                if todo:
                    compute(todo)
            finally:
                for lock in held:
                    lock.release()
        done = finished() if skipped else set()  # once: it may read every unit's files
        waiting = [key for key in skipped if key not in done]
        if waiting:
            self.announce(f"quantfair: waiting for another process scoring {len(waiting)} "
                          f"unit(s) of {label}")
        for key in waiting:
            lock = self._claim(tag, key)
            started = time.monotonic()
            while True:
                try:
                    lock.acquire(timeout=WAIT_NOTICE_S)
                    _note_holder(lock)
                    break
                except Timeout:
                    self.announce(f"quantfair: still waiting for another process scoring "
                                  f"{label} ({time.monotonic() - started:.0f} s)"
                                  + _stopped_holder(lock))
            try:
                if key not in finished():  # the other process stopped before storing it
                    compute([key])
            finally:
                lock.release()

    @cached_property
    def exact_head(self) -> bool:
        """`linear_head` of the model, confirmed on one forward: the logits must be the head's
        weight and bias applied to its input (then logits can be computed a block at a time,
        and the FP side cached without the vocabulary)."""
        model = self.loaded.model
        if not linear_head(model):
            return False
        head, captured = model.get_output_embeddings(), []
        handle = head.register_forward_hook(
            lambda _module, args, output: captured.append(args[0]))
        ids = torch.tensor([[self.prefix or 0] * 2], device=self.loaded.device)
        try:
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                linear = torch.nn.functional.linear(captured[0], head.weight, head.bias)
        finally:
            handle.remove()
        return torch.equal(logits, linear.to(logits.dtype))

    @property
    def caches_fp_side(self) -> bool:
        """Whether the KL divergence takes its FP side from the cache and its cross term from
        the head's input (`exact_head`, float32 logits). In bfloat16 or float16 the model's
        logits are rounded and that cross term is not: the terms would disagree by up to a
        tenth of a nat per token on a large vocabulary, more than a Q8 model's KL divergence.
        There the FP logits are computed beside each window, rounded alike."""
        head = self.loaded.model.get_output_embeddings()
        return self.exact_head and head.weight.dtype == torch.float32

    def head_variant(self) -> str:
        """Content hash of the output head as it is in the model now (weight and bias; hashed
        each time: a weight bank swaps the tensors parameters point at)."""
        head = self.loaded.model.get_output_embeddings()
        digest = hashlib.sha256()
        for tensor in (head.weight, head.bias):
            if tensor is not None:
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().data)
        return digest.hexdigest()[:16]

    def cached_distribution(self, config: str, texts: Iterable[str]
                            ) -> dict[str, UnitDistribution]:
        known = self.distribution_cache.load(config)
        return {t: known[k] for t in texts if (k := self.unit_key(t)) in known}

    @torch.inference_mode()
    def evaluate_distribution(self, config: str, texts: list[str], swap: Swap | None = None,
                              progress: Callable[[int, int], None] | None = None,
                              label: str | None = None) -> dict[str, UnitDistribution]:
        """NLL and distribution statistics of each text under the model's current weights
        against the FP reference, cached under `config` (`label` names it, as in `evaluate`).

        `swap` switches the live model to the FP reference and back; None means the current
        weights are the FP reference. One forward per window; before them, one FP forward per
        window whose unit has no cached FP side for the current head yet (swapping once there
        and back; with `swap` None the side comes from the window's own forward); with a head
        that is not exact or logits that are not float32 (`caches_fp_side`), one FP forward
        beside every window instead.
        """
        results = self.cached_distribution(config, texts)
        todo = [t for t in dict.fromkeys(texts) if t not in results]
        if not todo:
            return results
        self._note_damaged(self.distribution_cache, config, label)
        keyed, ids, windows, _ = self._plan(todo)
        exact, head = self.caches_fp_side, self.head_variant()
        sizes = _window_tokens(windows)
        missing = {k: n for k, n in sizes.items() if exact and swap is not None
                   and self.references.load(k, head, len(ids[k]) - 1) is None}
        tracker = _Progress(progress, sizes, before=(side := sum(missing.values())))
        if missing:
            built = found_once(missing, lambda k: self.references.load(
                k, head, len(ids[k]) - 1) is not None)

            # All claimed at once: one swap to the FP weights and back. Their FP
            # forwards are on the bar; what another process built counts as done.
            start = tracker.done
            self._shared(f"side\0{head}", f"the FP side of {label or config}", missing, built,
                         lambda keys: self._build_references(
                             {key: ids[key] for key in keys}, head, swap, tracker),
                         group_tokens=sys.maxsize)
            tracker.done = start + side
            tracker.report()

        def finished() -> set[str]:
            return tracker.seen(self.distribution_cache.refresh(config).keys())

        def compute(keys: list[str]) -> None:
            self._distribution_units(config, {key: keyed[key] for key in keys}, ids,
                                     exact, head, swap, tracker)

        self._shared(f"distribution\0{config}", label or config, tracker.sizes, finished,
                     compute)
        return {**results, **self.cached_distribution(config, todo)}

    @torch.inference_mode()
    def _distribution_units(self, config: str, keyed: dict[str, str],
                            ids: dict[str, list[int]], exact: bool, head: str,
                            swap: Swap | None, tracker: _Progress) -> None:
        windows = [w for key in keyed for w in self._windows(key, ids[key])]
        pending = {key: sum(1 for w in windows if w.key == key) for key in keyed}
        sides = {key: self.references.load(key, head, len(ids[key]) - 1)
                 for key in keyed} if exact else {}
        lost = [key for key, side in sides.items() if side is None]
        # The evaluated weights are the FP reference: a missing side comes from this forward.
        building: dict[str, list[tuple[int, dict[str, torch.Tensor]]]] = (
            {key: [] for key in lost} if swap is None else {})
        if building:
            module = self.loaded.model.get_output_embeddings()
            weight = module.weight.detach()
            bias = module.bias.detach() if module.bias is not None else None
        if lost and swap is not None:  # removed meanwhile
            self._build_references({key: ids[key] for key in lost}, head, swap, tracker)
            sides.update({key: self.references.load(key, head, len(ids[key]) - 1)
                          for key in lost})
            if gone := [key for key in lost if sides[key] is None]:
                raise QuantfairError(f"the FP reference of {len(gone)} unit(s) left the "
                                     f"results cache {self.references.folder} as it was "
                                     "written: is another job clearing it?")
        statistics: dict[str, list[_WindowStatistics]] = {k: [] for k in keyed}
        for batch in self._batches(windows):
            if not exact and swap is not None:
                swap.to_reference()
                _, fp_logits = self._run(batch)
                swap.to_config()
            token_ids, logits = self._run(batch)
            if not exact and swap is None:
                fp_logits = logits
            finished = {}
            for row, window in enumerate(batch):
                rows = slice(window.score_from - 1, len(window.ids) - 1)
                targets = token_ids[row, window.score_from: len(window.ids)]
                block = logits.window(row, rows.start)
                if window.key in building:
                    once = _last_block_kept(block)  # asked twice in a row, as FP and as evaluated
                    side, cross = _reference_side(once, targets, self.block_rows, weight, bias,
                                                  logits=once)
                    building[window.key].append((window.first, side))
                elif exact:  # the head's input is the model's output
                    scored = slice(window.first, window.first + len(targets))
                    side = {name: torch.from_numpy(array[scored]).to(targets.device)
                            for name, array in sides[window.key].items()}
                    hidden = logits.output[row, rows].double()
                    cross = (side["u"].double() * hidden).sum(-1) + side["c"]
                else:
                    side, cross = _reference_side(fp_logits.window(row, rows.start), targets,
                                                  self.block_rows, logits=block)
                statistics[window.key].append(_window_statistics(
                    window.first, side, cross, block, targets, self.block_rows))
                pending[window.key] -= 1
                tracker.advance(len(window.ids))
                if pending[window.key] == 0:
                    if window.key in building:
                        self._store_reference(window.key, head, building.pop(window.key))
                    finished[window.key] = self._unit_distribution(
                        keyed[window.key], statistics.pop(window.key))
            if finished:
                self.distribution_cache.store(config, finished)
                self._store(config, {k: UnitResult(r.nll, r.tokens, r.bytes, r.chars)
                                     for k, r in finished.items()}, tracker)
            tracker.report()

    def _build_references(self, units: dict[str, list[int]], head: str,
                          swap: Swap | None, tracker: _Progress) -> None:
        """Cache the FP side of these units (token ids by unit key) for the current head."""
        module = self.loaded.model.get_output_embeddings()
        # The evaluated configuration's head. The weight bank points parameters at its own
        # float32 CPU tensors, but copies into parameters of another dtype or device: there
        # the FP weights coming in would overwrite it.
        weight, bias = module.weight.detach(), module.bias
        bias = bias.detach() if bias is not None else None
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            weight, bias = weight.clone(), bias.clone() if bias is not None else None
        windows = [w for key, unit in units.items() for w in self._windows(key, unit)]
        pending = {key: sum(1 for w in windows if w.key == key) for key in units}
        built: dict[str, list[tuple[int, dict[str, torch.Tensor]]]] = {k: [] for k in units}
        if swap is not None:
            swap.to_reference()
        try:
            for batch in self._batches(windows):
                token_ids, fp_logits = self._run(batch)
                for row, window in enumerate(batch):
                    rows = slice(window.score_from - 1, len(window.ids) - 1)
                    targets = token_ids[row, window.score_from: len(window.ids)]
                    side, _ = _reference_side(fp_logits.window(row, rows.start), targets,
                                              self.block_rows, weight, bias)
                    built[window.key].append((window.first, side))
                    pending[window.key] -= 1
                    tracker.advance(len(window.ids))
                    if pending[window.key] == 0:
                        self._store_reference(window.key, head, built.pop(window.key))
                tracker.report()
        finally:
            if swap is not None:
                swap.to_config()

    def _store_reference(self, key: str, head: str,
                         pieces: list[tuple[int, dict[str, torch.Tensor]]]) -> None:
        ordered = [piece for _, piece in sorted(pieces, key=lambda item: item[0])]
        self.references.store(key, head, {
            name: torch.cat([piece[name] for piece in ordered]).cpu().numpy()
            for name in ("plogp", "top", "p_correct", "u", "c")})

    @staticmethod
    def _unit_distribution(text: str, windows: list[_WindowStatistics]) -> UnitDistribution:
        windows = sorted(windows, key=lambda w: w.first)
        kld = np.concatenate([w.kld for w in windows])
        return UnitDistribution(
            nll=sum(w.nll for w in windows), tokens=len(kld), bytes=len(text.encode("utf-8")),
            chars=len(text), kld=float(kld.sum()), same_top=sum(w.same_top for w in windows),
            delta_p=sum(w.delta_p for w in windows),
            delta_p_sq=sum(w.delta_p_sq for w in windows),
            kld_tokens=base64.b64encode(kld.astype("<f4").tobytes()).decode("ascii"))


def check_finite(results: dict[tuple[str, str], UnitResult], what: str) -> None:
    """Raise one clear line naming every unit with a non-finite loss or distribution statistic
    (the results the cache refuses to keep)."""
    bad = {f"{lang}/{unit}": fields for (lang, unit), r in results.items()
           if (fields := _non_finite(r))}
    if bad:
        shown = ", ".join(list(bad)[:6]) + (" ..." if len(bad) > 6 else "")
        fields = sorted({name for names in bad.values() for name in names})
        raise NonFiniteLoss(f"{what}: non-finite {', '.join(fields)} in {len(bad)} unit(s): "
                            f"{shown} (not cached: computed again next time)")
