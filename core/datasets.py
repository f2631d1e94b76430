"""Readers for the dataset formats Quarry trains and evaluates on: BEIR folders, TREC-DL
reranking files and run files (the ground floor: training and evaluation both use them).

BEIR (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) is the first-stage
retrieval format; the corpus is read with :func:`core.ingest_files.read_jsonl`, the same
reader ``quarry index`` uses, so a collection indexed by hand and one indexed by
``quarry eval retrieval`` hold byte-identical documents (and re-indexing is a no-op).

TREC DL reranking sets come as a candidates JSON (rank_llm / RankGPT layout:
``[{"query": str | {"text", "qid"?}, "hits": [{"qid", "docid", "rank", "score",
"content"}]}]``) plus TREC qrels lines ``qid Q0 docid rel``.

Precomputed runs (rankings) come either as Quarry's JSON ``{qid: {docid: score}}`` (what
``quarry eval retrieval`` writes as ``<name>.run.json``) or as TREC run lines
``qid Q0 docid rank score tag``; :func:`load_run` reads both, plain or gzipped.

Every format problem raises :class:`core.errors.InvalidRequest` naming the file and line.
Files are read through :mod:`core.jsonl` (gzip told by magic bytes, whatever the name), the
reader the ingest path and the training data use too; :func:`read_json` is re-exported here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from core.errors import InvalidRequest
from core.jsonl import iter_jsonl, open_text, read_json

if TYPE_CHECKING:
    from core.documents import DocumentIn

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]
"""Relevance judgements: query id -> document id -> graded relevance (0 = judged non-relevant)."""

RunFormat = Literal["json", "trec"]
"""The two run file layouts :func:`load_run` reads."""


def _find(folder: Path, stem: str) -> Path:
    """``folder/stem`` or ``folder/stem.gz``; a clear error when neither exists."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise InvalidRequest(f"{folder} is not a BEIR folder: {stem} is missing")


@dataclass
class BeirDataset:
    """One split of a BEIR dataset: its queries, their judgements and a lazy corpus reader.

    ``queries`` holds only the queries judged in the split's qrels, so every query counts
    in the averages (a query with no judged-relevant document scores 0, as in trec_eval).
    """

    name: str
    folder: Path
    split: str
    corpus_path: Path
    queries: dict[str, str]
    qrels: Qrels
    skipped_queries: int = field(default=0)

    def documents(self) -> Iterator[DocumentIn]:
        """The corpus as ``DocumentIn`` (text = title + newline + text; metadata ``title``)."""
        from core.ingest_files import read_jsonl

        return read_jsonl(self.corpus_path)

    def __repr__(self) -> str:
        return (
            f"BeirDataset({self.name!r}, split={self.split!r}, queries={len(self.queries)}, "
            f"judgements={sum(len(v) for v in self.qrels.values())})"
        )


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    """Load a BEIR folder's ``split``: queries present in ``qrels/<split>.tsv`` and those qrels."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidRequest(f"Dataset folder not found: {folder}")
    corpus = _find(folder, "corpus.jsonl")
    queries_path = _find(folder, "queries.jsonl")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise InvalidRequest(
            f"No qrels for split {split!r} in {folder} (expected {qrels_path.name} under "
            f"qrels/). Available splits: {', '.join(splits) or 'none'}"
        )
    qrels = load_beir_qrels(qrels_path)
    all_queries = _read_beir_queries(queries_path)
    missing = sorted(set(qrels) - set(all_queries))
    if missing:
        raise InvalidRequest(
            f"{qrels_path} judges {len(missing)} queries absent from {queries_path.name} "
            f"(e.g. {', '.join(missing[:5])})"
        )
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(
        name=folder.resolve().name,
        folder=folder,
        split=split,
        corpus_path=corpus,
        queries=queries,
        qrels=qrels,
        skipped_queries=len(all_queries) - len(queries),
    )


def _read_beir_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for lineno, rec in iter_jsonl(path, what="Queries file"):
        try:
            qid, text = str(rec["_id"]), str(rec["text"])
        except (KeyError, TypeError) as exc:
            raise InvalidRequest(
                f'{path}:{lineno}: expected a JSON object {{"_id", "text"}} ({exc!r})'
            ) from exc
        queries[qid] = text
    return queries


def load_beir_qrels(path: Path) -> Qrels:
    """Read BEIR qrels TSV: ``query-id<TAB>corpus-id<TAB>score`` (header line optional)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"Qrels file not found: {path}")
    qrels: Qrels = {}
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and parts[0] == "query-id":
                continue
            if len(parts) != 3:
                raise InvalidRequest(
                    f"{path}:{lineno}: expected 3 tab-separated columns "
                    f"(query-id, corpus-id, score), got {len(parts)}"
                )
            qrels.setdefault(parts[0], {})[parts[1]] = _grade(parts[2], path, lineno)
    if not qrels:
        raise InvalidRequest(f"{path} holds no judgements")
    return qrels


