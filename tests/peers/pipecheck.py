#!/usr/bin/python3
"""A minimal SMTP server that advertises PIPELINING and records how commands arrive.

Each read from a client socket is logged as one JSON line in OUT/reads.jsonl ({"conn": n,
"data": text}); messages are counted in OUT/messages. A test can then prove pipelining
(MAIL, RCPT and DATA arriving in one read) and connection reuse (many messages, one conn).
"""
import argparse
import asyncio
import json
import os


async def session(reader, writer, out, state):
    state["conns"] += 1
    conn = state["conns"]
    log = open(os.path.join(out, "reads.jsonl"), "a")

    def send(text):
        writer.write(text.encode())

    send("220 pipecheck.test ESMTP\r\n")
    buf = b""
    in_data = False
    try:
        while True:
            await writer.drain()
            chunk = await reader.read(65536)
            if not chunk:
                break
            log.write(json.dumps({"conn": conn, "data": chunk.decode("latin-1")}) + "\n")
            log.flush()
            buf += chunk
            while True:
                if in_data:
                    end = buf.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    buf = buf[end + 5:]
                    in_data = False
                    state["messages"] += 1
                    with open(os.path.join(out, "messages"), "w") as f:
                        f.write(str(state["messages"]))
                    send("250 2.0.0 ok\r\n")
                    continue
                nl = buf.find(b"\r\n")
                if nl < 0:
                    break
                line, buf = buf[:nl].decode("latin-1"), buf[nl + 2:]
                verb = line[:4].upper()
                if verb == "EHLO":
                    send("250-pipecheck.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == "DATA":
                    send("354 go ahead\r\n")
                    # Data may already be in the buffer: start at a line boundary.
                    buf = b"\r\n" + buf
                    in_data = True
                elif verb == "QUIT":
                    send("221 bye\r\n")
                    await writer.drain()
                    writer.close()
                    return
                else:
                    send("250 2.0.0 ok\r\n")
    finally:
        log.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    state = {"conns": 0, "messages": 0}
    srv = await asyncio.start_server(lambda r, w: session(r, w, a.out, state), "127.0.0.1", a.port)
    print("ready", flush=True)
    async with srv:
        await srv.serve_forever()


asyncio.run(main())
