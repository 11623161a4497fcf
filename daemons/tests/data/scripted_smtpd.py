#!/usr/bin/python3
"""A scripted SMTP/LMTP server for Facteur's delivery-agent tests.

Built on aiosmtpd (Debian package python3-aiosmtpd; run it with the system
/usr/bin/python3, which is where that package installs). The Rust side is
daemons/tests/common/peers.rs (`Scripted`); everything is driven by one
JSON configuration file:

    scripted_smtpd.py --config CONF.json --record DIR
                      (--listen ADDR:PORT | --unix PATH)

Once listening it prints exactly one line on standard output,
`READY ADDR:PORT` (the port the kernel chose when PORT is 0) or
`READY unix:PATH`, and nothing more there; diagnostics go to standard
error.

Configuration keys (all optional):

  hostname          name in the greeting and the EHLO reply
  lmtp              true: LHLO instead of HELO/EHLO, and after the final
                    dot one reply per accepted recipient, in RCPT order
  greeting          the greeting ("220 ..."); 421 closes the connection after
                    it, another non-2xx greeting answers every command but
                    QUIT with 503
  ehlo              a non-2xx reply to EHLO/HELO/LHLO instead of the usual one
  extensions        {"SIZE": bytes or null, "8BITMIME": bool, "SMTPUTF8": bool,
                     "DSN": bool, "PIPELINING": bool,
                     "ENHANCEDSTATUSCODES": bool, "XFORWARD": bool}; parameters
                    of MAIL/RCPT that belong to an extension not advertised
                    get 555. XFORWARD (off by default) announces
                    "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"; the
                    attributes received (xtext-decoded) go into the record
                    of the next transaction as "xforward" ({"NAME": ...})
                    and are then forgotten, as Postfix's smtpd does;
                    "XFORWARD-REFUSE" announces it too but answers every
                    XFORWARD with Postfix's "550 5.7.0 Error: insufficient
                    authorization"
  xforward          reply to XFORWARD (default "250 2.0.0 Ok")
  mail              reply to MAIL: a string, or {"default": reply,
                    "sender@x": reply} (keys are lower-cased addresses)
  rcpt              reply to RCPT, the same way (per recipient address)
  data              reply to DATA (354 goes on to the content; anything else
                    ends the transaction)
  dot               reply after the final dot (LMTP: the default per-recipient
                    reply)
  dot_rcpt          LMTP: {"rcpt@x": reply} per-recipient replies after the dot
  starttls          {"cert": PEM, "key": PEM}: offer STARTTLS with that key;
                    "refuse": offer it, answer 454
  auth              {"user": U, "password": P, "mechanisms": ["PLAIN","LOGIN"],
                     "required": bool (530 for MAIL before AUTH),
                     "require_tls": bool (AUTH offered only after STARTTLS)}
  stall             {"stage": STAGE, "seconds": N}: wait N seconds before the
                    reply at that stage
  drop              {"stage": STAGE, "after_bytes": N}: close the connection
                    instead of replying at that stage ("data_mid": after N
                    bytes of message content were read)
  idle_timeout      seconds without a command before the server hangs up (300)
  sessions          a list of whole configurations: the n-th connection uses
                    the n-th one, later connections the top-level one

STAGE is one of greeting, ehlo, starttls, auth, xforward, mail, rcpt, data,
data_mid, dot, rset, quit. A reply may have several lines separated by "\\n" (the code
is given once, on the first line).

Records: every transaction (from an accepted MAIL to its end: reply after
the dot, a refused DATA, RSET, a new EHLO, QUIT, a lost or dropped
connection) is written as DIR/txn-NNNNNN.json, and every connection as
DIR/session-NNNNNN.json when it ends (with its transcript, and under
"pipelined" the commands after which more input had already arrived before
the reply was sent: the client did not wait, it pipelined). Files appear
atomically (rename).
"""

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import ssl
import sys
import time

try:
    from aiosmtpd.smtp import SMTP, AuthResult
except ImportError:
    sys.stderr.write(
        "scripted_smtpd.py: the Python module aiosmtpd is missing for %s: "
        "install the Debian package python3-aiosmtpd (scripts/test.sh does)\n"
        % sys.executable
    )
    sys.exit(3)

