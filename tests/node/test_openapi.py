"""The served OpenAPI document describes exactly the routes a node serves."""

from __future__ import annotations

from typing import Any, cast

from node.calls_api import add_call_routes
from node.events import EventHub
from node.http_api import make_app
from node.ivr_api import add_ivr_routes
from node.media_api import add_media_routes
from node.openapi import document
from registry.registry import Registry
from sip.phone_api import add_phone_routes


def served_routes() -> set[tuple[str, str]]:
    unused = cast(Any, None)  # routes are only registered here, never called
    app = make_app(Registry("n1"), unused, unused, faults=cast(Any, object()))
    add_call_routes(app, unused, unused, unused, Registry("n1"), EventHub())
    add_media_routes(app, unused, unused)
    add_phone_routes(app, unused, unused)
    add_ivr_routes(app, unused, unused, unused, unused)
    return {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def test_every_route_is_documented_and_nothing_else() -> None:
    documented = {
        (path, method) for path, operations in document()["paths"].items() for method in operations
    }
    assert served_routes() == documented


def test_every_operation_names_its_path_parameters_and_error_shape() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            names = {p["name"] for p in operation.get("parameters", [])}
            assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}
