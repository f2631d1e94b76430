"""Every reranker kind on tiny random-config models: shapes, order, empty input, batching
equality, save/load round trips, and each kind's own arithmetic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import InvalidRequest
from ranker.text import LoadOptions, TextReranker, load_reranker
from ranker.text.config import (
    ADAPTER_DIR,
    BACKBONE_DIR,
    CONFIG_FILE,
    DEFAULT_LLM_LIKELIHOOD_PROMPT,
    WEIGHTS_FILE,
)
from ranker.text.engine import ModelReranker
from ranker.text.loaders import serve
from ranker.text.model import RerankModel, create_model

QUERY = "lava from a volcano"
DOCS = [
    "Volcano\nlava flows from the crater of an active volcano",
    "how to bake bread",
    "",
    "the stock market crash, shares fell!",
    "ocean water and the coral reef " * 6,
    "lava",
]

KINDS: list[tuple[str, dict[str, Any]]] = [
    ("cross-encoder", {}),
    ("late-interaction", {"dim": 16, "query_length": 12}),
    ("knrm", {}),
    ("knrm", {"embeddings": "contextual", "activation": "tanh"}),
    ("llm", {"max_length": 96}),
    ("llm", {"max_length": 96, "scoring": "query-likelihood"}),
    ("dense", {"query_length": 12}),
]
IDS = [
    "cross-encoder",
    "late-interaction",
    "knrm-input",
    "knrm-contextual",
    "llm",
    "llm-likelihood",
    "dense",
]

CPU = LoadOptions(device="cpu")


def build(kind: str, options: dict[str, Any], bert: Path, llama: Path, seed: int = 0) -> Any:
    backbone = llama if kind == "llm" else bert
    return create_model(kind, str(backbone), options, seed=seed)


@pytest.fixture(params=KINDS, ids=IDS)
def model(request: pytest.FixtureRequest, tiny_bert: Path, tiny_llama: Path) -> RerankModel:
    kind, options = request.param
    return build(kind, options, tiny_bert, tiny_llama)  # type: ignore[no-any-return]


def test_scores_shape_order_and_empty(model: RerankModel) -> None:
    reranker = serve(model, "tiny", CPU)
    assert isinstance(reranker, TextReranker)
    assert reranker.kind == model.kind and reranker.name == "tiny"
    scores = reranker.score(QUERY, DOCS)
    assert scores.shape == (len(DOCS),) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert np.ptp(scores) > 0  # distinguishes documents
    np.testing.assert_allclose(reranker.score(QUERY, DOCS[::-1])[::-1], scores, atol=1e-5)
    empty = reranker.score(QUERY, [])
    assert empty.shape == (0,) and empty.dtype == np.float32
    with pytest.raises(InvalidRequest):
        reranker.score(QUERY, "a bare string")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        reranker.score(None, DOCS)  # type: ignore[arg-type]


def test_batched_equals_one_by_one(model: RerankModel) -> None:
    small = serve(model, "small", LoadOptions(device="cpu", batch_tokens=48, max_batch_size=2))
    big = serve(model, "big", LoadOptions(device="cpu", batch_tokens=1 << 20, max_batch_size=256))
    lengths = model.prepare(QUERY, DOCS).lengths
    assert len(small.plan(lengths)) > len(big.plan(lengths))
    batched = small.score(QUERY, DOCS)
    np.testing.assert_allclose(batched, big.score(QUERY, DOCS), atol=1e-5)
    one_by_one = np.array([big.score(QUERY, [d])[0] for d in DOCS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_score_many_equals_one_query_at_a_time(
    model: RerankModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several queries in shared batches (and tokenising chunks on a helper thread) give each
    query the scores a call of its own gives; empty groups stay empty."""
    import ranker.text.engine as engine

    monkeypatch.setattr(engine, "PAIRS_PER_CHUNK", 3)  # several pipelined chunks
    reranker = serve(model, "many", LoadOptions(device="cpu", batch_tokens=96, max_batch_size=4))
    assert isinstance(reranker, ModelReranker)
    queries = [QUERY, "stars at night", QUERY, "empty"]
    groups = [DOCS, DOCS[::-1], DOCS[:2], []]
    many = reranker.score_many(queries, groups)
    assert [m.shape for m in many] == [(len(g),) for g in groups]
    for q, g, got in zip(queries, groups, many, strict=True):
        np.testing.assert_allclose(got, reranker.score(q, g), atol=1e-5)
    with pytest.raises(ValueError):
        reranker.score_many([QUERY], [])


