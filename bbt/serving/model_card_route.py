"""GET /model-card: the served model's card, read once from the BentoML model's files at start-up.

Markdown for clients that ask for it (Accept: text/markdown), else a minimal page showing the markdown as text
(every character escaped, no scripts, nothing fetched from elsewhere). A model logged before cards existed has
none: the route answers 404 JSON and the page hides its footer link.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from bbt.registry.model_card import CARD_FILE
from bbt.serving.upload_limits import error_response

PLACEHOLDER = "{{model_card}}"  # in index.html: the footer link's `hidden` attribute when there is no card


def served_card(model_dir: str | Path) -> str | None:
    """The card in a logged model's folder (the BentoML store's mlflow_model/), None when it has none."""
    path = Path(model_dir) / CARD_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


def card_and_page(model_dir: str | Path, index_html: str) -> tuple[str | None, str]:
    """The served card, and the page with its footer link shown only when there is one."""
    card = served_card(model_dir)
    return card, index_html.replace(PLACEHOLDER, "" if card is not None else "hidden")


def card_page(card: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<title>Model card</title><link rel=\"stylesheet\" href=\"static/app.css\"></head>\n"
            f"<body><main><pre class=\"model-card\">{html.escape(card)}</pre>"
            "<p><a href=\"./\">back to the page</a></p></main></body>\n</html>\n")


def card_response(card: str | None, request: Request) -> Response | JSONResponse:
    if card is None:
        return error_response(404, "the served model has no model card (it was registered before cards existed): "
                                   "run `bbt card --write VERSION` for its registry version, then rebuild or "
                                   "restart the server (`bbt serve` imports it again)")
    if "text/markdown" in request.headers.get("accept", ""):
        return Response(card, media_type="text/markdown; charset=utf-8")
    return HTMLResponse(card_page(card))