def _grade(value: str, path: Path, lineno: int) -> int:
    try:
        return int(float(value)) if "." in value else int(value)
    except ValueError:
        raise InvalidRequest(
            f"{path}:{lineno}: relevance must be an integer, got {value!r}"
        ) from None


def load_trec_qrels(path: Path) -> Qrels:
    """Read TREC qrels: whitespace-separated ``qid iteration docid relevance`` lines."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"Qrels file not found: {path}")
    qrels: Qrels = {}
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise InvalidRequest(
                    f"{path}:{lineno}: expected TREC qrels 'qid Q0 docid rel', "
                    f"got {len(parts)} fields"
                )
            qid, _, docid, rel = parts
            qrels.setdefault(qid, {})[docid] = _grade(rel, path, lineno)
    if not qrels:
        raise InvalidRequest(f"{path} holds no judgements")
    return qrels


@dataclass(frozen=True)
class Candidate:
    """One first-stage candidate of a query, as the retriever returned it."""

    docid: str
    score: float
    rank: int
    content: str


@dataclass
class CandidateSet:
    """Per-query candidate lists (sorted by rank) and the query texts, from one file."""

    path: Path
    queries: dict[str, str]
    candidates: dict[str, list[Candidate]]

    @property
    def name(self) -> str:
        """The file name without extensions (``BM25_dl19``)."""
        return self.path.name.split(".")[0]

    def __len__(self) -> int:
        return len(self.candidates)


def load_trec_candidates(path: Path) -> CandidateSet:
    """Read a rank_llm / RankGPT candidates JSON; candidates come back sorted by rank."""
    path = Path(path)
    data = read_json(path, "Candidates")
    if not isinstance(data, list):
        raise InvalidRequest(f'{path}: expected a JSON list of {{"query", "hits"}} entries')
    queries: dict[str, str] = {}
    candidates: dict[str, list[Candidate]] = {}
    for n, entry in enumerate(data):
        where = f"{path}: entry {n}"
        if not isinstance(entry, dict) or "query" not in entry or "hits" not in entry:
            raise InvalidRequest(f'{where}: expected an object with "query" and "hits"')
        qid, text = _query_of(entry, where)
        if qid in candidates:
            raise InvalidRequest(f"{where}: query id {qid!r} appears twice")
        hits = [_candidate(h, qid, f"{where} hit {i}") for i, h in enumerate(entry["hits"])]
        hits.sort(key=lambda c: c.rank)
        queries[qid] = text
        candidates[qid] = hits
    if not candidates:
        raise InvalidRequest(f"{path} holds no queries")
    return CandidateSet(path=path, queries=queries, candidates=candidates)


def _query_of(entry: dict[str, Any], where: str) -> tuple[str, str]:
    query = entry["query"]
    qid: Any = None
    if isinstance(query, dict):
        text = query.get("text", query.get("query"))
        qid = query.get("qid", query.get("id"))
    else:
        text = query
    if qid is None:
        hits = entry["hits"]
        if not isinstance(hits, list) or not hits or not isinstance(hits[0], dict):
            raise InvalidRequest(f"{where}: no query id (neither query.qid nor hits[0].qid)")
        qid = hits[0].get("qid")
    if qid is None or not isinstance(text, str):
        raise InvalidRequest(f"{where}: needs a query text and a query id")
    return str(qid), text


def _candidate(hit: Any, qid: str, where: str) -> Candidate:
    try:
        if "qid" in hit and str(hit["qid"]) != qid:
            raise InvalidRequest(f"{where}: qid {hit['qid']!r} differs from its query's {qid!r}")
        return Candidate(
            docid=str(hit["docid"]),
            score=float(hit["score"]),
            rank=int(hit["rank"]),
            content=str(hit.get("content") or ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(
            f'{where}: expected {{"docid", "rank", "score", "content"}} ({exc!r})'
        ) from exc


def _open_run(path: Path) -> IO[str]:
    if not path.is_file():
        raise InvalidRequest(f"Run file not found: {path}")
    return open_text(path)


def run_format(path: Path) -> RunFormat:
    """``"json"`` when the file's first non-blank character opens a JSON object, else ``"trec"``."""
    path = Path(path)
    try:
        with _open_run(path) as fh:
            for line in fh:
                if line.strip():
                    return "json" if line.lstrip().startswith("{") else "trec"
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path}: not a UTF-8 text or gzip file ({exc})") from exc
    raise InvalidRequest(f"{path} holds no rankings")


