"""aiosmtpd, extended in this one place for what a submission server of the trust space owes.

aiosmtpd parses SMTP and reads DATA; it does not advertise PIPELINING, ENHANCEDSTATUSCODES
or DSN, upper-cases MAIL/RCPT parameters (which would corrupt ENVID and ORCPT, RFC 3461
§4.4-4.2 require them kept) and refuses parameters it does not know. This subclass:
- builds the EHLO reply itself (RFC 5321 §4.1.1.1) with the extensions we honour;
- takes RET/ENVID and NOTIFY/ORCPT out of the command before aiosmtpd sees it, parses them
  with `dsn.py`, and hangs them on the envelope once aiosmtpd accepted the command;
- runs SASL through `sasl.py` and logs in through the shared `Logins` (same as IMAP);
- lets the handler refuse a client certificate right after STARTTLS (`check_tls_peer`);
- adds an enhanced status code (RFC 2034/3463) to every reply that lacks one;
- closes a submission session not authenticated within `login_deadline` seconds, and any
  session that earned `max_refusals` 5xx replies, with 421 (RFC 5321 §3.8), audited once;
- answers malformed addresses and bytes that are not UTF-8 with 553/501, and ends a session
  whose client left (mid-reply, mid-AUTH, mid-handshake) without a traceback in the log.
How many sessions a client may open is the listener's business (msante/admission.py).
Policy (who may send what, where it goes, storing it) lives in the handler, `submission.py`.
"""
from __future__ import annotations

import asyncio
import logging
import re
import ssl
import warnings
from collections import defaultdict
from dataclasses import dataclass
from email._header_value_parser import get_addr_spec, get_angle_addr
from typing import Any, Awaitable, Callable

from aiosmtpd.smtp import SMTP, Envelope, TLSSetupException, syntax

from directory.authn import audit_handshake_refusal
from store.audit import ANONYMOUS, Actor, AuditTrail
from web.metrics import SMTP_MESSAGES, SMTP_REFUSALS, SMTP_SESSIONS

from . import dsn, sasl
from .logins import LoginFailed, Logins
from .smtp_data import DataReader, Outcome

log = logging.getLogger("msante.smtp")
# aiosmtpd logs every command and reply at INFO ("mail.log"): seven lines per message, and
# the arguments of AUTH among them; its warnings are about the configuration we chose on
# purpose (AUTH on implicit TLS). Our own log and the audit trail say what matters.
logging.getLogger("mail.log").setLevel(logging.ERROR)

ENHANCED = re.compile(rb"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}")
# RFC 3463 / RFC 5248 codes for replies aiosmtpd (or we) send without one.
DEFAULT_ENHANCED = {
    b"221": b"2.0.0", b"250": b"2.0.0", b"235": b"2.7.0",
    b"421": b"4.7.0", b"450": b"4.2.0", b"451": b"4.3.0", b"452": b"4.5.3", b"454": b"4.7.0",
    b"500": b"5.5.2", b"501": b"5.5.4", b"502": b"5.5.1", b"503": b"5.5.1", b"504": b"5.5.4",
    b"530": b"5.7.0", b"535": b"5.7.8", b"538": b"5.7.11", b"550": b"5.0.0", b"552": b"5.3.4",
    b"553": b"5.1.3", b"554": b"5.0.0", b"555": b"5.5.4",
}
NO_ENHANCED = (b"220", b"334", b"354")  # greeting and intermediate replies (RFC 2034 §3)
MAIL_DSN_PARAMS = ("RET", "ENVID")
RCPT_DSN_PARAMS = ("NOTIFY", "ORCPT")
MAX_AUTH_LINE = sasl.MAX_RESPONSE * 4 // 3 + 8  # base64 of the largest SASL response, CRLF
DATA_CHUNK = 256 * 1024  # the most one read of DATA takes from the session's buffer


