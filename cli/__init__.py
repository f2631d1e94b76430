"""The ``quarry`` command: a thin adapter over the application layer (:mod:`service`).

Each sub-command parses its options, calls one use case and prints the outcome. Importing
this package is cheap: heavy modules are imported inside the commands.
"""

__all__: list[str] = []
