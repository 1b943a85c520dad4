"""Hidden states entering a layer are reused between passes whose weights differ only above it,
and the numbers are those of full passes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from quantfair import prefix
from quantfair.config import RunConfig
from quantfair.models import TINY_MODEL_TYPES
from quantfair.prefix import HiddenStates
from quantfair.quantize import QuantScheme
from quantfair.session import AuditSession


def _session(name: str, results, monkeypatch) -> AuditSession:
    monkeypatch.setenv("QUANTFAIR_RESULTS_DIR", str(results))
    config = RunConfig.build({"model": name, "languages": "en,he", "units": "2"}.get)
    return AuditSession(config, announce=lambda _: None)


# (strategy, scheme, layers of each pass not run again, counted from the top: 1 = all but the
# last): protecting the last layer leaves the layers below as "none" had them, the final norm
# leaves every layer; layer 0, a scheme change or other entries kept everywhere leave nothing.
STEPS = [("none", "int4", None), ("Llast", "int4", 1), ("ln_f", "int4", 0), ("L0", "int4", None),
         ("none", "int8", None), ("random:5%@0", "int4", None), ("random:5%@1", "int4", None),
         ("random:5%@0+ln_f", "int4", 0), ("Llast", "int8", 1)]


@pytest.mark.parametrize("name", sorted(TINY_MODEL_TYPES))
def test_reused_hidden_states_give_the_numbers_of_full_passes(name, tmp_path, monkeypatch):
    plain = _session(name, tmp_path / "plain", monkeypatch)
    plain.evaluator.hidden_states = None
    session = _session(name, tmp_path / "reuse", monkeypatch)
    states = session.evaluator.hidden_states
    layers = len(states.layers)
    for strategy, scheme_name, from_top in STEPS:
        scheme = QuantScheme.parse(scheme_name)
        for distribution in (False, True):
            passes, before = session.evaluator.forward_passes, states.layers_skipped
            measured = session.measure(strategy, scheme, distribution=distribution)
            expected = plain.measure(strategy, scheme, distribution=distribution)
            np.testing.assert_allclose(measured.nll_q, expected.nll_q, rtol=1e-6, atol=0)
            np.testing.assert_allclose(measured.nll_fp, expected.nll_fp, rtol=1e-6, atol=0)
            if distribution:
                np.testing.assert_allclose(measured.kld, expected.kld, rtol=1e-5, atol=1e-9)
                np.testing.assert_array_equal(measured.same_top, expected.same_top)
            else:  # the first pass of a configuration: what its weights allow
                per_pass = 0 if from_top is None else layers - from_top
                assert (states.layers_skipped - before
                        == per_pass * (session.evaluator.forward_passes - passes)), strategy


@pytest.mark.parametrize("name", sorted(TINY_MODEL_TYPES))
def test_processes_of_a_run_share_the_states_entering_and_leaving_the_top_layer(
        name, tmp_path, monkeypatch):
    """Two sessions stand for two xdist workers: their own results caches and weight banks'
    states, one run folder. What one ran, the other need not run again from the top
    layer (or the final norm) down; another run's folder serves nothing."""
    plain = _session(name, tmp_path / "plain", monkeypatch)
    plain.evaluator.hidden_states = None
    first = _session(name, tmp_path / "first", monkeypatch)
    first.evaluator.hidden_states.shared = tmp_path / "run" / "hidden-states"
    first.measure("none", QuantScheme.parse("int4"))
    layers = len(first.evaluator.hidden_states.layers)
    # (strategy, layers not run per pass): the final norm alone differs from "none", the
    # top layer too, layer 1 leaves only layer 0 as it was; the FP reference's passes (as
    # many) are the first session's again
    for strategy, skipped in (("ln_f", layers), ("Llast", layers - 1), ("L1", 0)):
        for folder, expected in (("run", layers + skipped), (f"other-run-{strategy}", 0)):
            second = _session(name, tmp_path / f"second-{strategy}-{folder}", monkeypatch)
            states = second.evaluator.hidden_states
            states.shared = tmp_path / folder / "hidden-states"
            measured = second.measure(strategy, QuantScheme.parse("int4"))
            np.testing.assert_allclose(measured.nll_q, plain.measure(strategy).nll_q,
                                       rtol=1e-6, atol=0)
            np.testing.assert_allclose(measured.nll_fp, plain.measure(strategy).nll_fp,
                                       rtol=1e-6, atol=0)
            passes = second.evaluator.forward_passes
            assert passes % 2 == 0
            assert states.layers_skipped == expected * passes // 2, (strategy, folder)


