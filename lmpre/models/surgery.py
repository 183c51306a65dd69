"""Model surgery: new backbone state dicts made from a trained one's layers, before any training.

Pure functions on `Transformer` state dicts (keys as `Transformer.state_dict()` names them, e.g.
`encoder.blocks.3.attn.q.weight`): nothing is loaded, trained or copied. A stack is `encoder` or `decoder`; its
blocks are renumbered 0…k-1 in the order asked for, every other key (embeddings, positions, final norms, head) is
kept as it is. The tensors are shared with the source state dict, not copied: `load_state_dict` copies them into
the new model's own parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import pairwise

from torch import Tensor

STACKS = ("encoder", "decoder")


def _block_key(stack: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(stack)}\.blocks\.(\d+)\.(.+)$")


def num_layers(state: Mapping[str, Tensor], stack: str = "encoder") -> int:
    """The number of blocks of `stack` in `state` (0 when it has none: a decoder-only model's `decoder`)."""
    pattern = _block_key(stack)
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    if indices != set(range(len(indices))):
        raise ValueError(f"{stack} blocks {sorted(indices)} are not numbered 0…{len(indices) - 1}")
    return len(indices)


def select_layers(state: Mapping[str, Tensor], layers: Sequence[int], stack: str = "encoder") -> dict[str, Tensor]:
    """`state` whose `stack` holds the source blocks `layers`, in that order (a layer may appear twice)."""
    if stack not in STACKS:
        raise ValueError(f"stack={stack!r} is not one of {', '.join(STACKS)}")
    n = num_layers(state, stack)
    if not layers:
        raise ValueError(f"no {stack} layers chosen: keep at least one")
    outside = [i for i in layers if not 0 <= i < n]
    if outside:
        raise ValueError(f"{stack} layers {outside} do not exist: the source has layers 0…{n - 1}")
    pattern = _block_key(stack)
    blocks: dict[int, dict[str, Tensor]] = {}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = pattern.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), {})[match.group(2)] = value
        else:
            out[key] = value
    for new, old in enumerate(layers):
        out |= {f"{stack}.blocks.{new}.{name}": value for name, value in blocks[old].items()}
    return out


def depth_upscale_layers(n_layer: int, drop: int) -> list[int]:
    """SOLAR's depth up-scaling of an `n_layer` stack: two copies, the last `drop` layers dropped from the first
    and the first `drop` from the second, so 2 * (n_layer - drop) layers; the seam repeats the middle layers."""
    if not 0 <= drop < n_layer:
        raise ValueError(f"drop={drop} must be at least 0 and less than the source's {n_layer} layers")
    return list(range(n_layer - drop)) + list(range(drop, n_layer))


def depth_upscale(state: Mapping[str, Tensor], drop: int, stack: str = "encoder") -> dict[str, Tensor]:
    """`state` with its `stack` depth up-scaled: layers 0…n-1-drop, then drop…n-1 (SOLAR, arXiv:2312.15166)."""
    return select_layers(state, depth_upscale_layers(num_layers(state, stack), drop), stack)


def check_subset(layers: Sequence[int], n_layer: int, setting: str = "layers") -> list[int]:
    """`layers` as a list when they are a non-empty subset of 0…n_layer-1 in increasing order."""
    if (
        isinstance(layers, (str, bytes))
        or not isinstance(layers, Sequence)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
    ):
        raise ValueError(f"{setting}={layers} must be a list of layer indices, e.g. [0, 2, 3]")
    chosen = list(layers)
    if not chosen:
        raise ValueError(f"{setting} is empty: keep at least one of the source's {n_layer} layers")
    if any(not 0 <= i < n_layer for i in chosen):
        raise ValueError(f"{setting}={chosen}: the source has layers 0…{n_layer - 1}")
    if any(a >= b for a, b in pairwise(chosen)):
        raise ValueError(f"{setting}={chosen} must list distinct layers in increasing order")
    return chosen


def downscale(state: Mapping[str, Tensor], layers: Sequence[int], stack: str = "encoder") -> dict[str, Tensor]:
    """`state` keeping only the `stack` layers `layers` (increasing, distinct), in their order."""
    return select_layers(state, check_subset(layers, num_layers(state, stack)), stack)
