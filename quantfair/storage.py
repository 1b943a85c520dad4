"""Files in the cache that several processes share: whole-file replacement, and one clear line
when the cache cannot be written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from quantfair.errors import QuantfairError, UsageError

CACHE_VARIABLES = ("QUANTFAIR_RESULTS_DIR", "QUANTFAIR_CACHE_DIR")


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether `path` names a GGUF file by its extension, in any case (`model.gguf`,
    `MODEL.GGUF`), as llama.cpp's tools name them."""
    return Path(path).suffix.lower() == ".gguf"


def json_safe(value):
    """`value` with every NaN or infinite float, in nested dicts and lists too, as None: JSON
    has neither (`json.dumps(..., allow_nan=False)` accepts the result)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


class DuplicateKey(ValueError):
    """A JSON object naming a key twice (json keeps the last silently)."""


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """`json.loads`'s `object_pairs_hook` refusing a key given twice (DuplicateKey, the key
    as JSON writes it)."""
    record: dict = {}
    for key, value in pairs:
        if key in record:
            raise DuplicateKey(json.dumps(key))
        record[key] = value
    return record


def file_stamp(path: Path) -> str:
    """A file's size and modification time in ns ("size|mtime_ns"): what changes when it is
    rewritten or edited in place, read without reading its bytes."""
    stat = path.stat()
    return f"{stat.st_size}|{stat.st_mtime_ns}"


def flag_variable(variable: str) -> bool:
    """Whether an environment variable is set on as huggingface_hub reads its flags
    (`HF_HUB_OFFLINE`): 1, on, yes or true, in any case; anything else is off."""
    return os.environ.get(variable, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def folder_variable(variable: str) -> Path | None:
    """The folder an environment variable names, a leading `~` expanded (CI files, Docker
    and systemd expand none); None where it is unset or empty. Raises UsageError for a value
    of blanks only (a folder so named is never meant) or naming no user's home (`~nobody`)."""
    value = os.environ.get(variable)
    if not value:
        return None
    if not value.strip():
        raise UsageError(f"{variable} holds only blanks: give a folder, or unset it")
    expanded = os.path.expanduser(value)
    if expanded.startswith("~"):  # left as it is: a folder named `~nosuchuser`
        raise UsageError(f"{variable}={value}: {value.partition('/')[0]} names no user's "
                         "home folder")
    return Path(expanded)


def cache_root() -> Path:
    """Where quantfair keeps converted models and evaluation results."""
    if folder := folder_variable("QUANTFAIR_CACHE_DIR"):
        return folder
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "quantfair"


# The folders quantfair fills under `cache_root()`: converted models, a GGUF file's header,
# a GGUF checkpoint converted, a model's quantized tensors.
CACHE_FOLDERS = ("models", "gguf-headers", "gguf-checkpoints", "weights")
RUN_PREFIX = ".run-"  # under `results_root()`: a run's folder shared by its xdist workers
MODEL_KEY = 16  # hex digits of a model's weight hash naming its folder under `results_root()`


def cache_folder(name: str) -> Path:
    """`cache_root() / name` for a name of `CACHE_FOLDERS` (no other: a file to write is
    refused inside these, `config.refuse_inputs`)."""
    if name not in CACHE_FOLDERS:
        raise ValueError(f"{name} is not one of quantfair's cache folders")
    return cache_root() / name


def results_root() -> Path:
    """Where evaluation results and suggestions are cached: a folder per model's weights
    (`model_folder`), and the run folders of xdist runs (`RUN_PREFIX`)."""
    if folder := folder_variable("QUANTFAIR_RESULTS_DIR"):
        return folder
    return cache_root() / "results"


def model_folder(weight_hash: str) -> Path:
    """The folder of one model's cached results: named by its weight hash (hex), cut to
    `MODEL_KEY` digits."""
    return results_root() / weight_hash[:MODEL_KEY]


def _variable_for(path: Path) -> str:
    """The environment variable that put `path` where it is."""
    for variable in CACHE_VARIABLES:
        value = os.environ.get(variable)
        if value and Path(path).is_relative_to(value):
            return f"{variable} (now {value})"
    return f"QUANTFAIR_CACHE_DIR (unset: {cache_root()})"


