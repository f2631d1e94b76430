"""Interaction logs in a generic format, and the MovieLens reader built on it.

A log is two tables, each CSV, TSV (``.gz`` too) or Parquet, with column names given as
options (:class:`LogFormat`):

- **interactions**: user id, item id, timestamp, and a rating or a 0/1 label (or neither,
  for an implicit-feedback log of positives only). Timestamps are numbers (e.g. Unix
  seconds) or date-time strings, compared as given.
- **items** (optional): item id and a category field. A multi-valued field (``A|B``) is
  split on ``category_sep`` and the value at ``category_position`` is used (0: the first,
  -1: the last; an item with fewer values gets no category).

Any log in this format loads without code changes; :func:`read_movielens` only names the
columns of the MovieLens zip (``ratings.csv``, ``movies.csv``).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.errors import InvalidRequest
from ranker.ctr.catalogue import NO_CATEGORY, ItemCatalogue

logger = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class LogFormat:
    """Where things are in an interaction log and its item file (see the module docstring).

    ``item_key_col`` names the item id column of the item file (default: ``item_col``);
    ``sep`` the field separator of delimited files (default: tab for ``.tsv``, else comma).
    """

    user_col: str = "user"
    item_col: str = "item"
    time_col: str = "timestamp"
    rating_col: str | None = None
    label_col: str | None = None
    category_col: str | None = None
    item_key_col: str | None = None
    sep: str | None = None
    category_sep: str | None = "|"
    category_position: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The columns of MovieLens ``ratings.csv`` and ``movies.csv`` (ml-latest, ml-latest-small,
#: ml-20m, ml-25m).
MOVIELENS_FORMAT = LogFormat(
    user_col="userId",
    item_col="movieId",
    time_col="timestamp",
    rating_col="rating",
    category_col="genres",
)


@dataclass
class InteractionLog:
    """Interactions in file order: ``users`` (external ids), ``items`` (catalogue rows),
    ``times``, and ``ratings`` / ``labels`` where the log has them."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    catalogue: ItemCatalogue
    ratings: np.ndarray | None = None
    labels: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


Source = Path | IO[bytes]


def _suffixes(name: str) -> list[str]:
    return [s.lower() for s in Path(name).suffixes]


def _separator(name: str, sep: str | None) -> str:
    if sep is not None:
        return "\t" if sep in ("\\t", "tab") else sep
    return "\t" if ".tsv" in _suffixes(name) else ","


def _read_table(
    source: Source, name: str, columns: Sequence[str], sep: str | None
) -> dict[str, np.ndarray]:
    """The ``columns`` of a CSV/TSV/Parquet table as arrays (text for delimited files)."""
    parquet = any(s in PARQUET_SUFFIXES for s in _suffixes(name))
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if parquet:
        if pd is None:
            raise InvalidRequest(f"{name}: reading Parquet needs pandas (pip install pandas)")
        try:
            frame = pd.read_parquet(source)
        except ImportError as exc:
            raise InvalidRequest(f"{name}: reading Parquet needs pyarrow or fastparquet") from exc
        _check_columns(name, list(frame.columns), columns)
        return {c: frame[c].to_numpy() for c in columns}
    delimiter = _separator(name, sep)
    if pd is not None:
        try:
            frame = pd.read_csv(
                source,
                sep=delimiter,
                dtype=str,
                keep_default_na=False,
                usecols=lambda c: c in set(columns),
                compression="infer" if isinstance(source, Path) else None,
            )
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"{name} is not a readable delimited file: {exc}") from None
        if any(c not in frame.columns for c in columns):
            _check_columns(name, _header(source, delimiter) or list(frame.columns), columns)
        return {c: frame[c].to_numpy(dtype=object) for c in columns}
    return _read_delimited(source, name, columns, delimiter)


@contextmanager
def _open_bytes(source: Source) -> Iterator[IO[bytes]]:
    """A binary stream of a file (gunzipped for ``.gz``) or of an open stream, from its start."""
    if not isinstance(source, Path):
        source.seek(0)
        yield source
        return
    opener: Any = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rb") as raw:
        yield raw