def test_save_load_round_trip_references_the_backbone(model: RerankModel, tmp_path: Path) -> None:
    with torch.no_grad():  # a head that is not its initial value
        for p in model.head_parameters():
            p.add_(0.05 * torch.randn_like(p))
    expected = serve(model, "a", CPU).score(QUERY, DOCS)
    out = model.save(tmp_path / "model")
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["kind"] == model.kind and config["version"] == 1
    assert Path(config["backbone"]).is_absolute() and not (out / BACKBONE_DIR).exists()
    assert (out / WEIGHTS_FILE).is_file()
    loaded = load_reranker(str(out), CPU)
    assert loaded.kind == model.kind and loaded.name == str(out)
    np.testing.assert_allclose(loaded.score(QUERY, DOCS), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_trained_backbone_round_trip(
    mode: str, tiny_bert: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    kind = "llm" if mode == "lora" else "late-interaction"
    model = build(kind, {"dim": 8} if kind != "llm" else {}, tiny_bert, tiny_llama)
    model.set_backbone_training(mode, lora_r=4)
    with torch.no_grad():  # move the backbone (LoRA's B starts at zero: perturb it)
        for name, p in model.backbone_module().named_parameters():
            if p.requires_grad and ("lora_B" in name or mode == "full"):
                p.add_(0.02 * torch.randn_like(p))
    expected = ModelReranker(model, "m", CPU).score(QUERY, DOCS)
    out = model.save(tmp_path / mode)
    assert (out / BACKBONE_DIR).is_dir() == (mode == "full")
    assert (out / ADAPTER_DIR).is_dir() == (mode == "lora")
    loaded = load_reranker(str(out), CPU)
    np.testing.assert_allclose(loaded.score(QUERY, DOCS), expected, atol=1e-4)
    # A model loaded with a merged adapter has a changed backbone: saving it again writes it.
    resaved = loaded.model.save(tmp_path / "again")  # type: ignore[attr-defined]
    assert (resaved / BACKBONE_DIR).is_dir() and not (resaved / ADAPTER_DIR).exists()
    again = load_reranker(str(resaved), CPU)
    np.testing.assert_allclose(again.score(QUERY, DOCS), expected, atol=1e-4)


# --- cross-encoder ---------------------------------------------------------------------------


def test_hugging_face_two_label_classifier_scores_logit_difference(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.ranker.text.conftest import make_tiny_bert

    path = make_tiny_bert(tmp_path / "hf-ce", seed=3, num_labels=2)
    reranker = load_reranker(str(path), CPU)  # no quarry_reranker.json: detected by its config
    assert reranker.kind == "cross-encoder"
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        enc = tok([QUERY] * 2, DOCS[:2], padding=True, return_tensors="pt")
        logits = hf(**enc).logits
    np.testing.assert_allclose(
        reranker.score(QUERY, DOCS[:2]), (logits[:, 1] - logits[:, 0]).numpy(), atol=1e-5
    )


def test_cross_encoder_truncates_pairs_to_max_length(tiny_bert: Path) -> None:
    model = build("cross-encoder", {"max_length": 16}, tiny_bert, tiny_bert)
    pairs = model.prepare(QUERY, [DOCS[4], DOCS[1]])
    assert pairs.lengths.max() == 16
    assert serve(model, "ce", CPU).score(QUERY, [DOCS[4]]).shape == (1,)


def test_pair_matrices_equal_padding_the_rows_in_any_order() -> None:
    """Rows kept as runs of one token pool lay out exactly as padding the rows one by one,
    for any subset of rows in any order (as the batch planner picks them)."""
    from ranker.text.cross_encoder import _Pairs
    from ranker.text.model import pad_sequences

    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 50, size=n).tolist() for n in [5, 0, 12, 1, 7, 30, 3]]
    types = [rng.integers(0, 2, size=len(r)).tolist() for r in rows]
    pairs = _Pairs.from_rows(rows, types)
    assert pairs.input_ids == rows and pairs.token_type_ids == types
    for pick in ([2, 0, 5], [1], [6, 5, 4, 3, 2, 1, 0], [1, 3]):
        ids, mask, got_types = pairs.matrices(np.array(pick), pad_id=99)
        want_ids, want_mask = pad_sequences([rows[i] for i in pick], 99)
        want_types, _ = pad_sequences([types[i] for i in pick], 0)
        np.testing.assert_array_equal(ids, want_ids.numpy())
        np.testing.assert_array_equal(mask, want_mask.numpy())
        assert got_types is not None
        np.testing.assert_array_equal(got_types, want_types.numpy())
    assert _Pairs.from_rows([[], []], None).matrices(np.array([0, 1]), 7)[0].tolist() == [[7], [7]]


# --- late interaction ------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [8, 16, 64])
def test_cross_encoder_pairs_equal_the_tokenizers_own_pair_encoding(
    tiny_bert: Path, max_length: int
) -> None:
    """Queries are tokenised once per call; the rows must be exactly what the tokenizer's pair
    encoding with longest-first truncation gives, long queries included."""
    model = build("cross-encoder", {"max_length": max_length}, tiny_bert, tiny_bert)
    assert model.template is not None
    long_query = " ".join(DOCS)
    longer = long_query + " " + long_query
    queries = [QUERY] * 3 + [long_query] * 2 + ["x", longer, long_query]
    docs = [*DOCS[:3], DOCS[0], "short", long_query, long_query, longer]
    pairs = model.encode_pairs(queries, docs)
    ref = model.tokenizer(queries, docs, truncation=True, max_length=model.max_length)
    assert pairs.input_ids == ref["input_ids"]
    assert pairs.token_type_ids == ref["token_type_ids"]
    assert pairs.lengths.tolist() == [len(r) for r in ref["input_ids"]]


def test_late_interaction_tokens_markers_and_stored_vectors(tiny_bert: Path) -> None:
    model = build("late-interaction", {"dim": 16, "query_length": 12}, tiny_bert, tiny_bert)
    tok = model.tokenizer
    q = model.encode_texts([QUERY], "query")
    assert len(q.ids[0]) == 12  # padded with [MASK] (query augmentation)
    assert q.ids[0][:2] == [tok.cls_token_id, tok.convert_tokens_to_ids("[unused0]")]
    assert q.attended[0] == len(tok(QUERY)["input_ids"]) + 1  # + the [Q] marker
    assert set(q.ids[0][q.attended[0] :]) == {tok.mask_token_id}
    d = model.encode_texts(["lava , flows ."], "document")
    assert d.ids[0][1] == tok.convert_tokens_to_ids("[unused1]")
    reranker = serve(model, "li", CPU)
    vectors = reranker.encode_documents(["lava , flows .", "", DOCS[0]])
    # [CLS] [D] lava flows [SEP]: the two punctuation tokens are skipped.
    assert [v.shape for v in vectors][:2] == [(5, 16), (3, 16)]
    for v in vectors:
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        reranker.score_encoded(QUERY, vectors),
        reranker.score(QUERY, ["lava , flows .", "", DOCS[0]]),
        atol=1e-5,
    )
    plain = build(
        "late-interaction",
        {"dim": 16, "query_length": 12, "query_augmentation": False, "query_marker": "query :"},
        tiny_bert,
        tiny_bert,
    )
    q2 = plain.encode_texts([QUERY], "query")
    assert len(q2.ids[0]) == q2.attended[0] < 12  # no [MASK] padding
    assert q2.ids[0][1:3] == tok("query :", add_special_tokens=False)["input_ids"]


