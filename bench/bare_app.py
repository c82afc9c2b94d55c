"""The bare endpoint the HTTP figures are compared with: FastAPI + uvicorn, one POST that
parses a small JSON order (validated by a pydantic model, as stockguard's is) and answers
201 with a small JSON body. Nothing else: no database, no cache, no middleware."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

__all__ = ["app"]


class _Line(BaseModel):
    sku: str
    quantity: int


class _Order(BaseModel):
    id: str
    lines: list[_Line]


app = FastAPI()


@app.post("/v1/orders", status_code=201)
async def place(body: _Order) -> JSONResponse:
    return JSONResponse(
        {"id": body.id, "status": "pending", "lines": [ln.model_dump() for ln in body.lines]},
        status_code=201,
    )


@app.get("/readyz")
async def ready() -> dict[str, str]:
    return {"status": "ok"}
