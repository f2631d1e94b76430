"""``/docs`` and ``/openapi.json``: Swagger UI served from the ``swagger-ui-bundle`` package
(no CDN, so the docs work offline) and an OpenAPI schema that documents the error body the
server really sends (``{"error": {"code", "message", "details"}}``)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api.deps import require
from api.schemas import ErrorResponse
from core.settings import Limits, RerankSettings, Settings

_STATIC = "/docs/static"
# Error statuses any route may answer with, documented once for every operation.
_ERRORS = {
    "400": "Bad request",
    "401": "Missing or invalid API key",
    "403": "The key lacks the scope, or the model is not enabled",
    "404": "Not found",
    "409": "Conflict",
    "413": "Payload too large",
    "422": "Invalid request",
    "500": "Server-side fault (e.g. a corrupt segment)",
    "503": "Unavailable (e.g. the task broker is down)",
}


_ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def _declared(response: dict[str, Any]) -> bool:
    """Whether a route documented this response itself (not FastAPI's default 422)."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") != "#/components/schemas/HTTPValidationError"


def _set_limits(components: dict[str, Any], limits: Limits) -> None:
    """Document this server's request limits (``QUARRY_LIMITS__*``) as schema bounds.

    Requests over them are answered 413 (too many items) or 422 (too long, ``k`` too big).
    """
    text_max = {"maxLength": limits.max_text_chars}
    props = components["SearchRequest"]["properties"]
    props["k"]["maximum"] = limits.max_k
    props["query"].update(text_max)
    docs = components["DocumentsIngest"]["properties"]["documents"]
    docs["maxItems"] = limits.max_batch_docs
    components["DocumentIn"]["properties"]["text"].update(text_max)
    inputs = components["EmbedRequest"]["properties"]["inputs"]
    inputs["maxItems"] = limits.max_embed_inputs
    inputs["items"].update(text_max)
    for variant in components["OpenAIEmbeddingsRequest"]["properties"]["input"]["anyOf"]:
        if variant.get("type") == "string":
            variant.update(text_max)
        elif variant.get("items", {}).get("type") == "string":
            variant["maxItems"] = limits.max_embed_inputs
            variant["items"].update(text_max)


def _set_rerank_limits(components: dict[str, Any], rerank: RerankSettings) -> None:
    """Document the rerank limits (``QUARRY_RERANK__*``): too many documents is 413, a too
    long query or document 422, too many search candidates 422."""
    request = components["RerankRequest"]["properties"]
    request["query"]["maxLength"] = rerank.max_query_chars
    docs = request["documents"]
    docs["maxItems"] = rerank.max_documents
    for variant in docs["items"]["anyOf"]:
        if variant.get("type") == "string":
            variant["maxLength"] = rerank.max_document_chars
    components["RerankDocument"]["properties"]["text"]["maxLength"] = rerank.max_document_chars
    for variant in components["SearchRerank"]["properties"]["candidates"]["anyOf"]:
        if variant.get("type") == "integer":
            variant["maximum"] = rerank.max_documents


def _schema(app: FastAPI, settings: Settings) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorResponse,):
        sub_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(sub_schema.pop("$defs", {}))
        components[model.__name__] = sub_schema
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    _set_limits(components, settings.limits)
    _set_rerank_limits(components, settings.rerank)
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status, description in _ERRORS.items():
                if status not in responses or not _declared(responses[status]):
                    responses[status] = {"description": description, "content": _ERROR_REF}
    app.openapi_schema = schema
    return schema


def install_docs(app: FastAPI, settings: Settings) -> None:
    """Add ``/openapi.json`` and ``/docs`` (open, or behind ``read`` per settings)."""
    from swagger_ui_bundle import swagger_ui_path

    deps = [] if settings.auth.open_docs else [Depends(require("read"))]
    app.openapi = lambda: _schema(app, settings)  # type: ignore[method-assign]

    async def openapi_json() -> JSONResponse:
        return JSONResponse(_schema(app, settings))

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{_STATIC}/favicon-32x32.png",
            # Swagger UI would otherwise send the schema to validator.swagger.io for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )

    app.add_api_route(
        "/openapi.json", openapi_json, methods=["GET"], include_in_schema=False, dependencies=deps
    )
    app.add_api_route(
        "/docs", swagger_ui, methods=["GET"], include_in_schema=False, dependencies=deps
    )
    app.mount(_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
