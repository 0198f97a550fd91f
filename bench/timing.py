#!/usr/bin/env python3
"""bench/timing.py: does the time of a refused Basic login tell whether the user exists?

Starts the real binary (target/release/portcullis unless --bin) on loopback, once with
argon2id users only and once with bcrypt (cost 12) users only, and measures refused Basic
logins from the client side:

  sequential  one request at a time, known-user wrong passwords and unknown names
              interleaved (each a new password or name, so nothing is cached or shared);
  burst of 9  nine identical attempts sent at once (one known user with one wrong password,
              or one unknown name), repeated a few rounds: identical attempts under way
              together share one hash, for unknown names as for known users.

It prints p50/p90/p99 (ms) of known-user and unknown-user failures side by side, and the
proxy's own count of hashes computed (portcullis_password_verifications_total) per phase.
A benchmark, not a test: the figures go into bench/RESULTS.md by hand.

  cargo build --release && bench/timing.py            # about 30 s per case on 2 cores
  bench/timing.py --n 400 --bcrypt-n 80 --rounds 10   # longer, steadier

Only the Python standard library is used. The hashes are the public example hashes of
config/portcullis.toml (alice: argon2id m=19456,t=2,p=1; bob: bcrypt cost 12).
"""

import argparse
import base64
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGON2ID = ("$argon2id$v=19$m=19456,t=2,p=1$kbDfKZGYzW+8C0xy2AbAYQ$"
            "/Eqyqc757gvLc0FlB68dGXTjfpUvdP0Dpl2fM8+EM+Q")
BCRYPT12 = "$2b$12$jDfNxGt2r.Bb0PtO2QejEeT9V1QSRjrjE5Zkwpkt1z0S1/E61tiGi"


def config(hash_, upstream_port):
    users = "".join(
        f'\n[[users]]\nname = "user{i}"\npassword_hash = "{hash_}"\n' for i in range(3))
    return f"""[server]
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"

[upstream]
url = "http://127.0.0.1:{upstream_port}"

# Every attempt here is a wrong one: keep the lockout out of the measurement.
[rate_limit]
max_failures = 1000000
{users}
[[route]]
path = "/"
auth = ["basic"]
"""


class Proxy:
    def __init__(self, binary, text):
        self.dir = tempfile.TemporaryDirectory()
        path = os.path.join(self.dir.name, "portcullis.toml")
        with open(path, "w") as f:
            f.write(text)
        self.proc = subprocess.Popen(
            [binary, "run", "--config", path, "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.addr = self.admin = None
        deadline = time.time() + 30
        while (self.addr is None or self.admin is None) and time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "listening":
                self.addr = event["listen"].split(",")[0]
            elif event.get("message") == "admin listening":
                self.admin = event["admin_listen"]
        if self.addr is None or self.admin is None:
            self.stop()
            sys.exit("the proxy did not start")
        # Drain stdout so the proxy never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()

    def verifications(self):
        host, port = self.admin.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        for line in text.splitlines():
            if line.startswith("portcullis_password_verifications_total "):
                return int(float(line.split()[1]))
        return -1


def attempt(addr, user, password):
    """One refused login on a new connection; returns (status, seconds)."""
    host, port = addr.rsplit(":", 1)
    credential = base64.b64encode(f"{user}:{password}".encode()).decode()
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("GET", "/x", headers={"Authorization": f"Basic {credential}"})
    status = conn.getresponse().status
    took = time.perf_counter() - start
    conn.close()
    return status, took


def pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000


def row(case, phase, kind, values, hashes):
    print(f"{case:<18} {phase:<11} {kind:<8} {len(values):>5} "
          f"{pct(values, 50):>8.1f} {pct(values, 90):>8.1f} {pct(values, 99):>8.1f} {hashes:>7}")


def run_case(binary, case, hash_, n, rounds, upstream_port):
    proxy = Proxy(binary, config(hash_, upstream_port))
    try:
        for i in range(3):  # warm-up: first connections, first hashes
            attempt(proxy.addr, "user0", f"warm-{i}")
            attempt(proxy.addr, f"warm-{i}", "x")
        known, unknown = [], []
        known_hashes = unknown_hashes = 0
        for i in range(n):
            before = proxy.verifications()
            status, took = attempt(proxy.addr, "user1", f"wrong-{i}")
            assert status == 401, status
            known.append(took)
            middle = proxy.verifications()
            status, took = attempt(proxy.addr, f"nobody-{i}", "wrong")
            assert status == 401, status
            unknown.append(took)
            known_hashes += middle - before
            unknown_hashes += proxy.verifications() - middle
        row(case, "sequential", "known", known, known_hashes)
        row(case, "sequential", "unknown", unknown, unknown_hashes)

        for kind in ("known", "unknown"):
            latencies, hashes = [], 0
            for r in range(rounds):
                user, password = (("user2", f"burst-{r}") if kind == "known"
                                  else (f"ghost-{r}", "burst"))
                results = [None] * 9
                barrier = threading.Barrier(9)

                def one(k):
                    barrier.wait()
                    results[k] = attempt(proxy.addr, user, password)

                before = proxy.verifications()
                threads = [threading.Thread(target=one, args=(k,)) for k in range(9)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                hashes += proxy.verifications() - before
                assert all(s == 401 for s, _ in results), results
                latencies.extend(took for _, took in results)
            row(case, "burst of 9", kind, latencies, hashes)
    finally:
        proxy.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/portcullis"))
    parser.add_argument("--n", type=int, default=200, help="sequential pairs, argon2id case")
    parser.add_argument("--bcrypt-n", type=int, default=40, help="sequential pairs, bcrypt")
    parser.add_argument("--rounds", type=int, default=5, help="bursts of 9 per kind")
    args = parser.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"{args.bin}: not built (cargo build --release)")
    # Nothing listens here: refused logins never reach the upstream.
    upstream_port = 9
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"{args.bin}")
    print(f"{'case':<18} {'phase':<11} {'kind':<8} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'hashes':>7}")
    for case, hash_, n in (("argon2id users", ARGON2ID, args.n),
                           ("bcrypt-12 users", BCRYPT12, args.bcrypt_n)):
        started = time.time()
        run_case(args.bin, case, hash_, n, args.rounds, upstream_port)
        print(f"# {case}: {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
