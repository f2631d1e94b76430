"""``python -m embedder.train``: the ``quarry train`` commands without the ``quarry`` script."""

from __future__ import annotations

from cli.train import app

if __name__ == "__main__":
    app(prog_name="quarry train")
