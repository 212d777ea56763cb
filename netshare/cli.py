"""
The operator CLI: C{netshare init | user ... | db ...}.

It runs without a reactor: plain synchronous SQLAlchemy through the storage
layer's C{thd_*} functions, which is fine for a one-shot command and safe
beside a running server (SQLite WAL + busy timeout; the server re-reads
accounts on every login).
"""

import argparse
import getpass
import json
import os
import secrets
import sys
from typing import TextIO

import sqlalchemy as sa

from netshare import config as configmod
from netshare.config import Config
from netshare.errors import NetshareError, NotFound
from netshare.services.accounts import check_password, check_username, hash_password_sync
from netshare.services.files.blobs import BlobStore
from netshare.storage import accounts as account_store
from netshare.storage import migrate
from netshare.storage import sessions as session_store
from netshare.storage.engine import EngineError, create_engine
from netshare.storage.files import thd_all_blob_ids, thd_names_of_blobs
from netshare.storage.roster import thd_demo_people
from netshare.throttle import LoginPolicy
from netshare.tls import make_certificates, make_ssh_host_key
from netshare.wire import now_ms


def _connection_parent(default: str | None = None) -> argparse.ArgumentParser:
    # Sub-commands repeat these options (so `netshare init --data D` works)
    # with SUPPRESS defaults, so they never overwrite `netshare --data D init`.
    p = argparse.ArgumentParser(add_help=False, argument_default=default)
    p.add_argument("--data", help="data directory [default: var; env NETSHARE_DATA]")
    p.add_argument(
        "--db",
        help="database URL [default: sqlite:///netshare.db in the data dir; env NETSHARE_DB]",
    )
    p.add_argument("--config", help="config file [env NETSHARE_CONFIG]")
    return p


def build_parser() -> argparse.ArgumentParser:
    top = _connection_parent()
    common = _connection_parent(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="netshare", parents=[top], description="netshare operator commands"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", parents=[common], help="create data dir, schema, TLS, admin")
    # Kept for scripts and tests, hidden from --help: `ps` shows it to every
    # local user (and using it says so).
    init.add_argument("--admin-password", help=argparse.SUPPRESS)
    init.add_argument(
        "--ask-admin-password",
        action="store_true",
        help="ask for the admin password (default: NETSHARE_PASSWORD if set, "
        "else a random one, printed once)",
    )
    init.add_argument("--demo", action="store_true", help="add sample personnel and users")
    user = sub.add_parser("user", parents=[common], help="manage accounts")
    usub = user.add_subparsers(dest="action", required=True)
    add = usub.add_parser("add", parents=[common], help="create an account")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="role admin (default: user)")
    pw = usub.add_parser("passwd", parents=[common], help="set an account's password")
    pw.add_argument("name")
    rm = usub.add_parser(
        "remove",
        parents=[common],
        help="remove an account: its files are deleted (or given to another "
        "account), its timeline and pending sync records dropped, its "
        "history kept for admins until the retention period",
    )
    rm.add_argument("name")
    rm.add_argument(
        "--transfer-files-to",
        metavar="ACCOUNT",
        help="give the account's files to ACCOUNT instead of deleting them",
    )
    ls = usub.add_parser("list", parents=[common], help="list accounts")
    ls.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    usub.add_parser(
        "penalties",
        parents=[common],
        help="accounts and addresses whose logins are slowed down or locked",
    )
    ul = usub.add_parser(
        "unlock",
        parents=[common],
        help="lift the login penalties of an account or a client address",
    )
    ul.add_argument("who", help="an account name or an IP address")
    ss = usub.add_parser(
        "sessions",
        parents=[common],
        help="an account's session tokens (what the client programs log in with "
        "instead of the password), or end them",
    )
    ss.add_argument("name", help="an account name, or * for every account")
    ss.add_argument("--revoke", metavar="ID|all", help="end one session (its id) or all of them")
    ss.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    db = sub.add_parser("db", parents=[common], help="database schema")
    dsub = db.add_subparsers(dest="action", required=True)
    dsub.add_parser("upgrade", parents=[common], help="migrate the schema to this version")
    dsub.add_parser(
        "check",
        parents=[common],
        help="is the schema current, and does every file have its content "
        "and every content a file? (exit 1 if not)",
    )
    return parser