def load_run(path: Path, *, fmt: RunFormat | None = None) -> dict[str, dict[str, float]]:
    """Read a run file: Quarry's JSON ``{qid: {docid: score}}`` or TREC run lines.

    The format is told by content (:func:`run_format`), and gzipped files are decompressed.
    TREC lines are whitespace-separated ``qid Q0 docid rank score tag``. Each query's
    documents come back best first: by descending score, tied scores in the order the file
    lists them (JSON) or by their rank column (TREC), so that evaluating in dict order
    (``evaluate_run(..., preserve_order=True)``) has no arbitrary tie-break. A query with
    an empty ranking (``{"q1": {}}``) is kept. Format problems raise ``InvalidRequest``
    naming the file and the line (TREC) or the query (JSON). ``fmt`` skips the detection when
    the caller has already run :func:`run_format`.
    """
    path = Path(path)
    if (fmt or run_format(path)) == "json":
        return _load_json_run(path)
    return _load_trec_run(path)


def _finite(score: float, raw: Any, where: str) -> float:
    if not math.isfinite(score):
        raise InvalidRequest(f"{where}: score must be finite, got {raw!r}")
    return score


def _load_json_run(path: Path) -> dict[str, dict[str, float]]:
    data = read_json(path, "Run")
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path}: expected a JSON object {{qid: {{docid: score}}}}")
    run: dict[str, dict[str, float]] = {}
    for qid, docs in data.items():
        if not isinstance(docs, dict):
            raise InvalidRequest(
                f"{path}: query {qid!r}: expected an object {{docid: score}}, "
                f"got {type(docs).__name__}"
            )
        scored: list[tuple[float, int, str]] = []
        for i, (docid, score) in enumerate(docs.items()):
            where = f"{path}: query {qid!r} document {docid!r}"
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise InvalidRequest(f"{where}: score must be a number, got {score!r}")
            scored.append((_finite(float(score), score, where), i, docid))
        scored.sort(key=lambda t: (-t[0], t[1]))
        run[qid] = {docid: score for score, _, docid in scored}
    if not run:
        raise InvalidRequest(f"{path} holds no rankings")
    return run


def _trec_run_line(parts: list[str], where: str) -> tuple[str, str, int, float]:
    """``(qid, docid, rank, score)`` of one split TREC run line."""
    if len(parts) != 6:
        raise InvalidRequest(
            f"{where}: expected a TREC run line 'qid Q0 docid rank score tag', "
            f"got {len(parts)} fields"
        )
    qid, _, docid, rank, score, _ = parts
    try:
        rank_no = int(rank)
    except ValueError:
        raise InvalidRequest(f"{where}: rank must be an integer, got {rank!r}") from None
    try:
        value = float(score)
    except ValueError:
        raise InvalidRequest(f"{where}: score must be a number, got {score!r}") from None
    return qid, docid, rank_no, _finite(value, score, where)


def _load_trec_run(path: Path) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, tuple[float, int]]] = {}
    try:
        with _open_run(path) as fh:
            for lineno, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    continue
                where = f"{path}:{lineno}"
                qid, docid, rank, score = _trec_run_line(parts, where)
                docs = rows.setdefault(qid, {})
                if docid in docs:
                    raise InvalidRequest(f"{where}: document {docid!r} listed twice for {qid!r}")
                docs[docid] = (score, rank)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path}: not a UTF-8 text or gzip file ({exc})") from exc
    if not rows:
        raise InvalidRequest(f"{path} holds no rankings")
    # sorted() is stable: equal (score, rank) pairs keep their line order.
    return {
        qid: {
            docid: score
            for docid, (score, _) in sorted(docs.items(), key=lambda d: (-d[1][0], d[1][1]))
        }
        for qid, docs in rows.items()
    }
