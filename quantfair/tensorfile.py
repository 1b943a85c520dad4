"""Tensors kept on disk and read through a memory map, so a weight bank costs page cache (which
the kernel shares and evicts), not process memory. Files are safetensors
(https://github.com/huggingface/safetensors: an 8-byte little-endian header length, a JSON
header of dtype, shape and byte range per tensor, then the bytes); they are written one tensor
at a time, so writing one never holds a second copy of a model."""

from __future__ import annotations

import errno
import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from quantfair.progress import notice
from quantfair.storage import atomic_file, atomic_write, file_stamp

__all__ = ["map_tensors", "write_tensors", "cached_tensors", "remove_tensors", "scratch"]

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL",
          torch.uint8: "U8", torch.int8: "I8"}
TORCH_DTYPES = {code: dtype for dtype, code in DTYPES.items()}


def write_tensors(path: Path, layout: dict[str, torch.Tensor],
                  produce: Callable[[str], torch.Tensor]) -> None:
    """Write `produce(name)` for each name of `layout` (a tensor of the dtype and shape it will
    have, e.g. the FP parameter) to `path`, whole or not at all, holding one tensor at a time.
    Raises ValueError when a produced tensor's dtype or shape differs from its layout's."""
    with atomic_file(path) as handle:
        handle.write(_head(layout))
        for name, like in layout.items():
            tensor = produce(name).detach()
            if tensor.dtype != like.dtype or tensor.shape != like.shape:
                raise ValueError(f"{name}: produced {tensor.dtype} {tuple(tensor.shape)}, "
                                 f"expected {like.dtype} {tuple(like.shape)}")
            handle.write(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def _head(layout: dict[str, torch.Tensor]) -> bytes:
    """What precedes the tensors of `layout` in its file: the header's length, then the
    header (names, dtypes, shapes, byte ranges), padded so that tensors start 8-byte
    aligned."""
    header, offset = {}, 0
    for name, like in layout.items():
        size = like.numel() * like.element_size()
        header[name] = {"dtype": DTYPES[like.dtype], "shape": list(like.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded


def _record(path: Path) -> Path:
    """Where `cached_tensors` records the size and modification time (ns) of the file it
    wrote at `path`."""
    return path.with_name(f".{path.name}.written")


def _intact(path: Path, layout: dict[str, torch.Tensor]) -> bool:
    """Whether `path` is a whole file of `layout`'s tensors as `write_tensors` writes it, not
    changed since (its header, its length, and its size and modification time against the
    record written with it; a file cut short, of other tensors or edited in place is not),
    without reading its bytes."""
    head = _head(layout)
    data = sum(like.numel() * like.element_size() for like in layout.values())
    try:
        with open(path, "rb") as handle:
            found = handle.read(len(head))
            size = os.fstat(handle.fileno()).st_size
        recorded = _record(path).read_text()
        return found == head and size == len(head) + data and recorded == file_stamp(path)
    except OSError:
        return False


def _header(path: Path) -> tuple[int, dict, int]:
    """A safetensors file's header length, its tensor entries, and the bytes they span."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return length, header, max((entry["data_offsets"][1] for entry in header.values()), default=0)


def is_whole(path: Path) -> bool:
    """Whether the safetensors file `path` (any writer's) holds a readable header and every
    byte it promises: a file cut short is not whole; its bytes are not checked."""
    try:
        length, _, size = _header(path)
        return path.stat().st_size == 8 + length + size
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError):
        return False


def map_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `path` as CPU tensors that share one copy-on-write
    memory map of it (nothing is read until touched; writing one never reaches the file)."""
    length, header, size = _header(path)
    data = (np.memmap(path, dtype=np.uint8, mode="c", offset=8 + length) if size
            else np.zeros(0, dtype=np.uint8))
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw = torch.from_numpy(data[begin:end])
        tensors[name] = raw.view(TORCH_DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return tensors


def cached_tensors(path: Path, layout: dict[str, torch.Tensor],
                   produce: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """`map_tensors(path)`, writing the file first (under a file lock, so processes sharing the
    cache compute it once) unless it exists as it was written (`_intact`: one cut short, e.g.
    by a full disk, edited, or of other tensors is written again, saying so)."""
    if not _intact(path, layout):
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.with_name(f".{path.name}.lock")):
            if not _intact(path, layout):
                if path.exists():
                    notice(f"quantfair: {path} is not as it was written (cut short, edited, "
                           "of other tensors, or by an older quantfair): writing it again")
                write_tensors(path, layout, produce)
                atomic_write(_record(path), file_stamp(path).encode())
    return map_tensors(path)


def remove_tensors(path: Path) -> None:
    """Remove a file `cached_tensors` wrote, and its record."""
    for file in (path, _record(path)):
        file.unlink(missing_ok=True)


def _reserve(descriptor: int, size: int) -> None:
    """Allocate the disk blocks of a file's first `size` bytes now: a write through a memory
    map of a sparse file on a full disk is SIGBUS (the process dies without a word), a failed
    allocation an OSError (ENOSPC). Where the file system cannot allocate ahead, nothing."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(descriptor, 0, size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise


def scratch(numel: int, dtype: torch.dtype, folder: Path | None,
            fallback: bool = True) -> torch.Tensor:
    """A zeroed flat tensor of `numel` entries backed by an unnamed temporary file in
    `folder` (page cache, which the kernel can write out and drop, not process memory; the
    file goes with the tensor), or by process memory where `folder` is None, cannot be
    written or `numel` is 0. Without `fallback`, raises OSError instead of using memory."""
    if folder is not None and numel:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder, prefix=".scratch-") as file:
                file.truncate(numel * dtype.itemsize)
                _reserve(file.fileno(), numel * dtype.itemsize)
                array = np.memmap(file, dtype=np.uint8, mode="r+")
            return torch.from_numpy(array).view(dtype)  # the map outlives the file object
        except OSError:
            if not fallback:
                raise
    if not fallback and numel:
        raise OSError(f"no folder for a file-backed tensor of {numel} entries")
    return torch.zeros(numel, dtype=dtype)
