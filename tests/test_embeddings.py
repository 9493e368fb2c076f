"""Textual-inversion embedding files (A1111 .pt/.safetensors, diffusers) and installing them."""

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from condiff.nn.text_encoder import minilm_model_dir
from condiff.personalize.embeddings import (
    TextualEmbedding,
    add_embedding,
    expand_prompt,
    load_embedding,
    load_embedding_into_model,
    save_embedding,
    token_embedding,
)

DIM = 32


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: see conftest.single_thread


class TinyText(nn.Module):
    """A 1-layer, 32-d BERT with the real MiniLM WordPiece tokenizer: prompts -> (context, mask)."""

    def __init__(self, dim: int = DIM, max_length: int = 12, seed: int = 0):
        super().__init__()
        from transformers import BertConfig, BertModel, BertTokenizerFast

        self.tokenizer = BertTokenizerFast(vocab_file=str(minilm_model_dir() / "vocab.txt"), do_lower_case=True)
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=len(self.tokenizer), hidden_size=dim, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=2 * dim, max_position_embeddings=32)
        self.bert = BertModel(config, add_pooling_layer=False).eval().requires_grad_(False)
        self.max_length = max_length

    def tokenize(self, prompts):
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    def forward(self, prompts):
        ids, mask = self.tokenize(prompts)
        return self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state, mask


@pytest.fixture
def text():
    return TinyText()


def _vectors(n, dim=DIM, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_a1111_pt_single_vector_round_trip(tmp_path):
    emb = TextualEmbedding("mytok", _vectors(1))
    path = save_embedding(emb, tmp_path / "mytok.pt", "a1111-pt", step=400)
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"string_to_token", "string_to_param", "name", "step"} and raw["step"] == 400
    back = load_embedding(path)
    assert back.token == "mytok" and back.source == "a1111-pt"  # A1111: the trigger is the file name
    assert torch.equal(back.vectors, emb.vectors)


def test_a1111_safetensors_multi_vector_install_and_expand(tmp_path, text):
    vec = _vectors(3)
    path = save_embedding(TextualEmbedding("zqstyle", vec), tmp_path / "zqstyle.safetensors", "a1111")
    assert set(load_file(str(path))) == {"emb_params"}
    emb = load_embedding(path)
    assert emb.num_vectors == 3 and emb.tokens == ["zqstyle", "zqstyle_1", "zqstyle_2"]
    ids = add_embedding(text, emb)
    table = token_embedding(text).weight
    assert torch.equal(table[ids], vec)
    # the single word "zqstyle" in a prompt becomes the three tokens, in order
    tok_ids, _ = text.tokenize(["a photo of zqstyle, painted"])
    row = tok_ids[0].tolist()
    start = row.index(ids[0])
    assert row[start:start + 3] == ids
    assert expand_prompt("zqstyle and zqstyle_1x", {"zqstyle": 2}) == "zqstyle zqstyle_1 and zqstyle_1x"


def test_diffusers_learned_embeds_round_trip(tmp_path):
    vec = _vectors(2)
    path = save_embedding(TextualEmbedding("<cat-toy>", vec), tmp_path / "learned_embeds.safetensors", "diffusers")
    assert set(load_file(str(path))) == {"<cat-toy>"}
    back = load_embedding(path)
    assert back.token == "<cat-toy>" and back.source == "diffusers" and torch.equal(back.vectors, vec)
    # a 1-D vector (the older diffusers files) is one vector
    save_file({"<dog>": vec[0].contiguous()}, str(tmp_path / "old.safetensors"))
    assert load_embedding(tmp_path / "old.safetensors").vectors.shape == (1, DIM)
    # legacy .bin through weights_only loading
    torch.save({"<bin>": vec}, tmp_path / "learned_embeds.bin")
    assert torch.equal(load_embedding(tmp_path / "learned_embeds.bin").vectors, vec)


