#!/usr/bin/python3
"""An SMTP server whose TLS is broken, for postrider's TLS fallback tests (loopback only).

It advertises STARTTLS and answers it with `220 ready`, then, instead of a TLS server hello,
sends plain text and closes the connection: the handshake fails the way it does behind a
broken middlebox or a misconfigured server. Everything else is accepted.

Every command of every connection is appended to OUT/events.jsonl as it arrives, one JSON
object a line: {"conn": N, "cmd": "EHLO ..."}; an accepted message adds
{"conn": N, "message": true, "rcpts": [...]}. Prints "ready PORT" once listening.
Plain asyncio, no aiosmtpd: aiosmtpd's STARTTLS cannot be made to fail on purpose.
"""
import argparse
import asyncio
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    events = open(os.path.join(args.out, "events.jsonl"), "a", buffering=1)
    counter = [0]

    def log(**kw):
        events.write(json.dumps(kw) + "\n")
        events.flush()

    async def session(reader, writer):
        counter[0] += 1
        conn = counter[0]
        rcpts = []

        async def reply(text):
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        try:
            await reply("220 badtls.test ESMTP")
            while True:
                line = await reader.readline()
                if not line:
                    return
                cmd = line.decode("utf-8", "replace").rstrip("\r\n")
                log(conn=conn, cmd=cmd)
                verb = cmd.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    await reply("250-badtls.test\r\n250-8BITMIME\r\n250 STARTTLS")
                elif verb == "STARTTLS":
                    await reply("220 2.0.0 ready to start TLS")
                    # Wait for the client's hello (bytes sent before it would be read as a
                    # reply, not as a handshake), then answer with what is not a TLS record:
                    # the client's handshake fails on it.
                    hello = await reader.read(5)
                    log(conn=conn, hello=len(hello))
                    await reply("this is not TLS")
                    return
                elif verb == "MAIL":
                    rcpts = []
                    await reply("250 2.1.0 ok")
                elif verb == "RCPT":
                    rcpts.append(cmd.split(":", 1)[1].strip().split(" ")[0].strip("<>"))
                    await reply("250 2.1.5 ok")
                elif verb == "DATA":
                    await reply("354 go ahead")
                    while True:
                        data = await reader.readline()
                        if not data or data == b".\r\n":
                            break
                    if not data:
                        return
                    log(conn=conn, message=True, rcpts=rcpts)
                    await reply("250 2.0.0 queued")
                elif verb == "QUIT":
                    await reply("221 2.0.0 bye")
                    return
                else:
                    await reply("250 2.0.0 ok")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def serve():
        server = await asyncio.start_server(session, args.host, args.port)
        port = server.sockets[0].getsockname()[1]
        print(f"ready {port}", flush=True)
        await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
