"""The built-in world: an offline, captioned, multi-style image data set with every control condition.

* :mod:`.sources`   emoji icon sets (npm ``@iconify-json/*``), vendored small subset
* :mod:`.clipart`   public-domain clip art (Debian ``openclipart-svg``)
* :mod:`.pack`      compact checksummed source bundle for offline GPU machines
* :mod:`.svg_doc`, :mod:`.svg_render`   SVG documents (picture, layers, exact line art) and renderers
* :mod:`.figures`   procedural articulated figures with exact OpenPose keypoints
* :mod:`.captions`  paraphrased captions from names, categories and styles
* :mod:`.builder`   rendering into deterministic, checksummed shards (+ manifest)
* :mod:`.conditions` the six ControlNet conditions of a record
* :mod:`.masks`     seeded inpainting masks
* :mod:`.loader`    streaming training loader (flips, crops, caption dropout, conditions, masks)
* :mod:`.heldout`   the held-out personalisation concept and leak checks
* :mod:`.experiment_inputs`  the thesis's three experiments, re-staged in this world
* :mod:`.card`, :mod:`.contact_sheet`   data card and contact sheet
"""

from .builder import build_world
from .conditions import CONDITIONS, condition_maps
from .heldout import HELD_OUT
from .masks import sample_inpaint_mask
from .pack import read_pack, write_pack
from .sources import fetch_npm_sets, load_small_sets

__all__ = [
    "build_world", "CONDITIONS", "condition_maps", "HELD_OUT", "sample_inpaint_mask", "read_pack", "write_pack",
    "fetch_npm_sets", "load_small_sets", "WorldDataset",
]


def __getattr__(name: str):  # the loader pulls in torch; import it only when asked for
    if name == "WorldDataset":
        from .loader import WorldDataset

        return WorldDataset
    raise AttributeError(name)