def _config(args: argparse.Namespace) -> Config:
    cli = {"data": args.data, "db": args.db}
    return configmod.build(cli, config_file=args.config)


def _engine(cfg: Config) -> sa.Engine:
    return create_engine(cfg.db, cfg.data, sqlite_synchronous=cfg.sqlite_synchronous)


def _read_password(prompt: str = "Password: ") -> str:
    env = os.environ.get("NETSHARE_PASSWORD")
    if env is not None:
        return env
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("Again: ") != first:
        raise SystemExit("netshare: passwords do not match")
    return first


def _admin_password(args: argparse.Namespace) -> str | None:
    """The first admin's password: --admin-password (hidden), then
    --ask-admin-password (a prompt, twice), then NETSHARE_PASSWORD; None
    means make a random one."""
    if args.admin_password is not None:
        return args.admin_password
    if args.ask_admin_password:
        first = getpass.getpass("Password for admin: ")
        if getpass.getpass("Again: ") != first:
            raise SystemExit("netshare: passwords do not match")
        return first
    return os.environ.get("NETSHARE_PASSWORD")


def cmd_init(args: argparse.Namespace, cfg: Config, out: TextIO) -> int:
    given = _admin_password(args)
    if given is not None:
        check_password(given)  # before anything is created
    if args.admin_password is not None:
        sys.stderr.write(
            "netshare: warning: --admin-password shows the password to anyone who "
            "can list processes; prefer NETSHARE_PASSWORD or "
            "--ask-admin-password\n"
        )
    changed = []
    if not os.path.isdir(cfg.data):
        os.makedirs(cfg.data, mode=0o700)
        changed.append("created data directory %s" % cfg.data)
    elif os.stat(cfg.data).st_mode & 0o777 != 0o700:
        os.chmod(cfg.data, 0o700)
        changed.append("set mode 0700 on data directory %s" % cfg.data)
    for sub in ("files", "logs", "tls"):
        path = os.path.join(cfg.data, sub)
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o700)
    tls_dir = os.path.join(cfg.data, "tls")
    if not all(
        os.path.exists(os.path.join(tls_dir, f)) for f in ("ca.pem", "cert.pem", "key.pem")
    ):
        ca, cert, _ = make_certificates(tls_dir)
        changed.append(
            "created TLS certificate %s for localhost, signed by the local CA %s "
            "(clients: --cafile %s)" % (cert, ca, ca)
        )
    hostkey = os.path.join(cfg.data, "ssh_host_key")
    if not os.path.exists(hostkey):
        make_ssh_host_key(hostkey)
        changed.append("created SSH host key %s" % hostkey)
    engine = _engine(cfg)
    try:
        before, after = migrate.upgrade(engine)
        if before != after:
            changed.append("database schema %s -> %s" % (before or "empty", after))
        with engine.begin() as conn:
            admin = account_store.thd_get(conn, "admin")
            if admin is None:
                password = given or secrets.token_urlsafe(12)
                check_password(password)
                account_store.thd_create(
                    conn,
                    "admin",
                    "admin",
                    hash_password_sync(password, cfg.scrypt_n, cfg.scrypt_r, cfg.scrypt_p),
                )
                changed.append("created account admin (admin)")
                if given is None:
                    out.write("admin password (shown once): %s\n" % password)
        demo = _demo(engine, cfg) if args.demo else []
        if demo and cfg.registration != "open":
            demo.append(
                "registration stays closed: start the server with "
                "--registration open to let anyone REGISTER"
            )
        changed.extend(demo)
    finally:
        engine.dispose()
    if changed:
        for line in changed:
            out.write(line + "\n")
    else:
        out.write("already initialised: nothing changed (%s)\n" % cfg.data)
    return 0


