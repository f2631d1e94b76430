"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from api.state import AppState
from core.settings import Settings
from service import Container
from service.keys import Grant


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


def require(scope: str) -> Callable[..., Awaitable[None]]:
    """A dependency that checks the bearer key for ``scope`` (and the path's collection).

    Route dependencies run before the body is validated, so a caller without a valid key gets
    401 (or 403) and never learns anything from a 422. The check runs on the event loop when
    no database query is needed (auth off, a static key, a cached answer) and on a worker
    thread otherwise: a request does not pay a thread hop for it.
    """

    async def _check(request: Request, state: StateDep, authorization: AuthHeader) -> None:
        keys = state.container.keys
        collection = request.path_params.get("name")
        if keys.check_cached(authorization, scope, collection) is None:
            await run_in_threadpool(keys.check, authorization, scope, collection)

    return _check


ReadScope = Depends(require("read"))
WriteScope = Depends(require("write"))
AdminScope = Depends(require("admin"))


class Authorizer:
    """The caller's grant, for a collection named in the body (search, create) or in a loaded
    row (a job), and for filtering lists. The key is authenticated (401) as a dependency."""

    def __init__(self, grant: Grant) -> None:
        self.grant = grant

    def check(self, scope: str, collection: str | None = None) -> None:
        """403 unless the key has ``scope`` (on ``collection`` when one is named)."""
        self.grant.require(scope, collection)

    def check_collection(self, collection: str | None) -> None:
        """403 unless the key reaches ``collection``; ``None`` (unknown) only an unrestricted
        key does."""
        self.grant.require_collection(collection)

    def covers(self, collection: str) -> bool:
        return self.grant.covers(collection)


async def get_authorizer(state: StateDep, authorization: AuthHeader) -> Authorizer:
    # A key lookup that needs the database runs on a worker thread, never on the loop.
    keys = state.container.keys
    grant = keys.authenticate_cached(authorization)
    if grant is None:
        grant = await run_in_threadpool(keys.authenticate, authorization)
    return Authorizer(grant)


AuthorizerDep = Annotated[Authorizer, Depends(get_authorizer)]
