"""Reranker quality runs, made where the GPU is: train each kind on SciFact train, rerank
SciFact test's BM25 and hybrid top-100, and run k-fold cross-validation by query on TREC
DL19 (each fold started from the SciFact model, each query scored only by the fold model
that never trained on it). Writes run files ``{qid: {docid: score}}``; the metrics and the
significance tests are computed afterwards with ``quarry eval run`` / ``quarry eval compare``.

    python bench/rerank_quality.py --data .rerank-data/device --backbone MODEL_DIR \\
        --kinds cross-encoder,late-interaction,knrm --out OUT

``--data`` holds ``scifact/`` (BEIR), ``scifact-test-{lexical,hybrid}100.run.json``
(first-stage runs from ``bench/rerank_data.py``: ``{"queries", "run": {qid: [[docid,
score], ...]}}``), ``scifact-train-*.jsonl.gz`` (examples with BM25 negatives) and
``dl19/`` (``BM25_dl19.json`` + the qrels).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = {"cross-encoder": 600, "late-interaction": 600, "knrm": 600, "llm": 300}
FOLD_STEPS = {"cross-encoder": 150, "late-interaction": 150, "knrm": 150, "llm": 100}


def _train(args: list[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "cli", "train", "reranker", *args, "--no-progress"]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        done = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    took = time.perf_counter() - t0
    print(f"  train {' '.join(args[:2])} ... {took:.0f}s (rc {done.returncode})", flush=True)
    if done.returncode:
        # The k-fold command measures its pooled run with ranx after writing it; where ranx
        # is not installed (the GPU host) the run is there and is measured afterwards.
        out = Path(args[args.index("--out") + 1])
        if (out / "pooled.run.json").is_file():
            print("  (pooled run written; its measurement failed)", flush=True)
            return
        print(log.read_text()[-3000:], flush=True)
        raise SystemExit(done.returncode)


def _scifact_candidates(data: Path, name: str):  # type: ignore[no-untyped-def]
    from core.datasets import Candidate, CandidateSet, load_beir

    first = json.loads((data / f"scifact-test-{name}100.run.json").read_text())
    corpus = {d.id: d.text for d in load_beir(data / "scifact", "test").documents()}
    return CandidateSet(
        path=Path(f"scifact-test-{name}100"),
        queries=first["queries"],
        candidates={
            qid: [
                Candidate(docid=d, score=float(s), rank=r, content=corpus[d])
                for r, (d, s) in enumerate(hits, 1)
            ]
            for qid, hits in first["run"].items()
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--kinds", default="cross-encoder,late-interaction,knrm")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--zero-shot", default="", help="packaged zero-shot rerankers to score too")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rerank-work"))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the steps (smoke runs)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()

    from ranker.text import load_reranker
    from ranker.text.train.kfold import score_candidates, write_run

    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    train_data = sorted(args.data.glob("scifact-train-*.jsonl.gz"))[0]
    dl19 = args.data / "dl19"
    sets = {name: _scifact_candidates(args.data, name) for name in ("lexical", "hybrid")}
    timings: dict[str, float] = {}
    for kind in [k for k in args.kinds.split(",") if k]:
        t0 = time.perf_counter()
        sci = args.work / f"{kind}-scifact"
        backbone = [] if kind == "llm" else ["--backbone", args.backbone]
        _train(
            [
                "--kind",
                kind,
                "--data",
                str(train_data),
                *backbone,
                "--steps",
                str(max(1, int(STEPS[kind] * args.scale))),
                "--batch-size",
                "32",
                "--device",
                args.device,
                "--out",
                str(sci),
            ],
            args.work / f"{kind}-scifact.log",
        )
        reranker = load_reranker(str(sci))
        for name, cands in sets.items():
            run = score_candidates(reranker, cands)
            write_run(run, args.out / f"scifact-{name}100-{kind}.run.json")
        dl = args.work / f"{kind}-dl19"
        _train(
            [
                "--kind",
                kind,
                "--candidates",
                str(dl19 / "BM25_dl19.json"),
                "--qrels",
                str(dl19 / "qrels.dl19-passage.txt"),
                "--folds",
                str(args.folds),
                "--init",
                str(sci),
                "--steps",
                str(max(1, int(FOLD_STEPS[kind] * args.scale))),
                "--batch-size",
                "16",
                "--device",
                args.device,
                "--out",
                str(dl),
            ],
            args.work / f"{kind}-dl19.log",
        )
        pooled = dl / "pooled.run.json"
        (args.out / f"dl19-bm25-{kind}-kfold.run.json").write_text(pooled.read_text())
        (args.out / f"dl19-{kind}-folds.json").write_text((dl / "folds.json").read_text())
        # Transfer: the SciFact model, never trained on DL19, on DL19 as it is.
        from core.datasets import load_trec_candidates

        dl_cands = load_trec_candidates(dl19 / "BM25_dl19.json")
        write_run(
            score_candidates(reranker, dl_cands), args.out / f"dl19-bm25-{kind}-scifact.run.json"
        )
        timings[kind] = round(time.perf_counter() - t0, 1)
        print(f"{kind}: {timings[kind]}s", flush=True)
    for name in [z for z in args.zero_shot.split(",") if z]:
        t0 = time.perf_counter()
        reranker = load_reranker(name)
        from core.datasets import load_trec_candidates

        write_run(
            score_candidates(reranker, load_trec_candidates(dl19 / "BM25_dl19.json")),
            args.out / f"dl19-bm25-{name}.run.json",
        )
        for set_name, cands in sets.items():
            write_run(
                score_candidates(reranker, cands),
                args.out / f"scifact-{set_name}100-{name}.run.json",
            )
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {timings[name]}s", flush=True)
    (args.out / "timings.json").write_text(json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()