def test_late_interaction_score_is_maxsim_sum(tiny_bert: Path) -> None:
    model = build("late-interaction", {"dim": 16, "query_length": 12}, tiny_bert, tiny_bert)
    reranker = serve(model, "li", CPU)
    with torch.no_grad():
        q, qk = model.embed(model.encode_texts([QUERY], "query"), "query")
        d, dk = model.embed(model.encode_texts([DOCS[0]], "document"), "document")
        sim = q[0][qk[0]] @ d[0][dk[0]].T
    assert reranker.score(QUERY, [DOCS[0]])[0] == pytest.approx(float(sim.max(1).values.sum()))


# --- KNRM ------------------------------------------------------------------------------------


def test_knrm_kernels_count_exact_matches(tiny_bert: Path) -> None:
    model = build("knrm", {}, tiny_bert, tiny_bert)
    assert model.mus.tolist()[:2] == pytest.approx([1.0, 0.9])
    assert model.sigmas.tolist()[:2] == pytest.approx([1e-3, 0.1])
    with torch.no_grad():
        q, qk = model.embed(model.encode_texts(["lava volcano"], "query"), "query")
        assert int(qk.sum()) == 2  # [CLS] and [SEP] are left out
        docs = model.encode_texts(["lava lava volcano", "bread ocean", "lava"], "document")
        d, dk = model.embed(docs, "document")
        phi = model.kernel_features(q, qk, d[None], dk[None])[0]
    exact = phi[:, 0] / 0.01  # undo the feature scale: sum over query terms of log counts
    # "lava" matches twice and "volcano" once: log 2 + log 1; no match: log(1e-10) per term.
    assert exact[0].item() == pytest.approx(np.log(2.0), abs=1e-3)
    assert exact[1].item() == pytest.approx(2 * np.log(1e-10), rel=1e-3)
    assert exact[2].item() == pytest.approx(np.log(1e-10), rel=1e-3)  # volcano unmatched


