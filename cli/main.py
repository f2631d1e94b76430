"""The ``quarry`` command line: serve, worker, db, index, search, compact, verify, keys.

A thin adapter: each command parses its options, calls one use case of :mod:`service` on
the container :func:`service.build` wires, and prints the outcome."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.eval import app as eval_app
from cli.support import friendly
from cli.support import setup_cli as _setup
from cli.train import app as train_app
from core.errors import QuarryError
from core.settings import Settings

app = typer.Typer(help="Quarry: retrieval, embedding and ranking service.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")
events_app = typer.Typer(help="Behaviour events and catalogue items (CTR).", no_args_is_help=True)
ctr_app = typer.Typer(help="CTR model deployments.", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(ctr_app, name="ctr")

logger = logging.getLogger("quarry.cli")


@app.command()
@friendly
def serve(
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes")] = 1,
    demo: Annotated[
        bool, typer.Option(help="Index the bundled Cranfield demo corpus first")
    ] = False,
    migrate: Annotated[
        bool | None,
        typer.Option(help="Run migrations first (default: only for the embedded SQLite database)"),
    ] = None,
) -> None:
    """Run the HTTP API (embedded default: SQLite, in-process jobs, local files)."""
    # Before torch loads: OpenMP threads that spin after each parallel region starve the
    # model queues' worker threads (a single CPU request took ~600 ms instead of ~15 ms).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from core import migrate as migrations

    settings = _setup()
    if workers > 1 and settings.resolved_task_mode == "inline":
        raise QuarryError(
            "Several API workers need a broker (QUARRY_BROKER_URL) and a database server"
        )
    if migrate if migrate is not None else settings.is_embedded:
        migrations.upgrade(settings.resolved_database_url)
    if demo:
        _index_demo(settings)
    typer.secho(f"Quarry API on http://{host}:{port}  (docs: /docs)", fg=typer.colors.GREEN)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
    )


def _index_demo(settings: Settings) -> None:
    from core.ingest_files import DEMO_COLLECTION, DEMO_CORPUS, read_jsonl
    from service import build
    from service.collections import ensure_collection
    from service.ingest import index_documents

    with build(settings) as c:
        ensure_collection(c, DEMO_COLLECTION, index_spec="Flat")
        report = index_documents(c, DEMO_COLLECTION, read_jsonl(DEMO_CORPUS))
    typer.echo(
        f"Demo collection '{DEMO_COLLECTION}': {report.documents} Cranfield abstracts "
        f"({report.indexed} newly indexed, {report.unchanged} already there). "
        "Corpus attribution: core/demo/ATTRIBUTION.md"
    )


@app.command()
@friendly
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues: gpu, cpu")] = "gpu,cpu",
    concurrency: Annotated[int, typer.Option(help="Worker processes (1 per GPU)")] = 1,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo, threads")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="Log level")] = "info",
) -> None:
    """Run a Celery worker for the given queues."""
    from service import build
    from workers.celery_app import create_celery_app

    settings = _setup()
    if not settings.broker_url:
        raise QuarryError(
            "`quarry worker` needs QUARRY_BROKER_URL (e.g. redis://localhost:6379/0). "
            "In the embedded mode jobs run inside `quarry serve` and no worker is needed."
        )
    build(settings).close()  # refuses an unmigrated schema with instructions
    celery = create_celery_app(settings)
    celery.worker_main(
        ["worker", "-Q", queues, "-c", str(concurrency), "-P", pool, "--loglevel", loglevel]
    )


@db_app.command("upgrade")
@friendly
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Upgrade the schema (default: to the latest revision)."""
    from core import migrate as migrations

    settings = _setup()
    migrations.upgrade(settings.resolved_database_url, revision)
    typer.echo(f"Database schema at {revision}")


@db_app.command("downgrade")
@friendly
def db_downgrade(revision: Annotated[str, typer.Argument()]) -> None:
    """Downgrade the schema to REVISION (``base`` removes everything)."""
    from core import migrate as migrations

    settings = _setup()
    migrations.downgrade(settings.resolved_database_url, revision)
    typer.echo(f"Database schema at {revision}")