def _demo(engine: sa.Engine, cfg: Config) -> list[str]:
    """Sample users and personnel (only what is not there yet)."""
    done = []
    with engine.begin() as conn:
        for name in ("alice", "bob", "client1", "client2"):
            if account_store.thd_get(conn, name) is None:
                account_store.thd_create(
                    conn,
                    name,
                    "user",
                    hash_password_sync(name + "-demo", cfg.scrypt_n, cfg.scrypt_r, cfg.scrypt_p),
                )
                done.append("created demo account %s (password %s-demo)" % (name, name))
    people = [
        ("123-45-6789", "Ada", "Lovelace", "engineer", "120000"),
        ("987-65-4321", "Grace", "Hopper", "admiral", "150000"),
        ("555-12-3456", "Alan", "Turing", "researcher", "110000"),
    ]
    with engine.begin() as conn:
        added = thd_demo_people(conn, people)
    if added:
        done.append("added %d demo personnel" % added)
    return done


def cmd_user(args: argparse.Namespace, cfg: Config, out: TextIO) -> int:
    engine = _engine(cfg)
    try:
        migrate.check(engine)
        with engine.begin() as conn:
            if args.action == "list":
                rows = [a.to_wire() for a in account_store.thd_list(conn)]
                if args.json:
                    out.write(json.dumps(rows) + "\n")
                    return 0
                out.write("%-32s %-5s  %-24s  %s\n" % ("USER", "ROLE", "CREATED", "LAST LOGIN"))
                for r in rows:
                    out.write(
                        "%-32s %-5s  %-24s  %s\n"
                        % (r["user"], r["role"], r["created"], r["last_login"] or "never")
                    )
                return 0
            if args.action == "sessions":
                return _sessions(conn, args, out)
            if args.action == "passwd" and account_store.thd_get(conn, args.name) is None:
                raise NotFound("no account %s" % (args.name,))  # before asking for a password
            if args.action == "penalties":
                policy = LoginPolicy.from_config(cfg)
                return _penalties(account_store.thd_login_penalties(conn, now_ms(), policy), out)
            if args.action == "unlock":
                n = account_store.thd_lift_penalty(conn, args.who)
                out.write(
                    "lifted the login penalties of %s (%d)\n" % (args.who, n)
                    if n
                    else "%s had no login penalties\n" % (args.who,)
                )
                return 0
            if args.action == "remove":
                removed = account_store.thd_remove(conn, args.name, args.transfer_files_to)
        if args.action == "remove":
            _unlink_blobs(cfg, removed.blob_ids)  # only once the removal has committed
            files = (
                "%d given to %s" % (removed.files_transferred, args.transfer_files_to)
                if args.transfer_files_to
                else "%d deleted" % removed.files_deleted
            )
            out.write(
                "removed %s (files: %s; pending sync records: %d dropped; history kept "
                "for admins)\n" % (removed.account.name, files, removed.sync_messages_deleted)
            )
            return 0
        check_username(args.name)
        password = _read_password("Password for %s: " % args.name)
        check_password(password)
        hashed = hash_password_sync(password, cfg.scrypt_n, cfg.scrypt_r, cfg.scrypt_p)
        with engine.begin() as conn:
            if args.action == "add":
                role = "admin" if args.admin else "user"
                account_store.thd_create(conn, args.name, role, hashed)
                out.write("created %s (%s)\n" % (args.name, role))
            else:
                account_store.thd_set_password(conn, args.name, hashed)
                out.write("password of %s changed\n" % args.name)
        return 0
    except NetshareError as e:
        raise SystemExit("netshare: %s" % e.text) from None
    finally:
        engine.dispose()


def _sessions(conn: sa.Connection, args: argparse.Namespace, out: TextIO) -> int:
    """C{netshare user sessions NAME [--revoke ID|all]} (the same rows as the
    wire's C{SESSION LIST} / C{SESSION REVOKE}, for the operator)."""
    account_id = None
    if args.name != "*":
        account = account_store.thd_get(conn, args.name)
        if account is None:
            raise NotFound("no account %s" % (args.name,))
        account_id = account.id
    if args.revoke is not None:
        if args.revoke.lower() == "all":
            n = session_store.thd_revoke_all(conn, account_id)
        elif args.revoke.isdigit():
            n = session_store.thd_revoke(conn, int(args.revoke), account_id)
            if not n:
                raise NotFound("no session %s of %s" % (args.revoke, args.name))
        else:
            raise SystemExit("netshare: --revoke takes a session id or all")
        out.write("%d session%s ended\n" % (n, "" if n == 1 else "s"))
        return 0
    rows = [s.to_wire() for s in session_store.thd_list(conn, account_id, now_ms())]
    if args.json:
        out.write(json.dumps(rows) + "\n")
        return 0
    if not rows:
        out.write("no sessions\n")
        return 0
    fmt = "%-6s %-20s %-20s %-24s %-24s %s\n"
    out.write(fmt % ("ID", "USER", "LABEL", "LAST USED", "EXPIRES", "FROM"))
    for r in rows:
        out.write(
            fmt
            % (r["id"], r["user"], r["label"], r["last_used"], r["expires"] or "never", r["peer"])
        )
    return 0


