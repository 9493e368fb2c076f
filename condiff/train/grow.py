"""Function-preserving growth of a trained U-Net into a deeper one (Net2DeeperNet, Chen et al. 2016).

A deeper expansive path (``UNetConfig.reverse_transformer_layers_per_block``) adds transformer
blocks to the decoder's spatial transformers. Each block is pre-norm residual
(``x += attn1(LN x); x += attn2(LN x, c); x += ff(LN x)``), so a block whose three output
projections (``attn1.to_out.0``, ``attn2.to_out.0``, ``ff.net.2``) are zero is the identity. The new
blocks start as copies of the block before them with those projections zeroed: the grown network
computes exactly what the trained one did, and training starts from its quality rather than from
scratch. The zeroed projections get gradient (their input is the copied block's attention output),
so the new blocks start learning on the first step — the same device as ControlNet's zero
convolutions (Zhang et al. 2023).
"""

from __future__ import annotations

import re

from torch import Tensor, nn

__all__ = ["grow_into", "GrowthError", "IDENTITY_OUTPUTS"]

#: Output projections of a transformer block; zero in all three makes the block the identity.
IDENTITY_OUTPUTS = ("attn1.to_out.0.", "attn2.to_out.0.", "ff.net.2.")

_BLOCK = re.compile(r"^(?P<owner>(?:.*\.)?transformer_blocks\.)(?P<index>\d+)\.(?P<rest>.+)$")


class GrowthError(ValueError):
    """The trained state cannot be grown into the network (not a sub-network of it)."""


def grow_into(net: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load ``state`` (of a shallower network) into ``net``, initialising ``net``'s extra transformer blocks
    as zero-output copies of the block before them. Returns the keys that were new.

    Every key of ``state`` must exist in ``net`` with the same shape, and every key ``net`` has beyond
    them must belong to an extra transformer block; anything else raises :class:`GrowthError`.
    """
    own = net.state_dict()
    extra = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if extra or wrong:
        raise GrowthError(f"the trained state is not a sub-network: {len(extra)} keys missing in the new network "
                          f"(e.g. {extra[:2]}), {len(wrong)} with other shapes (e.g. {wrong[:2]})")
    new = sorted(k for k in own if k not in state)
    merged = dict(state)
    for key in sorted(new, key=_block_index):
        m = _BLOCK.match(key)
        if m is None or int(m["index"]) == 0 or not key.startswith("up_blocks."):
            raise GrowthError(f"{key} is new but is not part of a transformer block added to the expansive path "
                              "(up_blocks); only the decoder's transformer depth can grow, since a ControlNet "
                              "copies the contracting path")
        source = f"{m['owner']}{int(m['index']) - 1}.{m['rest']}"
        if source not in merged:
            raise GrowthError(f"{key} has no block before it to copy ({source})")
        value = merged[source].clone()
        if m["rest"].startswith(IDENTITY_OUTPUTS):
            value.zero_()
        merged[key] = value
    net.load_state_dict(merged, strict=True)
    return new


def _block_index(key: str) -> int:
    m = _BLOCK.match(key)
    return int(m["index"]) if m else -1

