"""
personnel: the roster and its sync to clients (docs/protocol.md section 4).

Three modules, one concern each:

 - L{netshare.services.personnel.rules}: what a ssn, a field, a search text
   or a number may be, and what each reader may see of a person;
 - L{netshare.services.personnel.syncfeed}: one live SYNC stream, the
   state machine that pushes a client's outbox at the pace its connection
   drains;
 - L{netshare.services.personnel.service}: the
   L{PersonnelService<netshare.services.personnel.service.PersonnelService>}
   the protocol and the operator shell call.
"""
