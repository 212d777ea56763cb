"""
The request history over HTTP (docs/http.md; the rules are
docs/protocol.md section 1.8, decided by
L{netshare.services.history.HistoryRecorder}): the caller's own entries,
or (an admin) anyone's with C{?user=NAME|-|*}; deleting and clearing take
entries out of their owner's view, each recorded with the change.
"""

from __future__ import annotations

from typing import Any

from netshare.web.app import Call, Router, whole_number


async def list_history(call: Call) -> dict[str, Any]:
    """C{GET /api/history?limit=&user=}: newest first, as C{HISTORY}."""
    cfg = call.config
    limit = whole_number(call.arg("limit", str(cfg.history_default)), "limit", 1, cfg.history_max)
    entries = await call.runtime.history.query(call.account, call.arg("user"), limit)
    return {"items": [e.to_wire() for e in entries]}


async def delete_entry(call: Call) -> None:
    """C{DELETE /api/history/{id}}: one entry out of its owner's view."""
    entry = whole_number(call.params["id"], "id")
    await call.runtime.history.delete(call.account, entry, journal=call.journal(204))


async def clear(call: Call) -> dict[str, Any]:
    """C{DELETE /api/history[?user=]}: a whole view out of its owners' views."""
    n = await call.runtime.history.clear(call.account, call.arg("user"), journal=call.journal(200))
    return {"deleted": n}


def register(router: Router, runtime: Any) -> None:
    router.add("GET", "/api/history", list_history, service="web")
    router.add("DELETE", "/api/history", clear, service="web")
    router.add("DELETE", "/api/history/{id}", delete_entry, service="web")
