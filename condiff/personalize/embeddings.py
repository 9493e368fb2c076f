"""Textual-inversion embeddings: the file formats and installing them into a text encoder.

A textual-inversion "embedding" is one or more learned token-embedding vectors v* (thesis §3.3.3,
eq. 3.18; Gal et al. 2022) bound to a placeholder word. Formats read and written here:

* **A1111 ``.pt``** — ``{"string_to_token": {"*": 265}, "string_to_param": {"*": Tensor[n, d]},
  "name": str, "step": int, ...}``; the trigger word is the file name. Read only through
  ``torch.load(weights_only=True)``.
* **A1111 ``.safetensors``** — ``{"emb_params": Tensor[n, d]}`` (SDXL files hold ``clip_l`` /
  ``clip_g``; the one whose width fits the text encoder is used).
* **diffusers ``learned_embeds.safetensors``** (or ``.bin``) — ``{token: Tensor[d] or [n, d]}``.

A multi-vector embedding (n > 1) is installed as n tokens ``tok tok_1 … tok_{n-1}`` and every
``tok`` in a prompt is expanded to that sequence (A1111/diffusers behaviour) by a thin tokenizer
proxy, :class:`PromptExpandingTokenizer`, that the text encoder keeps using as its ``tokenizer``.

The text side is reached generically: the text encoder must expose ``.tokenizer`` and contain a
``transformers`` model with ``get_input_embeddings()`` (condiff's MiniLM encoder keeps a BertModel
in ``.bert``; Stable Diffusion uses a CLIPTextModel). :func:`text_transformer` finds it.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..io import atomic_path, check_writable

__all__ = [
    "TextualEmbedding",
    "EMBEDDING_FORMATS",
    "text_transformer",
    "text_tokenizer",
    "token_embedding",
    "load_embedding",
    "parse_embedding_spec",
    "save_embedding",
    "add_embedding",
    "add_placeholder_tokens",
    "initializer_vector",
    "expand_prompt",
    "PromptExpandingTokenizer",
    "load_embedding_into_model",
    "own_text_encoder",
]

EMBEDDING_FORMATS = ("a1111", "a1111-pt", "diffusers")


@dataclass
class TextualEmbedding:
    """``vectors`` [n, d] bound to ``token``; installed as tokens ``token, token_1, …``."""

    token: str
    vectors: Tensor
    source: str = ""
    stored_token: str | None = None  # the trigger word recorded inside the file, if any

    def __post_init__(self):
        v = torch.as_tensor(self.vectors).detach()
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[0] < 1 or not v.is_floating_point():
            raise ValueError(f"embedding vectors must be a float tensor [n, d], got shape {tuple(v.shape)}")
        if not torch.isfinite(v).all():
            raise ValueError(f"embedding {self.token!r} holds NaN/inf values")
        if not self.token or any(c.isspace() for c in self.token):
            raise ValueError(f"embedding token {self.token!r} must be a non-empty word without spaces")
        self.vectors = v.float().cpu()

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def tokens(self) -> list[str]:
        """The tokens the n vectors are installed as: ``tok``, ``tok_1``, …, ``tok_{n-1}``."""
        return [self.token] + [f"{self.token}_{i}" for i in range(1, self.num_vectors)]


# ---------------------------------------------------------------------------------- text side
def text_transformer(text_encoder: Any) -> nn.Module:
    """The ``transformers`` model inside a text encoder (the module with ``get_input_embeddings``)."""
    from transformers import PreTrainedModel

    if isinstance(text_encoder, PreTrainedModel):
        return text_encoder
    if isinstance(text_encoder, nn.Module):
        for module in text_encoder.modules():
            if isinstance(module, PreTrainedModel):
                return module
    raise ValueError(
        f"cannot find a transformers model inside the text encoder {type(text_encoder).__name__}; "
        "it must be (or contain) a PreTrainedModel such as CLIPTextModel or BertModel"
    )


def text_tokenizer(text_encoder: Any):
    tok = getattr(text_encoder, "tokenizer", None)
    if tok is None:
        raise ValueError(f"the text encoder {type(text_encoder).__name__} has no .tokenizer; cannot add tokens")
    return tok


def token_embedding(text_encoder: Any) -> nn.Embedding:
    """The token-embedding table (rows = vocabulary ids) of a text encoder."""
    emb = text_transformer(text_encoder).get_input_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise ValueError(f"the text encoder's input embeddings are a {type(emb).__name__}, not nn.Embedding")
    return emb


_PRIVATE = "_condiff_private_copy"


def own_text_encoder(model: Any) -> Any:
    """Give ``model`` a private copy of its text encoder before changing it (done once).

    Text encoders may be shared between models (the registry caches the built-in MiniLM); adding
    tokens, training embedding rows or attaching text LoRAs must not leak into the other models.
    """
    te = model.text_encoder
    if getattr(te, _PRIVATE, False):
        return te
    te = copy.deepcopy(te)
    setattr(te, _PRIVATE, True)
    model.text_encoder = te
    return te


# ---------------------------------------------------------------------------------- prompts
def expand_prompt(prompt: str, expansions: Mapping[str, int]) -> str:
    """Replace each whole-word multi-vector token ``tok`` by ``tok tok_1 … tok_{n-1}``; a token already
    written out (``tok tok_1 …``, as the training prompts do) is left as it is."""
    for token, n in expansions.items():
        if n <= 1:
            continue
        seq = " ".join([token] + [f"{token}_{i}" for i in range(1, n)])
        t = re.escape(token)
        prompt = re.sub(rf"(?<![\w]){t}(?![\w])(?!\s+{t}_1(?![\w]))", lambda _m: seq, prompt)
    return prompt


class PromptExpandingTokenizer:
    """Wraps a tokenizer so that prompts have multi-vector tokens expanded before tokenizing.

    Every other attribute is the wrapped tokenizer's, so the text encoder keeps working unchanged.
    """

    def __init__(self, tokenizer: Any):
        if isinstance(tokenizer, PromptExpandingTokenizer):
            raise ValueError("the tokenizer is already wrapped")
        self.tokenizer = tokenizer
        self.expansions: dict[str, int] = {}

    def expand(self, text: Any) -> Any:
        if isinstance(text, str):
            return expand_prompt(text, self.expansions)
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            return [expand_prompt(t, self.expansions) for t in text]
        return text

    def __call__(self, text: Any = None, *args, **kwargs):
        if "text" in kwargs:
            kwargs["text"] = self.expand(kwargs["text"])
            return self.tokenizer(*args, **kwargs)
        return self.tokenizer(self.expand(text), *args, **kwargs)

    def encode(self, text: Any, *args, **kwargs):
        return self.tokenizer.encode(self.expand(text), *args, **kwargs)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __getattr__(self, name: str):
        if name == "tokenizer":  # not yet set (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


def _expanding_tokenizer(text_encoder: Any) -> PromptExpandingTokenizer:
    tok = text_tokenizer(text_encoder)
    if not isinstance(tok, PromptExpandingTokenizer):
        tok = PromptExpandingTokenizer(tok)
        text_encoder.tokenizer = tok
    return tok


# ---------------------------------------------------------------------------------- installing
def _grow_embedding(text_encoder: Any, needed_rows: int) -> nn.Embedding:
    model = text_transformer(text_encoder)
    emb = token_embedding(text_encoder)
    if needed_rows > emb.num_embeddings:
        try:
            model.resize_token_embeddings(needed_rows, mean_resizing=False)
        except TypeError:  # older transformers without mean_resizing
            model.resize_token_embeddings(needed_rows)
        emb = token_embedding(text_encoder)
    return emb


def _add_token_rows(text_encoder: Any, tokens: Sequence[str], vectors: Tensor, replace: bool) -> list[int]:
    tok = _expanding_tokenizer(text_encoder)
    emb = token_embedding(text_encoder)
    if vectors.shape[1] != emb.embedding_dim:
        raise ValueError(
            f"the embedding has {vectors.shape[1]}-d vectors but this text encoder's token embeddings are "
            f"{emb.embedding_dim}-d: the file was trained for another model family (e.g. SD 1.x = 768, "
            "SD 2.x = 1024, condiff built-in = 384)"
        )
    vocab = tok.get_vocab()
    present = [t for t in tokens if t in vocab]
    if present and not replace:
        raise ValueError(
            f"tokens {present} are already in the tokenizer's vocabulary; choose another token name "
            "(or pass replace=True to overwrite a previously added embedding)"
        )
    if present and replace:
        added = set(getattr(tok, "get_added_vocab", lambda: {})())
        base = [t for t in present if t not in added]
        if base:
            raise ValueError(f"tokens {base} are ordinary vocabulary words; refusing to overwrite their embeddings")
    missing = [t for t in tokens if t not in vocab]
    if missing:
        tok.add_tokens(missing)
    ids = [int(i) for i in tok.convert_tokens_to_ids(list(tokens))]
    for t, i in zip(tokens, ids):
        check = tok.tokenizer(t, add_special_tokens=False)["input_ids"]
        if list(check) != [i]:
            raise ValueError(f"token {t!r} does not tokenize to a single id after adding it (got {check})")
    emb = _grow_embedding(text_encoder, max(ids) + 1)
    with torch.no_grad():
        emb.weight[ids] = vectors.to(emb.weight)
    allow = getattr(text_encoder, "allow_token_ids", None)  # a compact MiniLM: these rows are real now
    if callable(allow):
        allow(ids)
    if len(tokens) > 1:
        tok.expansions[tokens[0]] = len(tokens)
    return ids


def add_embedding(text_encoder: Any, embedding: TextualEmbedding, *, replace: bool = False) -> list[int]:
    """Install ``embedding`` as tokens ``tok, tok_1, …``; returns their ids.

    Raises ValueError if the vector width does not match the text encoder or a token is taken.
    """
    return _add_token_rows(text_encoder, embedding.tokens, embedding.vectors, replace)


def initializer_vector(text_encoder: Any, initializer: str | None) -> Tensor:
    """Mean token embedding of ``initializer``'s word pieces (or of the whole table if None)."""
    emb = token_embedding(text_encoder).weight.detach()
    if not initializer:
        if getattr(text_encoder, "is_compact", False):  # most rows of a compact MiniLM are zeros
            raise ValueError("a compact MiniLM copy has no full embedding table to average; give an initializer word")
        return emb.mean(0).float().cpu()
    ids = text_tokenizer(text_encoder)(initializer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the initializer word {initializer!r} has no tokens")
    check = getattr(text_encoder, "check_token_ids", None)  # a compact MiniLM: the rows must be real
    if callable(check):
        check(ids)
    return emb[list(ids)].float().mean(0).cpu()


def initializer_vectors(text_encoder: Any, initializer: str | None, num_vectors: int) -> Tensor:
    """Starting rows [num_vectors, D]: one per word piece when ``initializer`` has exactly ``num_vectors``
    pieces (so "horse face" with 2 vectors starts as that phrase), else its mean piece repeated."""
    if initializer and num_vectors > 1:
        ids = text_tokenizer(text_encoder)(initializer, add_special_tokens=False)["input_ids"]
        if len(ids) == num_vectors:
            check = getattr(text_encoder, "check_token_ids", None)
            if callable(check):
                check(ids)
            return token_embedding(text_encoder).weight.detach()[list(ids)].float().cpu()
    return initializer_vector(text_encoder, initializer)[None].repeat(num_vectors, 1)


def add_placeholder_tokens(text_encoder: Any, token: str, num_vectors: int = 1,
                           initializer: str | None = None) -> list[int]:
    """New tokens ``token, token_1, …`` whose rows start at the initializer's embedding (eq. 3.18; see
    :func:`initializer_vectors`)."""
    if num_vectors < 1:
        raise ValueError(f"num_vectors must be ≥ 1, got {num_vectors}")
    emb = TextualEmbedding(token, initializer_vectors(text_encoder, initializer, num_vectors))
    return add_embedding(text_encoder, emb)


# ---------------------------------------------------------------------------------- files
def _pick_vectors(name: str, candidates: dict[str, Tensor], dim: int | None) -> Tensor:
    if dim is not None:
        fitting = {k: v for k, v in candidates.items() if v.shape[-1] == dim}
        if len(fitting) == 1:
            return next(iter(fitting.values()))
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    raise ValueError(
        f"{name} holds several embeddings {sorted(candidates)} with widths "
        f"{[v.shape[-1] for v in candidates.values()]}; pass dim= to choose the one for your text encoder"
    )


def _from_state(state: Mapping[str, Any], stem: str, token: str | None, dim: int | None, name: str,
                stored: str | None = None) -> TextualEmbedding:
    """The embedding of a loaded file, bound to ``token``, else the A1111 file name or the diffusers key."""
    if "string_to_param" in state:  # A1111 .pt
        params = state["string_to_param"]
        if not isinstance(params, Mapping) or not params:
            raise ValueError(f"{name}: 'string_to_param' is empty or not a dict")
        vec = _pick_vectors(name, {str(k): torch.as_tensor(v) for k, v in params.items()}, dim)
        recorded = state.get("name") if isinstance(state.get("name"), str) else None
        return TextualEmbedding(token or stem, vec, "a1111-pt", recorded or stored)
    if "emb_params" in state:  # A1111 safetensors
        return TextualEmbedding(token or stem, torch.as_tensor(state["emb_params"]), "a1111", stored)
    if {"clip_l", "clip_g"} & set(state):  # SDXL-style A1111 file
        cands = {k: torch.as_tensor(state[k]) for k in ("clip_l", "clip_g") if k in state}
        return TextualEmbedding(token or stem, _pick_vectors(name, cands, dim), "a1111", stored)
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if len(tensors) == 1:  # diffusers learned_embeds: {token: vector(s)}
        key, vec = next(iter(tensors.items()))
        return TextualEmbedding(token or key, vec, "diffusers", key)
    raise ValueError(
        f"{name} is not a textual-inversion embedding: expected A1111 ('string_to_param' or 'emb_params') "
        f"or diffusers ({{token: tensor}}) keys, found {sorted(map(str, state))[:10]}"
    )


def parse_embedding_spec(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE:TOKEN`` -> (path, token or None).

    A spec naming an existing file is that file, even if its name holds a colon; otherwise the part
    after the last colon is the token (one word: no spaces, slashes or colons).
    """
    text = str(spec)
    if Path(text).is_file() or ":" not in text:
        return Path(text), None
    file, _, token = text.rpartition(":")
    if not file or not token or any(c.isspace() or c in "/\\" for c in token):
        raise ValueError(f"--embedding {text!r}: expected FILE or FILE:TOKEN with TOKEN one word (e.g. emb.safetensors:zq)")
    return Path(file), token


def _binding_note(emb: TextualEmbedding, path: Path) -> str | None:
    """A one-line note when the token the prompt must use is not the word stored in the file."""
    if emb.stored_token is None or emb.stored_token == emb.token:
        return None
    return (f"embedding {path.name} binds to the token {emb.token!r} (its file name, the A1111 rule), not to the word "
            f"{emb.stored_token!r} stored in it; write {path.name}:{emb.stored_token} to use {emb.stored_token!r}")


def load_embedding(path: str | os.PathLike, token: str | None = None, *, dim: int | None = None) -> TextualEmbedding:
    """Read an A1111 (``.pt``/``.safetensors``) or diffusers embedding file.

    ``token``: the trigger word (default: the file name for A1111 files, the stored key for
    diffusers files). ``dim``: the text encoder width, to pick the right half of an SDXL file.
    When the default token differs from the word stored in the file (condiff's ``condiff.token``
    metadata, an A1111 ``.pt`` file's ``name``), a UserWarning names both and how to choose.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {path} does not exist")
    stem, stored = path.stem, None
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        state: Mapping[str, Any] = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            stored = (f.metadata() or {}).get("condiff.token")
    elif path.suffix in (".pt", ".bin", ".ckpt", ".pth"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types
            raise ValueError(
                f"{path} could not be read with torch.load(weights_only=True) ({err}); condiff never "
                "unpickles arbitrary objects — convert the file to safetensors"
            ) from None
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a dict of embedding tensors")
    else:
        raise ValueError(f"unknown embedding file type {path.suffix!r}; use .safetensors, .pt or .bin")
    emb = _from_state(state, stem, token, dim, str(path), stored)
    note = None if token else _binding_note(emb, path)
    if note:
        warnings.warn(note, stacklevel=2)
    return emb


def save_embedding(embedding: TextualEmbedding, path: str | os.PathLike, format: str = "a1111", *,
                   step: int | None = None, overwrite: bool = False) -> Path:
    """Write ``embedding`` as ``a1111`` (safetensors ``emb_params``), ``a1111-pt`` or ``diffusers``.

    A1111 uses the file name as the trigger word, so the name is checked against the token.
    """
    if format not in EMBEDDING_FORMATS:
        raise ValueError(f"unknown embedding format {format!r}; choose one of {EMBEDDING_FORMATS}")
    path = check_writable(path, overwrite)
    vec = embedding.vectors.detach().float().cpu().contiguous()
    if format == "a1111-pt":
        if path.suffix != ".pt":
            raise ValueError(f"the A1111 .pt format needs a .pt file name, got {path.name}")
        state = {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vec},
            "name": embedding.token,
            "step": int(step or 0),
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path
    if path.suffix != ".safetensors":
        raise ValueError(f"the {format} format is written as .safetensors, got {path.name}")
    from safetensors.torch import save_file

    meta = {"format": "pt", "condiff.token": embedding.token, "condiff.vectors": str(embedding.num_vectors)}
    if step is not None:
        meta["condiff.step"] = str(int(step))
    state = {"emb_params": vec} if format == "a1111" else {embedding.token: vec}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_embedding_into_model(model: Any, path: str | os.PathLike, token: str | None = None, *,
                              replace: bool = False) -> TextualEmbedding:
    """Read an embedding file and install it into a LatentDiffusion's (or a text encoder's) tokenizer.

    A LatentDiffusion first gets its own copy of the text encoder (:func:`own_text_encoder`).
    """
    text_encoder = own_text_encoder(model) if hasattr(model, "text_encoder") else model
    emb = load_embedding(path, token, dim=token_embedding(text_encoder).embedding_dim)
    add_embedding(text_encoder, emb, replace=replace)
    return emb
