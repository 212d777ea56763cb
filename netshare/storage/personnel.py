"""
Storage of the personnel service, seen from the reactor thread: the
L{PersonnelStore} over the roster (L{netshare.storage.roster}: the
C{personnel} table) and the sync outbox (L{netshare.storage.outbox}: the
sync clients and their queued messages).

The two table groups are separate modules because they are separate
concerns (what the server knows; what each sync client has yet to be told);
the service sees one store, because a SEND reads the one and writes the
other in a single transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping

from twisted.internet.defer import Deferred

from netshare.storage.history import JournalRow, journaled
from netshare.storage.outbox import (
    ClientInfo,
    EnqueueResult,
    Message,
    MessageInfo,
    thd_ack,
    thd_enqueue,
    thd_list_clients,
    thd_list_messages,
    thd_pending_page,
    thd_prune_acked,
    thd_register_client,
)
from netshare.storage.pool import DBPool
from netshare.storage.roster import (
    Person,
    thd_add_person,
    thd_count_persons,
    thd_delete_person,
    thd_get_person,
    thd_list_persons,
    thd_update_person,
)


class PersonnelStore:
    """
    The personnel tables seen from the reactor thread: every method runs one
    C{thd_*} function in the L{DBPool} and returns a Deferred of plain data.

    Methods that write take C{now_ms} (epoch milliseconds) so the service's
    injected clock, not the worker's wall clock, stamps the rows.
    """

    def __init__(self, pool: DBPool):
        self.pool = pool

    def list(
        self,
        text: str | None = None,
        limit: int | str | None = None,
        offset: int | str | None = None,
        search_ssn: bool = True,
    ) -> Deferred[list[Person]]:
        return self.pool.run(thd_list_persons, text, limit, offset, search_ssn)

    def count(self) -> Deferred[int]:
        return self.pool.run(thd_count_persons)

    def get(self, ssn: str) -> Deferred[Person]:
        return self.pool.run(thd_get_person, ssn)

    # Writes (DBPool.write): run twice after a lost COMMIT answer, an ADD
    # would answer "exists", a DELETE "no such person", a SEND queue twice.

    def add(
        self, ssn: str, fields: Mapping[str, str], now_ms: int, journal: JournalRow | None = None
    ) -> Deferred[Person]:
        return self.pool.write(journaled(thd_add_person, journal), ssn, fields, now_ms)

    def update(
        self, ssn: str, fields: Mapping[str, str], now_ms: int, journal: JournalRow | None = None
    ) -> Deferred[Person]:
        return self.pool.write(journaled(thd_update_person, journal), ssn, fields, now_ms)

    def delete(self, ssn: str, journal: JournalRow | None = None) -> Deferred[None]:
        return self.pool.write(journaled(thd_delete_person, journal), ssn)

    def clients(self) -> Deferred[builtins.list[ClientInfo]]:
        return self.pool.run(thd_list_clients)

    def messages(
        self, client: str | None = None, limit: int | str | None = None
    ) -> Deferred[builtins.list[MessageInfo]]:
        return self.pool.run(thd_list_messages, client, limit)

    def enqueue(
        self,
        persons: str,
        clients: str,
        action: str,
        now_ms: int,
        journal: JournalRow | None = None,
    ) -> Deferred[EnqueueResult]:
        return self.pool.write(journaled(thd_enqueue, journal), persons, clients, action, now_ms)

    def register_client(
        self, name: str, now_ms: int, account_id: int | None = None
    ) -> Deferred[ClientInfo]:
        return self.pool.run(thd_register_client, name, now_ms, account_id)

    def pending_page(
        self, client: str, after_seq: int, limit: int
    ) -> Deferred[builtins.list[Message]]:
        return self.pool.run(thd_pending_page, client, after_seq, limit)

    def ack(self, client: str, seq: int, journal: JournalRow | None = None) -> Deferred[int]:
        return self.pool.write(journaled(thd_ack, journal), client, seq)

    def prune_acked(self, before_ms: int) -> Deferred[int]:
        return self.pool.run(thd_prune_acked, before_ms)