# --- LLM pointwise ---------------------------------------------------------------------------


def test_llm_score_is_yes_minus_no_logit_of_the_chat_prompt(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = build("llm", {"max_length": 96}, tiny_llama, tiny_llama)
    tok = model.tokenizer
    prompts = model.prepare(QUERY, [DOCS[0]])
    text = tok.decode(prompts.ids[0])
    assert "<|assistant|>" not in text  # unknown to the word-level test vocabulary ...
    assert "lava from a volcano" in text and "crater of an active volcano" in text
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    assert model.yes_ids.tolist() == [yes] and model.no_ids.tolist() == [no]  # Yes == yes here
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor(prompts.ids)).logits[0, -1]
    expected = float(logits[yes] - logits[no])
    assert serve(model, "llm", CPU).score(QUERY, [DOCS[0]])[0] == pytest.approx(expected, abs=1e-4)


def test_llm_truncates_the_document_not_the_template(tiny_llama: Path) -> None:
    model = build("llm", {"max_length": 40, "query_length": 3}, tiny_llama, tiny_llama)
    long_doc = "lava " * 100
    row = model.prepare(QUERY + " and more words here", [long_doc]).ids[0]
    assert len(row) == 40
    tail = model._pieces[-1]
    assert row[-len(tail) :] == tail  # the answer position is intact


def test_llm_options_are_checked(tiny_llama: Path) -> None:
    with pytest.raises(InvalidRequest, match="exactly one"):
        build("llm", {"prompt": "no slots"}, tiny_llama, tiny_llama)
    with pytest.raises(InvalidRequest, match="single token"):
        build("llm", {"yes_tokens": ["absolutely certain"]}, tiny_llama, tiny_llama)
    with pytest.raises(InvalidRequest, match="no room"):
        build("llm", {"max_length": 8}, tiny_llama, tiny_llama)


