"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.state import AppState
from core.db import session_scope
from core.errors import Forbidden
from core.settings import Settings


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.quarry
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings_dep(state: StateDep) -> Settings:
    return state.runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_session(state: StateDep) -> Iterator[Session]:
    with session_scope(state.runtime.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def require(scope: str) -> Callable[..., None]:
    def _check(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
        state.keys.check(authorization, scope)

    return _check


ReadScope = Depends(require("read"))
WriteScope = Depends(require("write"))


def check_model_allowed(settings: Settings, name: str) -> None:
    """Refuse model names the operator has not allowed (a name may be a local path).

    Packaged models (MiniLM, SmolLM2 with any preset suffix) are always allowed; anything
    else must be listed in ``QUARRY_EMBEDDER__ALLOWED_MODELS``.
    """
    from embedder import KNOWN_MODELS
    from embedder.llm.names import LLM_MODELS

    allowed = {settings.embedder.default_model, *KNOWN_MODELS, *settings.embedder.allowed_models}
    if name in allowed or name.split(":", 1)[0] in LLM_MODELS:
        return
    raise Forbidden(
        f"Model {name!r} is not enabled on this server. Enabled models: "
        f"{', '.join(sorted(allowed | set(LLM_MODELS)))}. Operators add more with "
        "QUARRY_EMBEDDER__ALLOWED_MODELS (a JSON list)."
    )
