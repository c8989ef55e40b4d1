"""The web app: one HTML page with its scripts (shipped in the package), and a JSON API over a StoreView."""

from __future__ import annotations

import json
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from fipgraph.errors import FipgraphError, NodeNotFoundError
from fipgraph.ui.reader import StoreView

# Host headers a loopback server answers: a page on another site that rebinds its DNS name to
# 127.0.0.1 sends its own name, and is refused (DNS rebinding)
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]


class SqlBody(BaseModel):
    sql: str = Field(max_length=100_000)


class Constraint(BaseModel):
    column: str
    op: str = ">="
    value: float | int | str | list | None = None


class SelectBody(BaseModel):
    where: list[Constraint] = []
    condition: str | None = None
    order_by: str | None = None
    limit: int | None = None


class ParetoBody(BaseModel):
    maximize: list[str] = []
    minimize: list[str] = []
    where: list[Constraint] = []
    condition: str | None = None


def _json(payload) -> Response:
    # json.dumps straight to bytes: FastAPI's encoder walks every list item (100k nodes: ~1 s)
    return Response(json.dumps(payload, separators=(",", ":"), allow_nan=False), media_type="application/json")


def create_app(view: StoreView, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The FastAPI app serving `view`; `allowed_hosts` = Host headers accepted (None: loopback names)."""
    app = FastAPI(title="fipgraph ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOOPBACK_HOSTS)
    static = resources.files("fipgraph.ui") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.exception_handler(FipgraphError)
    def fipgraph_error(request: Request, exc: FipgraphError) -> JSONResponse:
        status = 404 if isinstance(exc, NodeNotFoundError) else 400
        return JSONResponse({"error": str(exc), "kind": type(exc).__name__}, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/api/version")
    def version() -> dict:
        return {"version": view.version()}

    @app.get("/api/meta")
    def meta() -> Response:
        return _json(view.meta())

    @app.get("/api/graph")
    def graph(layout: str = "pca", color: str | None = None) -> Response:
        return Response(view.graph_json(layout, color or None), media_type="application/json")

    @app.get("/api/node/{node_id}")
    def node(node_id: int) -> Response:
        return _json(view.node(node_id))

    @app.post("/api/sql")
    def sql(body: SqlBody) -> Response:
        r = view.console.run(body.sql)
        return _json({"columns": r.columns, "types": r.types, "rows": r.rows, "n_rows": r.n_rows,
                      "truncated": r.truncated, "seconds": round(r.seconds, 4)})

    @app.get("/api/sql.csv")
    def sql_csv(sql: str) -> Response:
        return Response(view.console.csv(sql), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="fipgraph-query.csv"'})

    @app.post("/api/select")
    def select(body: SelectBody) -> Response:
        return _json(view.select([c.model_dump() for c in body.where], body.condition, body.order_by, body.limit))

    @app.post("/api/pareto")
    def pareto(body: ParetoBody) -> Response:
        return _json(view.pareto(body.maximize, body.minimize, [c.model_dump() for c in body.where], body.condition))

    @app.get("/api/ensembles")
    def ensembles() -> Response:
        return _json(view.ensembles())

    return app