@contextlib.contextmanager
def cache_writes(path: Path) -> Iterator[None]:
    """Turn a failed write under the cache into one line naming the path and its variable."""
    try:
        yield
    except OSError as error:
        raise QuantfairError(
            f"cannot write the quantfair cache at {path} ({why_unwritable(path, error)}); "
            f"set {_variable_for(path)} to a writable directory"
        ) from None


def _nearest_existing(path: Path) -> Path:
    """`path`, else the nearest of its parents that exists (where it would be made)."""
    return next((p for p in (path, *path.parents) if p.exists()), path)


def why_unwritable(path: Path, error: OSError) -> str:
    """Why writing under `path` failed: a file where a folder should be, else the OS's
    reason."""
    existing = _nearest_existing(path)
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if error.errno == errno.ENOENT and existing == path:  # /proc, /sys: no new files there
        return "its file system takes no new files"
    return error.strerror or str(error)


def probe_writable(folder: Path, make: bool = True) -> None:
    """Make `folder` if missing and write (and drop) a probe file in it; without `make`, in
    the nearest folder of its path that exists (where it would be made). Raises OSError."""
    if make:
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = _nearest_existing(folder)
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    tempfile.TemporaryFile(dir=folder).close()


def check_writable(*folders: Path) -> None:
    """`probe_writable` for each cache folder, before any work that would store results
    there. Raises QuantfairError (one line naming the path and its variable)."""
    for folder in folders:
        with cache_writes(folder):
            probe_writable(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: the process umask can only be read by setting it, and a file another
# thread created while it was 0 would be world-writable.
UMASK = _umask()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` that becomes `path` whole when the block ends, or never
    (an error or Ctrl-C removes it): a concurrent reader sees the old file or the new, and a
    reader of the old one (a memory map) keeps it. A symbolic link's target is written, as
    `open` would (the link stays). Raises OSError where `path` is a device, pipe or socket:
    replacing it would remove it (`/dev/null`), not write to it."""
    if path.is_symlink():
        path = Path(os.path.realpath(path))  # no error on a loop of links, as resolve() has
    if path.exists() and not path.is_file() and not path.is_dir():
        raise OSError(errno.EINVAL, "not a regular file (a device, pipe or socket)", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~UMASK)  # as open() would have made it, not 0600
        try:
            os.replace(temporary, path)
        except OSError as error:  # say the file the user named, not the temporary one
            raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary handle whose content becomes `path` whole when the block ends, or never
    (`atomic_path`)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        yield handle


def atomic_write(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (`atomic_file`)."""
    with atomic_file(path) as handle:
        handle.write(data)


def shared_json(path: Path, compute: Callable[[], object]) -> object:
    """The JSON value stored at `path`, computed by one process for all: the first to take
    the file's lock computes and stores it, the others wait for it and read it (a stored
    value needs no lock, so reads work in a read-only cache). The file keeps the value's
    SHA-256 beside it: one edited, truncated or not of this form is computed again. Raises
    QuantfairError when the cache cannot be written."""
    def stored() -> object:
        with contextlib.suppress(OSError, ValueError):
            kept = json.loads(path.read_text())
            if isinstance(kept, dict) and kept.get("sha256") == json_digest(kept.get("value")):
                return kept["value"]
        return _MISSING

    if (value := stored()) is not _MISSING:
        return value
    from filelock import FileLock  # here: the pytest plugin imports this module in every run

    with cache_writes(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path.with_name(f".{path.name}.lock"))
        lock.acquire()
    try:
        if (value := stored()) is not _MISSING:  # stored while this one waited
            return value
        value = compute()
        with cache_writes(path.parent):
            atomic_write(path, json.dumps({"value": value,
                                           "sha256": json_digest(value)}).encode())
        return value
    finally:
        lock.release()


_MISSING = object()


def json_digest(value: object) -> str:
    """SHA-256 (hex) of a JSON value, its keys sorted: what a cached file keeps beside its
    content, so one edited in place is told from one written whole."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