def _penalties(rows: list[dict], out: TextIO) -> int:
    """The penalties table: who, how many recent failures, the wait per
    attempt, and how long a lock still lasts."""
    if not rows:
        out.write("no login penalties\n")
        return 0
    out.write("%-40s %9s %9s %s\n" % ("who", "failures", "delay", "locked"))
    for r in rows:
        locked = "locked for %d s" % r["locked_for"] if r["locked_for"] else "-"
        kind = "account" if r["key"].startswith("account:") else "address"
        out.write(
            "%-40s %9.1f %8.0fs %s\n"
            % ("%s %s" % (kind, r["who"]), r["failures"], r["delay"], locked)
        )
    return 0


def _unlink_blobs(cfg: Config, blob_ids: list[str]) -> None:
    """Remove the content of files whose rows are gone (a missing blob
    directory or file is fine: a server's start-up also collects orphans)."""
    if not blob_ids:
        return
    root = os.path.join(cfg.data, "files")
    if not os.path.isdir(root):
        return
    blobs = BlobStore(root)
    for blob_id in blob_ids:
        blobs.unlink_now(blob_id)


def cmd_db(args: argparse.Namespace, cfg: Config, out: TextIO) -> int:
    engine = _engine(cfg)
    try:
        if args.action == "upgrade":
            before, after = migrate.upgrade(engine)
            out.write(
                "schema %s -> %s\n" % (before or "empty", after)
                if before != after
                else "schema already current (%s)\n" % after
            )
            return 0
        state = migrate.status(engine)
        out.write(
            "schema %s (database %s, this netshare %s)\n"
            % (state, migrate.current(engine) or "none", migrate.head())
        )
        if state != "current":
            return 1
        return 0 if _check_files(cfg, engine, out) else 1
    finally:
        engine.dispose()


def _check_files(cfg: Config, engine: sa.Engine, out: TextIO) -> bool:
    """
    Files whose content is missing from disk (rows without blobs) and
    content no file refers to (blobs without rows).  A running server
    removes the second kind at its next start; the first kind needs an
    operator (restore the blob from a backup, or delete the file).
    @return: whether everything is consistent.
    """
    root = os.path.join(cfg.data, "files")
    with engine.connect() as conn:
        rows = thd_all_blob_ids(conn)
        on_disk = BlobStore(root).all_blob_ids() if os.path.isdir(root) else set()
        missing = sorted(rows - on_disk)
        names = thd_names_of_blobs(conn, missing) if missing else []
    orphans = sorted(on_disk - rows)
    out.write("files: %d rows, %d blobs on disk\n" % (len(rows), len(on_disk)))
    for name in names:
        out.write("row without content: %s\n" % (name,))
    for blob_id in orphans:
        out.write("content without a row: %s\n" % (blob_id,))
    if not (missing or orphans):
        out.write("files: consistent\n")
    return not (missing or orphans)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        cfg = _config(args)
    except configmod.ConfigError as e:
        sys.stderr.write("netshare: %s\n" % e)
        return 2
    handler = {"init": cmd_init, "user": cmd_user, "db": cmd_db}[args.command]
    try:
        return handler(args, cfg, out)
    except SystemExit:
        raise
    except NetshareError as e:
        sys.stderr.write("netshare: %s\n" % e.text)
        return 1
    except (EngineError, migrate.SchemaError) as e:
        sys.stderr.write("netshare: %s\n" % e)
        return 1
    except Exception as e:
        if e.__class__.__module__.startswith("sqlalchemy"):
            sys.stderr.write("netshare: database error: %s\n" % str(e).splitlines()[0])
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
