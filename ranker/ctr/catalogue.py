"""The item catalogue of a CTR model: external item id -> row, and each row's category.

Rows are ``0 .. len - 1``; ``-1`` stands for an unknown item (and, inside batches, for
padding). Categories are ``0 .. n_categories - 1`` where ``0`` is "no category" (an item the
item-feature file does not list, or lists with an empty field).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InvalidRequest

#: The name of category ``0``.
NO_CATEGORY = ""


class ItemCatalogue:
    """Item ids, their rows and categories (implements :class:`ranker.ctr.base.Catalogue`)."""

    def __init__(
        self,
        item_ids: Sequence[str],
        categories: np.ndarray,
        category_names: Sequence[str],
    ) -> None:
        self.item_ids: list[str] = [str(i) for i in item_ids]
        self.categories = np.asarray(categories, dtype=np.int64)
        self.category_names: list[str] = [str(c) for c in category_names]
        if self.categories.shape != (len(self.item_ids),):
            raise InvalidRequest(
                f"{len(self.item_ids)} items but {self.categories.shape[0]} categories"
            )
        if not self.category_names or self.category_names[0] != NO_CATEGORY:
            raise InvalidRequest("Category 0 must be the empty 'no category' name")
        if len(self.categories) and (
            self.categories.min() < 0 or self.categories.max() >= len(self.category_names)
        ):
            raise InvalidRequest("Item categories must index category_names")
        self._index = {item: row for row, item in enumerate(self.item_ids)}
        if len(self._index) != len(self.item_ids):
            raise InvalidRequest("Item ids in a catalogue must be unique")

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def n_categories(self) -> int:
        """Number of categories, ``0`` ("no category") included."""
        return len(self.category_names)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """``int64`` rows of ``item_ids``; an unknown id gets ``-1``."""
        get = self._index.get
        return np.fromiter((get(str(i), -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def category_of(self, rows: np.ndarray) -> np.ndarray:
        """Categories of catalogue rows (``0`` for ``-1``)."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(rows >= 0, self.categories[np.clip(rows, 0, None)], 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_ids": self.item_ids,
            "categories": self.categories.tolist(),
            "category_names": self.category_names,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemCatalogue:
        try:
            return cls(data["item_ids"], np.asarray(data["categories"]), data["category_names"])
        except KeyError as exc:
            raise InvalidRequest(f"A catalogue needs {exc.args[0]!r}") from None

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ItemCatalogue:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"{path} is not a readable catalogue: {exc}") from None
        return cls.from_dict(data)