@db_app.command("current")
@friendly
def db_current() -> None:
    """Show the schema revision of the database and the latest one."""
    from core import migrate as migrations
    from service import build

    with build(_setup(), check_schema=False) as c:
        typer.echo(f"current: {migrations.current_revision(c.engine)}")
        typer.echo(f"head:    {migrations.head_revision()}")


@app.command()
@friendly
def index(
    collection: Annotated[str, typer.Argument(help="Collection name")],
    file: Annotated[Path, typer.Argument(help="JSONL: {id, text, metadata} or BEIR corpus lines")],
    create: Annotated[bool, typer.Option(help="Create the collection if missing")] = True,
    embedder: Annotated[str | None, typer.Option(help="Model for a new collection")] = None,
    index_spec: Annotated[str, typer.Option(help="FAISS factory string for compaction")] = "Flat",
    batch_size: Annotated[int, typer.Option(min=1, help="Documents per job")] = 1000,
    wait: Annotated[bool, typer.Option(help="Follow the jobs to the end")] = True,
    compact: Annotated[bool, typer.Option(help="Compact the collection afterwards")] = False,
) -> None:
    """Batch-index a JSONL file into a collection, with a progress bar."""
    from core.ingest_files import read_jsonl
    from service import build
    from service.collections import ensure_collection
    from service.ingest import index_documents

    with build(_setup()) as c:
        if create:
            ensure_collection(c, collection, embedder=embedder, index_spec=index_spec)
        report = index_documents(c, collection, read_jsonl(file), batch_size=batch_size, wait=wait)
        rate = report.indexed / report.seconds if report.seconds else 0.0
        typer.echo(
            f"{report.documents} documents: {report.created} new, {report.updated} updated, "
            f"{report.unchanged} unchanged; {report.indexed} indexed in {report.seconds:.1f}s "
            f"({rate:.0f} docs/s)"
        )
        if report.failed_jobs:
            raise QuarryError(f"{len(report.failed_jobs)} job(s) failed: {report.failed_jobs}")
        if compact and wait:
            _compact(c, collection, None)


def _compact(c: Any, collection: str, index_spec: str | None) -> None:
    from core.models import JobState
    from service.collections import compact
    from service.ingest import wait_for_job

    job = compact(c, collection, index_spec)
    done = wait_for_job(c, job.id)
    if done.state != JobState.SUCCEEDED:
        raise QuarryError(f"Compaction {done.state}: {done.error}")
    spec = done.params.get("built_spec") or done.params.get("index_spec")
    typer.echo(f"Compacted '{collection}' into one {spec} segment ({done.done} vectors)")


@app.command("compact")
@friendly
def compact_cmd(
    collection: Annotated[str, typer.Argument(help="Collection name")],
    index_spec: Annotated[str | None, typer.Option(help="FAISS factory string")] = None,
) -> None:
    """Merge a collection's segments into one trained index."""
    from service import build

    with build(_setup()) as c:
        _compact(c, collection, index_spec)


@app.command()
@friendly
def verify(
    collection: Annotated[
        str | None, typer.Argument(help="Collection name (default: every collection)")
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(help="Rebuild corrupt segments: their documents are re-embedded from text"),
    ] = False,
) -> None:
    """Check every segment file against the manifest's checksums (and repair with --repair)."""
    from service import build
    from service.ingest import follow_jobs
    from service.integrity import verify as verify_collections

    with build(_setup()) as c:
        report = verify_collections(c, collection, repair=repair)
        for line in report.lines():
            typer.echo(line)
        jobs = [p.repair_job for p in report.corrupt if p.repair_job]
        if jobs:
            done, failed = follow_jobs(c, jobs)
            if failed:
                raise QuarryError(f"Repair job(s) failed: {failed}")
            typer.echo(f"Repaired: {done} document(s) embedded again")
    if report.corrupt and not repair:
        raise QuarryError(
            f"{len(report.corrupt)} corrupt segment(s); run `quarry verify --repair` to rebuild"
        )