DEFAULT_EXTENSIONS = {
    "SIZE": 10240000,
    "8BITMIME": True,
    "SMTPUTF8": True,
    "DSN": True,
    "PIPELINING": True,
    "ENHANCEDSTATUSCODES": True,
    "XFORWARD": False,
    "XFORWARD-REFUSE": False,
}

XFORWARD_ATTRS = ["NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"]

# Which extension a MAIL/RCPT parameter needs.
PARAM_EXTENSION = {
    "SIZE": "SIZE",
    "BODY": "8BITMIME",
    "SMTPUTF8": "SMTPUTF8",
    "RET": "DSN",
    "ENVID": "DSN",
    "NOTIFY": "DSN",
    "ORCPT": "DSN",
    "AUTH": "AUTH",
}

# The stage each command's reply belongs to.
COMMAND_STAGE = {
    "EHLO": "ehlo",
    "HELO": "ehlo",
    "LHLO": "ehlo",
    "STARTTLS": "starttls",
    "AUTH": "auth",
    "XFORWARD": "xforward",
    "MAIL": "mail",
    "RCPT": "rcpt",
    "DATA": "data",
    "RSET": "rset",
    "QUIT": "quit",
}

PATH_ARG = re.compile(r"^\s*<([^>]*)>\s*(.*)$")


def clean(s):
    """Text safe for JSON (lone surrogates from undecodable bytes replaced)."""
    if isinstance(s, bytes):
        return s.decode("utf-8", "replace")
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def xtext_decode(s):
    """RFC 3461 xtext: "+XX" is the byte with that hex value."""
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i] == "+" and re.match(r"^[0-9A-Fa-f]{2}$", s[i + 1 : i + 3]):
            out.append(int(s[i + 1 : i + 3], 16))
            i += 3
        else:
            out += s[i].encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8", "replace")


def pick(table, key, default):
    """A reply from a string or a {"default":..., address:...} table."""
    if table is None:
        return default
    if isinstance(table, str):
        return table
    return table.get(key.lower(), table.get("default", default))


def lines_of(reply):
    """A configured reply as wire lines: "550 5.1.1 a\\nb" is two lines."""
    parts = reply.split("\n")
    code = parts[0][:3]
    texts = [parts[0][4:]] + parts[1:]
    out = []
    for i, t in enumerate(texts):
        sep = " " if i == len(texts) - 1 else "-"
        out.append(code + sep + t)
    return out


class Recorder:
    def __init__(self, directory):
        self.dir = directory
        self.txn_seq = 0
        self.session_seq = 0
        os.makedirs(directory, exist_ok=True)

    def write(self, kind, seq, obj):
        name = os.path.join(self.dir, "%s-%06d.json" % (kind, seq))
        tmp = os.path.join(self.dir, ".%s-%06d.tmp" % (kind, seq))
        with open(tmp, "w", encoding="ascii") as f:
            json.dump(obj, f, ensure_ascii=True, indent=1)
        os.replace(tmp, name)


