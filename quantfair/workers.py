"""Process resources: torch threads per process when pytest-xdist runs several audit
processes side by side, the C allocator's settings of a process that runs audits, and freed
memory handed back to the system between steps.

Each xdist worker is a full process with its own torch; left alone, every one of them starts
as many OpenMP threads as the machine has cores, and n workers on n cores then fight over them
(oversubscription makes a `-n 2` run on two cores several times slower than the serial one).
A worker takes its share instead: max(1, cores // workers).

Precedence, first that applies:
1. `--quantfair-threads N` (ini `quantfair_threads`): N threads in every process, serial too;
2. `OMP_NUM_THREADS` set in the environment: the user's choice, left to torch;
3. an xdist worker: its share of the cores, given again as other workers of the run on the
   same machine finish (`CoreShare`);
4. a serial run: torch's own default.

Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from pathlib import Path

from quantfair.errors import UsageError
from quantfair.text import brief, decimal_integer, plural

AUTO = "auto"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def parse_threads(text: str | int | None, *, cores_here: bool = True) -> int | None:
    """`"auto"` (or unset) -> None; a positive integer up to the machine's cores -> itself;
    anything else: UsageError. `cores_here` False: the processes that use the threads run on
    other machines (`remote_gateways`), each of which checks its own cores."""
    if text is None or str(text).strip().lower() == AUTO:
        return None
    try:
        value = decimal_integer(str(text))
    except ValueError:
        raise UsageError(f"--threads must be {AUTO} or a positive integer, "
                         f"got '{brief(text)}'") from None
    if value < 1:
        raise UsageError(f"--threads must be {AUTO} or a positive integer, got {value}")
    cores = available_cores()
    # more threads than cores only slows torch down (or exhausts memory)
    if cores_here and value > cores:
        raise UsageError(f"--threads {value}: this process may run on {plural(cores, 'core')} "
                         f"(its CPU affinity); give at most {cores}, or {AUTO}")
    return value


def remote_gateways(specs: list[str] | None) -> bool:
    """Whether pytest-xdist's `--tx` specs start processes on other machines (`gateway_host`:
    any gateway but `popen`, or a popen reached `via=` another gateway). `-n N` alone (no
    specs) is local."""
    if not specs:
        return False
    import execnet  # pytest-xdist's (not quantfair's): there where `--tx` is given

    return any(gateway_host(execnet.XSpec(re.sub(r"^\s*\d+\*", "", str(spec)))) is not None
               for spec in specs)


def gateway_host(spec) -> str | None:
    """The machine an execnet gateway spec (`execnet.XSpec`) starts its process on: None for
    this one (`popen`), else the host of its `ssh=` target or `socket=` address (the port
    left out: two servers on one host share its cores), or the gateway it goes `via`."""
    if spec.via:
        return f"via {spec.via}"
    if spec.popen:
        return None
    if spec.ssh:
        return spec.ssh.rpartition("@")[2]
    if spec.socket:
        return spec.socket.rpartition(":")[0] or spec.socket
    return str(spec)


# workerinput: a worker's machine (`gateway_host`, None for the controller's), and how many
# of the run's workers run there
WORKER_HOST, HOST_WORKERS = "quantfair_host", "quantfair_host_workers"


def thread_share(cores: int, workers: int | None, override: int | None = None,
                 environment: bool = False) -> int | None:
    """Torch threads for one process, or None to leave torch's setting alone.

    `workers`: the number of xdist workers (None or 1 outside xdist); `override`: the
    `threads` option; `environment`: whether OMP_NUM_THREADS is set."""
    if override is not None:
        return override
    if environment or not workers or workers < 2:
        return None
    return max(1, cores // workers)


def xdist_workers(workerinput: dict | None = None) -> int | None:
    """The number of xdist workers of this run on this worker's machine (`HOST_WORKERS`,
    else all of the run's), seen from a worker (None elsewhere)."""
    given = workerinput or {}
    count = given.get(HOST_WORKERS) or given.get("workercount") or os.environ.get(
        "PYTEST_XDIST_WORKER_COUNT")
    try:
        return int(count) if count else None
    except ValueError:
        return None


