"""``python -m embedder.train``: the ``quarry train`` commands without the ``quarry`` script."""

from __future__ import annotations

from embedder.train.cli import app

if __name__ == "__main__":
    app(prog_name="quarry train")