@dataclass(frozen=True)
class SmtpLimits:
    """Every limit has a name and a reason; the defaults follow what large MTAs ship."""

    max_message_size: int = 25 * 1024 * 1024  # announced with SIZE; no national limit, 25 MB usual
    max_header_size: int = 128 * 1024  # header section octets (config/settings.py says why)
    max_header_fields: int = 500
    max_recipients: int = 100  # per message; RFC 5321 §4.5.3.1.8 requires at least 100 be accepted
    max_commands: int = 200  # uses of any other verb per session (aiosmtpd's call limit): stops NOOP loops
    max_messages: int = 1000  # messages per session (Exim's smtp_accept_max_per_connection)
    idle_timeout: float = 300  # RFC 5321 §4.5.3.2.7: 5 minutes for the server
    login_deadline: float = 60  # submission: seconds from connecting to AUTH done ([limits] login_deadline)
    max_refusals: int = 20  # 5xx replies one session may earn ([limits] smtp_refusals)


class MsanteEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.dsn = dsn.MailDsn()
        self.rcpt_dsn: list[dsn.RcptDsn] = []
        self.routes: list[int | None] = []  # per recipient: local mailbox id, or None for the outbound queue


class MsanteSMTP(SMTP):
    # aiosmtpd's reader limit is also its DATA line limit (1001). An AUTH line carrying a PSC
    # token is several KB, so both become 8 KB: still bounded, and lenient with long lines in
    # bodies as Postfix is (it accepts them and wraps at 2048).
    line_length_limit = MAX_AUTH_LINE + 64

    def __init__(self, handler: Any, *, logins: Logins | None, audit: AuditTrail, limits: SmtpLimits, hostname: str,
                 tls_context: ssl.SSLContext, implicit_tls: bool, listener: str) -> None:
        """`logins` None: the relay listener, where the TLS certificate is the identity and
        there is no AUTH. `listener` names the listener in the metrics."""
        with warnings.catch_warnings():
            # aiosmtpd warns about AUTH without STARTTLS; with implicit TLS the whole session is TLS.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            super().__init__(
                handler, data_size_limit=limits.max_message_size, enable_SMTPUTF8=True, decode_data=False,
                hostname=hostname, ident="msante ESMTP", tls_context=None if implicit_tls else tls_context,
                require_starttls=not implicit_tls, timeout=limits.idle_timeout, auth_required=logins is not None,
                auth_require_tls=not implicit_tls, command_call_limit={
                    "*": limits.max_commands, "MAIL": limits.max_messages, "DATA": limits.max_messages,
                    "RSET": limits.max_messages, "RCPT": limits.max_messages * limits.max_recipients})
        # aiosmtpd keeps command_size_limits on the class and clears it in every __init__: one
        # session's EHLO raises the limits of all, and a new connection resets everyone's.
        self.command_size_limits = defaultdict(lambda: self.command_size_limit)
        self.logins = logins
        self.audit = audit
        self.limits = limits
        self.implicit_tls = implicit_tls
        self._quiet = False  # inside EHLO/HELO: no enhanced codes on those replies
        self._refusals = 0  # 5xx replies sent in this session
        self._login_timer: asyncio.TimerHandle | None = None
        self.listener = listener
        self._stored = SMTP_MESSAGES.labels(listener=listener)  # looked up once: every 250 counts
        self._counted: str | None = None  # MAIL, RCPT or DATA while one runs: its replies are counted

    # -- connection life ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # STARTTLS calls this again with the TLS transport
        super().connection_made(transport)
        if first:
            SMTP_SESSIONS.labels(listener=self.listener).inc()
        if first and self.logins is not None:
            self._login_timer = self.loop.call_later(self.limits.login_deadline, self._login_deadline_passed)

    def connection_lost(self, error: Exception | None) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
        if self.session is not None:  # aiosmtpd calls this twice after a failed STARTTLS handshake
            super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self.transport is None or self._handler_coroutine is None:  # EOF after the connection was lost
            return False
        return super().eof_received()

    async def _handle_client(self) -> None:
        """aiosmtpd's session, minus the traceback when the client leaves while a reply is
        written or during AUTH (the task would end with the error, logged by asyncio)."""
        try:
            await super()._handle_client()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass

    def _login_deadline_passed(self) -> None:
        if self.session is not None and not self.session.authenticated:
            self._goodbye(f"421 4.7.0 No login within {self.limits.login_deadline:g} seconds, closing",
                          "login deadline passed", deadline=self.limits.login_deadline)

    def _goodbye(self, reply: str, reason: str, **detail: Any) -> None:
        """Say `reply`, close, end the session, audit why (once: the transport is closing after)."""
        if self.transport is None or self.transport.is_closing():
            return
        log.info("%s: %s", peer_address(self.session), reason)
        self.transport.write(reply.encode() + b"\r\n")
        self.transport.close()
        # Commands the client pipelined are not read: the session's next read waits, and the
        # cancellation lands there, not inside the next command's database work.
        self._reader._buffer.clear()  # noqa: SLF001
        if self._handler_coroutine is not None:  # a TLS close waits for the peer; the session need not
            self._handler_coroutine.cancel()
        _keep(asyncio.ensure_future(self.audit.record(
            self._actor(), "smtp.disconnect", outcome="denied", source=peer_address(self.session), reason=reason,
            refusals=self._refusals, **detail)))

    def _actor(self) -> Actor:
        if self.session.authenticated:
            return self.session.auth_data.principal.actor
        return self.event_handler.actor(self.session) if self.logins is None else ANONYMOUS

    def close_if_idle(self) -> bool:
        """At shutdown: a session with no mail transaction open is told so and closed now;
        one inside a transaction is left to finish (the listener waits for it)."""
        if self.transport is None or self.transport.is_closing():
            return True
        if self.envelope is not None and self.envelope.mail_from is not None:
            return False
        self.transport.write(b"421 4.3.2 Service shutting down, please retry later\r\n")
        self.transport.close()
        if self._handler_coroutine is not None:  # a TLS close waits for the peer; the session need not
            self._handler_coroutine.cancel()
        return True

    def _create_envelope(self) -> MsanteEnvelope:
        return MsanteEnvelope()

    # -- what the session knows about TLS -------------------------------------------------------

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self.transport.get_extra_info("ssl_object") if self.transport else None

    @property
    def secure(self) -> bool:
        return self.ssl_object is not None

    def peer_certificate(self) -> bytes | None:
        obj = self.ssl_object
        return obj.getpeercert(binary_form=True) if obj else None

    async def smtp_STARTTLS(self, arg: str) -> None:
        """After the handshake, the handler may refuse the certificate it verified (the relay's
        revocation check): 421 and the connection closes before any command is read.

        aiosmtpd's own TLS layer (asyncio's pure-Python `SSLProtocol`) is kept: handing the
        socket to the loop's `start_tls` (uvloop's compiled one) measured slower, 177 and 176
        msgs/s against 215 and 199 (bench/smtp.py, alternating in one sitting)."""
        if self._tls_protocol is not None:  # aiosmtpd would start TLS inside TLS (RFC 3207 §4)
            await self.push("554 5.5.1 Error: TLS already active")
            return
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException as exc:
            await audit_handshake_refusal(self.audit, exc, source=peer_address(self.session), protocol="smtp")
            raise  # aiosmtpd closes the connection
        check = getattr(self.event_handler, "check_tls_peer", None)
        if check is None or self.ssl_object is None:
            return
        refusal = await check(self, self.session)
        if refusal:
            self._tls_handshake_okay = False  # aiosmtpd answers anything still in flight with 554
            await self.push(refusal)
            self.transport.close()

    # -- replies -----------------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        line = status.encode("utf-8") if isinstance(status, str) else status
        code = line[:3]
        if not self._quiet and code not in NO_ENHANCED and not ENHANCED.match(line) and code in DEFAULT_ENHANCED:
            line = code + line[3:4] + DEFAULT_ENHANCED[code] + b" " + line[4:]
        await super().push(line)
        if self._counted is not None:
            self._count(code, line)
        # A client that pipelined commands and reset the connection: the loss is learnt in a
        # callback, which must run before the next reply (asyncio logs every write after it).
        # Not after 220: STARTTLS's ClientHello read in the meantime would go to the cleartext
        # buffer, which the switch to TLS empties.
        if code != b"220":
            await asyncio.sleep(0)
        if code.startswith(b"5"):
            self._refusals += 1
            if self._refusals >= self.limits.max_refusals:
                self._goodbye("421 4.7.0 Too many refused commands, closing", "too many refusals")

    def _count(self, code: bytes, line: bytes) -> None:
        """A message stored (250 at the end of DATA) or a MAIL, RCPT or DATA refused, by the
        enhanced status code of the reply: a bounded label that says why (RFC 3463)."""
        if code == b"250" and self._counted == "DATA":
            self._stored.inc()
        elif code[:1] in (b"4", b"5"):
            enhanced = ENHANCED.match(line)
            reason = line[4:enhanced.end()] if enhanced else code
            SMTP_REFUSALS.labels(listener=self.listener, command=self._counted, code=reason.decode()).inc()

    async def smtp_HELO(self, hostname: str) -> None:
        self._quiet = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._quiet = False

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname, f"SIZE {self.data_size_limit}", "8BITMIME", "SMTPUTF8", "PIPELINING",
                 "ENHANCEDSTATUSCODES", "DSN"]
        if self.tls_context and not self._tls_protocol:
            lines.append("STARTTLS")
        if self.secure and self.logins is not None:
            lines.append("AUTH " + " ".join(sasl.mechanisms(tls=True, client_cert=self.peer_certificate() is not None)))
        lines.append("HELP")
        # MAIL may carry SIZE, BODY, SMTPUTF8, RET and ENVID (xtext, up to 100 chars); RCPT NOTIFY and ORCPT.
        self.command_size_limits["MAIL"] = self.command_size_limit + 26 + 10 + 10 + 110
        self.command_size_limits["RCPT"] = self.command_size_limit + 40 + dsn.ORCPT_MAX
        self.command_size_limits["AUTH"] = MAX_AUTH_LINE + 20  # tokens are kilobytes
        self._quiet = True
        try:
            for i, text in enumerate(lines):
                await self.push(f"250{'-' if i < len(lines) - 1 else ' '}{text}")
        finally:
            self._quiet = False

    # -- DSN parameters ----------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's parse (the standard library's angle-addr or addr-spec), with three changes:
        input like `<a@[>`, on which that parser fails, is a malformed address (553), not a
        fault of ours (451); no class is defined at each call, as aiosmtpd's does (4 % of the
        server's CPU under 20 sessions, py-spy); and the common form is read by `_PLAIN_PATH`."""
        if not arg:
            return "", ""
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is not None:
            addr, rest = plain.group(1), plain.group(2) or ""
        else:
            try:
                address, rest = (get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec)(arg)
                addr = address.addr_spec
            except Exception:  # noqa: BLE001 - HeaderParseError, and AttributeError, IndexError… on bad input
                return None, None
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    async def _unusable_address(self, arg: str | None, verb: str, reply: str) -> bool:
        """True, after refusing it (audited, escaped), when `arg` holds bytes that are not UTF-8
        (aiosmtpd keeps them as surrogates) or control characters."""
        if not arg or not _NOT_ADDRESS.search(arg):
            return False
        if await self.check_helo_needed() or await self.check_auth_needed(verb):
            return True
        address = arg.partition(":")[2].strip().split(" ", 1)[0].strip("<>") or arg
        await self.event_handler.refused(self.session, address, "address not UTF-8 or with control characters",
                                         command=verb)
        await self.push(reply)
        return True

    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._counting("MAIL", self._mail, arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._counting("RCPT", self._rcpt, arg)

    @syntax("DATA")  # aiosmtpd's HELP lists the commands that carry it
    async def smtp_DATA(self, arg: str | None) -> None:
        await self._counting("DATA", self._data, arg)

    async def _counting(self, command: str, run: Callable[[str | None], Awaitable[None]], arg: str | None) -> None:
        """Runs MAIL, RCPT or DATA with its replies counted (`_count`)."""
        self._counted = command
        try:
            await run(arg)
        finally:
            self._counted = None

    async def _mail(self, arg: str | None) -> None:
        if await self._unusable_address(arg, "MAIL", "501 5.1.7 The sender address is not valid UTF-8 or holds "
                                                     "control characters"):
            return
        arg, params = _take_params(arg, MAIL_DSN_PARAMS)
        try:
            mail_dsn = dsn.parse_mail_params(params)
        except dsn.DsnError as exc:
            await self.push(f"{exc.reply_code} {exc.enhanced_code} {exc.text}")
            return
        await super().smtp_MAIL(arg)
        if self.envelope.mail_from is not None:
            self.envelope.dsn = mail_dsn

    async def _rcpt(self, arg: str | None) -> None:
        if await self._unusable_address(arg, "RCPT", "501 5.1.3 The recipient address is not valid UTF-8 or holds "
                                                     "control characters"):
            return
        arg, params = _take_params(arg, RCPT_DSN_PARAMS)
        try:
            rcpt_dsn = dsn.parse_rcpt_params(params)
        except dsn.DsnError as exc:
            await self.push(f"{exc.reply_code} {exc.enhanced_code} {exc.text}")
            return
        before = len(self.envelope.rcpt_tos)
        await super().smtp_RCPT(arg)
        if len(self.envelope.rcpt_tos) > before:
            self.envelope.rcpt_dsn.append(rcpt_dsn)

    # -- DATA ----------------------------------------------------------------------------------------

    async def _data(self, arg: str | None) -> None:
        """aiosmtpd's DATA, its data read in chunks by `smtp_data.DataReader` instead of line
        by line: same replies, same limits, same content (that module says which)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = DataReader(max_size=self.data_size_limit, max_line=self.line_length_limit)
        try:
            while True:
                chunk = await self._reader.read(DATA_CHUNK)
                if not chunk:  # the client closed its side: nothing is stored, the session ends
                    raise ConnectionResetError("connection closed during DATA")
                rest = data.feed(chunk)
                if rest is not None:
                    break
        except asyncio.CancelledError:  # the connection was lost (aiosmtpd's eof_received)
            self._writer.close()
            raise
        # What the client pipelined after the data goes back where the next command is read.
        self._reader._buffer[:0] = rest  # noqa: SLF001
        if data.outcome is not Outcome.OK:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)" if data.outcome is Outcome.TOO_LONG
                            else "552 Error: Too much mail data")
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = data.content
        status = await self._call_handler_hook("DATA")  # both our handlers have handle_DATA
        self._set_post_data_state()
        await self.push(status)

    # -- AUTH ----------------------------------------------------------------------------------------

    async def smtp_AUTH(self, arg: str | None) -> None:
        if await self.check_helo_needed("EHLO"):
            return
        if not self.session.extended_smtp or self.logins is None:
            await self.push("502 5.5.1 AUTH not available here")
            return
        if not self.secure:
            await self.push("538 5.7.11 Encryption required: STARTTLS first")
            return
        if self.session.authenticated:
            await self.push("503 5.5.1 Already authenticated")
            return
        if self.envelope.mail_from is not None:
            await self.push("503 5.5.1 AUTH is not allowed during a mail transaction")
            return
        mechanism, _, initial = (arg or "").strip().partition(" ")
        mechanism = mechanism.upper()
        cert = self.peer_certificate()
        if mechanism not in sasl.mechanisms(tls=True, client_cert=cert is not None):
            await self.push("504 5.5.4 Unrecognized authentication type")
            return
        try:
            exchange = sasl.start(mechanism, sasl.b64decode_response(initial) if initial else None)
            result = exchange.step()
            while isinstance(result, sasl.Challenge):
                result = exchange.step(await self._auth_response(result.data))
        except sasl.SaslError as exc:
            if exc.kind != "aborted":
                await self.logins.malformed(mechanism, str(exc), source=peer_address(self.session), protocol="smtp")
            await self.push("501 5.7.0 Authentication aborted" if exc.kind == "aborted"
                            else f"501 5.5.2 {exc}")
            return
        if isinstance(result, sasl.Failed):
            await self.push("535 5.7.8 Authentication credentials invalid")
            return
        try:
            login = await self.logins.login(result, peer_certificate=cert, source=peer_address(self.session),
                                            protocol="smtp")
        except LoginFailed as exc:
            challenge = exchange.fail(exc.code)
            if challenge is not None:  # OAuth mechanisms: error challenge, then the client's dummy answer
                try:
                    exchange.step(await self._auth_response(challenge.data))
                except sasl.SaslError:
                    pass
            await self.push(f"{'454 4.7.0' if exc.temporary else '535 5.7.8'} {exc}")
            return
        self.session.authenticated = True
        self.session.auth_data = login
        await self.push(f"235 2.7.0 Authentication successful ({login.principal.display})")

    async def _auth_response(self, challenge: bytes) -> bytes:
        await self.push(b"334 " + sasl.b64encode_challenge(challenge).encode("ascii"))
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("client left during AUTH") from None
        except asyncio.LimitOverrunError:
            raise sasl.SaslError("response too long", "too-long") from None
        line = line.strip()
        if len(line) > MAX_AUTH_LINE:
            raise sasl.SaslError("response too long", "too-long")
        if line == sasl.ABORT:
            raise sasl.SaslError("aborted", "aborted")
        return sasl.b64decode_response(line.decode("ascii", "replace"))


# `<local@domain>` in dot-atoms of ASCII, what nearly every MAIL and RCPT carries, read by a
# regular expression in 2 µs; the standard library's parser took 130 µs (a tenth of the server's
# CPU at 20 sessions, py-spy) and still reads every other form (quoted local parts, address
# literals, source routes, UTF-8, comments), giving the same address and rest for these.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"\s*<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:\s*|\s+(?=[^\s(])(.*))")
# A byte that was not UTF-8 (as surrogateescape keeps it), or a control character: no address
# has any (RFC 5321 §4.1.2), and PostgreSQL refuses NUL in a query.
_NOT_ADDRESS = re.compile("[\x00-\x1f\x7f\udc80-\udcff]")
_closing: set[asyncio.Future] = set()  # audit rows of sessions being closed, until written


def _keep(future: asyncio.Future) -> None:
    _closing.add(future)
    future.add_done_callback(_written)


def _written(future: asyncio.Future) -> None:
    _closing.discard(future)
    if not future.cancelled() and future.exception() is not None:
        log.error("audit row of a closed session not written: %s", future.exception())


def peer_address(session: Any) -> str:
    """The client's address of an aiosmtpd session (its peer is a (host, port) tuple)."""
    return session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)


def _take_params(arg: str | None, names: tuple[str, ...]) -> tuple[str | None, dict[str, str | bool]]:
    """Split `names` out of a MAIL/RCPT argument, keeping their values' case (RFC 3461)."""
    if not arg or ">" not in arg:
        return arg, {}
    head, _, tail = arg.rpartition(">")
    kept, taken = [], {}
    for word in tail.split():
        key, eq, value = word.partition("=")
        if key.upper() in names:
            taken[key.upper()] = value if eq else True
        else:
            kept.append(word)
    return " ".join([head + ">", *kept]), taken