@app.command()
@friendly
def search(
    collection: Annotated[str, typer.Argument(help="Collection name")],
    text: Annotated[str, typer.Argument(help="Query text")],
    k: Annotated[int, typer.Option("-k", min=1, help="Number of hits")] = 10,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", help="Metadata equality key=value (repeatable)")
    ] = None,
    mode: Annotated[str, typer.Option(help="dense, lexical (BM25) or hybrid (RRF)")] = "dense",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Search a collection from the command line (same code path as the API)."""
    from service import build

    filters: dict[str, Any] = {}
    for item in filter_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise QuarryError(f"--filter expects key=value, got {item!r}")
        filters[key] = _parse_scalar(value)
    with build(_setup()) as c:
        result = c.searcher.search(collection, text, k=k, filters=filters, mode=mode)  # type: ignore[arg-type]
    if as_json:
        hits = [
            {"id": h.external_id, "score": h.score, "text": h.text, "metadata": h.metadata}
            for h in result.hits
        ]
        typer.echo(json.dumps({"data": hits, "timings": result.timings}, indent=2))
        return
    for rank, h in enumerate(result.hits, 1):
        snippet = " ".join(h.text.split())[:100]
        typer.echo(f"{rank:>3}  {h.score:7.4f}  {h.external_id:<12} {snippet}")
    typer.echo(f"({result.timings.get('total_ms', 0):.1f} ms)", err=True)


def _parse_scalar(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@keys_app.command("create")
@friendly
def keys_create(
    name: Annotated[str, typer.Argument(help="A label for the key")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: read, write, admin")] = "read,write",
    collection: Annotated[
        list[str] | None,
        typer.Option("--collection", help="Restrict the key to this collection (repeatable)"),
    ] = None,
) -> None:
    """Create an API key and print it (shown once)."""
    from core.db import session_scope
    from service import build
    from service.keys import create_key

    with build(_setup()) as c, session_scope(c.sessions) as s:
        key = create_key(s, name, scopes, collection or None)
    typer.echo(key)


@keys_app.command("revoke")
@friendly
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's label")]) -> None:
    """Revoke an API key (refused by every API process within a second)."""
    from core.db import session_scope
    from service import build
    from service.keys import revoke_key

    with build(_setup()) as c, session_scope(c.sessions) as s:
        revoke_key(s, name)
    typer.echo(f"Revoked {name}")


@keys_app.command("list")
@friendly
def keys_list() -> None:
    """List API keys (names, scopes, collections, state; never the keys)."""
    from core.db import session_scope
    from service import build
    from service.keys import list_keys

    with build(_setup()) as c, session_scope(c.sessions) as s:
        for key in list_keys(s):
            where = ",".join(key.collections) if key.collections is not None else "*"
            state = "revoked" if key.revoked else "active"
            typer.echo(f"{key.name:<24} {key.scopes:<18} {where:<24} {state}")


FormatOption = Annotated[
    str, typer.Option("--format", help="auto (from the file name), csv, tsv or jsonl")
]


@events_app.command("load")
@friendly
def events_load(
    file: Annotated[Path, typer.Argument(help="CSV/TSV (header line first) or JSONL, gzip too")],
    fmt: FormatOption = "auto",
    user_col: Annotated[str | None, typer.Option(help="User id column [user_id]")] = None,
    item_col: Annotated[str | None, typer.Option(help="Item id column [item_id]")] = None,
    time_col: Annotated[
        str | None, typer.Option(help="Time column [timestamp]; missing: now")
    ] = None,
    rating_col: Annotated[str | None, typer.Option(help="Rating column [rating]")] = None,
    label_col: Annotated[str | None, typer.Option(help="0/1 label column [label]")] = None,
    id_col: Annotated[str | None, typer.Option(help="Event id column [id]")] = None,
    time_unit: Annotated[
        str, typer.Option(help="auto, s, ms (epoch) or iso (ISO 8601 text)")
    ] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Events per transaction")] = 5000,
) -> None:
    """Bulk-load behaviour events (MovieLens ratings.csv: --user-col userId --item-col movieId)."""
    from service import build
    from service.ctr_files import (
        EventColumns,
        check_format,
        check_time_unit,
        count_records,
        load_events,
        read_event_file,
    )

    unit = check_time_unit(time_unit)
    columns = EventColumns(
        user=user_col, item=item_col, time=time_col, rating=rating_col, label=label_col, id=id_col
    )
    form = check_format(fmt)
    with build(_setup()) as c:
        report = load_events(
            c,
            read_event_file(file, columns, fmt=form, time_unit=unit),
            batch_size=batch_size,
            total=count_records(file, form),
        )
    rate = report.records / report.seconds if report.seconds else 0.0
    typer.echo(
        f"{report.records} events: {report.stored} stored, {report.duplicates} already there; "
        f"{report.users} users with new events; {report.seconds:.1f}s ({rate:.0f} events/s)"
    )


@events_app.command("items")
@friendly
def events_items(
    file: Annotated[Path, typer.Argument(help="CSV/TSV (header line first) or JSONL, gzip too")],
    fmt: FormatOption = "auto",
    id_col: Annotated[str | None, typer.Option(help="Item id column [item_id]")] = None,
    category_col: Annotated[str | None, typer.Option(help="Category column [category]")] = None,
    metadata_col: Annotated[
        list[str] | None,
        typer.Option("--metadata-col", help="A column copied into metadata (repeatable)"),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per transaction")] = 5000,
) -> None:
    """Bulk-upsert catalogue items (MovieLens movies.csv: --id-col movieId --category-col
    genres)."""
    from service import build
    from service.ctr_files import (
        ItemColumns,
        check_format,
        count_records,
        load_items,
        read_item_file,
    )

    columns = ItemColumns(id=id_col, category=category_col, metadata=tuple(metadata_col or ()))
    form = check_format(fmt)
    with build(_setup()) as c:
        report = load_items(
            c,
            read_item_file(file, columns, fmt=form),
            batch_size=batch_size,
            total=count_records(file, form),
        )
    typer.echo(
        f"{report.records} items: {report.created} new, {report.updated} updated, "
        f"{report.unchanged} unchanged ({report.seconds:.1f}s)"
    )


def _follow(c: Any, job_id: str) -> None:
    from core.models import JobState
    from service.ctr_deploy import follow_rebuild

    job = follow_rebuild(c, job_id)
    if job.state != JobState.SUCCEEDED:
        raise QuarryError(f"Rebuild {job.state}: {job.error}")
    typer.echo(f"Encoded {job.done} users' histories in {job.duration_s or 0:.1f}s")


@ctr_app.command("deploy")
@friendly
def ctr_deploy(
    model_dir: Annotated[Path, typer.Argument(help="A model directory from `quarry train ctr`")],
    name: Annotated[
        str | None, typer.Option(help="Serve it under this name [QUARRY_CTR__DEFAULT_MODEL]")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the rebuild to the switch")] = True,
) -> None:
    """Deploy a CTR model: encode every user's history for it, then switch NAME to it."""
    from service import build
    from service.ctr_deploy import deploy

    settings = _setup()
    with build(settings) as c:
        out = deploy(c, model_dir, name or settings.ctr.default_model)
        dep = out.deployment
        if out.unchanged:
            typer.echo(f"{dep.name}: {dep.kind} version {dep.version} is already serving")
            return
        typer.echo(
            f"{dep.name}: {dep.kind} version {dep.version} is {dep.state} (job {dep.job_id})"
        )
        if wait and dep.state == "building" and dep.job_id:
            _follow(c, dep.job_id)
            typer.echo(f"{dep.name} now serves version {dep.version}")


@ctr_app.command("rebuild")
@friendly
def ctr_rebuild(
    name: Annotated[
        str | None, typer.Argument(help="A deployed name [QUARRY_CTR__DEFAULT_MODEL]")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job to its end")] = True,
) -> None:
    """Encode every user's history again for the deployment serving NAME."""
    from service import build
    from service.ctr_deploy import rebuild

    settings = _setup()
    with build(settings) as c:
        out = rebuild(c, name or settings.ctr.default_model)
        assert out.job is not None
        typer.echo(f"{out.deployment.name}: rebuild job {out.job.id}")
        if wait:
            _follow(c, out.job.id)


@ctr_app.command("list")
@friendly
def ctr_list() -> None:
    """List CTR deployments, newest first."""
    from service import build
    from service.ctr import list_deployments

    with build(_setup()) as c:
        for d in list_deployments(c):
            typer.echo(f"{d.name:<20} {d.kind:<10} {d.version:<18} {d.state:<9} users={d.users}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
