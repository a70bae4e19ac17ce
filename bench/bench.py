#!/usr/bin/python3
"""postrider vs Postfix on this machine, same load, same sink, reported as ratios.

    bench/bench.py receive   # smtp-source -> MTA (postrider with delivery off; Postfix relaying)
    bench/bench.py relay     # smtp-source -> MTA -> smtp-sink, until the last message arrives
    bench/bench.py connection  # 10,000 queued messages drained over one connection
    bench/bench.py milter      # with and without an opendkim milter
    bench/bench.py all
    POSTRIDER_BASE=/path/to/older/postrider bench/bench.py relay-ab [SIZE:CONC:MSGS ...]
                             # this build against an older binary, relaying, A B A B

Needs root (perf counts fsync system-wide), Postfix (smtp-source, smtp-sink, postfix) and a
release build (`cargo build --release -p postrider`, done here). Writes a markdown table to
stdout; bench/RESULTS.md keeps the recorded runs.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "postrider")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Sink:
    """smtp-sink with its running counter parsed, so arrival times are known."""

    def __init__(self):
        self.port = free_port()
        self.count = 0
        self.times = []
        self.proc = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1000"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(self.port)

    def _read(self):
        buf = b""
        while True:
            c = self.proc.stdout.read(1)
            if not c:
                return
            if c == b"\r":
                m = re.search(rb"mesg=(\d+)", buf)
                if m:
                    n = int(m.group(1))
                    now = time.time()
                    while self.count < n:
                        self.count += 1
                        self.times.append(now)
                buf = b""
            else:
                buf += c

    def wait(self, n, timeout=600):
        end = time.time() + timeout
        while self.count < n and time.time() < end:
            time.sleep(0.002)
        return self.count >= n

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Postrider:
    def __init__(self, extra="", binary=None):
        self.dir = tempfile.mkdtemp(prefix="pr-bench-")
        self.port = free_port()
        cfg = os.path.join(self.dir, "postrider.toml")
        with open(cfg, "w") as f:
            f.write(f'hostname = "bench.postrider.test"\nspool = "{self.dir}/spool"\n'
                    f'[log]\nlevel = "warn"\n{extra}\n'
                    f'[smtp]\nlisten = ["127.0.0.1:{self.port}"]\nmax_connections_per_client = 1000\n')
        self.proc = subprocess.Popen([binary or BIN, "serve", "-c", cfg], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "log"), "w"))
        wait_port(self.port)

    def pids(self):
        return [self.proc.pid]

    def cpu_seconds(self):
        """User plus system CPU time of the daemon so far (it is one process)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Postfix:
    def __init__(self, relay_port):
        self.dir = tempfile.mkdtemp(prefix="pf-bench-")
        self.port = free_port()
        subprocess.run([os.path.join(ROOT, "bench", "postfix-instance.sh"), "start", self.dir,
                        str(self.port), f"[127.0.0.1]:{relay_port}"], check=True)

    def pids(self):
        out = subprocess.run(["pgrep", "-f", f"-c {self.dir}/etc|config_directory={self.dir}"],
                             capture_output=True, text=True).stdout.split()
        # Postfix's children do not carry -c; take every postfix process (one instance runs).
        out += subprocess.run(["pgrep", "-u", "postfix"], capture_output=True, text=True).stdout.split()
        out += subprocess.run(["pgrep", "-x", "master"], capture_output=True, text=True).stdout.split()
        return sorted({int(p) for p in out})

    def stop(self):
        subprocess.run([os.path.join(ROOT, "bench", "postfix-instance.sh"), "stop", self.dir])
        time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)


def hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssWatch:
    """Samples the summed RSS of an MTA's processes (Postfix is several) and keeps the peak."""

    def __init__(self, mta):
        self.mta = mta
        self.peak_kb = 0
        self.stop_flag = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_flag:
            total = 0
            for pid in self.mta.pids():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1])
                except OSError:
                    pass
            self.peak_kb = max(self.peak_kb, total)
            time.sleep(0.05)

    def stop(self):
        self.stop_flag = True
        self.t.join()
        own = max((hwm_kb(p) for p in self.mta.pids()), default=0)
        return max(self.peak_kb, own)


def perf_fsyncs(cmd):
    """Runs cmd under system-wide syscall counting; returns (seconds, fsync+fdatasync count)."""
    start = time.time()
    r = subprocess.run(["perf", "stat", "-a", "-x,", "-e",
                        "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync", "--"] + cmd,
                       capture_output=True, text=True)
    elapsed = time.time() - start
    n = 0
    for line in r.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and "sys_enter_f" in line and parts[0].strip().isdigit():
            n += int(parts[0])
    return elapsed, n