class Scripted(SMTP):
    # (aiosmtpd takes every attribute named auth_* for a SASL mechanism:
    # none of ours may be named so.)
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(self, cfg, recorder, number, tls_context):
        self.cfg = cfg
        self.rec = recorder
        self.number = number
        self.ext = dict(DEFAULT_EXTENSIONS)
        self.ext.update(cfg.get("extensions") or {})
        self.login_cfg = cfg.get("auth")
        self.lmtp = bool(cfg.get("lmtp"))
        self.greeted = False
        self.refused = False
        self.txn = None
        self.accepted = []
        self.xforward = {}
        self.record = {
            "session": number,
            "peer": None,
            "started": time.time(),
            "protocol": "LMTP" if self.lmtp else "SMTP",
            "helo": None,
            "tls": False,
            "tls_version": None,
            "tls_cipher": None,
            "auth_user": None,
            "auth_failures": 0,
            "transcript": [],
            "pipelined": [],
            "transactions": [],
            "end": None,
        }
        mechanisms = None
        if self.login_cfg:
            mechanisms = [m.upper() for m in self.login_cfg.get("mechanisms", ["PLAIN", "LOGIN"])]
        super().__init__(
            handler=None,
            hostname=cfg.get("hostname", "scripted.example.test"),
            ident="ESMTP scripted",
            tls_context=tls_context,
            enable_SMTPUTF8=True,
            decode_data=False,
            data_size_limit=None,
            timeout=float(cfg.get("idle_timeout", 300)),
            auth_require_tls=bool(self.login_cfg and self.login_cfg.get("require_tls")),
            auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN") if mechanisms is not None and m not in mechanisms],
            authenticator=self.check_login,
        )
        # Every command goes through one place: transcript, stalls, drops.
        for name, method in list(self._smtp_methods.items()):
            self._smtp_methods[name] = self.wrap(name, method)

    # ----- plumbing -----

    def tls_active(self):
        return self._tls_protocol is not None

    def stage_rule(self, key, stage):
        rule = self.cfg.get(key)
        if rule and rule.get("stage") == stage:
            return rule
        return None

    async def maybe_stall(self, stage):
        rule = self.stage_rule("stall", stage)
        if rule:
            await asyncio.sleep(float(rule.get("seconds", 0)))

    def maybe_drop(self, stage):
        """True (and the connection closed) when told to drop here."""
        if self.stage_rule("drop", stage):
            self.record["end"] = "dropped at " + stage
            self.end_txn("dropped")
            if self.transport is not None:
                self.transport.close()
            return True
        return False

    def wrap(self, name, method):
        async def wrapped(arg):
            line = name if arg is None else "%s %s" % (name, arg)
            self.record["transcript"].append(["C", clean(line)])
            # More input already there: the client did not wait for this
            # reply (pipelining).
            if len(getattr(self._reader, "_buffer", b"")) > 0:
                self.record["pipelined"].append(clean(line))
            if self.refused and name != "QUIT":
                return await self.reply("503 5.5.0 Error: no service")
            stage = COMMAND_STAGE.get(name)
            if stage:
                if self.maybe_drop(stage):
                    return
                await self.maybe_stall(stage)
            return await method(arg)

        return wrapped

    async def push(self, status):
        if not self.greeted:
            # aiosmtpd's first push is its greeting: ours replaces it.
            self.greeted = True
            peer = self.session.peer
            if isinstance(peer, tuple) and len(peer) >= 2:
                self.record["peer"] = "%s:%d" % (peer[0], peer[1])
            else:
                self.record["peer"] = clean(str(peer or ""))
            if self.maybe_drop("greeting"):
                return
            await self.maybe_stall("greeting")
            greeting = self.cfg.get("greeting") or "220 %s ESMTP scripted" % self.hostname
            await self.reply(greeting)
            if greeting.startswith("421"):
                self.record["end"] = "closed after greeting"
                self.transport.close()
            elif not greeting.startswith("2"):
                self.refused = True
            return
        if isinstance(status, bytes):
            text = status.decode("utf-8", "replace")
        else:
            text = status
        self.record["transcript"].append(["S", clean(text)])
        await super().push(status)

    async def reply(self, reply):
        for line in lines_of(reply):
            await self.push(line)

    def new_txn(self, sender, params):
        self.txn = {
            "session": self.number,
            "peer": self.record["peer"],
            "protocol": "LMTP" if self.lmtp else ("ESMTP" if self.session.extended_smtp else "SMTP"),
            "helo": self.record["helo"],
            "tls": self.tls_active(),
            "tls_version": self.record["tls_version"],
            "tls_cipher": self.record["tls_cipher"],
            "auth_user": self.record["auth_user"],
            "mail_from": clean(sender),
            "mail_params": [clean(p) for p in params],
            "rcpts": [],
            "data_reply": None,
            "complete": False,
            "data": None,
            "data_b64": None,
            "data_bytes": 0,
            "final_reply": None,
            "lmtp_replies": [],
            "xforward": self.xforward,
            "end": None,
            "started": time.time(),
        }
        self.xforward = {}
        self.accepted = []

    def end_txn(self, why):
        if self.txn is None:
            return
        txn = self.txn
        self.txn = None
        self.accepted = []
        raw = txn.pop("_raw", None)
        if raw is not None:
            txn["data"] = bytes(raw).decode("utf-8", "replace")
            txn["data_b64"] = base64.b64encode(bytes(raw)).decode("ascii")
            txn["data_bytes"] = len(raw)
        txn["end"] = why
        txn["ended"] = time.time()
        self.rec.txn_seq += 1
        seq = self.rec.txn_seq
        txn["seq"] = seq
        self.record["transactions"].append(seq)
        self.rec.write("txn", seq, txn)

    def set_data(self, raw):
        """The content read so far (encoded for the record when it ends)."""
        self.txn["_raw"] = raw

    def connection_made(self, transport):
        starttls = self._original_transport is not None
        super().connection_made(transport)
        if starttls and self.session.ssl:
            cipher = self.session.ssl.get("cipher")
            self.record["tls"] = True
            if cipher:
                self.record["tls_cipher"] = cipher[0]
                self.record["tls_version"] = cipher[1]
            # RFC 3207: the client starts over with EHLO (and AUTH).
            self.record["helo"] = None
            self.record["auth_user"] = None

    def connection_lost(self, error):
        if self.txn is not None:
            self.end_txn("disconnect")
        if self.record["end"] is None:
            self.record["end"] = "disconnect"
        self.record["ended"] = time.time()
        self.rec.write("session", self.number, self.record)
        super().connection_lost(error)

    # ----- commands -----

    def extensions(self):
        out = []
        size = self.ext.get("SIZE")
        if size:
            out.append("SIZE %d" % int(size))
        if self.ext.get("PIPELINING"):
            out.append("PIPELINING")
        if self.ext.get("8BITMIME"):
            out.append("8BITMIME")
        if self.ext.get("SMTPUTF8"):
            out.append("SMTPUTF8")
        if self.ext.get("DSN"):
            out.append("DSN")
        if self.ext.get("ENHANCEDSTATUSCODES"):
            out.append("ENHANCEDSTATUSCODES")
        if self.ext.get("XFORWARD") or self.ext.get("XFORWARD-REFUSE"):
            out.append("XFORWARD " + " ".join(XFORWARD_ATTRS))
        starttls = self.cfg.get("starttls")
        if starttls and not self.tls_active():
            out.append("STARTTLS")
        if self.login_cfg and (self.tls_active() or not self.login_cfg.get("require_tls")):
            out.append("AUTH " + " ".join(sorted(self._auth_methods.keys())))
        return out

    async def hello(self, name, extended):
        if not name:
            return await self.reply("501 5.5.4 Syntax: EHLO hostname")
        self.end_txn("ehlo")
        self._set_rset_state()
        self.xforward = {}
        refused = self.cfg.get("ehlo")
        if refused:
            return await self.reply(refused)
        self.session.host_name = name
        self.session.extended_smtp = extended
        self.record["helo"] = clean(name)
        if not extended:
            return await self.reply("250 %s" % self.hostname)
        # aiosmtpd checks command lengths against these limits.
        for c in ("MAIL", "RCPT"):
            self.command_size_limits[c] = 2048
        ext = self.extensions()
        lines = ["250" + ("-" if ext else " ") + self.hostname]
        for i, e in enumerate(ext):
            lines.append("250" + (" " if i == len(ext) - 1 else "-") + e)
        for line in lines:
            await self.push(line)

    async def smtp_EHLO(self, arg):
        if self.lmtp:
            return await self.reply('500 5.5.1 Error: command "EHLO" not recognized')
        await self.hello(arg, True)

    async def smtp_HELO(self, arg):
        if self.lmtp:
            return await self.reply('500 5.5.1 Error: command "HELO" not recognized')
        await self.hello(arg, False)

    async def smtp_LHLO(self, arg):
        if not self.lmtp:
            return await self.reply('500 5.5.1 Error: command "LHLO" not recognized')
        await self.hello(arg, True)

    async def smtp_STARTTLS(self, arg):
        setting = self.cfg.get("starttls")
        if setting == "refuse":
            return await self.reply("454 4.7.0 TLS not available due to local problem")
        if not setting or self.tls_context is None:
            return await self.reply("502 5.5.1 Error: command not implemented")
        if self.tls_active():
            return await self.reply("554 5.5.1 Error: TLS already active")
        self.end_txn("starttls")
        await super().smtp_STARTTLS(arg)

    def check_login(self, server, session, envelope, mechanism, data):
        user = data.login.decode("utf-8", "replace")
        password = data.password.decode("utf-8", "replace")
        if user == self.login_cfg.get("user") and password == self.login_cfg.get("password"):
            self.record["auth_user"] = user
            return AuthResult(success=True, auth_data=user)
        self.record["auth_failures"] += 1
        return AuthResult(
            success=False,
            handled=False,
            message="535 5.7.8 Error: authentication failed: bad user or password",
        )

    async def smtp_AUTH(self, arg):
        if not self.login_cfg:
            return await self.reply("503 5.5.1 Error: authentication not enabled")
        if self.txn is not None:
            return await self.reply("503 5.5.1 Error: MAIL transaction in progress")
        await super().smtp_AUTH(arg)

    async def smtp_XFORWARD(self, arg):
        if not self.ext.get("XFORWARD") and not self.ext.get("XFORWARD-REFUSE"):
            return await self.reply('500 5.5.1 Error: command "XFORWARD" not recognized')
        if self.ext.get("XFORWARD-REFUSE"):
            return await self.reply("550 5.7.0 Error: insufficient authorization")
        if not self.session.host_name:
            return await self.reply("503 5.5.1 Error: send HELO/EHLO first")
        if self.txn is not None:
            return await self.reply("503 5.5.1 Error: MAIL transaction in progress")
        words = (arg or "").split()
        if not words:
            return await self.reply("501 5.5.4 Syntax: XFORWARD attribute=value...")
        got = {}
        for w in words:
            name, eq, value = w.partition("=")
            if not eq or name.upper() not in XFORWARD_ATTRS:
                return await self.reply("501 5.5.4 Bad XFORWARD attribute name: %s" % name)
            got[name.upper()] = clean(xtext_decode(value))
        self.xforward.update(got)
        await self.reply(self.cfg.get("xforward") or "250 2.0.0 Ok")

    def check_params(self, params):
        """The reply refusing a parameter, or None."""
        for p in params:
            key, _, value = p.partition("=")
            need = PARAM_EXTENSION.get(key.upper())
            if need == "AUTH":
                if not self.login_cfg:
                    return "555 5.5.4 Unsupported option: %s" % p
                continue
            if need is None or not self.ext.get(need):
                return "555 5.5.4 Unsupported option: %s" % p
            if key.upper() == "SIZE":
                if not value.isdigit():
                    return "501 5.5.4 Bad message size syntax"
                if int(value) > int(self.ext["SIZE"]):
                    return "552 5.3.4 Message size exceeds fixed limit"
        return None

    def parse_path(self, arg, keyword):
        if arg is None or not arg[: len(keyword)].upper() == keyword:
            return None
        m = PATH_ARG.match(arg[len(keyword):])
        if not m:
            return None
        return m.group(1), m.group(2).split()

    async def smtp_MAIL(self, arg):
        if not self.session.host_name:
            return await self.reply("503 5.5.1 Error: send %s first" % ("LHLO" if self.lmtp else "HELO/EHLO"))
        if self.login_cfg and self.login_cfg.get("required") and not self.session.authenticated:
            return await self.reply("530 5.7.0 Authentication required")
        if self.txn is not None:
            return await self.reply("503 5.5.1 Error: nested MAIL command")
        parsed = self.parse_path(arg, "FROM:")
        if parsed is None:
            return await self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
        sender, params = parsed
        if params and not self.session.extended_smtp:
            return await self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
        bad = self.check_params(params)
        if bad:
            return await self.reply(bad)
        reply = pick(self.cfg.get("mail"), sender, "250 2.1.0 Ok")
        if reply.startswith("2"):
            self.new_txn(sender, params)
        await self.reply(reply)

    async def smtp_RCPT(self, arg):
        if self.txn is None:
            return await self.reply("503 5.5.1 Error: need MAIL command")
        parsed = self.parse_path(arg, "TO:")
        if parsed is None or not parsed[0]:
            return await self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
        rcpt, params = parsed
        reply = self.check_params(params) or pick(self.cfg.get("rcpt"), rcpt, "250 2.1.5 Ok")
        self.txn["rcpts"].append({"address": clean(rcpt), "params": [clean(p) for p in params], "reply": reply})
        if reply.startswith("2"):
            self.accepted.append(rcpt)
        await self.reply(reply)

    async def smtp_RSET(self, arg):
        self.end_txn("rset")
        self.xforward = {}
        self._set_rset_state()
        await self.reply("250 2.0.0 Ok")

    async def smtp_QUIT(self, arg):
        self.end_txn("quit")
        self.record["end"] = "quit"
        await self.reply("221 2.0.0 Bye")
        self._handler_coroutine.cancel()
        self.transport.close()

    async def smtp_DATA(self, arg):
        if self.txn is None:
            return await self.reply("503 5.5.1 Error: need MAIL command")
        if not self.accepted:
            if self.txn["rcpts"]:
                return await self.reply("554 5.5.1 Error: no valid recipients")
            return await self.reply("503 5.5.1 Error: need RCPT command")
        reply = self.cfg.get("data") or "354 End data with <CR><LF>.<CR><LF>"
        self.txn["data_reply"] = reply
        if not reply.startswith("354"):
            await self.reply(reply)
            self.end_txn("data refused")
            return
        await self.reply(reply)
        content = bytearray()
        self.set_data(content)
        drop = self.stage_rule("drop", "data_mid")
        drop_after = int(drop.get("after_bytes", 0)) if drop else None
        fragments = []
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as e:
                # A long line: keep it, in pieces.
                fragments.append(await self._reader.read(e.consumed))
                continue
            except asyncio.IncompleteReadError as e:
                content += b"".join(fragments) + e.partial
                self.end_txn("disconnect")
                return
            if fragments:
                line = b"".join(fragments) + line
                fragments = []
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                line = line[1:]
            content += line
            if drop_after is not None and len(content) >= drop_after:
                self.maybe_drop("data_mid")
                return
        self.txn["complete"] = True
        if self.maybe_drop("dot"):
            return
        await self.maybe_stall("dot")
        if self.lmtp:
            default = self.cfg.get("dot") or "250 2.0.0 Ok: delivered"
            replies = []
            for rcpt in self.accepted:
                r = pick(self.cfg.get("dot_rcpt"), rcpt, default)
                replies.append({"rcpt": clean(rcpt), "reply": r})
            self.txn["lmtp_replies"] = replies
            for r in replies:
                await self.reply(r["reply"])
        else:
            final = self.cfg.get("dot") or "250 2.0.0 Ok: queued as %06d" % (self.rec.txn_seq + 1)
            self.txn["final_reply"] = final
            await self.reply(final)
        self.end_txn("dot")
        self._set_post_data_state()


