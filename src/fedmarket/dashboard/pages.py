"""The dashboard's pages: Jinja2 templates rendered from `views`, with the filters that show token
units, local ISO times and state names, and the accuracy curve drawn as inline SVG."""

from __future__ import annotations

import json
from pathlib import Path

from .. import display
from ..errors import FedMarketError
from . import views


def accuracy_svg(rounds: list[dict], width: int = 560, height: int = 180) -> dict | None:
    """Points of the accuracy curve (x: round, y: accuracy in [0, 1]) in SVG coordinates."""
    pts = [(r["round"], r["accuracy"]) for r in rounds if r.get("accuracy") is not None]
    if not pts:
        return None
    pad, last = 30, max(1, max(p[0] for p in pts))
    xy = [(pad + (width - 2 * pad) * x / last, height - pad - (height - 2 * pad) * y) for x, y in pts]
    return {"width": width, "height": height, "pad": pad, "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in xy),
            "dots": [{"x": x, "y": y, "round": r, "accuracy": a} for (x, y), (r, a) in zip(xy, pts)], "last": last}


class Pages:
    """Renders each page of a `Dashboard`; every method returns (HTTP status, HTML)."""

    def __init__(self, dash, templates: Path):
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        self.dash = dash
        env = Environment(loader=FileSystemLoader(str(templates)), autoescape=select_autoescape(["html"]),
                          trim_blocks=True, lstrip_blocks=True)
        env.filters.update(tokens=lambda v: "-" if v is None else display.tokens(v), iso=display.iso,
                           short=display.short, state=display.state_name,
                           pct=lambda v: "-" if v is None else f"{100 * v:.1f}%")
        self.env = env

    def _render(self, name: str, partial: bool, status: int = 200, **ctx) -> tuple[int, str]:
        head = {"version": self.dash.indexer.version, "head": self.dash.indexer.head}
        return status, self.env.get_template(name).render(partial=partial, live=head, **ctx)

    def index(self, request, partial: bool):
        return self._render("index.html", partial, jobs=views.jobs(self.dash.db), info=views.head(self.dash.db))

    def job(self, request, partial: bool):
        job_id = request.path_params["job_id"]
        view = views.job_view(self.dash.db, job_id, self.dash.document)
        if view is None:
            return self._render("missing.html", partial, 404, what=f"job {job_id}")
        return self._render("job.html", partial, v=view, chart=accuracy_svg(view.rounds), has_store=self.dash.store is not None)

    def provider(self, request, partial: bool):
        address = request.path_params["address"]
        view = views.provider_view(self.dash.db, address, self.dash.document)
        if view is None:
            return self._render("missing.html", partial, 404, what=f"account {address}")
        return self._render("provider.html", partial, p=view)

    def tx(self, request, partial: bool):
        tx = request.path_params["tx"]
        events = views.tx_events(self.dash.db, tx)
        try:
            receipt = self.dash.chain.request("eth_getTransactionReceipt", [tx])
        except FedMarketError:
            receipt = None
        if receipt is None and not events:
            return self._render("missing.html", partial, 404, what=f"transaction {tx}")
        return self._render("tx.html", partial, tx=tx, events=events, receipt=receipt,
                            gas=int(receipt["gasUsed"], 16) if receipt else None,
                            block=int(receipt["blockNumber"], 16) if receipt else None)

    def blob(self, cid: str) -> tuple[int, bytes, str]:
        """A blob of the store, checked against its content id: JSON pretty-printed, the rest as bytes."""
        store = self.dash.store
        if store is None:
            return 404, b"this dashboard has no blob store (start it with --store)", "text/plain"
        try:
            data = store.get(cid)
        except FedMarketError as exc:
            return 404, str(exc).encode(), "text/plain"
        try:
            return 200, json.dumps(json.loads(data), indent=2).encode(), "application/json"
        except (ValueError, UnicodeDecodeError):
            return 200, data, "application/octet-stream"