def test_llm_query_likelihood_is_the_mean_log_probability_of_the_query(tiny_llama: Path) -> None:
    """Query likelihood: the prompt holds the document; the score is the mean log-probability
    of the query's tokens and the turn's end as the model's answer, batch or one at a time."""
    from transformers import AutoModelForCausalLM

    model = build("llm", {"max_length": 96, "scoring": "query-likelihood"}, tiny_llama, tiny_llama)
    assert model.options.prompt == DEFAULT_LLM_LIKELIHOOD_PROMPT
    tok = model.tokenizer
    docs = [DOCS[0], DOCS[1], DOCS[4]]
    prompts = model.prepare(QUERY, docs)
    q_ids = tok(QUERY, add_special_tokens=False)["input_ids"]
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    expected = []
    for row, start in zip(prompts.ids, prompts.starts, strict=True):
        assert row[start : start + len(q_ids)] == q_ids  # the answer is the query ...
        assert row[-1] == model._close[0] and len(row) == start + len(q_ids) + 1  # ... then </s>
        assert "{query}" not in tok.decode(row[:start]) and QUERY not in tok.decode(row[:start])
        with torch.no_grad():
            log_p = lm(input_ids=torch.tensor([row])).logits[0].log_softmax(-1)
        answer = torch.tensor(row[start:])
        expected.append(float(log_p[start - 1 : len(row) - 1].gather(1, answer[:, None]).mean()))
    reranker = serve(model, "llm-likelihood", CPU)
    np.testing.assert_allclose(reranker.score(QUERY, docs), expected, atol=1e-4)
    one = [reranker.score(QUERY, [d])[0] for d in docs]
    np.testing.assert_allclose(one, expected, atol=1e-4)


def test_llm_query_likelihood_keeps_the_query_whole(tiny_llama: Path) -> None:
    options = {"max_length": 40, "query_length": 3, "scoring": "query-likelihood"}
    model = build("llm", options, tiny_llama, tiny_llama)
    prompts = model.prepare(QUERY + " and more words here", ["lava " * 100])
    row, start = prompts.ids[0], int(prompts.starts[0])
    assert len(row) == 40 and int(prompts.targets[0]) == 3 + 1  # query cut to 3, then </s>
    assert row[start:-1] == model.tokenizer(QUERY, add_special_tokens=False)["input_ids"][:3]


def test_llm_query_likelihood_options_are_checked(tiny_llama: Path) -> None:
    with pytest.raises(InvalidRequest, match="no \\{query\\}"):
        build(
            "llm",
            {"scoring": "query-likelihood", "prompt": "{query} {document}"},
            tiny_llama,
            tiny_llama,
        )
    with pytest.raises(InvalidRequest, match=r"Invalid LLM scoring 'ql'\. Valid: yes-no"):
        build("llm", {"scoring": "ql"}, tiny_llama, tiny_llama)
    custom = build(
        "llm",
        {"scoring": "query-likelihood", "prompt": "Text: {document}\nQuestion?"},
        tiny_llama,
        tiny_llama,
    )
    assert custom.options.prompt == "Text: {document}\nQuestion?"


def test_untrained_dense_is_the_embedder_stand_in(tiny_bert: Path) -> None:
    """The dense kind over an encoder, untrained, scores scale x the cosine of mean-pooled,
    normalised texts: sentence-transformers' bi-encoder (the ``embedder:`` stand-in)."""
    from transformers import AutoModel, AutoTokenizer

    reranker = serve(create_model("dense", str(tiny_bert), {"scale": 4.0}), "dense", CPU)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    encoder = AutoModel.from_pretrained(tiny_bert).eval()

    def pooled(texts: list[str], limit: int) -> torch.Tensor:
        enc = tok(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        with torch.no_grad():
            states = encoder(**enc).last_hidden_state
        weights = enc["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((states * weights).sum(1) / weights.sum(1), dim=-1)

    docs = [d for d in DOCS if d]
    want = 4.0 * (pooled(docs, 256) @ pooled([QUERY], 64)[0])
    np.testing.assert_allclose(reranker.score(QUERY, docs), want.numpy(), atol=1e-5)
