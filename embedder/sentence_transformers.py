"""Sentence-transformers backend with token-budget batching.

Texts are tokenised once; batches of similar length (see :func:`plan_batches`) are padded from
the pre-tokenised ids and run through the model. Tokenising and padding happen outside the
forward lock, so one request's preparation overlaps another's forward pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from core.errors import ModelNotAvailable
from core.priority import ForwardLock, batch_budget
from embedder.base import EmbedKind, check_kind, check_texts, resolve_device
from embedder.batching import pad_rows, plan_batches
from embedder.lean_bert import sentence_features
from embedder.tokenizing import FastTokenizer

logger = logging.getLogger(__name__)

# Prompt names sentence-transformers' encode_query / encode_document look up, in order.
_PROMPT_NAMES: dict[str, tuple[str, ...]] = {
    "query": ("query",),
    "document": ("document", "passage", "corpus"),
}


class SentenceTransformerEmbedder:
    """An :class:`~embedder.base.Embedder` over a local sentence-transformers model directory.

    Batches follow :func:`~embedder.batching.plan_batches` with ``batch_tokens``,
    ``max_batch_size`` and ``min_fill`` (``None``: 0.75 on CPU, 0 on GPU).
    ``query_prefix`` / ``document_prefix`` are prepended to texts of that kind; ``None`` takes
    the model's own configured prompts (none for all-MiniLM-L6-v2). The model runs in fp16 on
    CUDA and fp32 on CPU; embeddings are always returned as float32.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        device: str = "auto",
        batch_tokens: int = 16_384,
        max_batch_size: int = 256,
        min_fill: float | None = None,
        query_prefix: str | None = None,
        document_prefix: str | None = None,
        pipeline: bool | None = None,
    ) -> None:
        if batch_tokens < 1 or max_batch_size < 1:
            raise ValueError("batch_tokens and max_batch_size must be >= 1")
        self.name = name or str(path)
        self.device = resolve_device(device)
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        # On CPU compute follows padded tokens, so closing batches at 75% fill pays (64 mixed-length
        # texts ran 2.5x faster); on GPU each extra forward costs more than the padding it saves.
        # Numbers: bench/results/embed_throughput_sweep_h200.json.
        self.min_fill = (0.75 if self.device == "cpu" else 0.0) if min_fill is None else min_fill
        try:
            model = SentenceTransformer(
                str(path), device=self.device, local_files_only=True, trust_remote_code=False
            )
        except Exception as exc:  # any load failure means the files are not a usable model
            logger.exception("could not load sentence-transformers model from %s", path)
            raise ModelNotAvailable(
                f"Model '{self.name}' could not be loaded as a sentence-transformers model."
            ) from exc
        # Whatever dtype the checkpoint is stored in: fp16 kernels on GPU, fp32 on CPU.
        model = model.half() if self.device.startswith("cuda") else model.float()
        self._model = model.eval()
        self._tokenizer: Any = model.tokenizer
        dim = model.get_embedding_dimension()
        max_len = model.max_seq_length
        if dim is None or max_len is None or self._tokenizer is None:
            raise ModelNotAvailable(f"Model '{self.name}' is not a text embedding model.")
        self.dim = int(dim)
        self.max_seq_length = int(max_len)

        prompts = {k: v for k, v in (model.prompts or {}).items() if v}

        def configured(kind: str) -> str:
            return next((prompts[p] for p in _PROMPT_NAMES[kind] if p in prompts), "")

        self._prefixes: dict[str, str] = {
            "query": configured("query") if query_prefix is None else query_prefix,
            "document": configured("document") if document_prefix is None else document_prefix,
        }
        if any(self._prefixes.values()) and any(
            getattr(m, "include_prompt", True) is False for m in model.children()
        ):
            logger.warning(
                "%s pools without its prompt tokens; Quarry pools over them, so embeddings "
                "differ slightly from SentenceTransformer.encode(prompt_name=...)",
                self.name,
            )
        self._left_pad = self._tokenizer.padding_side == "left"
        self._pad_values = {
            "input_ids": self._tokenizer.pad_token_id or 0,
            "token_type_ids": getattr(self._tokenizer, "pad_token_type_id", 0),
        }
        # Rust tokenizers raise "Already borrowed" when used from two threads at once.
        self._tokenize_lock = threading.Lock()
        # Ids straight from the Rust backend when segment ids need not be passed (all zero
        # for one text): the wrapper's per-sequence conversion was most of tokenising's time.
        fast = FastTokenizer(self._tokenizer, max_length=self.max_seq_length)
        self._fast = fast if fast.uses_backend and fast.single_text_types_zero() else None
        # Online requests' passes go before an ingest job's (core.priority).
        self._forward_lock = ForwardLock()
        # The bulk path (see embed): on by default on CUDA, for calls of many texts.
        self.pipeline = self.device.startswith("cuda") if pipeline is None else pipeline
        self.pipeline_min = 256
        # Chunks grow from pipeline_first to pipeline_chunk texts: the GPU starts after a
        # small first chunk, later chunks amortise the per-chunk work.
        self.pipeline_first = 256
        self.pipeline_chunk = 4096
        logger.info(
            "loaded %s: dim %d, max_seq_length %d, device %s, dtype %s",
            self.name,
            self.dim,
            self.max_seq_length,
            self.device,
            next(model.parameters()).dtype,
        )

    @property
    def model(self) -> SentenceTransformer:
        """The underlying sentence-transformers model."""
        return self._model

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(name={self.name!r}, device={self.device!r})"

    def _tokenize(self, texts: Sequence[str]) -> dict[str, list[list[int]]]:
        if self._fast is not None:
            return {"input_ids": self._fast(texts)}
        with self._tokenize_lock:
            encoded = self._tokenizer(
                list(texts),
                truncation=True,
                max_length=self.max_seq_length,
                padding=False,
                return_attention_mask=False,
            )
        return dict(encoded)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text occupies after truncation, special tokens included."""
        check_texts(texts)
        if len(texts) == 0:
            return []
        return list(map(len, self._tokenize(texts)["input_ids"]))

    def embed(
        self,
        texts: Sequence[str],
        *,
        kind: EmbedKind = "document",
        normalize: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` into a float32 ``(len(texts), dim)`` array, rows in input order.

        On CUDA, calls of more than :attr:`pipeline_min` texts take the bulk path
        (:meth:`_embed_pipelined`): the next chunk is tokenised on a helper thread while the
        GPU works, inputs go through pinned memory without blocking, and the results stay on
        the device until one copy at the end, so the GPU never waits on the host between
        batches.
        """
        check_texts(texts)
        check_kind(kind)
        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        prefix = self._prefixes[kind]
        prefixed = [prefix + t for t in texts] if prefix else list(texts)
        if self.pipeline and len(prefixed) > self.pipeline_min:
            return self._embed_pipelined(prefixed, normalize, progress)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        flat, offsets, lengths = self._flatten(self._tokenize(prefixed))
        for idx in self._plan(lengths):
            features = self._pad(flat, offsets[idx], lengths[idx])
            padded = _has_padding(lengths[idx])
            with self._forward_lock, torch.inference_mode():
                emb = self._forward(features, normalize, padded)
                out[idx] = emb.cpu().numpy()
            if progress is not None:
                progress(len(idx))
        return out

    def _embed_pipelined(
        self, texts: list[str], normalize: bool, progress: Callable[[int], None] | None
    ) -> np.ndarray:
        """The bulk path: tokenising chunk k+1 overlaps the forward passes of chunk k."""
        n = len(texts)
        chunks: list[tuple[int, list[str]]] = []
        largest = max(1, self.pipeline_chunk)
        start, step = 0, max(1, min(self.pipeline_first, largest))
        while start < n:
            chunks.append((start, texts[start : start + step]))
            start += step
            step = min(2 * step, largest)
        pinned = self.device.startswith("cuda")
        with torch.inference_mode():
            result = torch.empty((n, self.dim), dtype=torch.float32, device=self.device)
        with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
            pending = pool.submit(self._flatten_tokens, chunks[0][1])
            for k, (start, _) in enumerate(chunks):
                flat, offsets, lengths = pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(self._flatten_tokens, chunks[k + 1][1])
                for idx in self._plan(lengths):
                    features = self._pad(flat, offsets[idx], lengths[idx], pinned=pinned)
                    rows = torch.from_numpy(idx + start).to(self.device, non_blocking=True)
                    padded = _has_padding(lengths[idx])
                    with self._forward_lock, torch.inference_mode():
                        emb = self._forward(features, normalize, padded)
                        result.index_copy_(0, rows, emb)
                    if progress is not None:
                        progress(len(idx))
        return result.cpu().numpy()

    def _forward(
        self, features: dict[str, torch.Tensor], normalize: bool, padded: bool = True
    ) -> torch.Tensor:
        # A BERT backbone runs its lean forward (embedder.lean_bert): same numbers, a fraction
        # of Hugging Face's per-call Python overhead; other models run as they are. A batch
        # without padding (the planner groups equal lengths: texts cut at max_seq_length)
        # runs attention without a mask, which lets CUDA take its fastest kernel.
        out = sentence_features(self._model, features, padded=padded)
        emb = out["sentence_embedding"].float()
        if normalize:
            emb = torch.nn.functional.normalize(emb, p=2.0, dim=1)
        return emb

    def _plan(self, lengths: np.ndarray) -> list[np.ndarray]:
        return plan_batches(
            lengths,
            batch_tokens=batch_budget(self.batch_tokens, self.device),
            max_batch_size=self.max_batch_size,
            min_fill=self.min_fill,
        )

    def _flatten_tokens(
        self, texts: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        return self._flatten(self._tokenize(texts))

    @staticmethod
    def _flatten(
        encoded: dict[str, list[list[int]]],
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """``(flat ids per input key, row offsets, row lengths)`` of tokenised rows."""
        ids = encoded["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        flat = {
            key: np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1]))
            for key, rows in encoded.items()
        }
        return flat, offsets, lengths

    def _pad(
        self,
        flat: dict[str, np.ndarray],
        starts: np.ndarray,
        lengths: np.ndarray,
        *,
        pinned: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Padded model inputs for the rows ``flat[key][starts[i] : starts[i] + lengths[i]]``;
        ``pinned`` copies them to the GPU through page-locked memory without waiting."""
        arrays: dict[str, np.ndarray] = {}
        side: Literal["left", "right"] = "left" if self._left_pad else "right"
        mask = None
        for key, values in flat.items():
            arrays[key], mask = pad_rows(
                values, starts, lengths, pad_id=self._pad_values.get(key, 0), side=side
            )
        assert mask is not None
        arrays["attention_mask"] = mask.astype(np.int64)
        if not pinned:
            return {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}
        return {
            k: torch.from_numpy(v).pin_memory().to(self.device, non_blocking=True)
            for k, v in arrays.items()
        }


def _has_padding(lengths: np.ndarray) -> bool:
    """Whether a batch of rows of these lengths is padded (its rows differ in length)."""
    return bool(len(lengths)) and int(lengths.min()) != int(lengths.max())
