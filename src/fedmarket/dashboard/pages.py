"""The dashboard's pages: Jinja2 templates rendered from `views`, with the filters that show token
units, local ISO times and state names, and the accuracy curve drawn as inline SVG."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from markupsafe import Markup

from .. import display
from ..errors import BlobTooLarge, FedMarketError, StorageUnreachable
from ..protocol.encoding import BAD_INPUT, untrusted_json
from . import views

#: the largest blob /blob serves (a model of a few million parameters; bigger ones are refused)
BLOB_MAX_BYTES = 64 * 2**20
#: the largest JSON blob /blob parses and pretty-prints; a larger one is served as stored
PRETTY_MAX_BYTES = 2**20


def accuracy_svg(rounds: list[dict], width: int = 560, height: int = 180) -> dict | None:
    """Points of the accuracy curve (x: round, y: accuracy in [0, 1]) in SVG coordinates."""
    pts = [(r["round"], r["accuracy"]) for r in rounds if r.get("accuracy") is not None]
    if not pts:
        return None
    pad, last = 30, max(1, max(p[0] for p in pts))
    xy = [(pad + (width - 2 * pad) * x / last, height - pad - (height - 2 * pad) * y) for x, y in pts]
    return {"width": width, "height": height, "pad": pad, "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in xy),
            "dots": [{"x": x, "y": y, "round": r, "accuracy": a} for (x, y), (r, a) in zip(xy, pts)], "last": last}


def _a(href: str, text: str, wei: int | None = None, cls: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    attrs += f' data-wei="{wei}"' if wei is not None else ""
    return f'<a href="{escape(href)}"{attrs}>{escape(text)}</a>'


def member_rows(members, rewards_cid: str | None) -> Markup:
    """The members table's rows, built here rather than in the template: a job of 1,000 providers
    renders in a few milliseconds instead of tens (one escaped string instead of 17,000)."""
    tok = display.tokens
    rows = []
    for m in members:
        tx = f"/tx/{m.claim_tx}"
        score = _a(f"/blob/{rewards_cid}", f"{m.score:,}") if m.score is not None and rewards_cid else "-"
        if m.claim_tx:
            payout, back = _a(tx, tok(m.reward), m.reward), _a(tx, tok(m.stake_back), m.stake_back)
        else:
            payout, back = '<span class="muted">not claimed</span>', "-"
        rep = _a(tx, f"{m.reputation} ({m.reputation_delta:+d})") if m.reputation is not None else "-"
        slashed = _a(f"/tx/{m.slash_tx}", tok(m.slashed), m.slashed, "bad") if m.slashed is not None else "-"
        rows.append(
            f'<tr data-account="{escape(m.account)}" data-role="{escape(m.role)}">'
            f'<td class="mono">{_a(f"/provider/{m.account}", m.account)}</td><td>{escape(m.role)}</td>'
            f'<td class="num">{_a(f"/tx/{m.joined_tx}", tok(m.stake), m.stake)}</td><td class="num">{score}</td>'
            f'<td class="num payout">{payout}</td><td class="num">{back}</td><td class="num">{rep}</td>'
            f'<td class="num">{slashed}</td></tr>'
        )
    return Markup("\n".join(rows))


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
        for name in env.list_templates():  # compiled now, not on someone's first page load
            env.get_template(name)

    def _render(self, name: str, partial: bool, status: int = 200, **ctx) -> tuple[int, str]:
        head = {"version": self.dash.indexer.version, "head": self.dash.indexer.head}
        return status, self.env.get_template(name).render(partial=partial, live=head, **ctx)

    def index(self, request, partial: bool):
        return self._render("index.html", partial, jobs=views.jobs(self.dash.db), info=views.head(self.dash.db))

    def job(self, request, partial: bool):
        job_id = request.path_params["job_id"]
        documents_ok = True
        try:
            view = views.job_view(self.dash.db, job_id, self.dash.document)
        except Exception as exc:  # noqa: BLE001  the aggregator's documents: the page goes on without them
            self.dash.log(f"job {job_id}: its documents cannot be shown ({type(exc).__name__}: {exc})")
            view, documents_ok = views.job_view(self.dash.db, job_id, None), False
        if view is None:
            return self._render("missing.html", partial, 404, what=f"job {job_id}")
        rows = member_rows(view.members, view.rewards["rewards_cid"] if view.rewards else None)
        return self._render("job.html", partial, v=view, chart=accuracy_svg(view.rounds), member_rows=rows,
                            has_store=self.dash.store is not None, documents_ok=documents_ok,
                            spec=self.dash.spec_status(job_id))

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
        """A blob of the store, checked against its content id: JSON of at most PRETTY_MAX_BYTES
        parsed as untrusted input and pretty-printed; a larger blob (up to BLOB_MAX_BYTES) or one
        that is not JSON as stored; a blob over BLOB_MAX_BYTES refused (413)."""
        store = self.dash.store
        if store is None:
            return 404, b"this dashboard has no blob store (start it with --store)", "text/plain"
        try:
            with self.dash.reading(wait=10):
                data = store.get_capped(cid, BLOB_MAX_BYTES)
                if len(data) <= PRETTY_MAX_BYTES:
                    try:
                        return 200, json.dumps(untrusted_json(data), indent=2).encode(), "application/json"
                    except (FedMarketError, *BAD_INPUT):
                        pass  # not JSON (a model), or JSON no reader here takes: its bytes
                return 200, data, "application/json" if data[:1] in (b"{", b"[") else "application/octet-stream"
        except BlobTooLarge as exc:
            return 413, f"{exc}: the dashboard does not serve it".encode(), "text/plain"
        except StorageUnreachable as exc:
            return 503, str(exc).encode(), "text/plain"
        except FedMarketError as exc:
            return 404, str(exc).encode(), "text/plain"
