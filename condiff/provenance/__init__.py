"""Provenance of condiff's pictures (thesis §5.1.3): how a picture was made, in formats other tools
read, signed and watermarked.

One concept per module:

* :mod:`~condiff.provenance.a1111` — AUTOMATIC1111's ``parameters`` text: write and parse;
* :mod:`~condiff.provenance.hashes` — model and LoRA hashes in A1111's conventions;
* :mod:`~condiff.provenance.watermark` — the invisible ``dwtDct`` watermark (invisible-watermark);
* :mod:`~condiff.provenance.keys` — local signing key and certificate chain, or the user's own;
* :mod:`~condiff.provenance.c2pa_sign` — the C2PA manifest (c2pa-python): sign and read;
* :mod:`~condiff.provenance.stamp` — the PNG writer that applies the stamps (:func:`png_bytes`);
* :mod:`~condiff.provenance.verify` — read everything back and judge it (:func:`read_png_info`);
* :mod:`~condiff.provenance.recipe` — a picture's parameters as a re-run (``generate --from-png``).
"""

from .stamp import png_bytes
from .verify import read_png_info

__all__ = ["png_bytes", "read_png_info"]
