#!/usr/bin/env python3
"""The keeper's cost, side by side with no keeper, in one run.

Two release echo servers run at once, one with MITOSIS_KEEPER=on and one
with MITOSIS_KEEPER=off, and are measured in alternation, so that the
machine's drift hits both alike:

- UPGRADE round trip: a client's `UPGRADE` to its `UPGRADED` reply;
- signal to takeover: `kill -USR2` (to the keeper, which forwards it, or to
  the server itself) until the old generation has exited (a pidfd);
- memory: the keeper's VmRSS beside the serving generation's.

Usage: bench/keeper.py [ROUNDS] (from the repository's root; 200 by
default), after `cargo build --release -p mitosis-examples`.
"""
import os, select, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
target = os.environ.get("CARGO_TARGET_DIR", "target")


class Server:
    def __init__(self, keeper, directory):
        binary = os.path.join(directory, f"echo-server-{keeper}")
        shutil.copy(os.path.join(target, "release", "echo-server"), binary)
        env = dict(os.environ, MITOSIS_KEEPER=keeper)
        self.process = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        self.port = int(self.process.stdout.readline().split()[1])
        self.client = socket.create_connection(("127.0.0.1", self.port))
        self.reader = self.client.makefile("rb")
        self.serving = self.children()[0] if keeper == "on" else self.process.pid

    def children(self):
        pid = self.process.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]

    def upgrade(self):
        started = time.perf_counter()
        self.client.sendall(b"UPGRADE\n")
        reply = self.reader.readline().split()
        took = time.perf_counter() - started
        assert reply[0] == b"UPGRADED", reply
        old, self.serving = int(reply[1]), int(reply[2])
        wait_exit(old)
        return took

    def signal_upgrade(self, to_keeper):
        old = self.serving
        fd = os.pidfd_open(old)
        started = time.perf_counter()
        os.kill(self.process.pid if to_keeper else old, signal.SIGUSR2)
        select.select([fd], [], [], 30)
        took = time.perf_counter() - started
        os.close(fd)
        # Learn the new generation's pid from an UPGRADE round trip.
        self.upgrade()
        return took

    def rss_kib(self, pid):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    def stop(self):
        os.kill(self.process.pid, signal.SIGTERM)
        self.process.wait(30)


def wait_exit(pid):
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    select.select([fd], [], [], 30)
    os.close(fd)


def ms(values):
    return f"{statistics.median(values) * 1000:.3f} ms (p90 {statistics.quantiles(values, n=10)[-1] * 1000:.3f})"


with tempfile.TemporaryDirectory() as directory:
    kept, plain = Server("on", directory), Server("off", directory)
    rounds = {"kept": [], "plain": [], "kept-signal": [], "plain-signal": []}
    for i in range(ROUNDS):
        rounds["kept"].append(kept.upgrade())
        rounds["plain"].append(plain.upgrade())
        if i % 4 == 0:
            rounds["kept-signal"].append(kept.signal_upgrade(to_keeper=True))
            rounds["plain-signal"].append(plain.signal_upgrade(to_keeper=False))
    keeper_rss = kept.rss_kib(kept.process.pid)
    serving_rss = kept.rss_kib(kept.serving)
    zombies = [p for p in kept.children() if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"]
    kept.stop()
    plain.stop()
    print(f"{ROUNDS} UPGRADE round trips each, alternating:")
    print(f"  with a keeper:    {ms(rounds['kept'])}")
    print(f"  without:          {ms(rounds['plain'])}")
    print(f"  ratio of medians: {statistics.median(rounds['kept']) / statistics.median(rounds['plain']):.3f}")
    print(f"{len(rounds['kept-signal'])} SIGUSR2 until the old generation exits:")
    print(f"  to the keeper:    {ms(rounds['kept-signal'])}")
    print(f"  to the server:    {ms(rounds['plain-signal'])}")
    print(f"  ratio of medians: {statistics.median(rounds['kept-signal']) / statistics.median(rounds['plain-signal']):.3f}")
    print(f"memory: keeper VmRSS {keeper_rss} KiB, serving generation {serving_rss} KiB")
    print(f"keeper's children at the end: 1 serving + {len(zombies)} zombies")
