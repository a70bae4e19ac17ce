#!/usr/bin/env python3
"""Instructions per relayed message, counted by valgrind's callgrind: a figure that does not
move with the machine's load, for comparing two builds when timed runs scatter by ±5 %.

    bench/instructions.py BINARY [BINARY ...] [--size 32768] [--msgs 300] [--conc 4] [--keep F]

Each binary runs `serve` under callgrind (all threads), relays MSGS messages of SIZE bytes
from smtp-source to smtp-sink through a `"*"` route, is stopped with SIGTERM once the sink
has them all, and the total instruction count (Ir) divided by MSGS is printed. Start-up and
shutdown are included; compare builds at the same MSGS. Needs valgrind and Postfix's
smtp-source and smtp-sink (Debian: valgrind, postfix).
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Sink, free_port, source, wait_port  # noqa: E402


def count(binary, size, msgs, conc, keep=None):
    sink = Sink()
    work = tempfile.mkdtemp(prefix="pr-callgrind-")
    try:
        port = free_port()
        cfg = os.path.join(work, "postrider.toml")
        with open(cfg, "w") as f:
            f.write(f'hostname = "bench.postrider.test"\nspool = "{work}/spool"\n'
                    f'[log]\nlevel = "warn"\n'
                    f'[routes]\n"*" = "[127.0.0.1]:{sink.port}"\n'
                    f'[smtp]\nlisten = ["127.0.0.1:{port}"]\nmax_connections_per_client = 1000\n')
        out = os.path.join(work, "callgrind.out")
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--separate-threads=no",
             binary, "serve", "-c", cfg],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "w"))
        wait_port(port, timeout=120)
        subprocess.run(source(port, msgs, conc, size), check=True, stdout=subprocess.DEVNULL)
        deadline = time.time() + 600
        while sink.count < msgs and time.time() < deadline:
            time.sleep(0.2)
        if sink.count < msgs:
            sys.exit(f"{binary}: only {sink.count} of {msgs} arrived")
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
        with open(out) as f:
            total = next(int(m.group(1)) for line in f
                         if (m := re.match(r"(?:summary|totals): (\d+)", line)))
        if keep:
            shutil.copy(out, keep)
        return total / msgs
    finally:
        sink.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binaries", nargs="+")
    p.add_argument("--size", type=int, default=32768)
    p.add_argument("--msgs", type=int, default=300)
    p.add_argument("--conc", type=int, default=4)
    p.add_argument("--keep", help="copy each callgrind output to KEEP.N (for callgrind_annotate)")
    a = p.parse_args()
    print(f"| binary | size | msgs | instructions per message |\n|---|---|---|---|")
    for i, b in enumerate(a.binaries):
        keep = f"{a.keep}.{i}" if a.keep else None
        print(f"| {b} | {a.size} | {a.msgs} | {count(b, a.size, a.msgs, a.conc, keep):,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
