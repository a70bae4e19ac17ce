#!/usr/bin/python3
"""Scheduler scale: a spool of deferred mail (1,000 recipients over 1,000 domains, then
1,000,000 recipients over 100,000 domains), recovered by `postrider serve`. Reports the time
from start to listening (recovery), the log's own recovery time, RSS after recovery, and the
queue manager's tick (one event plus the attempts it starts) while 200 domains are flushed
into smtp-sink, from the daemon's metrics.

    python3 bench/memory.py          # builds what it needs in release mode
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from bench import BIN, ROOT, free_port, wait_port  # noqa: E402  (same folder)

FILL = os.path.join(ROOT, "target", "release", "examples", "fill")


def scrape(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    out = {}
    for line in data.decode().split("\r\n\r\n", 1)[1].splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def case(messages, per, domains):
    d = tempfile.mkdtemp(prefix="pr-mem-")
    try:
        t0 = time.time()
        subprocess.run([FILL, f"{d}/spool", str(messages), str(per), str(domains)], check=True,
                       stderr=subprocess.DEVNULL)
        fill_s = time.time() - t0
        sink_port, port, mport = free_port(), free_port(), free_port()
        sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cfg = f"{d}/postrider.toml"
        with open(cfg, "w") as f:
            f.write(f'hostname = "bench.test"\nspool = "{d}/spool"\n[smtp]\nlisten = ["127.0.0.1:{port}"]\n'
                    f'[routes]\n"*" = "[127.0.0.1]:{sink_port}"\n[control]\nmetrics = "127.0.0.1:{mport}"\n')
        log = open(f"{d}/log", "w")
        t0 = time.time()
        p = subprocess.Popen([BIN, "serve", "-c", cfg], stderr=log, stdout=subprocess.DEVNULL)
        wait_port(port, 120)
        listening = time.time() - t0
        wait_port(mport, 120)
        text = open(f"{d}/log").read()
        m = re.search(r"recovery took (\d+) ms", text)
        recovery_ms = int(m.group(1)) if m else -1
        rss = status_kb(p.pid, "VmRSS") / 1024
        before = scrape(mport)
        for i in range(200):
            subprocess.run([BIN, "queue", "flush", f"d{i * (domains // 200)}.test", "-c", cfg],
                           check=True, stdout=subprocess.DEVNULL)
        # Let the attempts finish.
        end = time.time() + 60
        while time.time() < end and scrape(mport)["postrider_delivery_attempts_in_flight"] > 0:
            time.sleep(0.05)
        after = scrape(mport)
        ticks = after["postrider_scheduler_tick_seconds_count"] - before["postrider_scheduler_tick_seconds_count"]
        tick_sum = after["postrider_scheduler_tick_seconds_sum"] - before["postrider_scheduler_tick_seconds_sum"]
        hwm = status_kb(p.pid, "VmHWM") / 1024
        p.terminate()
        p.wait(60)
        sink.kill()
        sink.wait()
        return {
            "recipients": messages * per, "domains": domains, "fill_s": fill_s,
            "listening_s": listening, "recovery_ms": recovery_ms, "rss_mb": rss, "hwm_mb": hwm,
            "ticks": ticks, "tick_mean_us": tick_sum / ticks * 1e6 if ticks else float("nan"),
            "tick_max_us": after["postrider_scheduler_tick_seconds_max"] * 1e6,
            "delivered": after.get('postrider_deliveries_total{outcome="delivered"}', 0),
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "postrider"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "spool", "--example", "fill"], cwd=ROOT, check=True)
    print("| recipients | domains | start to listening s | recovery ms (log) | RSS after recovery MB | peak RSS MB | ticks | mean tick µs | max tick µs | delivered while flushing |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for messages, per, domains in ((1000, 1, 1000), (100000, 10, 100000)):
        r = case(messages, per, domains)
        print(f"| {r['recipients']} | {r['domains']} | {r['listening_s']:.2f} | {r['recovery_ms']} | "
              f"{r['rss_mb']:.0f} | {r['hwm_mb']:.0f} | {r['ticks']:.0f} | {r['tick_mean_us']:.0f} | "
              f"{r['tick_max_us']:.0f} | {r['delivered']:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