class _Scale(nn.Module):
    def __init__(self, in_place: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.in_place = in_place
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.mul_(self.weight) if self.in_place else x * self.weight + 1


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Scale(), _Scale(), _Scale(in_place=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _keys(model: _Stack) -> list[str]:
    """Identity of the weights below each layer (as WeightBank.prefix_keys)."""
    values = [float(layer.weight) for layer in model.layers]
    return [repr(values[:k]) for k in range(len(values) + 1)]


@torch.no_grad()
def test_a_layer_writing_to_its_input_does_not_change_what_was_kept(tmp_path):
    model = _Stack()
    states = HiddenStates(model.layers, lambda: _keys(model), tmp_path)
    x = torch.arange(4.0)
    for weight in (3.0, 5.0, 7.0, 3.0):  # the top layer multiplies its input in place
        model.layers[2].weight.fill_(weight)
        with states.forward(x):
            output = model(x.clone())
        torch.testing.assert_close(output, (x + 2) * weight, rtol=0, atol=0)
    # Layers 0 and 1 ran once; the top one for each new weight (3.0 again: its output kept).
    assert [layer.calls for layer in model.layers] == [1, 1, 3]
    model.layers[1].weight.fill_(2.0)  # layer 1 changes: layer 0's output is reused
    with states.forward(x):
        changed = model(x.clone())
    assert [layer.calls for layer in model.layers] == [1, 2, 4]
    torch.testing.assert_close(changed, ((x + 1) * 2 + 1) * 3, rtol=0, atol=0)
    assert "forward" not in vars(model.layers[0])  # the layers are themselves again


@torch.no_grad()
def test_other_tokens_are_not_served_and_the_oldest_slab_goes_first(tmp_path, monkeypatch):
    # Slabs of two hidden states (four float32 each, 64 bytes with alignment), three held.
    monkeypatch.setattr(prefix, "SLAB_BYTES", 128)
    model = _Stack()
    states = HiddenStates(model.layers, lambda: _keys(model), tmp_path, capacity=3 * 128)

    def run(shift: int) -> list[int]:
        before = [layer.calls for layer in model.layers]
        x = torch.arange(4.0) + shift
        with states.forward(x):
            torch.testing.assert_close(model(x.clone()), x + 2, rtol=0, atol=0)
        assert states.held <= 3 * 128 and len(states.entries) <= 6
        return [layer.calls - b for layer, b in zip(model.layers, before, strict=True)]

    assert run(0) == run(1) == [1, 1, 1]  # other tokens: nothing to reuse
    assert run(0) == [0, 0, 0]  # A's three states are kept, two in the oldest slab ...
    assert run(2) == [1, 1, 1]
    # ... which were copied into a new slab when A was reused, so when C pushed the two
    # oldest slabs out (A's last state and B's) layers 0 and 1 still need not run for A.
    assert run(0) == [0, 0, 1]
    assert run(1) == [1, 1, 1]


@torch.no_grad()
def test_each_process_writes_at_most_its_capacity_to_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(prefix, "SLAB_BYTES", 64)
    model = _Stack()
    shared = tmp_path / "run"
    states = HiddenStates(model.layers, lambda: _keys(model), tmp_path, capacity=64,
                          shared=shared)
    for shift in range(3):  # two states of 16 bytes per pass: the third pass's are not written
        x = torch.arange(4.0) + shift
        with states.forward(x):
            model(x.clone())
    assert len(list(shared.glob("*.safetensors"))) == 4 and states.shared_written == 64
    other = HiddenStates(model.layers, lambda: _keys(model), tmp_path, capacity=64,
                         shared=shared)
    for shift, runs in ((1, [0, 0, 0]), (2, [1, 1, 1])):  # served, then not written
        before = [layer.calls for layer in model.layers]
        x = torch.arange(4.0) + shift
        with other.forward(x):
            torch.testing.assert_close(model(x.clone()), x + 2, rtol=0, atol=0)
        assert [layer.calls - b for layer, b in zip(model.layers, before, strict=True)] == runs


@torch.no_grad()
def test_an_unwritable_folder_keeps_nothing_and_says_so(tmp_path, capsys):
    model = _Stack()
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    states = HiddenStates(model.layers, lambda: _keys(model), blocked)
    x = torch.arange(4.0)
    for _ in range(2):
        with states.forward(x):
            torch.testing.assert_close(model(x.clone()), x + 2, rtol=0, atol=0)
    assert not states.entries and states.held == 0
    assert [layer.calls for layer in model.layers] == [2, 2, 2]
    assert capsys.readouterr().err.count("not keeping hidden states: cannot write") == 1


@torch.no_grad()
def test_a_full_disk_keeps_nothing_and_says_so(tmp_path, capsys, monkeypatch):
    """The slabs' disk blocks are allocated when a slab is made: on a full disk a write
    through the map of a sparse file killed the process with SIGBUS, without a word."""
    import errno

    def full(descriptor, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    model = _Stack()
    states = HiddenStates(model.layers, lambda: _keys(model), tmp_path)
    x = torch.arange(4.0)
    with states.forward(x):
        torch.testing.assert_close(model(x.clone()), x + 2, rtol=0, atol=0)
    assert not states.entries and states.held == 0
    assert ("not keeping hidden states: cannot write " f"{tmp_path} (No space left on device)"
            in capsys.readouterr().err)
