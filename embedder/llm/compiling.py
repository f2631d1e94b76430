"""Regional compilation: ``torch.compile`` each repeated transformer block, not the whole model.

A transformer is one block class repeated ``L`` times. Compiling the blocks (the PyTorch
"regional compilation" recipe) fuses the same element-wise work as compiling the whole model
(norms, rotary, SiLU-gating, residual adds around the matrix products) but traces one block
instead of ``L`` inlined ones: the compiled code is shared by every block, because their
parameters are graph inputs, not constants. Cold start falls from minutes to seconds, and the
pooling head, the embedding lookup and the mask construction stay eager, where they cost little.

The blocks are found the way Hugging Face's device-map code finds them: the class names a model
lists in ``_no_split_modules`` (``LlamaDecoderLayer``, ``Qwen2DecoderLayer``, ``BertLayer``...).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def block_class_names(model: nn.Module) -> set[str]:
    """Class names of the repeated blocks declared by ``model`` or any of its submodules."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost modules of ``model`` whose class is a declared block, in order."""
    classes = block_class_names(model)
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if type(module).__name__ not in classes:
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # inside a block already compiled as a whole
        found.append((name, module))
    return found


def compile_blocks(model: nn.Module, *, dynamic: bool = True) -> int:
    """``torch.compile`` every block of ``model`` in place; returns how many were compiled.

    Returns 0 (and changes nothing) when the model declares no blocks; the caller then decides
    whether to compile the model whole.
    """
    blocks = find_blocks(model)
    if blocks:
        _install_capture_hooks(model)
    for _, block in blocks:
        if getattr(block, _COMPILED_MARK, False):
            continue  # compiled for an earlier embedder over the same model
        setattr(block, _COMPILED_MARK, True)
        dropped = _drop_capture_hooks_inside(block)
        # The block's forward, not its __call__: the block's own hooks stay eager (transformers
        # records hidden states with a forward hook on each block).
        block.forward = torch.compile(block.forward, dynamic=dynamic)
        if dropped:
            logger.debug("dropped %d output-capturing hooks inside %s", dropped, type(block))
    if blocks:
        logger.info("compiling %d %s blocks", len(blocks), type(blocks[0][1]).__name__)
    return len(blocks)


def _install_capture_hooks(model: nn.Module) -> None:
    """Have transformers hang its output-capturing hooks now (it does so lazily, on the first
    forward that asks for hidden states), so that the ones inside blocks can be dropped."""
    try:
        from transformers import PreTrainedModel
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # a transformers without output-capturing hooks: nothing to drop
        return
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            maybe_install_capturing_hooks(module)
            return


def _drop_capture_hooks_inside(block: nn.Module) -> int:
    """Remove transformers' output-capturing hooks from the modules inside ``block``.

    transformers (5.x) hangs a forward hook on every attention module to record attention
    weights on request; it reads a ``ContextVar``, which dynamo cannot trace, so it would split
    each compiled block in two. An embedder never asks for attention weights; the hooks that
    record hidden states sit on the blocks themselves and are kept.
    """
    dropped = 0
    for module in block.modules():
        if module is block:
            continue
        hooks = module._forward_hooks
        for key in [k for k, hook in hooks.items() if _is_capture_hook(hook)]:
            del hooks[key]
            dropped += 1
    return dropped


def _is_capture_hook(hook: object) -> bool:
    return getattr(hook, "__module__", "") == _CAPTURE_HOOK_MODULE


_CAPTURE_HOOK_MODULE = "transformers.utils.output_capturing"
_COMPILED_MARK = "_quarry_compiled"
