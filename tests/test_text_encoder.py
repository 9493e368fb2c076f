import os

import pytest
import torch

from condiff.nn.text_encoder import COMPACT_ENV, MiniLMTextEncoder, export_compact


@pytest.fixture(scope="module")
def encoder():
    return MiniLMTextEncoder(max_length=16)


def test_shapes_mask_and_empty_prompt(encoder):
    ctx, mask = encoder(["a cat face, flat style", ""])
    assert ctx.shape == (2, 16, 384)
    assert mask[1].sum() == 2  # [CLS] [SEP] only: the unconditional embedding
    assert mask[0].sum() > mask[1].sum()
    assert not ctx.requires_grad


def test_semantics_pooled(encoder):
    p = encoder.pooled(["a cat face", "a kitten face", "a red sports car"])
    sim = p @ p.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_add_tokens_initialised_from_word(encoder):
    enc = MiniLMTextEncoder(max_length=16)
    (new_id,) = enc.add_tokens(["<zq-sks>"], initializer="dog")
    ids, _ = enc.tokenize(["a <zq-sks> face"])
    assert new_id in ids[0].tolist()
    emb = enc.bert.embeddings.word_embeddings.weight
    dog = enc.tokenizer("dog", add_special_tokens=False)["input_ids"]
    assert torch.allclose(emb[new_id], emb[dog].mean(0))
    with pytest.raises(ValueError, match="already in the vocabulary"):
        enc.add_tokens(["dog"])


def test_compact_export_matches_full(tmp_path, encoder, monkeypatch):
    caps = ["a cat face, flat style", "a dog"]
    out = export_compact(tmp_path, caps, max_length=16)
    monkeypatch.setenv(COMPACT_ENV, str(out))
    small = MiniLMTextEncoder(max_length=16)
    a, _ = encoder(caps)
    b, _ = small(caps)
    assert (a - b).abs().max() < 0.1  # fp16 weights
    assert torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min() > 0.999
    assert (out / "minilm_compact.safetensors").stat().st_size < 30e6


def test_compact_copy_refuses_unknown_tokens(tmp_path, monkeypatch):
    out = export_compact(tmp_path, ["a cat face"], max_length=16)
    monkeypatch.setenv(COMPACT_ENV, str(out))
    small = MiniLMTextEncoder(max_length=16)
    small(["a cat"])  # every token known
    with pytest.raises(ValueError, match="no embedding for tokens"):
        small(["a zebra"])


def test_bundle_keeps_every_text_of_the_experiments_and_textual_inversion_works(tmp_path, monkeypatch):
    """The GPU machine's compact MiniLM (training.bundle without a pack): every text that
    experiment 3 encodes is known, a textual-inversion token added later is usable, and the 10k
    frequent word pieces stay out unless asked for."""
    from condiff.experiments.config import load_config
    from condiff.experiments.personalization import personalization_texts
    from condiff.personalize.embeddings import add_placeholder_tokens
    from training.bundle import experiment_texts, export_minilm

    texts = experiment_texts()
    for t in ("a nrhp horse on a carousel", "a horse", "a nrhp horse, glossy style", "a photo of a <sks>",
              "a <sks> wearing a crown", "a horse wearing a crown", "horse", "a woman wearing a scarf",
              "a woman, glossy shaded style", ""):
        assert t in texts
    out = export_minilm(tmp_path / "minilm")
    assert (out / "minilm_compact.safetensors").stat().st_size < 24e6  # no frequent word pieces
    monkeypatch.setenv(COMPACT_ENV, str(out))
    small = MiniLMTextEncoder(max_length=24)
    for quick in (False, True):
        small([t for t in personalization_texts(load_config("personalization", quick=quick)) if "<sks>" not in t])
    with pytest.raises(ValueError, match="no embedding for tokens"):
        small(["a zebra"])
    with pytest.raises(ValueError, match="initializer"):
        add_placeholder_tokens(small, "<x>", 1, None)  # the table mean of a compact copy would be wrong
    with pytest.raises(ValueError, match="no embedding for tokens"):
        add_placeholder_tokens(small, "<y>", 1, "zebra")
    (new_id,) = add_placeholder_tokens(small, "<sks>", 1, "horse")
    ids, _ = small.tokenize(["a photo of a <sks>"])
    assert new_id in ids[0].tolist()
    emb = small.bert.embeddings.word_embeddings.weight
    assert emb[new_id].abs().sum() > 0
