"""torch.compile for the training loop: each transformer block compiled in place, once.

Compiling the whole model would specialise on the active-layer set, so layer dropping (a new
random subset every step) and stacking would recompile again and again. Blocks of one class
share their compiled code (parameters are graph inputs, not constants), so every block of the
stack, in any subset, reuses one compiled graph. Compiling in place (``nn.Module.compile``)
keeps parameter names, state_dict and checkpoints exactly as without compilation.
"""

from __future__ import annotations

from torch import nn

from ntng_ray.models.active_layers import layer_stacks


def compile_blocks(model: nn.Module) -> None:
    """Compile every block of every layer stack of ``model`` in place."""
    for stack in layer_stacks(model):
        for index in range(len(stack)):  # by index: iterating yields the active blocks only
            stack[index].compile()
