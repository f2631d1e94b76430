"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.state import AppState
from core.db import session_scope
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