def source(port, n, conc, size):
    return ["smtp-source", "-m", str(n), "-s", str(conc), "-l", str(size),
            "-f", "bench@src.test", "-t", "rcpt@dst.test", f"127.0.0.1:{port}"]


def receive_case(mta_factory, n, conc, size):
    mta = mta_factory()
    try:
        subprocess.run(source(mta.port, 20, 2, size), check=True)  # warm up
        watch = RssWatch(mta)
        t, fsyncs = perf_fsyncs(source(mta.port, n, conc, size))
        rss = watch.stop()
        return {"rate": n / t, "fsyncs": fsyncs / n, "rss_mb": rss / 1024}
    finally:
        mta.stop()


def relay_case(mta_factory, sink, n, conc, size):
    mta = mta_factory(sink)
    try:
        base = sink.count
        subprocess.run(source(mta.port, 20, 2, size), check=True)
        sink.wait(base + 20)
        base = sink.count
        watch = RssWatch(mta)
        start = time.time()
        subprocess.run(source(mta.port, n, conc, size), check=True)
        ok = sink.wait(base + n)
        t = time.time() - start
        rss = watch.stop()
        return {"rate": n / t if ok else 0.0, "rss_mb": rss / 1024, "complete": ok}
    finally:
        mta.stop()


def relay_ab(base_bin, rounds=3, cases=((1024, 10, 10000), (1024, 50, 10000), (32768, 10, 4000))):
    """This build (B) against an older binary (A) on the same relay load, interleaved
    A B A B, each on a fresh daemon: messages per second and CPU milliseconds per message."""
    sink = Sink()
    print("## Relaying, this build against an older one (A B A B, fresh daemon each run)\n")
    print("| size | conc | msgs | A msg/s (median) | B msg/s (median) | B/A | A CPU ms/msg | B CPU ms/msg |")
    print("|---|---|---|---|---|---|---|---|")
    for size, conc, n in cases:
        res = {"A": [], "B": []}
        for _ in range(rounds):
            for name, binary in (("A", base_bin), ("B", BIN)):
                mta = Postrider(f'[routes]\n"*" = "[127.0.0.1]:{sink.port}"\n', binary)
                try:
                    base = sink.count
                    subprocess.run(source(mta.port, 20, 2, size), check=True)
                    sink.wait(base + 20)
                    base = sink.count
                    cpu0 = mta.cpu_seconds()
                    start = time.time()
                    subprocess.run(source(mta.port, n, conc, size), check=True)
                    ok = sink.wait(base + n)
                    t = time.time() - start
                    cpu = mta.cpu_seconds() - cpu0
                    res[name].append((n / t if ok else 0.0, cpu * 1000 / n))
                finally:
                    mta.stop()
        med = {k: (sorted(r for r, _ in v)[len(v) // 2], sorted(c for _, c in v)[len(v) // 2])
               for k, v in res.items()}
        a, b = med["A"], med["B"]
        print(f"| {size} | {conc} | {n} | {a[0]:.0f} | {b[0]:.0f} | {b[0] / max(a[0], 1e-9):.2f} | "
              f"{a[1]:.3f} | {b[1]:.3f} |", flush=True)
    sink.stop()


def domains_case(mta_factory, sink, n, conc, size, domains=100):
    """n messages spread over `domains` recipient domains: one smtp-source per domain, at
    most `conc` of them at once."""
    from concurrent.futures import ThreadPoolExecutor
    mta = mta_factory(sink)
    try:
        base = sink.count
        watch = RssWatch(mta)
        start = time.time()
        per = n // domains

        def one(i):
            cmd = ["smtp-source", "-m", str(per), "-s", "1", "-l", str(size), "-f", "bench@src.test",
                   "-t", f"rcpt@d{i}.test", f"127.0.0.1:{mta.port}"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        with ThreadPoolExecutor(conc) as pool:
            list(pool.map(one, range(domains)))
        ok = sink.wait(base + per * domains)
        t = time.time() - start
        rss = watch.stop()
        return {"rate": per * domains / t if ok else 0.0, "rss_mb": rss / 1024}
    finally:
        mta.stop()


def one_connection_case(sink, n=10000):
    """n queued 1 KB messages for one domain drained over one connection: postrider
    (messages_per_connection = n) and Postfix's smtp client (destination concurrency 1,
    connection cache) from a full queue to the last message at the sink."""
    res = {}
    # postrider: queue with delivery off, restart with delivery on.
    mta = Postrider("[delivery]\nenabled = false\n")
    try:
        subprocess.run(source(mta.port, n, 10, 1024), check=True)
        cfg = os.path.join(mta.dir, "postrider.toml")
        text = open(cfg).read().replace("[delivery]\nenabled = false\n",
                                        f'[routes]\n"*" = "[127.0.0.1]:{sink.port}"\n'
                                        f"[delivery]\nmessages_per_connection = {n}\n")
        open(cfg, "w").write(text)
        mta.proc.send_signal(signal.SIGTERM)
        mta.proc.wait(30)
        base = sink.count
        start = time.time()
        mta.proc = subprocess.Popen([BIN, "serve", "-c", cfg], stdout=subprocess.DEVNULL,
                                    stderr=open(os.path.join(mta.dir, "log2"), "w"))
        ok = sink.wait(base + n)
        res["postrider"] = n / (time.time() - start) if ok else 0.0
    finally:
        mta.stop()
    pf = Postfix(sink.port)
    try:
        etc = os.path.join(pf.dir, "etc")
        subprocess.run(["postconf", "-c", etc, "-e", "defer_transports = smtp",
                        "smtp_destination_concurrency_limit = 1",
                        "default_destination_concurrency_limit = 1"], check=True)
        subprocess.run(["postfix", "-c", etc, "reload"], check=True, stderr=subprocess.DEVNULL)
        time.sleep(1)
        subprocess.run(source(pf.port, n, 10, 1024), check=True)
        # Wait until everything is queued (deferred), then let it go.
        end = time.time() + 300
        while time.time() < end:
            out = subprocess.run(["postqueue", "-c", etc, "-j"], capture_output=True, text=True).stdout
            if len(out.splitlines()) >= n:
                break
            time.sleep(0.5)
        subprocess.run(["postconf", "-c", etc, "-e", "defer_transports ="], check=True)
        subprocess.run(["postfix", "-c", etc, "reload"], check=True, stderr=subprocess.DEVNULL)
        base = sink.count
        start = time.time()
        subprocess.run(["postqueue", "-c", etc, "-f"], check=True)
        ok = sink.wait(base + n)
        res["postfix"] = n / (time.time() - start) if ok else 0.0
    finally:
        pf.stop()
    return res


class OpenDkim:
    """opendkim signing for sign.test on a loopback port."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="dkim-bench-")
        self.port = free_port()
        subprocess.run(["opendkim-genkey", "-b", "2048", "-d", "sign.test", "-s", "sel", "-D", self.dir],
                       check=True)
        conf = os.path.join(self.dir, "opendkim.conf")
        with open(conf, "w") as f:
            f.write(f"Mode s\nDomain sign.test\nSelector sel\nKeyFile {self.dir}/sel.private\n"
                    f"Socket inet:{self.port}@127.0.0.1\nCanonicalization relaxed/simple\n"
                    f"InternalHosts 127.0.0.1\nBackground no\nRequireSafeKeys false\n"
                    f"PidFile {self.dir}/pid\nSyslog no\n")
        self.proc = subprocess.Popen(["opendkim", "-f", "-x", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def milter_case(n=3000, conc=10):
    """Messages/s accepted with delivery off, without a milter and through one opendkim."""
    res = {}
    for name in ("none", "opendkim"):
        dkim = OpenDkim() if name == "opendkim" else None
        extra = "[delivery]\nenabled = false\n"
        if dkim:
            extra += f'[[milter]]\naddress = "inet:127.0.0.1:{dkim.port}"\n'
        mta = Postrider(extra)
        try:
            cmd = ["smtp-source", "-m", str(n), "-s", str(conc), "-l", "1024", "-f", "author@sign.test",
                   "-t", "rcpt@dst.test", f"127.0.0.1:{mta.port}"]
            t0 = time.time()
            subprocess.run(cmd, check=True)
            res[name] = n / (time.time() - t0)
        finally:
            mta.stop()
            if dkim:
                dkim.stop()
    return res


def latency_case(mta_factory, sink, n=200):
    """Median time from the 250 after DATA to the message's arrival at the sink, concurrency 1."""
    import smtplib
    mta = mta_factory(sink)
    try:
        lat = []
        c = smtplib.SMTP("127.0.0.1", mta.port)
        c.ehlo("bench.test")
        for i in range(n):
            base = sink.count
            c.sendmail("bench@src.test", ["rcpt@dst.test"], f"Subject: {i}\r\n\r\nlatency\r\n")
            acked = time.time()
            if sink.wait(base + 1, 10):
                lat.append(sink.times[base] - acked)
        c.quit()
        lat.sort()
        return lat[len(lat) // 2] * 1000 if lat else float("nan")
    finally:
        mta.stop()


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "postrider"], cwd=ROOT, check=True)
    rows = []
    if what == "relay-ab":
        base_bin = os.environ.get("POSTRIDER_BASE")
        if not base_bin or not os.access(base_bin, os.X_OK):
            sys.exit("relay-ab: set POSTRIDER_BASE to an older postrider binary")
        # Optional SIZE:CONC:MSGS arguments pick the workloads (default: three of them).
        cases = [tuple(int(x) for x in a.split(":")) for a in sys.argv[2:]]
        relay_ab(base_bin, cases=cases) if cases else relay_ab(base_bin)
        return
    if what in ("receive", "all"):
        sink = Sink()
        print("## Receiving (smtp-source -> MTA)\n")
        print("| size | conc | msgs | postrider msg/s | Postfix msg/s | ratio | postrider fsync/msg | Postfix fsync/msg | postrider peak RSS MB | Postfix peak RSS MB (all processes) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for size in (1024, 32768):
            for conc in (1, 10, 50):
                n = {1: 1000, 10: 5000, 50: 5000}[conc] if size == 1024 else {1: 500, 10: 2000, 50: 2000}[conc]
                pr = receive_case(lambda: Postrider("[delivery]\nenabled = false\n"), n, conc, size)
                pf = receive_case(lambda: Postfix(sink.port), n, conc, size)
                row = (size, conc, n, pr, pf)
                rows.append(("receive",) + row)
                print(f"| {size} | {conc} | {n} | {pr['rate']:.0f} | {pf['rate']:.0f} | {pr['rate'] / pf['rate']:.2f} | "
                      f"{pr['fsyncs']:.3f} | {pf['fsyncs']:.2f} | {pr['rss_mb']:.1f} | {pf['rss_mb']:.1f} |", flush=True)
        sink.stop()
    if what in ("relay", "all"):
        print("\n## Relaying end to end (smtp-source -> MTA -> smtp-sink)\n")
        sink = Sink()
        t0 = time.time()
        n0 = sink.count
        subprocess.run(source(sink.port, 10000, 10, 1024), check=True)
        sink.wait(n0 + 10000)
        ceiling = 10000 / (time.time() - t0)
        print(f"Ceiling, smtp-source straight into smtp-sink, 1 KB, concurrency 10: {ceiling:.0f} msg/s\n")
        print("| size | conc | domains | msgs | postrider msg/s | Postfix msg/s | ratio | postrider peak RSS MB | Postfix peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|")

        def pr_factory(s):
            return Postrider(f'[routes]\n"*" = "[127.0.0.1]:{s.port}"\n')

        def pf_factory(s):
            return Postfix(s.port)

        for size in (1024, 32768):
            for conc in (10, 50):
                n = 10000 if size == 1024 else 4000
                pr = relay_case(pr_factory, sink, n, conc, size)
                pf = relay_case(pf_factory, sink, n, conc, size)
                print(f"| {size} | {conc} | 1 | {n} | {pr['rate']:.0f} | {pf['rate']:.0f} | {pr['rate'] / max(pf['rate'], 1e-9):.2f} | "
                      f"{pr['rss_mb']:.1f} | {pf['rss_mb']:.1f} |", flush=True)
        for size in (1024,):
            for conc in (10, 50):
                pr = domains_case(pr_factory, sink, 10000, conc, size)
                pf = domains_case(pf_factory, sink, 10000, conc, size)
                print(f"| {size} | {conc} | 100 | 10000 | {pr['rate']:.0f} | {pf['rate']:.0f} | "
                      f"{pr['rate'] / max(pf['rate'], 1e-9):.2f} | {pr['rss_mb']:.1f} | {pf['rss_mb']:.1f} |",
                      flush=True)
        pr_lat = latency_case(pr_factory, sink)
        pf_lat = latency_case(pf_factory, sink)
        print(f"\nMedian latency from 250 to arrival at concurrency 1: postrider {pr_lat:.2f} ms, Postfix {pf_lat:.2f} ms")
        sink.stop()
    if what in ("milter", "all"):
        r = milter_case()
        print("\n## Through one milter (opendkim signing), 1 KB, concurrency 10, delivery off\n")
        print("| no milter msg/s | opendkim msg/s | ratio |")
        print("|---|---|---|")
        print(f"| {r['none']:.0f} | {r['opendkim']:.0f} | {r['opendkim'] / r['none']:.2f} |")
    if what in ("connection", "all"):
        sink = Sink()
        r = one_connection_case(sink)
        print("\n## One connection, 10,000 queued 1 KB messages to smtp-sink\n")
        print("| postrider msg/s | Postfix msg/s (destination concurrency 1, connection cache) | ratio |")
        print("|---|---|---|")
        print(f"| {r['postrider']:.0f} | {r['postfix']:.0f} | {r['postrider'] / max(r['postfix'], 1e-9):.2f} |")
        sink.stop()


if __name__ == "__main__":
    main()
