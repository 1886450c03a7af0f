"""The status page as HTML: pure functions from what `data.py` gathered to a document.

Every value is escaped (`html.escape`; ids in links percent-encoded); the CSS is one
inline `<style>` whose hash is the only style the Content-Security-Policy allows, and there
is no script, image or font from anywhere: the page works air-gapped and nothing on it can
change state. It refreshes itself with a `<meta http-equiv="refresh">`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any, Final
from urllib.parse import quote

from watchdog.core.model import AuditRow
from watchdog.core.situation import human_delta, stamp
from watchdog.render import brake_line
from watchdog.web.data import TIMELINE_MINUTES, InstancePage, StatusPage

REFRESH_SECONDS: Final = 5

CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#1b1f24;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:baseline}
header h1{font-size:18px;margin:0}
header a{color:#9ecbff}
main{padding:12px 20px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:0 0 12px;
padding:10px 14px}
h2{font-size:15px;margin:0 0 8px}
dl.fleet{display:flex;flex-wrap:wrap;gap:6px 22px;margin:0}
dl.fleet div{min-width:90px}
dl.fleet dt{font-size:12px;color:#57606a}
dl.fleet dd{margin:0;font-size:22px;font-weight:600}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{font-size:12px;color:#57606a;font-weight:600}
td.num{text-align:right}
.bad{color:#cf222e}.warn{color:#9a6700}.good{color:#1a7f37}
.rungs{white-space:nowrap}
.rung{display:inline-block;width:12px;height:12px;margin-right:2px;border-radius:2px;
border:1px solid #8c959f;background:#fff}
.rung.done.api_restart{background:#54aeff}.rung.done.db_flag{background:#d4a72c}
.rung.done.process_restart{background:#cf222e}
.rung.current{border:2px solid #1b1f24}
.legend span{margin-right:12px}
svg .api_restart.ok{fill:#54aeff}svg .db_flag.ok{fill:#d4a72c}svg .process_restart.ok{fill:#cf222e}
svg .failed{fill:#6e7781}svg .skipped{fill:#d0d7de}svg .interrupted{fill:#8250df}
svg .axis{stroke:#8c959f;stroke-width:1}
svg text{font-size:10px;fill:#57606a}
nav.pages a,nav.pages strong{margin-right:8px}
code{font-size:12px}
"""
_CSS_HASH: Final = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TONE = {
    "open": "bad",
    "unhealthy": "bad",
    "exhausted": "bad",
    "unjudgeable": "warn",
    "suppressed": "warn",
    "paused": "warn",
}
_OUTCOMES = ("ok", "failed", "skipped", "interrupted")
_FIGURE_NAMES = {"paused": "paused (tracked)"}  # a fleet pause also holds healthy ones
_RUNGS = ("api_restart", "db_flag", "process_restart")


def status_page(data: StatusPage) -> str:
    view = data.view
    body = [
        _header(view.now, "fleet"),
        "<main>",
        _fleet(data),
        _who(data),
        _instances(data),
        _timeline(data.timeline),
        "</main>",
    ]
    return _document("watchdog status", body)


def instance_page(data: InstancePage) -> str:
    e = data.explained
    now = datetime.fromisoformat(e["now"])
    body = [
        _header(now, f"instance {e['id']}"),
        "<main>",
        _explained(e, data.ladder),
        _trail(data.trail),
        "</main>",
    ]
    return _document(f"watchdog: {e['id']}", body)


def not_found(instance_id: str) -> str:
    body = [
        "<main><section><h2>unknown instance</h2>",
        f"<p>{escape(instance_id)} is neither in the table nor in the watchdog's records.</p>",
        '<p><a href="/">back to the fleet</a></p></section></main>',
    ]
    return _document("watchdog: unknown instance", body)


# ---------------------------------------------------------------------- pieces


def _document(title: str, body: Iterable[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{CSS}</style>",
            "</head><body>",
            *body,
            "</body></html>",
        ]
    )


def _header(now: datetime, where: str) -> str:
    return (
        f'<header><h1><a href="/">watchdog</a></h1><span>{escape(where)}</span>'
        f"<span>{escape(stamp(now))} (database clock), refreshed every {REFRESH_SECONDS}s, "
        "read-only</span></header>"
    )


def _fleet(data: StatusPage) -> str:
    census = data.view.census
    paused = data.paused
    if census is None:
        figures = f'<p class="bad">{escape(data.view.table_error)}</p>'
    else:
        numbers = (
            ("monitored", census.monitored, ""),
            ("healthy", census.healthy, "good"),
            ("unhealthy", census.unhealthy, "bad" if census.unhealthy else ""),
            ("unjudgeable", census.unjudgeable, "warn" if census.unjudgeable else ""),
            ("paused", paused, "warn" if paused else ""),
            ("disabled", census.disabled, ""),
            ("ignored", census.ignored, ""),
            ("rows", census.rows, ""),
        )
        figures = (
            '<dl class="fleet">'
            + "".join(
                f"<div><dt>{_FIGURE_NAMES.get(name, name)}</dt>"
                f'<dd id="fleet-{name}" class="{tone}">{value}</dd></div>'
                for name, value, tone in numbers
            )
            + "</dl>"
        )
    return f'<section id="fleet"><h2>fleet</h2>{figures}</section>'