def test_installed_embedding_acts_like_the_word_it_copies(text):
    """An embedding equal to the row of "dog" makes "a photo of <t>" encode exactly like "a photo of dog"."""
    dog_id = text.tokenizer("dog", add_special_tokens=False)["input_ids"][0]
    row = token_embedding(text).weight[dog_id].clone()
    add_embedding(text, TextualEmbedding("<t>", row))
    a, _ = text(["a photo of <t>"])
    b, _ = text(["a photo of dog"])
    assert torch.allclose(a, b, atol=1e-6)


def test_dimension_mismatch_and_token_clash_are_clear_errors(tmp_path, text):
    with pytest.raises(ValueError, match=r"768-d vectors .* 32-d"):
        add_embedding(text, TextualEmbedding("<big>", torch.zeros(1, 768)))
    with pytest.raises(ValueError, match="already in the tokenizer's vocabulary"):
        add_embedding(text, TextualEmbedding("dog", _vectors(1)))
    add_embedding(text, TextualEmbedding("<once>", _vectors(1)))
    with pytest.raises(ValueError, match="already"):
        add_embedding(text, TextualEmbedding("<once>", _vectors(1)))
    add_embedding(text, TextualEmbedding("<once>", _vectors(1, seed=3)), replace=True)  # explicit overwrite
    assert torch.equal(token_embedding(text).weight[-1], _vectors(1, seed=3)[0])


def test_sdxl_style_file_picks_the_fitting_width(tmp_path, text):
    save_file({"clip_l": _vectors(2), "clip_g": torch.zeros(2, 1280)}, str(tmp_path / "zqxl.safetensors"))
    with pytest.raises(ValueError, match="several embeddings"):
        load_embedding(tmp_path / "zqxl.safetensors")
    emb = load_embedding_into_model(text, tmp_path / "zqxl.safetensors")
    assert emb.token == "zqxl" and emb.dim == DIM and torch.equal(emb.vectors, _vectors(2))


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_unsafe_or_foreign_files_are_refused(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"string_to_param": {"*": _Evil()}}, f, protocol=2)
    with pytest.raises(ValueError, match="weights_only"):
        load_embedding(tmp_path / "evil.pt")
    save_file({"a": torch.zeros(2), "b": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="not a textual-inversion embedding"):
        load_embedding(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="NaN"):
        TextualEmbedding("<nan>", torch.full((1, 4), float("nan")))
    with pytest.raises(FileExistsError):
        save_embedding(TextualEmbedding("x", _vectors(1)), (tmp_path / "model.safetensors"), "a1111")


def test_parity_with_diffusers_textual_inversion_loading(tmp_path):
    """diffusers' own loader, given the same A1111 multi-vector file, yields the same ids and context."""
    from diffusers.loaders import TextualInversionLoaderMixin
    from transformers import CLIPTextConfig, CLIPTextModel

    from condiff.models.sd_text import SDTextEncoder

    def clip():
        torch.manual_seed(0)
        cfg = CLIPTextConfig(vocab_size=30522, hidden_size=DIM, intermediate_size=2 * DIM, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=16)
        return CLIPTextModel(cfg).eval()

    class Pipe(TextualInversionLoaderMixin):  # the two attributes diffusers' loader reads
        hf_device_map = None
        components: dict = {}

        def __init__(self, tokenizer, text_encoder):
            self.tokenizer, self.text_encoder = tokenizer, text_encoder

    path = save_embedding(TextualEmbedding("zqemb", _vectors(3)), tmp_path / "zqemb.safetensors", "a1111")
    ours = SDTextEncoder(clip(), TinyText().tokenizer)
    load_embedding_into_model(ours, path)
    pipe = Pipe(TinyText().tokenizer, clip())
    pipe.load_textual_inversion(str(path), token="zqemb")
    prompt = "a photo of zqemb in a garden"
    theirs_ids = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer), padding="max_length",
                                max_length=ours.max_length, truncation=True, return_tensors="pt")["input_ids"]
    our_ids, _ = ours.tokenize([prompt])
    assert torch.equal(our_ids, theirs_ids)
    with torch.no_grad():
        want = pipe.text_encoder(input_ids=theirs_ids).last_hidden_state
    got, _ = ours([prompt])
    assert (got - want).abs().max() < 1e-6


