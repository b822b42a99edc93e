"""Connections spread evenly over the service's workers (cds_service._balancer).

The balancer is run for real: a TCP listener on loopback, clients that connect to it, and
workers that are real Unix-socket peers receiving real descriptors; then the whole service,
``movement-cds serve --workers 2``, with its worker processes counted in /proc."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service._balancer import ConnectionBalancer

from .conftest import free_port, start_service, stop_service, write_config

pytestmark = pytest.mark.skipif(not hasattr(socket, "send_fds"), reason="needs SCM_RIGHTS")


def _wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError("timed out")


class TestWorker:
    """The worker end of the protocol: hello when ready, one b"-" per closed connection."""

    __test__ = False

    def __init__(self, address: str, pid: int, *, ready: bool = True) -> None:
        self.pid = pid
        self.channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel.connect(address)
        self.held: list[socket.socket] = []
        if ready:
            self.ready()

    def ready(self) -> None:
        self.channel.sendall(b"p%d\n" % self.pid)

    def take(self, timeout: float = 0.05) -> list[socket.socket]:
        """The connections handed over so far (waits at most ``timeout`` for the first)."""
        got: list[socket.socket] = []
        self.channel.settimeout(timeout)
        while True:
            try:
                msg, fds, _f, _a = socket.recv_fds(self.channel, 1024, 64)
            except (TimeoutError, BlockingIOError):
                break
            got += [socket.socket(fileno=fd) for fd in fds]
            if not msg:
                break
            self.channel.settimeout(0.01)
        self.held += got
        return got

    def close_some(self, n: int) -> None:
        for sock in self.held[:n]:
            sock.close()
        del self.held[:n]
        self.channel.sendall(b"-" * n)

    def leave(self) -> None:
        self.channel.close()
        for sock in self.held:
            sock.close()


@pytest.fixture
def balancer() -> Iterator[tuple[ConnectionBalancer, tuple[str, int]]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    with ConnectionBalancer(listener, backlog=64) as b:
        yield b, listener.getsockname()
    listener.close()


def ready_workers(b: ConnectionBalancer, *pids: int) -> list[TestWorker]:
    """Workers that said hello, once the balancer has taken note of every one of them."""
    workers = [TestWorker(b.address, pid) for pid in pids]
    _wait_for(lambda: set(b.open_connections()) >= set(pids), 5)
    return workers


def connect(addr: tuple[str, int], n: int) -> list[socket.socket]:
    return [socket.create_connection(addr, timeout=5) for _ in range(n)]


def settle(*workers: TestWorker, expect: int, timeout: float = 5.0) -> list[int]:
    """Take handed connections until ``expect`` have arrived in all; per-worker counts."""
    counts = [0] * len(workers)
    deadline = time.monotonic() + timeout
    while sum(counts) < expect and time.monotonic() < deadline:
        for i, w in enumerate(workers):
            counts[i] += len(w.take(timeout=0.01))
    return counts


def test_connections_are_spread_evenly_and_arrive_usable(balancer: tuple) -> None:
    b, addr = balancer
    a, c = ready_workers(b, 101, 102)
    clients = connect(addr, 10)
    assert settle(a, c, expect=10) == [5, 5]
    # the handed descriptors are the clients' connections: bytes go through both ways
    for i, client in enumerate(clients):
        client.sendall(b"hello %d" % i)
    got = {s.recv(64) for s in a.held + c.held}
    assert got == {b"hello %d" % i for i in range(10)}
    assert b.open_connections() == {101: 5, 102: 5}
    for s in clients:
        s.close()
    a.leave()
    c.leave()


def test_a_worker_that_closed_connections_gets_the_next_ones(balancer: tuple) -> None:
    b, addr = balancer
    a, c = ready_workers(b, 1, 2)
    first = connect(addr, 8)
    assert settle(a, c, expect=8) == [4, 4]
    a.close_some(3)
    _wait_for(lambda: b.open_connections().get(1) == 1, 5)
    more = connect(addr, 3)
    assert settle(a, c, expect=3) == [3, 0]
    for s in first + more:
        s.close()


def test_connections_wait_for_a_ready_worker(balancer: tuple) -> None:
    b, addr = balancer
    early = TestWorker(b.address, 7, ready=False)  # connected, still warming up
    clients = connect(addr, 3)
    assert early.take(timeout=0.3) == []  # nothing is lost meanwhile: the balancer holds them
    early.ready()
    assert settle(early, expect=3) == [3]
    for s in clients:
        s.close()


def test_a_worker_that_left_gets_nothing_more(balancer: tuple) -> None:
    b, addr = balancer
    a, c = ready_workers(b, 1, 2)
    first = connect(addr, 2)
    assert settle(a, c, expect=2) == [1, 1]
    a.leave()
    _wait_for(lambda: 1 not in b.open_connections(), 5)
    more = connect(addr, 4)
    assert settle(c, expect=4) == [4]
    for s in first + more:
        s.close()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.just(-1), st.tuples(st.integers(0, 2), st.integers(1, 3))),
                min_size=1, max_size=12))
def test_each_connection_goes_to_a_least_loaded_worker(
        balancer: tuple, steps: list[int | tuple[int, int]]) -> None:
    """Whatever the order of connects and closes, a new connection goes to a worker with
    the fewest open connections at that moment."""
    b, addr = balancer
    workers = ready_workers(b, 1000, 1001, 1002)
    clients: list[socket.socket] = []
    try:
        for step in steps:
            if step == -1:
                before = [len(w.held) for w in workers]
                clients += connect(addr, 1)
                counts = settle(*workers, expect=1)
                assert sum(counts) == 1
                assert before[counts.index(1)] == min(before), (before, counts)
            else:
                i, n = step
                n = min(n, len(workers[i].held))
                if n:
                    workers[i].close_some(n)
                    pid, want = 1000 + i, len(workers[i].held)
                    _wait_for(lambda p=pid, w=want: b.open_connections().get(p) == w, 5)
    finally:
        for s in clients:
            s.close()
        for w in workers:
            w.leave()
        _wait_for(lambda: not b.open_connections(), 5)


# --- the whole service: movement-cds serve --workers 2 ----------------------------------------


def _established(pid: int, port: int) -> int:
    """Established TCP connections on ``port`` that process ``pid`` holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if (int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01"
                    and cols[9] in inodes):
                count += 1
    return count


