import copy
import os
import signal

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A shell starts background jobs with SIGINT ignored, and the runs these tests start inherit
# that: the Ctrl-C tests would send signals nobody receives. Take Ctrl-C as a terminal does.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _model_stack_imported():
    """`pytester` restores `sys.modules` after each test that uses it, while torch registers its
    operator libraries once per process: torch modules first imported inside such a test could
    never be imported again in that worker. Import the model stack before any snapshot."""
    import transformers.modeling_utils  # noqa: F401

    import quantfair.html  # noqa: F401  (matplotlib, which registers its classes once)


@pytest.fixture(scope="session", autouse=True)
def _thread_share():
    """Under `-n 2` each test worker takes its share of the cores, as audit workers do: two
    workers of two torch threads each on two cores spin at their barriers (tests that ran
    7 s alone took 60+ s beside a busy worker). The processes a test starts (pytest runs,
    CLI commands) inherit the share through OMP_NUM_THREADS: a `quantfair suggest` of 15 s
    with one thread took 37 s with two beside one busy core. Tests of the automatic share
    itself unset it."""
    from quantfair.workers import available_cores, configure_threads, thread_share, xdist_workers

    workers = xdist_workers()
    configure_threads(None, workers)
    share = thread_share(available_cores(), workers,
                         environment=bool(os.environ.get("OMP_NUM_THREADS")))
    if share is not None:
        os.environ["OMP_NUM_THREADS"] = str(share)


@pytest.fixture(autouse=True)
def _threads_kept():
    """A test that sets torch's thread count in this process (a session of two workers on
    four cores takes two) has the share restored: two threads left in one worker beside a
    busy one made the suggest tests after it 7 to 13 times slower (107 s, 8 s alone)."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _private_result_cache(tmp_path_factory, monkeypatch):
    """Evaluation results go to a per-session cache; converted models stay shared."""
    cache = tmp_path_factory.getbasetemp() / "quantfair-cache"
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(cache))


class Pristine(dict):
    """Models built once a session, each read a copy (a few ms for a tiny one): a test whose
    session leaves its last measurement's weights applied (quantized) must not hand them to
    the next test on that worker as its FP weights."""

    def __getitem__(self, name):
        return copy.deepcopy(super().__getitem__(name))

    def values(self):
        return [self[name] for name in self]

    def items(self):
        return [(name, self[name]) for name in self]


@pytest.fixture(scope="session")
def tiny_models():
    from quantfair.models import TINY_MODEL_TYPES, load_model

    return Pristine({name: load_model(name) for name in TINY_MODEL_TYPES})
