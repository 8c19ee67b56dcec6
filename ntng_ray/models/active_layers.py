"""Run a model on a subset of its layers, keeping every layer's weights in the model.

Layer stacking trains the first k layers and grows; layer dropping skips a random subset each
step. Both need the full-depth model to stay whole (its state_dict, its optimizer's parameter
list, its checkpoints) while the forward pass visits only some layers. ``ActiveLayerList`` is a
``ModuleList`` whose iteration yields only the active layers: transformers' BERT encoder and T5
stacks iterate their layer list, so they run the subset, while ``state_dict()``,
``parameters()`` and indexing still see every layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import nn


class ActiveLayerList(nn.ModuleList):
    """A ModuleList that iterates over its active layers only (all of them by default)."""

    active: tuple[int, ...] | None = None

    def __iter__(self) -> Iterator[nn.Module]:
        if self.active is None:
            return super().__iter__()
        return (self[i] for i in self.active)


def layer_stacks(model: nn.Module) -> list[ActiveLayerList]:
    """The model's layer lists (BERT: the encoder's; T5: encoder and decoder), made switchable."""
    if hasattr(model, "bert"):
        owners = [(model.bert.encoder, "layer")]
    elif hasattr(model, "encoder") and hasattr(model, "decoder") and hasattr(model, "shared"):
        owners = [(model.encoder, "block"), (model.decoder, "block")]
    elif hasattr(model, "encoder") and hasattr(model.encoder, "layers"):
        owners = [(model.encoder, "layers")]
    else:
        raise TypeError(f"no known layer stack in {type(model).__name__}")
    stacks = []
    for owner, attr in owners:
        layers = getattr(owner, attr)
        if not isinstance(layers, ActiveLayerList):
            layers = ActiveLayerList(layers)
            setattr(owner, attr, layers)
        stacks.append(layers)
    return stacks


def num_layers(model: nn.Module) -> int:
    """Layers per stack at full depth."""
    return len(layer_stacks(model)[0])


def active_layers(model: nn.Module) -> tuple[int, ...]:
    """Indices of the layers the forward pass runs (every stack has the same ones)."""
    stack = layer_stacks(model)[0]
    return tuple(range(len(stack))) if stack.active is None else stack.active


def set_active_layers(model: nn.Module, layers: int | Sequence[int] | None) -> tuple[int, ...]:
    """Use only the first ``layers`` layers, the given layer indices, or (None) all of them.

    Applies to every stack of the model. Returns the active indices. For T5, the relative
    position bias lives in block 0 of each stack and is shared by the others; when block 0 is
    inactive the first active block borrows it, so positions are still encoded.
    """
    stacks = layer_stacks(model)
    total = len(stacks[0])
    if layers is None:
        indices = tuple(range(total))
    elif isinstance(layers, int):
        if not 1 <= layers <= total:
            raise ValueError(f"active layer count {layers} outside 1..{total}")
        indices = tuple(range(layers))
    else:
        indices = tuple(sorted(set(int(i) for i in layers)))
        if not indices or indices[0] < 0 or indices[-1] >= total:
            raise ValueError(
                f"active layer indices {list(layers)} must be non-empty, within 0..{total - 1}"
            )
    for stack in stacks:
        stack.active = None if len(indices) == total else indices
        _share_position_bias(stack, indices[0])
    return indices


def _share_position_bias(stack: ActiveLayerList, first_active: int) -> None:
    """Give T5's first active block the stack's relative position bias (a no-op for BERT)."""
    first_block = stack[0]
    if not hasattr(first_block, "layer"):
        return
    source = first_block.layer[0].SelfAttention
    for index in range(1, len(stack)):
        attention = stack[index].layer[0].SelfAttention
        lend = index == first_active
        attention.has_relative_attention_bias = lend
        if lend:
            # Stored in __dict__, not registered as a submodule: the weights stay owned by
            # block 0, so state_dict and parameters() are unchanged.
            attention.__dict__["relative_attention_bias"] = source.relative_attention_bias
        else:
            attention.__dict__.pop("relative_attention_bias", None)
