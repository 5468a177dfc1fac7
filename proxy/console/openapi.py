"""The admin API's OpenAPI 3.1 document, made from the route table it describes, so the
document and the routes cannot disagree (a test checks every route is in it and
nothing else)."""

from __future__ import annotations

from typing import Any

from proxy.console.api import Route

ERROR = {"$ref": "#/components/schemas/Error"}


def document(routes: list[Route], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": f"{r.method.lower()}{r.path.replace('/', '_').replace('.', '_')}",
            "responses": {
                "200": {"description": "done", "content": {"application/json": {"schema": {}}}},
                "400": {"description": "bad input, naming the field",
                        "content": {"application/json": {"schema": ERROR}}},
            },
        }
        if r.permission is not None:
            op["description"] = f"Needs permission {r.permission!r}."
            op["security"] = [{"bearer": []}, {"session": []}]
            op["responses"]["401"] = {"description": "no or bad credentials",
                                      "content": {"application/json": {"schema": ERROR}}}
            op["responses"]["403"] = {"description": "the role may not do this",
                                      "content": {"application/json": {"schema": ERROR}}}
        else:
            op["security"] = []
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {name: {"description": text} for name, text in r.body.items()},
            }}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Rampart admin API", "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an API key from `rampart admin key create`"},
                "session": {"type": "apiKey", "in": "cookie", "name": "rampart_session",
                            "description": "from POST /api/login; unsafe methods also need"
                                           " the X-CSRF-Token header"},
            },
            "schemas": {"Error": {"type": "object", "properties": {"error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }}}},
        },
    }