def _who(data: StatusPage) -> str:
    view = data.view
    acting = "good" if view.acting.leader else "bad"
    parts = [
        '<section id="acting"><h2>who acts</h2>',
        f'<p id="acting-line" class="{acting}">{escape(view.acting.detail)}</p>',
        f"<p>{escape(brake_line(view.brake))}</p>",
    ]
    if data.fleet_pauses:
        parts.append("<p>pauses in force: ")
        parts.append(
            "; ".join(
                f"{escape(str(p.selector))} until {escape(stamp(p.until))} by "
                f"{escape(p.actor)} ({escape(p.reason)})"
                for p in data.fleet_pauses
            )
        )
        parts.append("</p>")
    parts.append(_table(("node", "host", "pid", "role", "last good cycle"), _nodes(data)))
    parts.append("<h2>breakers</h2>")
    breakers = [
        (
            escape(b.name),
            _toned(str(b.state), "good" if str(b.state) == "closed" else "bad"),
            str(b.failures),
            str(b.total),
            escape(b.last_error or ""),
        )
        for b in view.breakers
    ]
    parts.append(
        _table(("backend", "state", "failures", "calls", "last error"), breakers)
        if breakers
        else "<p>no calls yet</p>"
    )
    parts.append("<h2>restart budgets left</h2>")
    budgets = [
        (
            escape(b.scope),
            _toned(f"{b.left} of {b.allowed}", "good" if b.left else "bad"),
            f"per {human_delta(b.window)}",
        )
        for b in data.budgets
    ]
    parts.append(_table(("scope", "left", "window"), budgets))
    parts.append("</section>")
    return "".join(parts)


def _nodes(data: StatusPage) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for node in data.nodes:
        good = node.get("last_good_cycle_at")
        ago = ""
        if good:
            seconds = (data.view.now - datetime.fromisoformat(str(good))).total_seconds()
            ago = f"{human_delta(seconds)} ago"
        rows.append(
            (
                escape(str(node.get("node"))),
                escape(str(node.get("host"))),
                escape(str(node.get("pid"))),
                escape(str(node.get("role"))),
                escape(ago),
            )
        )
    return rows


def _instances(data: StatusPage) -> str:
    rows = [
        (
            _link(record["id"]),
            _toned(record["state"], _TONE.get(record["state"], "")),
            escape(str(record["reason"] or "")),
            _rungs(data.ladder, int(record["attempt"] or 0)),
            escape(str(record["next_action"] or "-")),
            escape(str(record["when"])),
            escape(", ".join(record["blocked_by"])),
        )
        for record in data.records
    ]
    header = ("instance", "state", "reason", "ladder", "next", "when", "held by")
    attributes = [f'data-instance="{escape(str(r["id"]), quote=True)}"' for r in data.records]
    table = _table(header, rows, attributes) if rows else "<p>no tracked instances</p>"
    return (
        f'<section id="instances"><h2>tracked instances ({data.listed})</h2>'
        f"{_legend()}{table}{_pager(data)}</section>"
    )


def _rungs(ladder: Sequence[str], attempt: int) -> str:
    """One box per attempt of the ladder: done, current (the next), to come."""
    boxes = []
    for n, rung in enumerate(ladder, start=1):
        state = "done" if n <= attempt else "current" if n == attempt + 1 else "next"
        boxes.append(f'<span class="rung {state} {rung}" title="attempt {n}: {rung}"></span>')
    return f'<span class="rungs">{"".join(boxes)}</span>'


def _legend() -> str:
    return (
        '<p class="legend"><span><span class="rung done api_restart"></span>api_restart</span>'
        '<span><span class="rung done db_flag"></span>db_flag</span>'
        '<span><span class="rung done process_restart"></span>process_restart</span>'
        '<span><span class="rung current"></span>next attempt</span></p>'
    )


def _pager(data: StatusPage) -> str:
    if data.pages <= 1:
        return ""
    links = [
        f"<strong>{n}</strong>" if n == data.page else f'<a href="/?page={n}">{n}</a>'
        for n in range(1, data.pages + 1)
    ]
    return f'<nav class="pages">pages: {"".join(links)}</nav>'


