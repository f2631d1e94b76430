"""``quarry train``: fine-tune LLM embedders and rerankers, and build their training data.

Registered in :mod:`cli.main` as ``app.add_typer(cli.train.app, name="train")``.
Importing this module is cheap (typer only); torch, the model code and :mod:`cli.main` itself
(which imports this module) are imported inside the commands.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.support import friendly, setup_cli

if TYPE_CHECKING:
    from collections.abc import Sequence

    from embedder.train.data import TrainExample

app = typer.Typer(
    help="Train models: LLM embedders and rerankers (methods and recipes: docs/methods.md).",
    no_args_is_help=True,
)

logger = logging.getLogger("quarry.cli.train")


def _parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["num_latents=16", "source=eos"]`` → ``{"num_latents": 16, "source": "eos"}``."""
    from core.errors import InvalidRequest

    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"Pooling options are KEY=VALUE, got {item!r}")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return options


def _query_prefix(instruction: str | None, query_prefix: str | None) -> str:
    from core.errors import InvalidRequest
    from embedder.train.data import INSTRUCTION_TEMPLATE

    if instruction is not None and query_prefix is not None:
        raise InvalidRequest("Give --instruction or --query-prefix, not both")
    if instruction is not None:
        return INSTRUCTION_TEMPLATE.format(instruction=instruction)
    return query_prefix or ""


def _load_examples(
    data: Path | None,
    beir: Path | None,
    *,
    split: str,
    hard_negatives: int,
    depth: int | None,
    seed: int,
) -> tuple[list[TrainExample], dict[str, Any]]:
    from core.errors import InvalidRequest
    from embedder.train.data import read_examples
    from service.training import examples_from_beir

    if (data is None) == (beir is None):
        raise InvalidRequest("Give exactly one of --data (JSON lines) and --beir (a BEIR folder)")
    if data is not None:
        return read_examples(data), {"data": {"file": str(data.resolve())}}
    assert beir is not None
    examples = examples_from_beir(
        beir, split, hard_negatives=hard_negatives, depth=depth, seed=seed
    )
    source = {
        "beir": str(beir.resolve()),
        "split": split,
        "hard_negatives": hard_negatives,
        "negative_depth": depth,
        "seed": seed,
    }
    return examples, {"data": source}


