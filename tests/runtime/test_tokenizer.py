"""Tokenizer: the self-built harmony tokenizer, files, incremental decoding of multi-byte characters."""

import pytest

from mxport.errors import MxportError
from mxport.runtime.generation.tokenizer import HARMONY_SPECIAL_TOKENS, Tokenizer, build_harmony_tokenizer

TEXTS = ["Hello, world!", "héllo wörld", "日本語のテキスト", "emoji 🙂🚀 mixed ±×÷ text", "a", "  spaces  ", ""]


@pytest.fixture(scope="module")
def tok():
    return build_harmony_tokenizer(320)


def test_small_vocab_puts_specials_at_the_top_ids(tok):
    assert tok.vocab_size == 320
    ids = {name: tok.require(name) for name in HARMONY_SPECIAL_TOKENS}
    assert sorted(ids.values()) == list(range(320 - len(ids), 320))
    assert set(ids.values()) <= tok.special_ids()


def test_o200k_sized_vocab_uses_the_o200k_ids():
    big = build_harmony_tokenizer(201088)
    for name, tid in HARMONY_SPECIAL_TOKENS.items():
        assert big.token_to_id(name) == tid


def test_build_is_deterministic(tok):
    again = build_harmony_tokenizer(320)
    assert again._tok.to_str() == tok._tok.to_str()


def test_too_small_vocab_is_an_error():
    with pytest.raises(MxportError, match="vocab_size=100 is too small"):
        build_harmony_tokenizer(100)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_special_tokens_in_text(tok, text):
    s = f"<|start|>user<|message|>{text}<|end|>"
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert ids[0] == tok.token_to_id("<|start|>") and ids[-1] == tok.token_to_id("<|end|>")
    assert tok.decode(ids, skip_special_tokens=True) == f"user{text}"


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_deltas_concatenate_to_the_full_decode(tok, text):
    ids = tok.encode(text)
    dec = tok.incremental()
    deltas = [dec.add(i) for i in ids]
    deltas.append(dec.flush())
    assert "".join(deltas) == tok.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)


def test_multibyte_character_is_held_back_until_complete(tok):
    # '🙂' is 4 UTF-8 bytes; the tiny BPE has no merge for them, so they arrive as several byte tokens
    ids = tok.encode("🙂")
    assert len(ids) > 1
    dec = tok.incremental()
    assert [dec.add(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert dec.add(ids[-1]) == "🙂"


def test_broken_bytes_show_up_on_flush_only(tok):
    ids = tok.encode("ü")[:1]  # the first byte of a 2-byte character, alone
    dec = tok.incremental()
    assert dec.add(ids[0]) == ""
    assert dec.flush() == "\ufffd"


def test_file_round_trip_and_missing_file(tmp_path, tok):
    tok.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.from_file(tmp_path)
    assert loaded.encode("héllo <|call|>") == tok.encode("héllo <|call|>")
    with pytest.raises(MxportError, match="tokenizer file not found"):
        Tokenizer.from_file(tmp_path / "nope")
    (tmp_path / "bad" ).mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(MxportError, match="cannot load tokenizer"):
        Tokenizer.from_file(tmp_path / "bad")


def test_require_names_the_missing_token(tok):
    with pytest.raises(MxportError, match=r"no token '<\|nope\|>'"):
        tok.require("<|nope|>")