def configure_threads(override: int | None, workers: int | None = None) -> str | None:
    """Apply `thread_share` to torch in this process; a line saying what was set, if anything."""
    cores = available_cores()
    threads = thread_share(cores, workers, override, bool(os.environ.get("OMP_NUM_THREADS")))
    if threads is None:
        return None
    import torch

    torch.set_num_threads(threads)
    why = "--threads" if override is not None else f"{cores} cores / {workers} workers"
    return f"quantfair: torch threads {threads} ({why})"


class CoreShare:
    """An xdist worker's share of the cores, given again as the run's workers on this machine
    finish: a worker that has no test left leaves a file in the run's folder (`finish`), and
    the others take max(1, cores // (workers - finished)) torch threads before each forward
    pass (`update`). Without it the worker given the longest audit last ran it on one core
    while the other stood idle (SmolLM2's quick audits under `-n 2`: 14 s of a 55 s run).
    Only where the share is automatic (`thread_share` rule 3); a worker that dies leaves no
    file, and the others keep the smaller share."""

    PREFIX = "finished-"

    def __init__(self, folder: Path, workers: int, threads: int) -> None:
        self.folder, self.workers, self.threads = folder, workers, threads

    @classmethod
    def of_worker(cls, folder: Path | None, workers: int | None,
                  override: int | None) -> CoreShare | None:
        """The share of a worker with a run folder whose threads are its share of the cores
        (`thread_share`: no `override`, OMP_NUM_THREADS unset, two workers or more), else
        None."""
        if folder is None or override is not None:
            return None
        threads = thread_share(available_cores(), workers,
                               environment=bool(os.environ.get("OMP_NUM_THREADS")))
        return None if threads is None else cls(folder, workers, threads)

    def update(self) -> None:
        finished = sum(1 for _ in self.folder.glob(f"{self.PREFIX}*"))
        threads = max(1, available_cores() // max(1, self.workers - finished))
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            self.threads = threads

    @classmethod
    def finish(cls, folder: Path, name: str) -> None:
        """Say that worker `name` runs no more tests (its cores are free)."""
        with contextlib.suppress(OSError):  # the others keep their share
            (folder / f"{cls.PREFIX}{name}").touch()


@functools.cache
def _libc_function(name: str):
    """glibc's function `name`, or None (another C library, or none found)."""
    import ctypes.util  # here: the pytest plugin imports this module in every run

    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):  # not glibc
        return None


# glibc malloc parameters (malloc.h) and what an audit process sets them to (`tune_allocator`).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
ALLOCATOR_SETTINGS = {M_ARENA_MAX: 1, M_MMAP_THRESHOLD: 16 << 20, M_TRIM_THRESHOLD: 32 << 20}
# Set in the environment, any of these is the user's choice of malloc settings, left alone.
ALLOCATOR_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                       "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")


@functools.cache
def tune_allocator() -> bool:
    """Set glibc's malloc for a process that runs audits, once, before the model loads;
    whether it was set (False: not glibc, or the user set malloc variables).

    By default every thread that allocates (torch's OpenMP threads, the tokenizer's) gets an
    arena of its own that keeps what it frees, and the mmap threshold rises to 32 MiB as
    large tensors are freed, so freed blocks up to 64 MiB stay in the heap (the trim threshold
    follows at twice it). An audit run evaluates many configurations in turn, and the heap
    kept between them adds to its peak: with one arena, tensors of 16 MiB or more mapped and
    given back on free, and the heap trimmed above 32 MiB, the per-layer criticality audit
    of SmolLM2 alone peaked at 543 and 546 MiB of anonymous memory against 566 and 571 with
    glibc's defaults, with no consistent change in speed over two runs each of
    `bench_evaluate.py` with and without `--allocator` (`benchmarks/RESULTS.md`, "C allocator
    settings")."""
    if any(os.environ.get(name) for name in ALLOCATOR_VARIABLES):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return all([mallopt(parameter, value) == 1
                for parameter, value in ALLOCATOR_SETTINGS.items()])


def return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim`; a no-op
    elsewhere). Freed tensors below glibc's mmap threshold (16 MiB in an audit process,
    `tune_allocator`; by default it grows to 32 MiB) otherwise stay in the process, and the
    next step's peak (a selection, a composed model, an evaluation) comes on top of them.
    Call it after steps that free hundreds of MB, not in loops: the pages fault back in on
    the next step, which costs dearly when other processes compete for the cores (a suggest
    search trimming after every evaluation ran 3x slower beside another busy process)."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)
