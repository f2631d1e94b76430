"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.state import AppState
from core.settings import Settings
from service import Container


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.quarry
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_container(state: StateDep) -> Container:
    return state.container


ContainerDep = Annotated[Container, Depends(get_container)]


async def get_settings_dep(state: StateDep) -> Settings:
    return state.container.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


async def get_authorization(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The ``Authorization`` header's bearer value, documented as a security scheme."""
    if credentials is None:
        return None
    return f"{credentials.scheme} {credentials.credentials}"


AuthHeader = Annotated[str | None, Depends(get_authorization)]


def require(scope: str) -> Callable[..., None]:
    """A dependency that checks the bearer key for ``scope`` (and the path's collection)."""

    def _check(request: Request, state: StateDep, authorization: AuthHeader) -> None:
        state.container.keys.check(authorization, scope, request.path_params.get("name"))

    return _check


ReadScope = Depends(require("read"))
WriteScope = Depends(require("write"))
AdminScope = Depends(require("admin"))


class Authorizer:
    """Checks a key against a collection named in the body (search) or a loaded row."""

    def __init__(self, state: AppState, authorization: str | None) -> None:
        self._state, self._auth = state, authorization

    def check(self, scope: str, collection: str | None) -> None:
        self._state.container.keys.check(self._auth, scope, collection)


async def get_authorizer(state: StateDep, authorization: AuthHeader) -> Authorizer:
    return Authorizer(state, authorization)


AuthorizerDep = Annotated[Authorizer, Depends(get_authorizer)]
