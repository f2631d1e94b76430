"""``quarry train``: fine-tune LLM embedders, and build their training data.

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
    from embedder.train.data import TrainExample

app = typer.Typer(
    help="Train models: LLM embedders (designs and recipe: docs/methods.md).",
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