def _header(source: Source, delimiter: str) -> list[str]:
    """The header of a delimited file, for the error message about a missing column."""
    try:
        with _open_bytes(source) as raw:
            line = raw.readline().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return next(csv.reader([line], delimiter=delimiter), [])


def _read_delimited(
    source: Source, name: str, columns: Sequence[str], delimiter: str
) -> dict[str, np.ndarray]:
    """The csv-module reader, for environments without pandas."""
    values: list[list[str]] = [[] for _ in columns]
    with _open_bytes(source) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            reader = csv.reader(text, delimiter=delimiter)
            header = next(reader, [])
            _check_columns(name, header, columns)
            idx = [header.index(c) for c in columns]
            for row in reader:
                if not row:
                    continue
                for out, i in zip(values, idx, strict=True):
                    out.append(row[i] if i < len(row) else "")
        finally:
            text.detach()  # the stream is closed by its owner, not by the wrapper
    return {c: np.array(v, dtype=object) for c, v in zip(columns, values, strict=True)}


def _check_columns(name: str, have: list[str], want: Sequence[str]) -> None:
    missing = [c for c in want if c not in have]
    if missing:
        raise InvalidRequest(
            f"{name} has no column {', '.join(map(repr, missing))}; its columns: "
            f"{', '.join(map(str, have)) or '(none)'}"
        )


def _ids(values: np.ndarray) -> np.ndarray:
    """Ids as text (Parquet integers too), stripped."""
    return np.array([str(v).strip() for v in values], dtype=object)


def _numbers(values: np.ndarray, what: str, name: str) -> np.ndarray:
    if values.dtype.kind in "iufb":
        return values.astype(np.float64)
    try:
        return np.array([float(v) if str(v).strip() else np.nan for v in values])
    except ValueError:
        bad = next(v for v in values if not _is_float(v))
        raise InvalidRequest(f"{name}: {what} {bad!r} is not a number") from None


