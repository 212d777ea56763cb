"""
personnel over HTTP (docs/http.md; the rules are docs/protocol.md
section 4, decided by L{netshare.services.personnel.PersonnelService}):
every account reads (a non-admin the directory view: ssn masked, no
salary), admins write, list the sync clients and queue SEND/REMOVE for
them, the operator console's actions.  The role check comes first, as on
the personnel port (C{authorize} with the line verb's name), so a user's
write is 403 whatever its body.
"""

from __future__ import annotations

from typing import Any

from netshare.errors import BadArguments
from netshare.web.app import Call, Response, Router


def _people(call: Call) -> Any:
    return call.app("personnel")


def _authorize(call: Call, verb: str) -> Any:
    app = _people(call)
    app.authorize(verb, call.account.role)
    return app


async def list_people(call: Call) -> dict[str, Any]:
    """C{GET /api/people?q=&limit=&offset=} (C{LIST})."""
    items = await _people(call).list(
        call.arg("q") or None, call.arg("limit"), call.arg("offset"), full=call.is_admin
    )
    return {"items": items}


async def get_person(call: Call) -> dict[str, Any]:
    """C{GET /api/people/{id}} (C{GET})."""
    person: dict[str, Any] = await _people(call).get(call.params["id"], full=call.is_admin)
    return person


async def add_person(call: Call) -> Response:
    """C{POST /api/people} (C{ADD}, admin): 201 with the stored person."""
    app = _authorize(call, "ADD")
    person = await app.add(call.object(), journal=call.journal(201))
    return Response(201, person)


async def update_person(call: Call) -> dict[str, Any]:
    """C{PUT /api/people/{id}} (C{UPDATE}, admin): the fields to change."""
    app = _authorize(call, "UPDATE")
    person: dict[str, Any] = await app.update(
        call.params["id"], call.object(), journal=call.journal(200)
    )
    return person


async def delete_person(call: Call) -> None:
    """C{DELETE /api/people/{id}} (C{DELETE}, admin)."""
    app = _authorize(call, "DELETE")
    await app.delete(call.params["id"], journal=call.journal(204))


async def sync_clients(call: Call) -> dict[str, Any]:
    """C{GET /api/sync-clients} (C{CLIENTS}, admin): each client, whether
    it is connected (C{online}), its acknowledged seq (C{acked}) and how far
    behind it is (C{pending}: queued, not yet acknowledged)."""
    app = _authorize(call, "CLIENTS")
    return {"items": await app.clients()}


def _target(call: Call) -> tuple[str, str]:
    body = call.object()
    client, person = body.get("client"), body.get("id")
    if not isinstance(client, str) or not isinstance(person, str):
        raise BadArguments('the body is {"client": "<name>"|"*", "id": "<ssn>"|"*"}')
    return person, client


async def send(call: Call) -> dict[str, Any]:
    """C{POST /api/sync-clients/send} (C{SEND}, admin): queue a SAVE."""
    app = _authorize(call, "SEND")
    person, client = _target(call)
    return {"queued": await app.send(person, client, journal=call.journal(200))}


async def remove(call: Call) -> dict[str, Any]:
    """C{POST /api/sync-clients/remove} (C{REMOVE}, admin): queue a DELETE."""
    app = _authorize(call, "REMOVE")
    person, client = _target(call)
    return {"queued": await app.remove(person, client, journal=call.journal(200))}


def register(router: Router, runtime: Any) -> None:
    router.add("GET", "/api/people", list_people, service="personnel")
    router.add("POST", "/api/people", add_person, service="personnel")
    router.add("GET", "/api/people/{id}", get_person, service="personnel")
    router.add("PUT", "/api/people/{id}", update_person, service="personnel")
    router.add("DELETE", "/api/people/{id}", delete_person, service="personnel")
    router.add("GET", "/api/sync-clients", sync_clients, service="personnel")
    router.add("POST", "/api/sync-clients/send", send, service="personnel")
    router.add("POST", "/api/sync-clients/remove", remove, service="personnel")