DataOpt = Annotated[
    Path | None,
    typer.Option(help='JSON lines of {"query", "positive", "negatives": [...]} (.gz too)'),
]
BeirOpt = Annotated[
    Path | None,
    typer.Option(help="BEIR folder: pairs from its qrels, hard negatives mined with BM25"),
]
SplitOpt = Annotated[str, typer.Option(help="Qrels split of --beir (qrels/<split>.tsv)")]
HardNegOpt = Annotated[
    int, typer.Option(min=0, help="Hard negatives per example (mined for --beir; used per step)")
]
DepthOpt = Annotated[
    int | None,
    typer.Option(
        min=1, help="--beir: draw the hard negatives from the BM25 top DEPTH (default: take top)"
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seed: data order, negatives, head and LoRA init")]


@app.command()
@friendly
def embedder(
    out: Annotated[Path, typer.Option(help="Output model directory (load it by this path)")],
    data: DataOpt = None,
    beir: BeirOpt = None,
    split: SplitOpt = "train",
    preset: Annotated[
        str, typer.Option(help="Design: design1 ... design5 (docs/methods.md)")
    ] = "design5",
    backbone: Annotated[
        str, typer.Option(help="Packaged LLM (smollm2), Hugging Face model directory or .gguf")
    ] = "smollm2",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps")] = 1000,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Examples per step; in-batch negatives span all of them")
    ] = 64,
    grad_cache_chunk: Annotated[
        int | None,
        typer.Option(min=1, help="GradCache: texts per forward pass (default: no GradCache)"),
    ] = None,
    lr: Annotated[float, typer.Option(help="Backbone (LoRA or full) learning rate")] = 1e-5,
    head_lr: Annotated[
        float | None,
        typer.Option(help="Pooling head learning rate (randomly initialised, hence higher)"),
    ] = 1e-4,
    warmup: Annotated[int, typer.Option(min=0, help="Linear warm-up steps")] = 100,
    temperature: Annotated[
        float, typer.Option(help="InfoNCE temperature (cosine / temperature)")
    ] = 0.05,
    hard_negatives: HardNegOpt = 1,
    negative_depth: DepthOpt = None,
    lora: Annotated[
        bool, typer.Option(help="LoRA on the backbone (--no-lora: train it in full)")
    ] = True,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank")] = 16,
    lora_alpha: Annotated[int, typer.Option(min=1, help="LoRA alpha")] = 32,
    lora_dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="LoRA dropout")] = 0.1,
    pooling: Annotated[
        list[str] | None,
        typer.Option("--pooling", help="Pooling head option KEY=VALUE, repeatable (num_latents=8)"),
    ] = None,
    instruction: Annotated[
        str | None,
        typer.Option(help="Task instruction; queries become 'Instruct: ...\\nQuery: <query>'"),
    ] = None,
    query_prefix: Annotated[
        str | None, typer.Option(help="Literal query prefix (instead of --instruction)")
    ] = None,
    document_prefix: Annotated[str, typer.Option(help="Literal document prefix")] = "",
    max_seq_length: Annotated[int, typer.Option(min=2, help="Token limit per text")] = 512,
    seed: SeedOpt = 0,
    checkpoint_every: Annotated[
        int, typer.Option(min=0, help="Checkpoint every N steps (0: never)")
    ] = 200,
    keep_checkpoints: Annotated[int, typer.Option(min=1, help="Checkpoints kept")] = 2,
    resume: Annotated[
        bool, typer.Option(help="Continue from the latest checkpoint in --out")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    save_data: Annotated[
        Path | None, typer.Option(help="Also write the training examples to this JSON-lines file")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Fine-tune an LLM embedder (InfoNCE, in-batch + hard negatives, LoRA, GradCache)."""
    from embedder.train.data import write_examples
    from embedder.train.trainer import TrainConfig, train_embedder

    setup_cli()
    config = TrainConfig(
        backbone=backbone,
        preset=preset,
        pooling_options=_parse_options(pooling),
        query_prefix=_query_prefix(instruction, query_prefix),
        document_prefix=document_prefix,
        max_seq_length=max_seq_length,
        steps=steps,
        batch_size=batch_size,
        grad_cache_chunk=grad_cache_chunk,
        lr=lr,
        head_lr=head_lr,
        warmup_steps=warmup,
        temperature=temperature,
        hard_negatives=hard_negatives,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        seed=seed,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        device=device,
    )
    examples, metadata = _load_examples(
        data, beir, split=split, hard_negatives=hard_negatives, depth=negative_depth, seed=seed
    )
    if save_data is not None:
        write_examples(examples, save_data)
    result = train_embedder(
        config, examples, out, resume=resume, progress=progress, metadata=metadata
    )
    typer.echo(
        f"Trained {preset} over {backbone}: {result.step} steps on {len(examples)} examples, "
        f"final loss {result.final_loss:.4f}. Model: {out}"
    )


@app.command()
@friendly
def data(
    beir: Annotated[Path, typer.Option(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")],
    out: Annotated[Path, typer.Option(help="Output JSON-lines file (.gz to compress)")],
    split: SplitOpt = "train",
    hard_negatives: HardNegOpt = 1,
    negative_depth: DepthOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Build {query, positive, negatives} training examples from a BEIR split (BM25 negatives)."""
    from embedder.train.data import write_examples

    setup_cli()
    examples, _ = _load_examples(
        None, beir, split=split, hard_negatives=hard_negatives, depth=negative_depth, seed=seed
    )
    write_examples(examples, out)
    typer.echo(f"{len(examples)} examples written to {out}")


def _parse_values(items: list[str] | None) -> dict[str, Any]:
    """``["dim=64", "query_augmentation=false", "embeddings=contextual"]`` → typed values
    (JSON where the value parses as JSON, else the string itself)."""
    import json

    from core.errors import InvalidRequest

    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"Options are KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


@app.command()
@friendly
def reranker(
    out: Annotated[Path, typer.Option(help="Output model directory (load it by this path)")],
    kind: Annotated[
        str,
        typer.Option(
            help="cross-encoder, late-interaction, knrm, llm, dense (a bi-encoder), or fusion "
            "(weights over --components) (docs/methods.md)"
        ),
    ] = "cross-encoder",
    components: Annotated[
        str | None,
        typer.Option(
            help="--kind fusion: comma-separated rerankers to fuse (first-stage, "
            "embedder:MODEL, packaged names, directories); weights are fit by grid search on "
            "nDCG@10 (--option normalization=minmax|zscore, --option step=0.1)"
        ),
    ] = None,
    component_run: Annotated[
        list[str] | None,
        typer.Option(
            help="--kind fusion: NAME=FILE, a run the component NAME made before on the same "
            "candidates (quarry train rerank-run, quarry eval rerank; JSON or TREC, .gz too), "
            "used instead of scoring again; repeatable"
        ),
    ] = None,
    beir: Annotated[
        Path | None,
        typer.Option(help="BEIR folder: positives from its qrels, BM25 hard negatives"),
    ] = None,
    split: SplitOpt = "train",
    candidates: Annotated[
        Path | None,
        typer.Option(
            help="TREC candidates JSON (rank_llm layout, with passage text); needs "
            "--qrels. Negatives: judged non-relevant and unjudged candidates"
        ),
    ] = None,
    qrels: Annotated[Path | None, typer.Option(help="TREC qrels for --candidates")] = None,
    data: DataOpt = None,
    min_grade: Annotated[
        int | None,
        typer.Option(min=1, help="Smallest relevant grade (default: 1 for --beir, 2 for TREC)"),
    ] = None,
    negatives: Annotated[
        int, typer.Option(min=0, help="Negatives per query in each step (group of 1 + N)")
    ] = 7,
    negative_pool: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="BM25 negatives mined per --beir query (default 30), or best-ranked "
            "non-relevant candidates kept per TREC query (default all); each step draws "
            "--negatives of them",
        ),
    ] = None,
    negative_depth: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="--beir: draw the mined negatives from BM25's top DEPTH (default 100, the "
            "depth rerankers are applied at); the very top alone teaches that overlap with the "
            "query means non-relevant",
        ),
    ] = None,
    loss: Annotated[
        str,
        typer.Option(
            help="listwise (default): softmax cross-entropy of the positive among its "
            "negatives - it asks exactly what reranking needs (order one query's candidates) "
            "and weighs the hardest negatives most; bce: pointwise binary cross-entropy"
        ),
    ] = "listwise",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps")] = 1000,
    batch_size: Annotated[int, typer.Option(min=1, help="Queries (examples) per step")] = 16,
    micro_batch: Annotated[
        int | None,
        typer.Option(min=1, help="Examples per forward pass (exact gradient accumulation)"),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Backbone learning rate (default per kind)")
    ] = None,
    head_lr: Annotated[
        float | None, typer.Option(help="Head learning rate (default per kind)")
    ] = None,
    warmup: Annotated[
        int | None, typer.Option(min=0, help="Warm-up steps (default: steps/10, at most 100)")
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            min=4,
            help="Token limit: of the pair (cross-encoder, llm) or the document "
            "(late-interaction, knrm)",
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="Kind option KEY=VALUE, repeatable (dim=64)"),
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="Packaged model or directory (default: all-MiniLM-L6-v2; llm: smollm2)"),
    ] = None,
    backbone_training: Annotated[
        str | None,
        typer.Option(help="frozen, full or lora (default per kind: full, full, frozen, lora)"),
    ] = None,
    init: Annotated[
        Path | None, typer.Option(help="Start from this trained reranker (same kind)")
    ] = None,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank")] = 16,
    lora_alpha: Annotated[int, typer.Option(min=1, help="LoRA alpha")] = 32,
    holdout: Annotated[
        float | None,
        typer.Option(
            help="Hold out this share of the queries (seeded), train on the rest and report "
            "the reranked first stage on the held-out ones"
        ),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="k-fold cross-validation by query (TREC sets): one model per fold in "
            "OUT/fold-k, OUT/folds.json, and a pooled run scored only by models that never "
            "trained on its queries",
        ),
    ] = None,
    seed: SeedOpt = 0,
    checkpoint_every: Annotated[
        int, typer.Option(min=0, help="Checkpoint every N steps (0: never)")
    ] = 200,
    keep_checkpoints: Annotated[int, typer.Option(min=1, help="Checkpoints kept")] = 2,
    resume: Annotated[
        bool, typer.Option(help="Continue from the latest checkpoint in --out")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Train a reranker (cross-encoder, late interaction, KNRM or pointwise LLM)."""
    import json

    from core.errors import InvalidRequest
    from ranker.text.registry import LoadOptions
    from ranker.text.train.trainer import RerankTrainConfig
    from service.rerank_training import DataSource, train_from_source

    setup_cli()
    options = _parse_values(option)
    if kind == "fusion":
        source = DataSource(
            beir=beir,
            split=split,
            candidates=candidates,
            qrels=qrels,
            data=data,
            min_grade=min_grade,
            seed=seed,
        )
        summary = _train_fusion(
            out,
            components,
            source,
            options,
            folds=folds,
            seed=seed,
            device=device,
            given_runs=component_run or [],
        )
        typer.echo(f"Trained fusion reranker: {out}")
        typer.echo(json.dumps(summary, indent=2))
        return
    if components is not None or component_run:
        raise InvalidRequest("--components and --component-run are for --kind fusion")
    if max_length is not None:
        options["max_length"] = max_length
    config = RerankTrainConfig(
        kind=kind,
        backbone=backbone,
        options=options,
        backbone_training=backbone_training,
        init=str(init) if init is not None else None,
        loss=loss,
        steps=steps,
        batch_size=batch_size,
        negatives=negatives,
        lr=lr,
        head_lr=head_lr,
        warmup_steps=warmup,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        seed=seed,
        micro_batch=micro_batch,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        device=device,
    )
    source = DataSource(
        beir=beir,
        split=split,
        candidates=candidates,
        qrels=qrels,
        data=data,
        min_grade=min_grade,
        negative_pool=negative_pool,
        negative_depth=negative_depth,
        seed=seed,
    )
    summary = train_from_source(
        config,
        source,
        out,
        holdout=holdout,
        folds=folds,
        resume=resume,
        progress=progress,
        load_options=LoadOptions(device=device),
        measure=_measure_if_available(),
    )
    typer.echo(f"Trained {kind} reranker: {out}")
    typer.echo(json.dumps(summary, indent=2))


def _train_fusion(
    out: Path,
    components: str | None,
    source: Any,
    options: dict[str, Any],
    *,
    folds: int | None,
    seed: int,
    device: str,
    given_runs: Sequence[str] = (),
) -> dict[str, Any]:
    """``quarry train reranker --kind fusion``: fit fusion weights on nDCG@10 (ranx) over the
    source's judged queries, or per fold over each fold's training queries only. Components
    with a run in ``given_runs`` (``NAME=FILE``) are read from it, not scored again."""
    from collections.abc import Mapping

    from core.errors import InvalidRequest
    from evaluation.metrics import evaluate_run
    from evaluation.rerank import measure_reranking
    from ranker.text.registry import LoadOptions
    from ranker.text.train.fusion import (
        DEFAULT_STEP,
        component_runs,
        train_fusion,
        train_fusion_kfold,
    )

    names = [c.strip() for c in (components or "").split(",") if c.strip()]
    if not names:
        raise InvalidRequest("--kind fusion needs --components NAME,NAME,...")
    given = _given_runs(given_runs, names)
    unknown = sorted(set(options) - {"normalization", "step"})
    if unknown:
        raise InvalidRequest(
            f"Invalid option(s) {', '.join(unknown)} for a fusion. Valid options: "
            "normalization, step"
        )
    if source.data is not None:
        raise InvalidRequest("A fusion is fit on judged candidates: give --candidates or --beir")
    normalization = str(options.get("normalization", "minmax"))
    step = float(options.get("step", DEFAULT_STEP))
    judgements = source.judgements()
    cands = (
        source.candidate_set()
        if source.candidates is not None
        else source.rerank_candidates(source.query_ids())
    )

    def objective_for(qids: Sequence[str]) -> Any:
        judged = {q: dict(judgements[q]) for q in qids if judgements.get(q)}

        def ndcg10(run: Mapping[str, Mapping[str, float]]) -> float:
            return evaluate_run(judged, run, ["ndcg@10"]).aggregate["ndcg@10"]

        return ndcg10

    load = LoadOptions(device=device)
    runs = {**given, **component_runs([n for n in names if n not in given], cands, load)}
    meta = {"data": source.describe(), "objective": "ndcg@10"}
    if folds is not None:
        result = train_fusion_kfold(
            names,
            cands,
            objective_for,
            out,
            folds=folds,
            seed=seed,
            normalization=normalization,
            step=step,
            options=load,
            runs=runs,
            metadata=meta,
        )
        return {
            "folds": folds,
            "weights": [c.weights for c in result.configs],
            "metrics": measure_reranking(result.pooled, cands, judgements, min_grade=source.grade),
        }
    config = train_fusion(
        names,
        cands,
        objective_for(list(cands.candidates)),
        out,
        normalization=normalization,
        step=step,
        options=load,
        runs=runs,
        metadata=meta,
    )
    return {"components": config.names, "weights": config.weights, "fit": config.fit}


def _given_runs(specs: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--component-run NAME=FILE`` values read: ``{component: run}``."""
    from core.datasets import load_run
    from core.errors import InvalidRequest

    runs: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        name, file = name.strip(), file.strip()
        if not sep or not name or not file:
            raise InvalidRequest(f"--component-run takes NAME=FILE, got {spec!r}")
        if name not in names:
            raise InvalidRequest(
                f"--component-run names {name!r}, which is not one of --components "
                f"({', '.join(names)})"
            )
        if name in runs:
            raise InvalidRequest(f"--component-run gives {name!r} twice")
        path = Path(file).expanduser()
        if not path.is_file():
            raise InvalidRequest(f"--component-run {name}: no such file {path}")
        runs[name] = load_run(path)
    return runs


@app.command("rerank-run")
@friendly
def rerank_run(
    candidates: Annotated[Path, typer.Option(help="TREC candidates JSON to rerank")],
    out: Annotated[Path, typer.Option(help="Run file to write: JSON {qid: {docid: score}}")],
    reranker: Annotated[
        str | None, typer.Option(help="Reranker name or directory (instead of --folds-dir)")
    ] = None,
    folds_dir: Annotated[
        Path | None,
        typer.Option(
            help="A k-fold directory (folds.json): each query scored by the fold model that "
            "never trained on it"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Rerank a candidates file into a run file (evaluate it with `quarry eval run`)."""
    from core.datasets import load_trec_candidates
    from core.errors import InvalidRequest
    from ranker.text.registry import LoadOptions, load_reranker
    from ranker.text.train.kfold import score_candidates, score_kfold, write_run

    setup_cli()
    if (reranker is None) == (folds_dir is None):
        raise InvalidRequest("Give exactly one of --reranker and --folds-dir")
    cands = load_trec_candidates(candidates)
    options = LoadOptions(device=device)
    if folds_dir is not None:
        run = score_kfold(folds_dir, cands, options=options, progress=progress)
    else:
        assert reranker is not None
        run = score_candidates(load_reranker(reranker, options), cands, progress=progress)
    write_run(run, out)
    typer.echo(f"{len(run)} queries reranked into {out}")


# --- quarry train ctr ---------------------------------------------------------------------


def _seed_list(text: str) -> list[int]:
    """``"1,2,3"`` → ``[1, 2, 3]``."""
    from core.errors import InvalidRequest

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvalidRequest(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise InvalidRequest("--seeds needs at least one seed")
    return seeds


def _fractions(text: str) -> tuple[float, float, float]:
    from core.errors import InvalidRequest

    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise InvalidRequest(f"--split takes three fractions TRAIN,VAL,TEST, got {text!r}")
    return parts[0], parts[1], parts[2]


@app.command()
@friendly
def ctr(
    out: Annotated[
        Path, typer.Option(help="Output folder: seed-<s>/ model directories and metrics.json")
    ],
    model: Annotated[str, typer.Option(help="din, din-short, sdim, dare or twin")] = "sdim",
    movielens: Annotated[
        Path | None, typer.Option(help="A MovieLens zip (ratings.csv + movies.csv), read as is")
    ] = None,
    interactions: Annotated[
        Path | None,
        typer.Option(
            "--interactions",
            "--data",
            help="Interaction log: CSV, TSV (.gz too) or Parquet with user, item, time and a "
            "rating or label column",
        ),
    ] = None,
    items: Annotated[
        Path | None, typer.Option(help="Item features: item id and a category column")
    ] = None,
    user_col: Annotated[str, typer.Option(help="User id column")] = "user",
    item_col: Annotated[str, typer.Option(help="Item id column")] = "item",
    time_col: Annotated[str, typer.Option(help="Timestamp column (numbers or date-times)")] = (
        "timestamp"
    ),
    rating_col: Annotated[str | None, typer.Option(help="Rating column (explicit labels)")] = None,
    label_col: Annotated[
        str | None, typer.Option(help="0/1 click column (instead of a rating)")
    ] = (None),
    category_col: Annotated[str | None, typer.Option(help="Category column of --items")] = None,
    item_key_col: Annotated[
        str | None, typer.Option(help="Item id column of --items (default: --item-col)")
    ] = None,
    sep: Annotated[
        str | None, typer.Option(help="Field separator (default: tab for .tsv, else comma)")
    ] = None,
    category_sep: Annotated[str, typer.Option(help="Separator of multi-valued categories")] = "|",
    category_position: Annotated[
        int, typer.Option(help="Which category of a multi-valued field (0 first, -1 last)")
    ] = 0,
    label_mode: Annotated[
        str,
        typer.Option(
            help="explicit (label column, or rating >= --threshold) or implicit (every "
            "interaction a click, popularity-sampled negatives)"
        ),
    ] = "explicit",
    threshold: Annotated[
        float, typer.Option(help="Explicit: a rating at least this is a click")
    ] = (4.0),
    negatives: Annotated[int, typer.Option(min=1, help="Implicit: negatives per click")] = 1,
    history: Annotated[
        str, typer.Option(help="Behaviours in a history: positive (clicked; the papers') or all")
    ] = "positive",
    max_history: Annotated[
        int, typer.Option(min=1, help="Most recent behaviours a sample keeps (padded per batch)")
    ] = 1000,
    min_history: Annotated[
        int, typer.Option(min=0, help="Samples with fewer earlier behaviours are left out")
    ] = 1,
    split: Annotated[str, typer.Option(help="Time-quantile split TRAIN,VAL,TEST")] = "0.8,0.1,0.1",
    data_seed: Annotated[int, typer.Option(help="Seed of the implicit negatives")] = 0,
    embed_dim: Annotated[int | None, typer.Option(help="Embedding width per field")] = None,
    attention_dim: Annotated[
        int | None, typer.Option(help="DARE: attention embedding width per field")
    ] = None,
    hashes: Annotated[int | None, typer.Option(help="SDIM: hash functions (m)")] = None,
    hash_bits: Annotated[int | None, typer.Option(help="SDIM: bits per hash (tau)")] = None,
    top_k: Annotated[int | None, typer.Option(help="DARE/TWIN: behaviours kept")] = None,
    mlp: Annotated[str | None, typer.Option(help="Head MLP widths, e.g. 200,80")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="Other model option KEY=VALUE, repeatable (dropout=0.1)"),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size")] = 256,
    eval_batch_size: Annotated[int, typer.Option(min=1, help="Evaluation batch size")] = 2048,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="Adam weight decay")] = 0.0,
    patience: Annotated[
        int, typer.Option(min=0, help="Stop after this many epochs without a better val AUC")
    ] = 2,
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated: one model per seed")] = "0",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    name: Annotated[
        str | None, typer.Option(help="Run name in reports (default: the model)")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from checkpoints (finished seeds are kept)")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Train a long-history CTR model (din, din-short, sdim, dare, twin) on a time-split log."""
    from core.errors import InvalidRequest
    from evaluation.ctr import training_table
    from evaluation.report import write_json
    from ranker.ctr import (
        LogFormat,
        SampleOptions,
        TrainOptions,
        build_samples,
        model_spec,
        read_log,
        read_movielens,
        train_seeds,
    )
    from ranker.ctr.trainer import METRICS_FILE

    setup_cli()
    model_spec(model)  # an unknown model fails before any data is read
    if (movielens is None) == (interactions is None):
        raise InvalidRequest("Give exactly one of --movielens (a zip) and --interactions (a log)")
    if movielens is not None:
        log = read_movielens(movielens, category_position=category_position)
    else:
        assert interactions is not None
        fmt = LogFormat(
            user_col=user_col,
            item_col=item_col,
            time_col=time_col,
            rating_col=rating_col,
            label_col=label_col,
            category_col=category_col,
            item_key_col=item_key_col,
            sep=sep,
            category_sep=category_sep or None,
            category_position=category_position,
        )
        log = read_log(interactions, items, fmt)
    data = build_samples(
        log,
        SampleOptions(
            label_mode=label_mode,
            threshold=threshold,
            negatives=negatives,
            history=history,
            max_history=max_history,
            min_history=min_history,
            split=_fractions(split),
            seed=data_seed,
        ),
    )
    given = {
        "embed_dim": embed_dim,
        "attention_dim": attention_dim,
        "hashes": hashes,
        "hash_bits": hash_bits,
        "top_k": top_k,
        "mlp": mlp,
    }
    model_options = {k: v for k, v in given.items() if v is not None}
    model_options.update(_parse_values(option))
    record = train_seeds(
        data,
        model,
        out,
        seeds=_seed_list(seeds),
        model_options=model_options,
        options=TrainOptions(
            epochs=epochs,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            lr=lr,
            weight_decay=weight_decay,
            patience=patience,
            device=device,
            progress=progress,
        ),
        name=name,
        resume=resume,
    )
    path = write_json(out / METRICS_FILE, record)
    typer.echo(training_table(record))
    typer.echo(f"Models: {', '.join(s['model_dir'] for s in record['seeds'])}; metrics: {path}")


def _measure_if_available() -> Any:
    """ranx measures held-out and pooled runs; without it (a bare GPU host) the runs are
    written and measured elsewhere with ``quarry eval run``."""
    import importlib.util

    if importlib.util.find_spec("ranx") is None:
        logger.warning("ranx is not installed: runs are written but not measured")
        return None
    from evaluation.rerank import measure_reranking

    return measure_reranking
