"""Several processes on one machine: torch threads per xdist worker, and evaluations that
processes sharing a results cache divide between them instead of repeating."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from filelock import FileLock

from quantfair.config import RunConfig
from quantfair.errors import UsageError
from quantfair.evaluate import Evaluator, ResultCache, UnitResult
from quantfair.workers import (
    CoreShare,
    available_cores,
    configure_threads,
    parse_threads,
    remote_gateways,
    thread_share,
    xdist_workers,
)

# -- the thread share ---------------------------------------------------------------------------

@pytest.mark.parametrize(("cores", "workers", "override", "environment", "expected"), [
    (2, None, None, False, None),  # serial: torch's default
    (2, 1, None, False, None),  # one worker is a serial run
    (2, 2, None, False, 1),
    (8, 2, None, False, 4),
    (8, 3, None, False, 2),
    (16, 4, None, False, 4),
    (2, 4, None, False, 1),  # more workers than cores: still one thread each
    (2, 2, 3, False, 3),  # the option wins
    (8, None, 2, False, 2),  # also in a serial run
    (8, 2, None, True, None),  # OMP_NUM_THREADS set: left to torch
    (8, 2, 3, True, 3),  # the option wins over OMP_NUM_THREADS too
])
def test_thread_share(cores, workers, override, environment, expected):
    assert thread_share(cores, workers, override, environment) == expected


def test_threads_option_values():
    assert parse_threads(None) is None
    assert parse_threads("auto") is None
    assert parse_threads(" AUTO ") is None
    cores = available_cores()
    assert parse_threads("1") == 1 and parse_threads(str(cores)) == cores
    for bad in ("0", "-2", "two", "1.5", ""):
        with pytest.raises(UsageError, match="--threads must be auto or a positive integer"):
            parse_threads(bad)
    for many in (cores + 1, 99999):  # 99999 threads exhausted memory inside torch
        with pytest.raises(UsageError, match=f"--threads {many}: this process may run on "
                                             f"{cores} cores?"):
            parse_threads(str(many))


def test_threads_beyond_this_machines_cores_are_left_to_the_machines_that_use_them():
    assert parse_threads(str(available_cores() + 1), cores_here=False) == available_cores() + 1
    with pytest.raises(UsageError, match="positive integer"):
        parse_threads("0", cores_here=False)


@pytest.mark.parametrize("specs, remote", [
    (None, False),
    (["popen"], False),
    (["2*popen"], False),
    (["popen//python=/srv/venv/bin/python//chdir=/srv"], False),
    (["2*popen", "ssh=user@host-1//python=/srv/quantfair/.venv/bin/python"], True),
    (["socket=10.0.0.2:8888//chdir=/srv/quantfair"], True),
    (["4*socket=10.0.0.2:8888"], True),
    (["popen//via=gw0"], True),
])
def test_remote_gateways(specs, remote):
    assert remote_gateways(specs) is remote


def test_a_worker_takes_the_cores_of_workers_that_have_finished(tmp_path, monkeypatch):
    import torch

    import quantfair.workers as workers

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(workers, "available_cores", lambda: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    share = CoreShare.of_worker(tmp_path, 3, None)
    share.update()
    assert (share.threads, calls) == (2, [])  # its share from the start: nothing to change
    CoreShare.finish(tmp_path, "gw0")
    share.update()
    CoreShare.finish(tmp_path, "gw0")  # said twice, counted once
    share.update()
    CoreShare.finish(tmp_path, "gw2")
    share.update()
    assert calls == [3, 6]
    # Only where the share is automatic: not with --threads, OMP_NUM_THREADS, one worker,
    # or no run folder (a worker on another machine than the controller)
    assert CoreShare.of_worker(tmp_path, 3, 1) is None
    assert CoreShare.of_worker(tmp_path, 1, None) is None
    assert CoreShare.of_worker(None, 3, None) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert CoreShare.of_worker(tmp_path, 3, None) is None


@pytest.mark.parametrize("dtype, rebalanced", [("float32", True), ("bfloat16", False)])
def test_a_worker_in_a_reduced_dtype_keeps_its_share(tmp_path, monkeypatch, dtype, rebalanced):
    """There the thread count keys the numbers (`Evaluator.unit_key`): a worker taking the
    cores of one that finished would score the rest of its run under other keys."""
    from quantfair.config import RunConfig
    from quantfair.session import AuditSession

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("quantfair.workers.available_cores", lambda: 4)
    config = RunConfig.build({"model": "tiny-llama", "dtype": dtype}.get)
    session = AuditSession(config, announce=lambda _: None, workers=2, run_folder=tmp_path)
    assert (session.evaluator.before_forward is not None) == rebalanced


def test_a_device_is_named_in_any_case_and_recorded_in_lowercase():
    """`--device CPU` was recorded as "CPU" (beside a lowercased dtype), `--device AUTO`
    refused as unknown."""
    from quantfair.models import is_auto_device

    built = {name: RunConfig.build({"model": "m", "device": name}.get)
             for name in ("CPU", "AUTO", " Cuda:1 ")}
    assert [config.settings()["device"] for config in built.values()] == ["cpu", "auto",
                                                                           "cuda:1"]
    assert is_auto_device(built["AUTO"].device) and is_auto_device("Auto")
    assert not is_auto_device(built["CPU"].device)


def test_a_bad_threads_option_is_a_usage_error_before_any_model_loads():
    values = {"model": "no-org/never-loaded", "threads": "0"}
    with pytest.raises(UsageError, match="--threads") as error:
        RunConfig.build(values.get)
    assert "\n" not in str(error.value)
    assert RunConfig.build({"model": "m", "threads": "2"}.get).threads == 2
    assert RunConfig.build({"model": "m"}.get).threads is None


def test_a_bad_threads_option_is_one_line_from_the_cli():
    result = subprocess.run([sys.executable, "-m", "quantfair.cli", "measure", "tiny-gpt2",
                             "--threads", "none"], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "--threads must be auto or a positive integer" in lines[0]


def test_worker_count_from_xdist(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert xdist_workers(None) is None
    assert xdist_workers({"workercount": 3}) == 3
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert xdist_workers({}) == 2


def test_configure_threads_sets_torch_before_the_model_loads(monkeypatch):
    import torch

    import quantfair.workers as workers

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(workers, "available_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert configure_threads(None, None) is None  # serial
    assert "torch threads 2" in configure_threads(None, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert configure_threads(None, 2) is None
    assert "torch threads 1" in configure_threads(1, 2)
    assert calls == [2, 1]


def test_an_audit_session_sets_the_allocator_before_the_model_loads(monkeypatch):
    import quantfair.session as session

    calls = []

    def loading(*args, **kwargs):
        calls.append("load")
        raise RuntimeError("stop here")

    monkeypatch.setattr(session, "tune_allocator", lambda: calls.append("allocator"))
    monkeypatch.setattr(session, "load_model", loading)
    with pytest.raises(RuntimeError, match="stop here"):
        session.AuditSession(RunConfig(model="tiny-gpt2"), announce=lambda line: None)
    assert calls == ["allocator", "load"]


ALLOCATOR = textwrap.dedent("""
    import ctypes, sys, threading
    from quantfair.workers import tune_allocator
    print(tune_allocator())
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]
    libc.mallinfo2.restype = Info
    size = 20 << 20
    libc.free(libc.malloc(size))  # by default glibc raises its mmap threshold to this size
    block = libc.malloc(size)
    print(libc.mallinfo2().hblkhd >= size)  # mapped, not taken from the heap
    small = libc.malloc(4 << 20)  # below the threshold: from the heap, no page faults
    print(libc.mallinfo2().hblkhd < size + (4 << 20))
    threads = [threading.Thread(target=lambda: libc.free(libc.malloc(1 << 20)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    libc.malloc_stats()  # one "Arena i:" line per arena, on stderr
""")


def _allocator(environment: dict[str, str]) -> tuple[str, str, str, int]:
    done = subprocess.run([sys.executable, "-c", ALLOCATOR], capture_output=True, text=True,
                          check=True, env=environment)
    tuned, mapped, small_in_heap = done.stdout.split()
    arenas = sum(line.startswith("Arena ") for line in done.stderr.splitlines())
    return tuned, mapped, small_in_heap, arenas


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_allocator_settings_take_effect_and_the_users_own_win():
    plain = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    assert _allocator(plain) == ("True", "True", "True", 1)
    for variable, value in (("MALLOC_ARENA_MAX", "4"),
                            ("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")):
        tuned, mapped, _, arenas = _allocator({**plain, variable: value})
        assert (tuned, mapped) == ("False", "False") and arenas > 1


def test_the_allocator_keeps_one_arena_and_maps_large_tensors(monkeypatch):
    import quantfair.workers as workers

    calls = {}

    def mallopt(parameter, value):
        calls[parameter] = value
        return 1  # glibc: set

    monkeypatch.setattr(workers, "_libc_function", lambda name: mallopt)
    for variable in workers.ALLOCATOR_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert workers.tune_allocator.__wrapped__()
    assert calls[workers.M_ARENA_MAX] == 1
    # Freed blocks above the trim threshold go back; large tensors are mapped, not heaped.
    assert calls[workers.M_MMAP_THRESHOLD] <= calls[workers.M_TRIM_THRESHOLD] <= 64 << 20


# -- one evaluation, several processes ------------------------------------------------------------

TEXTS = [f"Unit {i}: all human beings are born free and equal. " * (1 + i % 3)
         for i in range(24)]

SHARE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from quantfair import evaluate
    from quantfair.evaluate import Evaluator, ResultCache
    from quantfair.models import load_model

    folder, worker, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    texts = json.loads(sys.argv[4])
    evaluate.CLAIM_TOKENS = 64  # a few units per claim, so one claim cannot take them all
    loaded = load_model("tiny-gpt2")
    evaluator = Evaluator(loaded, ResultCache(folder / "results"), batch_tokens=64,
                          announce=lambda m: print(m, file=sys.stderr, flush=True))
    sides = []
    store = evaluator._store_reference
    evaluator._store_reference = lambda key, *rest: (sides.append(key), store(key, *rest))

    def meet(name, seconds):
        (folder / f"{name}-{worker}").touch()
        deadline = time.time() + seconds
        while len(list(folder.glob(f"{name}-*"))) < 2 and time.time() < deadline:
            time.sleep(0.005)

    # However the two are scheduled, they meet twice: before scoring, and once each holds a
    # claim on units to score (the first to compute waits for the other), so neither can
    # score every unit alone.
    shared = evaluator._shared

    def divided(tag, label, sizes, finished, compute, **rest):
        def computing(keys):
            if not tag.startswith("side"):  # the FP side is claimed whole, by one process
                meet("computing", 60)
            compute(keys)
        shared(tag, label, sizes, finished, computing, **rest)

    evaluator._shared = divided
    meet("ready", 120)
    if mode == "nll":
        results = evaluator.evaluate("fp", texts)
    else:
        results = evaluator.evaluate_distribution("fp", texts)
    print(json.dumps({"computed": evaluator.units_computed, "sides": len(sides),
                      "nll": [results[t].nll for t in texts]}))
""")


def test_a_process_waiting_for_units_another_holds_asks_what_is_finished_once(tiny_models):
    """Two runs sharing a KL-divergence run's FP reference: the one that waited asked what
    was finished (reading and hashing every unit's files) once per unit it waited for, and
    then per unit again; alone 31 s, beside the other 109 s."""
    from quantfair.evaluate import Evaluator, found_once

    evaluator = Evaluator(tiny_models["tiny-gpt2"])
    evaluator._try_claim = lambda tag, key: False  # another process holds every unit
    asked, computed = [], []
    sizes = {f"unit{i}": 10 for i in range(40)}

    def finished() -> set[str]:
        asked.append(1)
        return set(sizes)  # stored by the other process

    evaluator._shared("side", "the FP reference", sizes, finished, computed.extend)
    assert len(asked) == 1 and not computed
    reads = []
    stored = {"unit0", "unit1"}
    built = found_once(sizes, lambda key: reads.append(key) or key in stored)
    assert built() == stored and len(reads) == 40
    stored.add("unit2")
    assert built() == stored and len(reads) == 40 + 38  # what was found is not read again


@pytest.mark.parametrize("mode", ["nll", "distribution"])
def test_two_processes_asking_for_the_same_fp_results_compute_each_once(tmp_path, mode):
    script = tmp_path / "share.py"
    script.write_text(SHARE)
    folder = tmp_path / "cache"
    folder.mkdir()
    processes = [subprocess.Popen([sys.executable, str(script), str(folder), name, mode,
                                   json.dumps(TEXTS)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in ("a", "b")]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    a, b = (json.loads(stdout) for stdout, _ in outputs)
    assert a["computed"] + b["computed"] == len(TEXTS)  # each unit once
    assert a["computed"] and b["computed"]  # and the work was divided
    assert a["nll"] == b["nll"]
    if mode == "distribution":
        assert a["sides"] + b["sides"] == len(TEXTS)  # the FP side of each unit once too
    assert len(ResultCache(folder / "results").load("fp")) == len(TEXTS)


def _hold_the_claim(evaluator: Evaluator, text: str) -> FileLock:
    """Take the claim of `text`'s FP evaluation as another process would."""
    own = evaluator._claim("nll\0fp", evaluator.unit_key(text))
    other = FileLock(own.lock_file)  # a lock of its own, as in another process
    other.acquire(timeout=0)
    return other


@pytest.mark.parametrize("other_finishes", [True, False])
def test_a_claimed_unit_is_waited_for_and_computed_only_if_left_undone(
        tmp_path, tiny_models, other_finishes):
    messages: list[str] = []
    evaluator = Evaluator(tiny_models["tiny-gpt2"], ResultCache(tmp_path),
                          announce=messages.append)
    texts = TEXTS[:6]
    other = _hold_the_claim(evaluator, texts[2])
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(
        evaluator.evaluate("fp", texts, label="the FP reference")))
    thread.start()
    deadline = time.time() + 120
    while not any("waiting for another process" in m for m in messages):
        assert thread.is_alive() and time.time() < deadline, messages
        time.sleep(0.01)
    assert evaluator.units_computed == len(texts) - 1
    if other_finishes:  # the other process stores its unit, then lets go of it
        ResultCache(tmp_path).store("fp", {evaluator.unit_key(texts[2]):
                                           UnitResult(123.0, 4, 5, 6)})
    other.release()  # (or dies: the lock goes with the process)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert set(outcome) == set(texts)
    if other_finishes:
        assert evaluator.units_computed == len(texts) - 1
        assert outcome[texts[2]] == UnitResult(123.0, 4, 5, 6)
    else:
        assert evaluator.units_computed == len(texts)
        assert outcome[texts[2]].nll != 123.0
    assert any("1 unit(s) of the FP reference" in m for m in messages)  # named, not keyed


@pytest.mark.parametrize(("worker", "gpus", "expected"),
                         [("gw0", 2, "cuda:0"), ("gw3", 2, "cuda:1"), ("gw5", 4, "cuda:1"),
                          (None, 4, "cuda:0")])
def test_xdist_workers_spread_over_the_gpus(monkeypatch, worker, gpus, expected):
    import torch

    from quantfair.models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    if worker:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    else:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert str(resolve_device("auto")) == expected
    assert str(resolve_device("cuda:0")) == "cuda:0"  # an explicit device wins
    assert str(resolve_device("CUDA:1")) == "cuda:1"  # in any case, as --dtype