def _is_float(v: Any) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def parse_times(values: np.ndarray, name: str = "interactions") -> np.ndarray:
    """Timestamps as ``int64`` (integers, or nanoseconds of date-time strings) or ``float64``."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        return values.astype(np.float64)
    if values.dtype.kind == "M":
        return values.astype("datetime64[ns]").astype(np.int64)
    text = np.array([str(v).strip() for v in values], dtype=object)
    try:
        return text.astype(np.int64)
    except ValueError:
        pass
    try:
        return text.astype(np.float64)
    except ValueError:
        pass
    try:
        return np.array(text, dtype="datetime64[ns]").astype(np.int64)
    except ValueError:
        pass
    try:
        import pandas as pd

        return pd.to_datetime(text).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    except (ImportError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"{name}: timestamps must be numbers or date-times ({exc})") from None


def pick_category(value: str, sep: str | None, position: int) -> str:
    """The category of a (possibly multi-valued) field, ``""`` when there is none."""
    value = str(value).strip()
    if not value or sep is None:
        return value
    parts = [p.strip() for p in value.split(sep)]
    try:
        return parts[position]
    except IndexError:
        return NO_CATEGORY


def _catalogue(
    item_ids: np.ndarray, items_table: dict[str, np.ndarray] | None, fmt: LogFormat
) -> ItemCatalogue:
    """Items of the item file (in its order), then items only the interactions name."""
    known: dict[str, str] = {}
    if items_table is not None:
        key = fmt.item_key_col or fmt.item_col
        assert fmt.category_col is not None
        for item, raw in zip(_ids(items_table[key]), items_table[fmt.category_col], strict=True):
            known.setdefault(item, pick_category(raw, fmt.category_sep, fmt.category_position))
    ordered = list(known)
    extra = dict.fromkeys(i for i in item_ids if i not in known)
    ordered += list(extra)
    names = [NO_CATEGORY, *sorted({c for c in known.values() if c != NO_CATEGORY})]
    index = {c: i for i, c in enumerate(names)}
    categories = np.array([index[known.get(i, NO_CATEGORY)] for i in ordered], dtype=np.int64)
    return ItemCatalogue(ordered, categories, names)


def _load(
    interactions: Source,
    interactions_name: str,
    items: Source | None,
    items_name: str | None,
    fmt: LogFormat,
) -> InteractionLog:
    if items is not None and fmt.category_col is None:
        raise InvalidRequest("An item file needs its category column (--category-col)")
    cols = [fmt.user_col, fmt.item_col, fmt.time_col]
    cols += [c for c in (fmt.rating_col, fmt.label_col) if c is not None]
    table = _read_table(interactions, interactions_name, list(dict.fromkeys(cols)), fmt.sep)
    users, item_ids = _ids(table[fmt.user_col]), _ids(table[fmt.item_col])
    raw_times = table[fmt.time_col]
    empty_time = (
        np.array([str(v).strip() == "" for v in raw_times])
        if raw_times.dtype == object
        else np.zeros(len(raw_times), bool)
    )
    keep = (users != "") & (item_ids != "") & ~empty_time
    if not keep.all():
        logger.warning(
            "%s: %d rows without a user, item or timestamp left out",
            interactions_name,
            int((~keep).sum()),
        )
    if not keep.any():
        raise InvalidRequest(f"{interactions_name} has no interactions")
    items_table = None
    if items is not None:
        assert items_name is not None and fmt.category_col is not None
        key = fmt.item_key_col or fmt.item_col
        items_table = _read_table(
            items, items_name, list(dict.fromkeys([key, fmt.category_col])), fmt.sep
        )
    catalogue = _catalogue(item_ids[keep], items_table, fmt)
    ratings = labels = None
    if fmt.rating_col is not None:
        ratings = _numbers(table[fmt.rating_col][keep], "rating", interactions_name)
    if fmt.label_col is not None:
        labels = _numbers(table[fmt.label_col][keep], "label", interactions_name)
    log = InteractionLog(
        users=users[keep],
        items=catalogue.rows(list(item_ids[keep])),
        times=parse_times(raw_times[keep], interactions_name),
        catalogue=catalogue,
        ratings=ratings,
        labels=labels,
        source={"interactions": interactions_name, "items": items_name, "format": fmt.to_dict()},
    )
    logger.info(
        "%s: %d interactions, %d users, %d items, %d categories",
        interactions_name,
        len(log),
        len(np.unique(log.users)),
        len(catalogue),
        catalogue.n_categories - 1,
    )
    return log


def read_log(
    interactions: Path, items: Path | None = None, fmt: LogFormat | None = None
) -> InteractionLog:
    """Read an interaction log (and its item file) in the generic format."""
    fmt = fmt or LogFormat()
    for path in (interactions, items):
        if path is not None and not Path(path).is_file():
            raise InvalidRequest(f"{path} is not a file")
    return _load(
        Path(interactions),
        str(Path(interactions).resolve()),
        Path(items) if items is not None else None,
        str(Path(items).resolve()) if items is not None else None,
        fmt,
    )


def _member(archive: zipfile.ZipFile, path: Path, name: str) -> str:
    found = [m for m in archive.namelist() if m == name or m.endswith("/" + name)]
    if not found:
        raise InvalidRequest(f"{path} has no {name} (is it a MovieLens zip?)")
    return min(found, key=len)


def read_movielens(path: Path, *, category_position: int = 0) -> InteractionLog:
    """The MovieLens zip as distributed (``ratings.csv`` + ``movies.csv``), read as is.

    Genres ``A|B|C`` give the category at ``category_position`` (default: the first).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"{path} is not a file")
    fmt = MOVIELENS_FORMAT
    if category_position != fmt.category_position:
        from dataclasses import replace

        fmt = replace(fmt, category_position=category_position)
    try:
        with zipfile.ZipFile(path) as archive:
            ratings = _member(archive, path, "ratings.csv")
            movies = _member(archive, path, "movies.csv")
            with archive.open(ratings) as r, archive.open(movies) as m:
                log = _load(io.BytesIO(r.read()), ratings, io.BytesIO(m.read()), movies, fmt)
    except zipfile.BadZipFile as exc:
        raise InvalidRequest(f"{path} is not a zip file: {exc}") from None
    log.source = {"movielens": str(path.resolve()), "format": fmt.to_dict()}
    return log
