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
(`tensorfile.scratch`: page cache, not process memory), least recently used first out once
`capacity` bytes are held.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from quantfair.errors import UsageError
from quantfair.taxonomy import Component, num_layers
from quantfair.tensorfile import scratch

CAPACITY_VARIABLE = "QUANTFAIR_HIDDEN_STATES_MB"
CAPACITY_MB = 2048


def capacity_from_environment() -> int:
    """Bytes of hidden states to keep: QUANTFAIR_HIDDEN_STATES_MB (MiB, default 2048; 0 turns
    the reuse off). Raises UsageError for anything but a non-negative integer."""
    text = os.environ.get(CAPACITY_VARIABLE, "").strip() or str(CAPACITY_MB)
    if not text.isdigit():
        raise UsageError(f"{CAPACITY_VARIABLE} must be a number of MiB (0: off), got '{text}'")
    return int(text) << 20


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
    of layer k depends on (index L: the output of the last layer)."""

    def __init__(self, layers: nn.ModuleList, keys: Callable[[], list[str]],
                 folder: Path | None, capacity: int = CAPACITY_MB << 20) -> None:
        self.layers = layers
        self.keys = keys
        self.folder = folder
        self.capacity = capacity
        self.entries: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.held = 0  # bytes
        self.layers_run = 0
        self.layers_skipped = 0
        self._arity: int | None = None  # a tuple-returning layer's output length

    @contextlib.contextmanager
    def forward(self, *inputs: torch.Tensor | None) -> Iterator[None]:
        """Around one forward pass of the model on `inputs` (token ids and attention mask,
        whatever decides the hidden states besides the weights)."""
        digest = hashlib.sha256()
        for tensor in inputs:
            digest.update(b"-" if tensor is None else
                          repr(tuple(tensor.shape)).encode() + tensor.cpu().numpy().tobytes())
        tokens = digest.hexdigest()
        keys = self.keys()
        start = max((k for k in range(1, len(keys)) if (keys[k], tokens) in self.entries),
                    default=0)
        replaced = []
        if start:
            for k in range(1, start + 1):  # the chain below is in use: keep it longest
                if (keys[k], tokens) in self.entries:
                    self.entries.move_to_end((keys[k], tokens))
            replaced = self._skip(self.entries[(keys[start], tokens)], start)
        hooks = [self.layers[i].register_forward_hook(self._recorder((keys[i + 1], tokens)))
                 for i in range(start, len(self.layers))
                 if (keys[i + 1], tokens) not in self.entries]
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
        """Layers below `start` return `hidden` (as the output of layer start - 1); their own
        instance-level `forward`s, if any, are returned."""
        arity = self._arity
        device = next(self.layers.parameters()).device

        def recorded(*_args, **_kwargs):
            output = hidden.to(device, copy=True)
            return output if arity is None else (output,) + (None,) * (arity - 1)

        replaced = []
        for layer in self.layers[:start]:
            replaced.append(layer.__dict__.get("forward"))
            layer.forward = recorded
        return replaced

    def _recorder(self, key: tuple[str, str]):
        def record(_module, _args, output) -> None:
            hidden = output
            if isinstance(output, tuple):
                self._arity, hidden = len(output), output[0]
            else:
                self._arity = None
            size = hidden.numel() * hidden.element_size()
            if size > self.capacity:
                return
            while self.held + size > self.capacity:
                _, old = self.entries.popitem(last=False)
                self.held -= old.numel() * old.element_size()
            kept = scratch(hidden.numel(), hidden.dtype, self.folder).view(hidden.shape)
            self.entries[key] = kept.copy_(hidden.detach())
            self.held += size
        return record
