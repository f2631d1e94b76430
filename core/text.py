"""What a stored string or metadata value must be, wherever it comes from (the API, a JSONL
file, the CLI): no NUL character (Postgres refuses it in text), valid Unicode (no lone
surrogates, which no JSON response can carry), finite numbers and bounded nesting."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, Field

#: What every stored string must match, as documented in the OpenAPI schema.
NO_NUL_PATTERN = "^[^\\u0000]*$"
#: Nesting depth allowed in document metadata (objects and arrays).
MAX_METADATA_DEPTH = 32


def clean_text(value: str) -> str:
    """``value`` if the database can store it and a JSON response can carry it."""
    if "\x00" in value:
        raise ValueError("NUL characters (\\u0000) are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate code point)") from None
    return value


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Clean strings (keys included), finite numbers, bounded nesting; walked without
    recursion so that a deep document cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        raise ValueError("object keys must be strings")
                    clean_text(key)
                    stack.append((sub, depth + 1))
            else:
                stack.extend((sub, depth + 1) for sub in item)
        elif isinstance(item, str):
            clean_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    return value


def keys_as_property_names(schema: dict[str, Any]) -> None:
    """JSON Schema of a dict with constrained keys: every key obeys ``propertyNames`` (pydantic
    writes the key pattern as ``patternProperties``, which leaves other keys unconstrained)."""
    patterns = schema.pop("patternProperties", None)
    if patterns:
        ((pattern, values),) = patterns.items()
        schema["additionalProperties"] = values
        schema.setdefault("propertyNames", {})["pattern"] = pattern


#: A string Quarry stores or compares: no NUL, valid Unicode.
CleanStr = Annotated[
    str, AfterValidator(clean_text), Field(json_schema_extra={"pattern": NO_NUL_PATTERN})
]
#: Document metadata: a JSON object of clean keys and values.
Metadata = Annotated[
    dict[CleanStr, Any],
    AfterValidator(check_metadata),
    Field(json_schema_extra=keys_as_property_names),
]
