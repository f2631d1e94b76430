"""The five-design comparison of docs/methods.md, reproduced small, in one GPU session.

Trains designs 1-5 over the same backbone with ``quarry train embedder`` (one process per
design, all at once: a 135M model leaves most of an H200 idle, so the processes share it),
each with the same data, steps, seed and settings, then embeds a BEIR split's queries and
corpus with every trained model (and with untrained design 1) and writes each model's top-k
by exact cosine search as a run file. Score the runs with ``quarry eval run`` and compare them
with ``quarry eval compare`` (no index or database is needed on the GPU machine).

Restartable: trainers are started with ``--resume`` and checkpoint as they go, a design whose
run file exists is not evaluated again, and ``--deadline-s`` stops the trainers (their latest
checkpoints stay) so that the call returns in time; running the same command again continues.

    python bench/pooling_designs.py --train-data train.jsonl --eval-data scifact/ \\
        --work /tmp/designs --out results/ --steps 200 -- --instruction "..."

Arguments after ``--`` go to every ``quarry train embedder`` call.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("bench.pooling_designs")

DESIGNS = ("design1", "design2", "design3", "design4", "design5")
UNTRAINED = "design1-untrained"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-data", type=Path, required=True, help="JSON lines of examples")
    ap.add_argument("--eval-data", type=Path, required=True, help="BEIR folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--work", type=Path, required=True, help="Trained models and logs")
    ap.add_argument("--out", type=Path, required=True, help="Run files and training records")
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    ap.add_argument("--backbone", default="smollm2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--deadline-s", type=float, default=None, help="Stop trainers after this")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train options")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start = time.monotonic()
    extra = [a for a in args.train_args if a != "--"]
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    procs = {
        d: start_trainer(d, args.work, args.train_data, args.backbone, args.steps, extra, args)
        for d in args.designs
        if not (args.work / d / "training.json").is_file()
    }
    evaluate_pending(args, extra)  # the untrained baseline while the trainers run
    while procs:
        for design, proc in list(procs.items()):
            if proc.poll() is not None:
                logger.info("%s trainer exited with %s", design, proc.returncode)
                del procs[design]
        if args.deadline_s is not None and time.monotonic() - start > args.deadline_s:
            for design, proc in procs.items():
                logger.warning("deadline: stopping %s (resume by running this again)", design)
                proc.terminate()
            for proc in procs.values():
                proc.wait(timeout=60)
            break
        evaluate_pending(args, extra)
        time.sleep(5)
    evaluate_pending(args, extra)
    status = {
        d: {
            "trained": (args.work / d / "training.json").is_file(),
            "evaluated": (args.out / f"{d}.run.json").is_file(),
        }
        for d in (*args.designs, UNTRAINED)
    }
    (args.out / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    logger.info("status %s after %.0f s", status, time.monotonic() - start)


def start_trainer(
    design: str,
    work: Path,
    data: Path,
    backbone: str,
    steps: int,
    extra: list[str],
    args: argparse.Namespace,
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "embedder.train",
        "embedder",
        "--data",
        str(data),
        "--backbone",
        backbone,
        "--preset",
        design,
        "--out",
        str(work / design),
        "--steps",
        str(steps),
        "--device",
        args.device,
        "--resume",
        "--no-progress",
        *extra,
    ]
    logger.info("starting %s", " ".join(cmd))
    log = (work / f"{design}.log").open("ab")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def evaluate_pending(args: argparse.Namespace, extra: list[str]) -> None:
    """Evaluate every finished model that has no run file yet."""
    for design in (UNTRAINED, *args.designs):
        run_path = args.out / f"{design}.run.json"
        if run_path.is_file():
            continue
        model_dir = args.work / design
        if design != UNTRAINED and not (model_dir / "training.json").is_file():
            continue
        t0 = time.perf_counter()
        run, info = embed_and_search(design, model_dir, args, extra)
        run_path.write_text(json.dumps(run) + "\n")
        info["eval_s"] = round(time.perf_counter() - t0, 2)
        if design != UNTRAINED:
            record = json.loads((model_dir / "training.json").read_text())
            info["training"] = {k: v for k, v in record.items() if k != "losses"}
            info["losses"] = record["losses"]
            shutil.copy(args.work / f"{design}.log", args.out / f"{design}.log")
        (args.out / f"{design}.meta.json").write_text(json.dumps(info, indent=2) + "\n")
        logger.info("%s evaluated in %.1f s", design, info["eval_s"])


def _option(extra: list[str], name: str, default: str) -> str:
    return extra[extra.index(name) + 1] if name in extra else default


def embed_and_search(
    design: str, model_dir: Path, args: argparse.Namespace, extra: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Top-k run of ``design`` on the eval split by exact cosine search over the corpus."""
    import torch

    from core.datasets import load_beir
    from embedder.llm import LLMEmbedder
    from embedder.train.data import INSTRUCTION_TEMPLATE

    if design == UNTRAINED:
        instruction = _option(extra, "--instruction", "")
        embedder = LLMEmbedder.from_preset(
            args.backbone,
            "design1",
            device=args.device,
            query_prefix=INSTRUCTION_TEMPLATE.format(instruction=instruction)
            if instruction
            else "",
            max_seq_length=int(_option(extra, "--max-seq-length", "512")),
        )
    else:
        embedder = LLMEmbedder.load(model_dir, device=args.device)
    dataset = load_beir(args.eval_data, args.split)
    docs = list(dataset.documents())
    qids = list(dataset.queries)
    t0 = time.perf_counter()
    doc_emb = torch.from_numpy(embedder.embed([d.text for d in docs], kind="document"))
    query_emb = torch.from_numpy(embedder.embed([dataset.queries[q] for q in qids], kind="query"))
    embed_s = time.perf_counter() - t0
    scores = query_emb.to(args.device) @ doc_emb.to(args.device).T
    top = torch.topk(scores, k=min(args.k, len(docs)), dim=1)
    values, indices = top.values.cpu().numpy(), top.indices.cpu().numpy()
    run = {
        qid: {docs[int(j)].id: float(s) for j, s in zip(row, vals, strict=True)}
        for qid, row, vals in zip(qids, indices, values, strict=True)
    }
    info = {
        "design": design,
        "model": str(model_dir) if design != UNTRAINED else f"{args.backbone}:design1",
        "documents": len(docs),
        "queries": len(qids),
        "embed_s": round(embed_s, 2),
        "dim": int(doc_emb.shape[1]),
        "mean_score": float(np.mean(values)),
    }
    del embedder
    torch.cuda.empty_cache()
    return run, info


if __name__ == "__main__":
    main()
