#!/usr/bin/python3
"""A programmable SMTP/LMTP sink for postrider's integration tests (aiosmtpd, loopback only).

Every accepted message is written to OUT/NNNNNN.eml and described by one JSON line in
OUT/log.jsonl (sender, recipients, size, connection number, time). OUT/stats.json holds the
connection counters, rewritten on every change, so a test can assert e.g. that no more than one
connection per domain was ever open at once.

Behaviour switches (all optional):
  --rcpt-reply 'SUBSTRING=CODE TEXT'   reply to RCPT whose address contains SUBSTRING (repeatable)
  --data-reply 'CODE TEXT'             reply to the final dot instead of 250
  --greeting 'CODE TEXT'               greeting (e.g. '554 go away')
  --drop-after-rcpt N                  close the connection after the Nth RCPT of a session
  --delay SECONDS                      sleep before each reply to DATA (a slow server)
  --lmtp                               speak LMTP (LHLO, one reply per recipient after DATA)
  --unix PATH                          listen on a unix socket (mode 0666) instead of TCP
"""
import argparse
import asyncio
import json
import os
import sys
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP


class Stats:
    def __init__(self, out):
        self.lock = threading.Lock()
        self.path = os.path.join(out, "stats.json")
        self.conn_log = os.path.join(out, "connections.jsonl")
        self.open = 0
        self.max_open = 0
        self.total = 0
        # Per recipient domain: sessions open now that sent RCPT for it, and the most ever.
        self.domain_open = {}
        self.domain_max = {}
        self.write()

    def write(self):
        # The server thread and the main thread both write: one at a time.
        with self.lock:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"open": self.open, "max_open": self.max_open, "connections": self.total,
                           "domain_max": self.domain_max}, f)
            os.replace(tmp, self.path)

    def opened(self):
        self.open += 1
        self.total += 1
        self.max_open = max(self.max_open, self.open)
        with open(self.conn_log, "a") as f:
            f.write(json.dumps({"conn": self.total, "time": time.time()}) + "\n")
        self.write()
        return self.total

    def domain_seen(self, session, domain):
        seen = getattr(session, "domains", None)
        if seen is None:
            seen = session.domains = set()
        if domain in seen:
            return
        seen.add(domain)
        self.domain_open[domain] = self.domain_open.get(domain, 0) + 1
        self.domain_max[domain] = max(self.domain_max.get(domain, 0), self.domain_open[domain])
        self.write()

    def closed(self, session):
        self.open -= 1
        for d in getattr(session, "domains", ()):
            self.domain_open[d] -= 1
        self.write()


class Handler:
    def __init__(self, args, stats):
        self.args = args
        self.stats = stats
        self.out = args.out
        self.count = 0
        self.rules = []
        for r in args.rcpt_reply:
            sub, reply = r.split("=", 1)
            self.rules.append((sub, reply))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        session.rcpts_seen = getattr(session, "rcpts_seen", 0) + 1
        self.stats.domain_seen(session, address.rsplit("@", 1)[-1].lower())
        if self.args.drop_after_rcpt and session.rcpts_seen >= self.args.drop_after_rcpt:
            server.transport.close()
            return "421 closing"
        for sub, reply in self.rules:
            if sub in address:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.args.delay:
            await asyncio.sleep(self.args.delay)
        if self.args.data_reply:
            return self.args.data_reply
        self.count += 1
        name = os.path.join(self.out, "%06d.eml" % self.count)
        data = envelope.original_content or envelope.content
        with open(name + ".tmp", "wb") as f:
            f.write(data)
        os.replace(name + ".tmp", name)
        rec = {
            "file": os.path.basename(name),
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "size": len(data),
            "conn": getattr(session, "conn_no", 0),
            "tls": bool(getattr(session, "ssl", None)),
            "time": time.time(),
        }
        with open(os.path.join(self.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.args.lmtp:
            return "\r\n".join("250 2.0.0 OK" for _ in envelope.rcpt_tos)
        return "250 2.0.0 OK queued"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--unix", help="listen on this unix socket instead of --host/--port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--out", required=True)
    p.add_argument("--rcpt-reply", action="append", default=[])
    p.add_argument("--data-reply")
    p.add_argument("--greeting")
    p.add_argument("--drop-after-rcpt", type=int, default=0)
    p.add_argument("--delay", type=float, default=0)
    p.add_argument("--lmtp", action="store_true")
    p.add_argument("--tls-cert", help="offer STARTTLS with this certificate (PEM)")
    p.add_argument("--size-limit", type=int, default=33554432, help="SIZE announced")
    p.add_argument("--no-smtputf8", action="store_true", help="do not offer SMTPUTF8")
    p.add_argument("--tls-key")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    stats = Stats(args.out)
    handler = Handler(args, stats)
    base = LMTP if args.lmtp else SMTP

    class Server(base):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.session.conn_no = stats.opened()

        def connection_lost(self, exc):
            stats.closed(self.session)
            super().connection_lost(exc)

        async def _handle_client(self):
            if args.greeting:
                await self.push(args.greeting)
                self.transport.close()
                return
            await super()._handle_client()

    class Ctl(Controller):
        def _trigger_server(self):
            # With port 0, learn the port the kernel chose before the start-up check uses it.
            self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()

        def factory(self):
            return make_server()

    def make_server():
        tls = None
        if args.tls_cert:
            import ssl
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        return Server(handler, hostname="sink.test",
                      enable_SMTPUTF8=not args.no_smtputf8, tls_context=tls,
                      data_size_limit=args.size_limit)

    # A loaded test machine can take a while to bring the server up.
    if args.unix:
        from aiosmtpd.controller import UnixSocketController

        class UnixCtl(UnixSocketController):
            def factory(self):
                return make_server()

        ctl = UnixCtl(handler, unix_socket=args.unix, ready_timeout=30)
        ctl.start()
        # Reachable by a daemon that dropped root, as Dovecot's LMTP listener is made to be.
        os.chmod(args.unix, 0o666)
    else:
        ctl = Ctl(handler, hostname=args.host, port=args.port, ready_timeout=30)
        ctl.start()
    # Controller.start() opens one connection of its own to check the server is up.
    deadline = time.time() + 5
    while stats.open > 0 and time.time() < deadline:
        time.sleep(0.01)
    stats.total = stats.max_open = stats.open = 0
    if os.path.exists(stats.conn_log):
        os.remove(stats.conn_log)
    stats.write()
    # With --port 0 the kernel picks a free port: no race with other tests for it.
    port = 0 if args.unix else ctl.server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ctl.stop()


if __name__ == "__main__":
    sys.exit(main())
