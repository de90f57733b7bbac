"""The `msante` command: operator entry points over the same services the server uses.

Every subcommand takes `--config FILE` (or `--data-dir DIR`); errors a person can fix are
printed as one line on stderr with exit status 2, never as a traceback (`directory import` exits
with 1 for a file it could not import: IMPORT_EPILOG).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from cryptography import x509

import config
from certs.pki import CertificateError
from directory.app_passwords import AppPasswordError
from directory.mailboxes import KINDS, MailboxError
from mailserver.trust import TrustListError

from . import commands, hospital_commands

log = logging.getLogger("msante")

IMPORT_EPILOG = """exit status:
  0  every file imported (or already imported), even with rejected lines: they are listed,
     and --report has them all
  1  a file could not be imported: unreadable, not a national extract, or refused (older or
     much shorter than the last one of its kind, no line readable); the other files are
     still imported, and the store keeps what it had for that kind
  2  usage error (arguments, configuration, --report not writable)"""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # store.db.upgrade says which migrations run; Alembic's INFO repeats it
        logging.getLogger("alembic").setLevel(logging.WARNING)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        settings = config.load(args.config, data_dir=args.data_dir)
        result = args.run(settings, args)
        if asyncio.iscoroutine(result):
            result = _run(result)
        return int(result or 0)
    except (config.ConfigError, MailboxError, AppPasswordError, TrustListError, CertificateError,
            commands.CommandError) as exc:
        print(f"msante: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop  # optional: a faster loop when installed (`pip install msante[fast]`)
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _parser() -> argparse.ArgumentParser:
    def options(default: Any) -> argparse.ArgumentParser:
        """Accepted before and after the subcommand; SUPPRESS keeps a subcommand from resetting
        what was given before it."""
        parser = argparse.ArgumentParser(add_help=False, argument_default=default)
        parser.add_argument("--config", metavar="FILE", help="TOML settings (default: <data-dir>/msante.toml)")
        parser.add_argument("--data-dir", metavar="DIR", help="data directory when no config file sets one (var)")
        parser.add_argument("-v", "--verbose", action="store_true", default=default if default is not None else False)
        return parser
    common = options(argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="msante", description="Secure health messaging server", parents=[options(None)])
    sub = p.add_subparsers(metavar="COMMAND")

    def command(parent, name: str, run: Callable, help_text: str) -> argparse.ArgumentParser:  # noqa: ANN001
        c = parent.add_parser(name, help=help_text, description=help_text, parents=[common])
        c.set_defaults(run=run)
        return c

    c = command(sub, "init", commands.init_command, "create the data directory, PKI, token issuer and database")
    c.add_argument("--demo", action="store_true", help="load the demo care network (fictional people); implies "
                   "--dev-issuer and turns the dev sign-in page on (loopback clients only)")
    c.add_argument("--dev-issuer", action="store_true", help="trust tokens of the dev issuer this command creates "
                   "(`msante token issue`): for development and tests, never in production")
    c = command(sub, "serve", commands.serve_command, "run every listener until SIGTERM")
    c.add_argument("--workers", type=int, metavar="N", help="N processes sharing the listeners (SO_REUSEPORT), "
                   "0: one per core; needs PostgreSQL and [bus] url (default: [server] workers, 1)")
    c.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor for each worker

    d = sub.add_parser("directory", help="the professional directory").add_subparsers(metavar="ACTION")
    c = command(d, "import", commands.import_command, "import national extract files (PS_LibreAcces…, "
                                                   "Extraction_Correspondance_MSSante…)")
    c.add_argument("files", nargs="+", type=Path)
    c.add_argument("--force", action="store_true", help="import a file older or much shorter than the last one of "
                   "its kind, or already imported")
    c.add_argument("--report", metavar="FILE.jsonl", type=Path, help="write every rejected line (file, line, "
                   "reason) and a summary per file there, one JSON object a line")
    c.epilog = IMPORT_EPILOG
    c.formatter_class = argparse.RawDescriptionHelpFormatter
    c = command(d, "search", commands.search_command, "search people, organisations and mailboxes")
    c.add_argument("text")
    c.add_argument("--kind", choices=["professional", "organisation", "mailbox"])
    c.add_argument("--limit", type=int, default=20)
    c = command(d, "show", commands.show_command, "one entry as JSON (idnat, RPPS, FINESS or address)")
    c.add_argument("id")

    m = sub.add_parser("mailbox", help="this operator's mailboxes").add_subparsers(metavar="ACTION")
    c = command(m, "add", commands.mailbox_add_command, "create a local mailbox")
    c.add_argument("address")
    c.add_argument("--kind", required=True, choices=KINDS)
    owner = c.add_mutually_exclusive_group(required=True)
    owner.add_argument("--owner", metavar="RPPS", help="the professional (nominative box)")
    owner.add_argument("--org", metavar="FINESS", help="the structure (organisational/applicative box)")
    c.add_argument("--description", default="")
    c.add_argument("--service", default="")
    c.add_argument("--unpublished", action="store_true", help="liste rouge: not shown in directory searches")
    for name, run in (("grant", commands.mailbox_grant_command), ("revoke", commands.mailbox_revoke_command)):
        c = command(m, name, run, f"{name} a professional's delegation on an organisational mailbox")
        c.add_argument("address")
        c.add_argument("--rpps", required=True)
        if name == "grant":
            c.add_argument("--rights", help="IMAP rights (RFC 4314 letters; lrswipkxtea lets the delegate "
                           "administer the box's ACL); default: everything but a")
    c = command(m, "list", commands.mailbox_list_command, "list local mailboxes with their delegates")
    c.add_argument("--json", action="store_true")
    ap = m.add_parser("app-password", help="passwords for mail clients that cannot do OAuth").add_subparsers(
        metavar="ACTION")
    c = command(ap, "create", commands.app_password_create_command, "create a password for one device")
    c.add_argument("address")
    c.add_argument("--rpps", required=True)
    c.add_argument("--label", required=True, help='the device, e.g. "Thunderbird cabinet"')
    c = command(ap, "list", commands.app_password_list_command, "list a professional's passwords (labels only)")
    c.add_argument("address", nargs="?")
    c.add_argument("--rpps", required=True)
    c = command(ap, "revoke", commands.app_password_revoke_command, "revoke a password by its label")
    c.add_argument("address")
    c.add_argument("--rpps", required=True)
    c.add_argument("--label", required=True)

    q = sub.add_parser("queue", help="the outbound queue (mail for other operators)").add_subparsers(
        metavar="ACTION")
    c = command(q, "list", commands.queue_list_command, "deliveries waiting for another operator")
    c.add_argument("--json", action="store_true")
    c = command(q, "retry", commands.queue_retry_command, "try a queued delivery again now")
    c.add_argument("id", type=int)
    c = command(q, "bounce", commands.queue_bounce_command, "give up a queued delivery (failure report sent)")
    c.add_argument("id", type=int)
    c.add_argument("--reason", default="returned by the operator")

    cc = sub.add_parser("circle", help="care circles (cercles de soins)").add_subparsers(metavar="ACTION")
    c = command(cc, "create", commands.circle_create_command, "create a care circle around one patient")
    c.add_argument("--ins", required=True, help="the patient's INS matricule (15 characters)")
    c.add_argument("--ins-oid", default="1.2.250.1.213.1.4.8", help="the INS register (default: INS-NIR)")
    c.add_argument("--family-name", required=True, help="birth family name")
    c.add_argument("--given-name", required=True, help="first given name")
    c.add_argument("--birth-date", required=True, metavar="YYYY-MM-DD")
    c.add_argument("--coordinator", required=True, metavar="RPPS")
    c.add_argument("--member", action="append", default=[], metavar="RPPS", help="repeat for several")
    c = command(cc, "add", commands.circle_add_command, "add a professional to a circle")
    c.add_argument("circle", type=int)
    c.add_argument("--rpps", required=True)
    c.add_argument("--on-behalf-of", default="", metavar="ADDRESS", help="the organisational box they represent")
    c = command(cc, "remove", commands.circle_remove_command, "remove a professional from a circle")
    c.add_argument("circle", type=int)
    c.add_argument("--rpps", required=True)
    c = command(cc, "list", commands.circle_list_command, "list care circles and their members")
    c.add_argument("--json", action="store_true")

    tr = sub.add_parser("trust", help="the trust space (national white list)").add_subparsers(metavar="ACTION")
    c = command(tr, "import", commands.trust_import_command, "replace the trust space with a white-list XML file")
    c.add_argument("file", type=Path)

    k = sub.add_parser("certs", help="dev PKI").add_subparsers(metavar="ACTION")
    c = command(k, "issue", commands.certs_issue_command, "issue a client or server certificate from the dev CA")
    c.add_argument("--kind", required=True, choices=["cps", "app", "server"])
    c.add_argument("--rpps", help="the professional (cps)")
    c.add_argument("--mailbox", help="the applicative mailbox (app)")
    c.add_argument("--host", action="append", help="host name(s) of another operator's server (server)")
    c.add_argument("--out", required=True, type=Path, metavar="DIR")
    c = command(k, "revoke", commands.certs_revoke_command, "add a certificate to the dev CA's revocation list")
    c.add_argument("serial", help="the certificate's serial number, decimal or hex (0x…, or as OpenSSL prints it)")
    c.add_argument("--reason", choices=[r.value for r in x509.ReasonFlags if r.value not in ("unspecified", "removeFromCRL")],
                   help="RFC 5280 reason code (default: none, i.e. unspecified)")

    t = sub.add_parser("token", help="dev token issuer (Pro Santé Connect shape)").add_subparsers(metavar="ACTION")
    c = command(t, "issue", commands.token_issue_command, "print a signed access token for a professional")
    c.add_argument("--rpps", required=True)
    c.add_argument("--ttl", type=int, default=300, help="seconds (PSC access tokens live a few minutes)")
    c.add_argument("--acr", default="eidas1")
    c.add_argument("--audience", default="msante")

    h = sub.add_parser("hl7", help="the hospital feed (HL7 v2 over MLLP)").add_subparsers(metavar="ACTION")
    c = command(h, "send", commands.hl7_send_command,
                "send HL7 v2 message files to the hl7 listener as a hospital, and print each ACK")
    c.add_argument("files", nargs="+", type=Path, metavar="FILE")
    c.add_argument("--cert", type=Path, help="the hospital's applicative certificate (default: the demo hospital's)")
    c.add_argument("--key", type=Path, help="its private key")
    c.add_argument("--to", metavar="HOST:PORT", help="the listener (default: [listen] hl7)")
    c = command(h, "purge", hospital_commands.hl7_purge_command,
                "cut raw HL7 messages older than [hl7] raw_retention_days to their MSH segment now")
    c.add_argument("--days", type=int, help="this retention instead of [hl7] raw_retention_days")

    hospital_commands.register(sub, command)

    a = sub.add_parser("audit", help="the audit trail").add_subparsers(metavar="ACTION")
    c = command(a, "tail", commands.audit_tail_command, "show the latest audit rows")
    c.add_argument("-n", "--lines", type=int, default=20)
    c.add_argument("-f", "--follow", action="store_true")
    c.add_argument("--actor")
    c.add_argument("--action")
    c.add_argument("--json", action="store_true")
    return p


if __name__ == "__main__":
    sys.exit(main())