def _timeline(counts: Mapping[tuple[int, str, str], int]) -> str:
    """Actions per minute over the last hour, stacked by rung and outcome, oldest left."""
    width, height, bar = 720, 120, 12
    top = max(
        [sum(n for (ago, _r, _o), n in counts.items() if ago == minute) for minute in range(60)]
        + [1]
    )
    shapes = [
        f'<line class="axis" x1="0" y1="{height}" x2="{width}" y2="{height}"/>',
        f'<text x="0" y="{height + 12}">-{TIMELINE_MINUTES} min</text>',
        f'<text x="{width - 24}" y="{height + 12}">now</text>',
        f'<text x="0" y="10">{top}/min</text>',
    ]
    for minute in range(TIMELINE_MINUTES):
        x = width - (minute + 1) * bar
        y = float(height)
        for rung in _RUNGS:
            for outcome in _OUTCOMES:
                n = counts.get((minute, rung, outcome), 0)
                if not n:
                    continue
                h = height * n / top
                y -= h
                shapes.append(
                    f'<rect class="{rung} {outcome}" x="{x}" y="{y:.1f}" width="{bar - 2}" '
                    f'height="{h:.1f}"><title>{n} {rung} {outcome}, {minute} min ago</title></rect>'
                )
    total = sum(counts.values())
    return (
        f'<section id="timeline"><h2>last hour: {total} action{"" if total == 1 else "s"}</h2>'
        f'<svg role="img" aria-label="actions per minute" width="{width}" '
        f'height="{height + 16}" viewBox="0 0 {width} {height + 16}">{"".join(shapes)}</svg>'
        '<p class="legend"><span>blue api_restart, amber db_flag, red process_restart '
        "(ok); grey failed; light skipped</span></p></section>"
    )


def _explained(e: Mapping[str, Any], ladder: Sequence[str]) -> str:
    parts = ['<section id="explain"><h2>verdict</h2>']
    verdict = str(e["verdict"] or "unknown")
    tone = {"healthy": "good", "unhealthy": "bad", "unjudgeable": "warn"}.get(verdict, "")
    parts.append(
        f'<p><strong id="verdict" class="{tone}">{escape(verdict)}</strong>: '
        f"{escape(str(e['rule']))}</p>"
    )
    incident = e["incident"]
    if incident is None:
        parts.append("<p>no incident</p>")
    else:
        parts.append(
            f"<p>incident {incident['id']}: {escape(str(incident['state']))} "
            f"{escape(str(incident['reason']))}, attempt {incident['attempt']} "
            f"{_rungs(ladder, int(incident['attempt']))}</p>"
        )
    parts.append(
        f"<p>next: {escape(str(e['next_action'] or 'nothing'))}: {escape(str(e['when']))}</p>"
    )
    parts.append(f"<p>acting: {escape(str(e['acting']))}</p>")
    guards = [
        (
            _toned("ok" if g["ok"] else "HOLD", "good" if g["ok"] else "bad"),
            escape(str(g["name"])),
            escape(str(g["detail"])),
        )
        for g in e["guards"]
    ]
    parts.append("<h2>guards</h2>" + _table(("", "guard", "detail"), guards))
    if e["row"] is not None:
        reading = e["reading"] or {}
        row = [
            (
                escape(str(column)),
                "NULL" if value is None else escape(str(value)),
                escape(str(reading.get(column, ""))),
            )
            for column, value in e["row"].items()
        ]
        parts.append("<h2>row, read now</h2>" + _table(("column", "value", "read as"), row))
    parts.append("</section>")
    return "".join(parts)


def _trail(rows: Sequence[AuditRow]) -> str:
    shown = [
        (
            escape(stamp(r.at)),
            escape(str(r.action)),
            escape(str(r.outcome)),
            "" if r.attempt is None else str(r.attempt),
            escape(r.actor),
            f"<code>{escape(_detail(r.detail))}</code>",
        )
        for r in reversed(rows)
    ]
    header = ("at", "action", "outcome", "attempt", "actor", "detail")
    table = _table(header, shown) if shown else "<p>no audit rows</p>"
    return f'<section id="trail"><h2>audit trail (newest first)</h2>{table}</section>'


def _detail(detail: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in detail.items())
    return text if len(text) <= 200 else text[:199] + "…"


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    attributes: Sequence[str] | None = None,
) -> str:
    """Cells are HTML already (escaped by the caller)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr {attributes[i] if attributes else ''}>"
        + "".join(f"<td>{cell}</td>" for cell in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _toned(text: str, tone: str) -> str:
    return f'<span class="{tone}">{escape(text)}</span>' if tone else escape(text)


def _link(instance_id: object) -> str:
    if instance_id is None:
        return "(NULL id)"
    text = str(instance_id)
    return f'<a href="/instances/{quote(text, safe="")}">{escape(text) or "&quot;&quot;"}</a>'