# ------------------------------------------------------------------------------ which token a file binds to
def test_a_file_whose_stored_token_differs_from_its_name_says_which_token_it_uses(tmp_path):
    path = save_embedding(TextualEmbedding("zq", _vectors(1)), tmp_path / "emb.safetensors", "a1111")
    with pytest.warns(UserWarning, match=r"binds to the token 'emb'.*'zq' stored in it; write emb.safetensors:zq"):
        assert load_embedding(path).token == "emb"  # A1111's rule: the file name
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit token, or a name that matches, is silent
        assert load_embedding(path, token="zq").token == "zq"
        same = save_embedding(TextualEmbedding("zq", _vectors(1)), tmp_path / "zq.safetensors", "a1111")
        assert load_embedding(same).token == "zq"
    pt = save_embedding(TextualEmbedding("mytok", _vectors(1)), tmp_path / "other.pt", "a1111-pt")
    with pytest.warns(UserWarning, match="'mytok' stored in it"):  # A1111 .pt files record their name
        assert load_embedding(pt).token == "other"


def test_embedding_spec_file_colon_token(tmp_path):
    from condiff.personalize.embeddings import parse_embedding_spec

    assert parse_embedding_spec("emb.safetensors") == (Path("emb.safetensors"), None)
    assert parse_embedding_spec("dir/emb.safetensors:zq") == (Path("dir/emb.safetensors"), "zq")
    assert parse_embedding_spec("emb.pt:<sks>") == (Path("emb.pt"), "<sks>")
    odd = tmp_path / "a:b.pt"  # an existing file whose name holds a colon is that file
    odd.write_bytes(b"x")
    assert parse_embedding_spec(str(odd)) == (odd, None)
    for bad in ("emb.pt:", "emb.pt:two words", ":zq", "emb.pt:a/b"):
        with pytest.raises(ValueError, match="FILE:TOKEN"):
            parse_embedding_spec(bad)


def test_cli_embedding_option_binds_the_token_after_the_colon(tmp_path, capsys):
    from condiff.commands._common import personalize
    from test_personalize import tiny_ldm

    path = save_embedding(TextualEmbedding("zq", _vectors(1)), tmp_path / "emb.safetensors", "a1111")
    model = tiny_ldm()
    applied = personalize(model, [], [f"{path}:zq"])
    assert applied["embeddings"] == [{"file": str(path), "token": "zq"}]
    assert "the prompt token is 'zq'" in capsys.readouterr().err
    ids = model.text_encoder.tokenizer("zq", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 and torch.equal(token_embedding(model.text_encoder).weight[ids[0]], _vectors(1)[0])


def test_placeholder_vectors_start_at_each_initializer_piece(text):
    """An initializer with as many word pieces as vectors starts as that phrase (the prompt with the placeholder
    encodes exactly like the phrase); otherwise every vector starts at the mean piece."""
    from condiff.personalize.embeddings import add_placeholder_tokens

    phrase_ctx, _ = text(["a horse face, glossy style"])
    ids = add_placeholder_tokens(text, "<hf>", 2, "horse face")
    table = text.bert.embeddings.word_embeddings.weight
    pieces = text.tokenizer("horse face", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(table[ids], table[pieces])
    placeholder_ctx, _ = text(["a <hf> <hf>_1, glossy style"])
    torch.testing.assert_close(placeholder_ctx, phrase_ctx)
    ids3 = add_placeholder_tokens(text, "<hm>", 3, "horse face")
    torch.testing.assert_close(table[ids3], table[pieces].mean(0, keepdim=True).expand(3, -1))


def test_written_out_multi_vector_token_is_not_expanded_twice():
    from condiff.personalize.embeddings import expand_prompt

    ex = {"<s>": 3}
    assert expand_prompt("a <s>, glossy", ex) == "a <s> <s>_1 <s>_2, glossy"
    assert expand_prompt("a <s> <s>_1 <s>_2, glossy", ex) == "a <s> <s>_1 <s>_2, glossy"
    assert expand_prompt(expand_prompt("<s> and <s>", ex), ex) == "<s> <s>_1 <s>_2 and <s> <s>_1 <s>_2"
