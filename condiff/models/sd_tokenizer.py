"""The CLIP byte-pair-encoding tokenizer of Stable Diffusion, built offline.

Stable Diffusion 1.x (CLIP ViT-L/14) and 2.x (OpenCLIP ViT-H/14) share one tokenizer: lower-cased,
byte-level BPE (Sennrich et al. 2016) with 49,408 tokens, ``<|startoftext|>`` (49406) and
``<|endoftext|>`` (49407), prompts padded or cut to 77 tokens. They differ in the padding token
only: SD 1.x pads with ``<|endoftext|>``, SD 2.x (OpenCLIP) with id 0, the token ``!``.

Where the vocabulary comes from, in this order:

1. a diffusers folder's ``tokenizer/`` (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``);
2. the file named by the environment variable ``CONDIFF_CLIP_BPE`` (a ``bpe_simple_vocab_16e6.txt.gz``);
3. the copy shipped with condiff (``condiff/configs/clip/``, MIT-licensed, see its NOTICE.md);
4. the same file inside an installed ``open_clip`` or ``clip`` package, located with
   ``importlib.util.find_spec`` without importing it.

Why condiff ships the file (1.3 MB) instead of depending on ``open-clip-torch``: that package
requires ``torchvision``, whose install replaces the CPU build of torch here, and a dependency
cannot be declared "without its dependencies". A shipped file needs nothing and never changes.

The BPE file lists merges only; the vocabulary follows from it as in CLIP: the 256 byte symbols,
the same with the end-of-word marker ``</w>``, one token per merge (the first 48,894), then the
two special tokens. From that a ``transformers.CLIPTokenizer`` is built (the class SD pipelines use).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path

__all__ = [
    "BPE_ENV", "SHIPPED_BPE", "clip_bpe_path", "clip_vocab_and_merges", "write_clip_tokenizer_files",
    "load_clip_tokenizer", "tokenizer_source",
]

BPE_ENV = "CONDIFF_CLIP_BPE"
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
SHIPPED_BPE = Path(__file__).resolve().parent.parent / "configs" / "clip" / BPE_NAME
VOCAB_SIZE = 49408
MAX_LENGTH = 77
_N_MERGES = VOCAB_SIZE - 256 - 256 - 2  # 48,894


def _package_file(package: str, name: str) -> Path | None:
    """A data file of an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def clip_bpe_path() -> Path:
    """The CLIP BPE merge file to use for single-file checkpoints (see the module docstring)."""
    env = os.environ.get(BPE_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"{BPE_ENV}={env} does not name a file; point it at {BPE_NAME} or unset it")
        return path
    if SHIPPED_BPE.is_file():
        return SHIPPED_BPE
    for package in ("open_clip", "clip"):
        path = _package_file(package, BPE_NAME)
        if path is not None:
            return path
    raise FileNotFoundError(
        f"no CLIP BPE vocabulary found: condiff's copy {SHIPPED_BPE} is missing (reinstall condiff), "
        f"or set {BPE_ENV} to a {BPE_NAME} file, or give the model folder a tokenizer/ directory"
    )


def byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for the bytes 0..255, in vocabulary order.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves and come first;
    every other byte b is mapped, in increasing order, to chr(256 + k) for k = 0, 1, … (GPT-2's
    byte-to-unicode table, which CLIP reuses).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in keep] + [table[b] for b in range(256) if b not in set(keep)]


@functools.lru_cache(maxsize=4)
def clip_vocab_and_merges(bpe_path: str) -> tuple[dict[str, int], list[str]]:
    """Token -> id table and merge list of the CLIP tokenizer, derived from the BPE merge file."""
    opener = gzip.open if str(bpe_path).endswith(".gz") else open
    with opener(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [line for line in lines[1:1 + _N_MERGES]]
    if len(merges) != _N_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise ValueError(f"{bpe_path} is not a CLIP BPE merge file (expected {_N_MERGES} merge lines after a header)")
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{bpe_path} gives {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def write_clip_tokenizer_files(folder: str | os.PathLike, bpe_path: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (the files ``CLIPTokenizer`` reads) into ``folder``."""
    from ..io import atomic_path

    vocab, merges = clip_vocab_and_merges(str(bpe_path or clip_bpe_path()))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    with atomic_path(vocab_file) as tmp:
        tmp.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with atomic_path(merges_file) as tmp:
        tmp.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def tokenizer_source(folder: str | os.PathLike | None) -> str:
    """Where :func:`load_clip_tokenizer` would take the vocabulary from (for reports)."""
    if folder is not None:
        folder = Path(folder)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return f"folder {folder}"
        if (folder / "tokenizer.json").is_file():
            return f"folder {folder} (tokenizer.json)"
    try:
        path = clip_bpe_path()
    except FileNotFoundError:
        return "missing"
    return "condiff's shipped CLIP vocabulary" if path == SHIPPED_BPE else str(path)


def load_clip_tokenizer(folder: str | os.PathLike | None = None, *, pad_token: str | None = None,
                        max_length: int = MAX_LENGTH):
    """A ``transformers`` CLIP tokenizer, from ``folder`` when it holds one, else from the BPE file.

    ``pad_token`` overrides the padding token ("<|endoftext|>" for SD 1.x, "!" for SD 2.x); a
    folder's own choice is kept when it is None. No network access in any case.
    """
    from transformers import CLIPTokenizer

    try:  # transformers 4.x; 5.x has one (fast) CLIPTokenizer class
        from transformers import CLIPTokenizerFast
    except ImportError:  # pragma: no cover - depends on the transformers version
        CLIPTokenizerFast = CLIPTokenizer

    from .offline import set_offline_env

    set_offline_env()
    kwargs = {"pad_token": pad_token} if pad_token is not None else {}
    if folder is not None:
        folder = Path(folder)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, **kwargs)
        elif (folder / "tokenizer.json").is_file():
            tok = CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True, **kwargs)
        else:
            raise FileNotFoundError(f"{folder} holds no CLIP tokenizer (vocab.json + merges.txt or tokenizer.json)")
    else:
        with tempfile.TemporaryDirectory(prefix="condiff-clip-") as tmp:
            vocab_file, merges_file = write_clip_tokenizer_files(tmp)
            tok = CLIPTokenizer(str(vocab_file), str(merges_file), **kwargs)
    tok.model_max_length = int(max_length)
    return tok