def _listening(pid: int, port: int) -> set[str]:
    """Inodes of the listening TCP sockets on ``port`` that process ``pid`` holds."""
    inodes = {os.readlink(fd)[8:-1] for fd in Path(f"/proc/{pid}/fd").iterdir()
              if os.path.exists(fd) and os.readlink(fd).startswith("socket:[")}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if (int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A"
                        and cols[9] in inodes):
                    found.add(cols[9])
    return found


def _ready_pids(log: Path) -> list[int]:
    return [int(p) for p in re.findall(r"balancer: worker (\d+) ready", log.read_text())]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts sockets in /proc")
def test_serve_with_two_workers_spreads_keep_alive_connections_and_survives_a_crash(
        tmp_path: Path) -> None:
    from .conftest import resources, searchset

    port = free_port()
    cfg = write_config(tmp_path / "service.toml", port)
    log_path = tmp_path / "service.log"
    name = "example-patient.json"
    patient = resources(name, "Patient")[0]
    body = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/1", "patientId": patient["id"]},
            "prefetch": {"patient": patient,
                         "observations": searchset(resources(name, "Observation")),
                         "conditions": searchset(resources(name, "Condition")),
                         "careplan": None}}
    url = f"http://127.0.0.1:{port}/cds-services/movement-cds-patient-view"

    def call_on_new_connections(n: int) -> list[httpx.Client]:
        clients = [httpx.Client(timeout=30, limits=httpx.Limits(max_connections=1))
                   for _ in range(n)]
        for c in clients:
            r = c.post(url, json=body)
            assert r.status_code == 200 and r.json()["cards"], r.text[:300]
        return clients

    with log_path.open("wb") as log:
        proc = start_service(["--config", str(cfg), "--insecure-no-auth", "--workers", "2"],
                             port, timeout=120, log=log)
        try:
            _wait_for(lambda: len(_ready_pids(log_path)) >= 2, 120)
            a, b = _ready_pids(log_path)
            clients = call_on_new_connections(8)
            assert sorted([_established(a, port), _established(b, port)]) == [4, 4]

            os.kill(a, signal.SIGKILL)  # a worker crashes; its 4 connections break
            for c in clients:
                c.close()
            survivors = call_on_new_connections(4)  # nothing lost: the other worker answers
            assert _established(b, port) == 4
            for c in survivors:
                c.close()
            _wait_for(lambda: len(_ready_pids(log_path)) >= 3, 120)  # uvicorn replaced it
            replacement = _ready_pids(log_path)[2]
            _wait_for(lambda: _established(b, port) == 0, 20)
            clients = call_on_new_connections(6)
            assert [_established(replacement, port), _established(b, port)] == [3, 3]
            for c in clients:
                c.close()
        finally:
            stop_service(proc)
    text = log_path.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "Traceback" not in text, text[-4000:]
    registry = re.search(r"workers register at (\S+)", text)
    assert registry and not Path(registry.group(1)).exists()  # removed on the way out