def tls_context_for(cfg):
    s = cfg.get("starttls")
    if not isinstance(s, dict):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(s["cert"], s["key"])
    return ctx


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--record", required=True)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", help="ADDR:PORT (PORT 0: the kernel chooses)")
    where.add_argument("--unix", help="a UNIX-domain socket path")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    with open(args.config, encoding="utf-8") as f:
        base = json.load(f)
    configs = base.get("sessions") or []
    contexts = {}

    def context(i, cfg):
        if i not in contexts:
            contexts[i] = tls_context_for(cfg)
        return contexts[i]

    recorder = Recorder(args.record)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def factory():
        recorder.session_seq += 1
        n = recorder.session_seq
        i = n - 1 if n - 1 < len(configs) else -1
        cfg = configs[i] if i >= 0 else base
        return Scripted(cfg, recorder, n, context(i, cfg))

    if args.unix:
        try:
            os.unlink(args.unix)
        except FileNotFoundError:
            pass
        server = loop.run_until_complete(loop.create_unix_server(factory, args.unix))
        os.chmod(args.unix, 0o666)
        ready = "unix:" + args.unix
    else:
        host, _, port = args.listen.rpartition(":")
        server = loop.run_until_complete(
            loop.create_server(factory, host=host, port=int(port), reuse_address=True)
        )
        h, p = server.sockets[0].getsockname()[:2]
        ready = "%s:%d" % (h, p)
    sys.stdout.write("READY %s\n" % ready)
    sys.stdout.flush()
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
