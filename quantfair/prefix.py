"""Reuse of the hidden states entering a decoder layer between forward passes over the same
tokens whose weights differ only from that layer upward.

Protecting the last layer changes nothing below it: with the hidden states that entered it in
the pass that protected nothing, the layers below need not run again. Each pass records the
hidden states leaving every layer, keyed by the tokens and by the state of every weight below
(`WeightBank.prefix_keys`); a later pass looks for the deepest layer whose input it has, runs
the layers from there up, and gives the layers below the recorded tensor instead of running
them. Exact by construction: the layers that run get the very values a full pass would have
given them (a copy, in case a layer writes to its input).

The recorded tensors live in unnamed temporary files beside the weight bank's tensors
(`tensorfile.scratch`: page cache, not process memory), the oldest out first once
`capacity` bytes are held.

Processes of one run on one machine (pytest-xdist workers) also share the hidden states
entering and leaving the last layer through named files in a folder of the run (`shared`):
configurations differing only in the last layer or above it (the seed's recipe and its
first + last layers differ in the final norm alone) often land on different workers, and
without it each worker ran every layer of the one the other had already run (on the
embedded model's quick audits, 24% more decoder layers under `-n 2` than serially).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from quantfair.config import HIDDEN_STATES_MB
from quantfair.taxonomy import Component, num_layers
from quantfair.tensorfile import map_tensors, scratch, write_tensors

SLAB_BYTES = 64 << 20
SHARED_DEPTHS = 2  # hidden states shared with other processes: entering and leaving the top layer


def decoder_layers(model: nn.Module, parts: dict[str, Component]) -> nn.ModuleList | None:
    """The model's list of decoder layers (the module holding layer i's parameters at index
    i), or None where the parameter names do not lead to one."""
    layers = num_layers(parts)
    first = next((c.name for c in parts.values() if c.layer == 0), None)
    if not layers or first is None or ".0." not in first:
        return None
    try:
        found = model.get_submodule(first.split(".0.", 1)[0])
    except AttributeError:
        return None
    return found if isinstance(found, nn.ModuleList) and len(found) == layers else None


class HiddenStates:
    """Hidden states leaving each decoder layer, recorded per (weights below, tokens); see the
    module docstring. `keys()` gives, for k = 0..L, the identity of the weights that the input
    of layer k depends on (index L: the output of the last layer).

    Kept in slabs of SLAB_BYTES (one mapped file each, so a run holds a few dozen mappings,
    not one per tensor); past `capacity` the oldest slab goes, and a reused chain of hidden
    states in the older half of the slabs is copied into the newest one first.

    `shared`: a folder of the run where the states of the top `SHARED_DEPTHS` depths are
    also written for other processes (one safetensors file each, named by their key; up to
    `capacity` bytes from each process), and looked for when this process has not kept
    them."""

    def __init__(self, layers: nn.ModuleList, keys: Callable[[], list[str]],
                 folder: Path | None, capacity: int = HIDDEN_STATES_MB << 20,
                 shared: Path | None = None) -> None:
        self.layers = layers
        self.keys = keys
        self.folder = folder
        self.capacity = capacity
        self.shared = shared
        self.shared_written = 0  # bytes this process wrote there
        self.entries: dict[tuple[str, str], tuple[int, torch.Tensor]] = {}  # (slab, tensor)
        self.held = 0  # bytes of the slabs held
        self.layers_run = 0
        self.layers_skipped = 0
        self._arity: int | None = None  # a tuple-returning layer's output length
        self._slabs: OrderedDict[int, tuple[list[tuple[str, str]], int]] = OrderedDict()
        self._slab: torch.Tensor | None = None  # the newest slab's bytes
        self._used = 0

    @contextlib.contextmanager
    def forward(self, *inputs: torch.Tensor | None) -> Iterator[None]:
        """Around one forward pass of the model on `inputs` (token ids and attention mask,
        whatever decides the hidden states besides the weights)."""
        digest = hashlib.sha256()
        for tensor in inputs:
            digest.update(b"-" if tensor is None else
                          repr(tuple(tensor.shape)).encode() + tensor.cpu().numpy().tobytes())
        tokens = digest.hexdigest()
        keys = [(key, tokens) for key in self.keys()]
        start = max((k for k in range(1, len(keys)) if keys[k] in self.entries), default=0)
        start = max(start, self._from_shared(keys, start))
        replaced = []
        if start:
            replaced = self._skip(self.entries[keys[start]][1], start)
            slabs = list(self._slabs)
            at_risk = slabs[len(slabs) // 2]
            chain = [(key, self.entries[key][1]) for key in keys[1:start + 1]
                     if key in self.entries and self.entries[key][0] < at_risk]
            for key, hidden in chain:  # the chain in use is kept longest
                self._put(key, hidden)
        hooks = [self.layers[i].register_forward_hook(
                     self._recorder(keys[i + 1], share=i + 1 > len(self.layers) - SHARED_DEPTHS))
                 for i in range(start, len(self.layers))
                 if self.capacity and keys[i + 1] not in self.entries]
        self.layers_skipped += start
        self.layers_run += len(self.layers) - start
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            for layer, own in zip(self.layers[:start], replaced, strict=True):
                del layer.forward
                if own is not None:  # e.g. an offloading hook's
                    layer.forward = own

    def _skip(self, hidden: torch.Tensor, start: int) -> list:
        """Layers below `start` return a copy of `hidden` (as the output of layer start - 1:
        the layers above may write to it); their own instance-level `forward`s, if any, are
        returned."""
        arity = self._arity
        # Where a full pass would have it: on layer start - 1's device (models split over GPUs).
        output = hidden.to(next(self.layers[start - 1].parameters()).device, copy=True)
        if arity is not None:
            output = (output,) + (None,) * (arity - 1)

        def recorded(*_args, **_kwargs):
            return output

        replaced = []
        for layer in self.layers[:start]:
            replaced.append(layer.__dict__.get("forward"))
            layer.forward = recorded
        return replaced

    def _recorder(self, key: tuple[str, str], share: bool = False):
        def record(_module, _args, output) -> None:
            hidden = output
            if isinstance(output, tuple):
                self._arity, hidden = len(output), output[0]
            else:
                self._arity = None
            self._put(key, hidden.detach())
            if share and self.shared is not None:
                self._write_shared(key, hidden.detach())
        return record

    # -- shared with the other processes of a run ------------------------------------------
    def _shared_path(self, key: tuple[str, str]) -> Path:
        return self.shared / f"{hashlib.sha256('|'.join(key).encode()).hexdigest()}.safetensors"

    def _write_shared(self, key: tuple[str, str], hidden: torch.Tensor) -> None:
        path = self._shared_path(key)
        size = hidden.numel() * hidden.element_size()
        if self.shared_written + size > self.capacity or path.exists():
            return
        layout = {"hidden": hidden, "arity": torch.tensor([self._arity or 0])}
        try:
            write_tensors(path, layout, layout.__getitem__)  # whole or not at all
        except OSError:  # sharing saves time; a process that cannot write just runs layers
            return
        self.shared_written += size

    def _from_shared(self, keys: list[tuple[str, str]], start: int) -> int:
        """The deepest shared depth above `start` whose hidden states another process wrote,
        kept here as if recorded (0 where none is)."""
        if self.shared is None:
            return 0
        for depth in range(len(keys) - 1, max(start, len(keys) - 1 - SHARED_DEPTHS), -1):
            try:
                found = map_tensors(self._shared_path(keys[depth]))
            except (OSError, ValueError):
                continue
            self._arity = int(found["arity"][0]) or None
            self._put(keys[depth], found["hidden"])
            if keys[depth] in self.entries:
                return depth
        return 0

    def _put(self, key: tuple[str, str], hidden: torch.Tensor) -> None:
        """Copy `hidden` into the newest slab (a new one when it is full) under `key`."""
        size = hidden.numel() * hidden.element_size()
        room = -(-size // 64) * 64
        if self._slab is None or self._used + room > len(self._slab):
            slab_bytes = max(min(SLAB_BYTES, self.capacity), room)
            if slab_bytes > self.capacity:
                return
            while self.held + slab_bytes > self.capacity:
                self._drop_oldest()
            try:
                self._slab = scratch(slab_bytes, torch.uint8, self.folder, fallback=False)
            except OSError as error:  # never in process memory instead
                print(f"quantfair: not keeping hidden states: cannot write {self.folder} "
                      f"({error.strerror or error})", file=sys.stderr)
                self.capacity, self._slab = 0, None
                return
            number = next(reversed(self._slabs), 0) + 1
            self._slabs[number], self._used = ([], slab_bytes), 0
            self.held += slab_bytes
        number = next(reversed(self._slabs))
        kept = self._slab[self._used:self._used + size].view(hidden.dtype).view(hidden.shape)
        self.entries[key] = (number, kept.copy_(hidden))
        self._slabs[number][0].append(key)
        self._used += room

    def _drop_oldest(self) -> None:
        number, (keys, slab_bytes) = self._slabs.popitem(last=False)
        for key in keys:
            if self.entries.get(key, (None,))[0] == number:  # not since copied to a newer one
                del self.entries[key]
        self.held -= slab_bytes
        if not self._slabs:
            self._slab = None