def test_serve_with_balancing_off_uses_uvicorns_shared_accept(tmp_path: Path) -> None:
    """The escape hatch: ``balance_connections = false`` serves with workers, no balancer."""
    port = free_port()
    cfg = write_config(tmp_path / "service.toml", port, balance_connections=False)
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = start_service(["--config", str(cfg), "--insecure-no-auth", "--workers", "2"],
                             port, timeout=120, log=log)
        try:
            _wait_for(lambda: log_path.read_text().count("Application startup complete") >= 2)
            for _ in range(4):
                with httpx.Client(timeout=30) as c:
                    assert c.get(f"http://127.0.0.1:{port}/cds-services").status_code == 200
        finally:
            stop_service(proc)
    text = log_path.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "balancer:" not in text and "Started parent process" in text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts sockets in /proc")
def test_serve_with_reuse_port_gives_each_worker_its_own_listening_socket(
        tmp_path: Path) -> None:
    """``reuse_port = true`` (the alternative measured against the balancer): no balancer;
    each worker listens on a SO_REUSEPORT socket of its own and the kernel spreads new
    connections, so 24 keep-alive clients reach both workers."""
    port = free_port()
    cfg = write_config(tmp_path / "service.toml", port, reuse_port=True)
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = start_service(["--config", str(cfg), "--insecure-no-auth", "--workers", "2"],
                             port, timeout=120, log=log)
        clients = []
        try:
            _wait_for(lambda: log_path.read_text().count("Application startup complete") >= 2)
            pids = [int(p) for p in re.findall(r"Started server process \[(\d+)\]",
                                               log_path.read_text())]
            assert len(pids) == 2, log_path.read_text()[-2000:]
            for _ in range(24):
                c = httpx.Client(timeout=30)
                assert c.get(f"http://127.0.0.1:{port}/cds-services").status_code == 200
                clients.append(c)
            counts = [_established(pid, port) for pid in pids]
            assert sum(counts) == 24 and all(n > 0 for n in counts), counts
            # its own socket: two different listening sockets (one shared socket, as in
            # uvicorn's shared accept, would be one inode in both workers)
            listening = [_listening(pid, port) for pid in pids]
            assert all(len(x) == 1 for x in listening) and listening[0] != listening[1]
        finally:
            for c in clients:
                c.close()
            stop_service(proc)
    text = log_path.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "balancer:" not in text and "Traceback" not in text, text[-4000:]
