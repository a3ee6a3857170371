"""Several hosts: workers in their own network namespaces reach a Redis server on veth
addresses; one host's link is blackholed (packets dropped, no reset) for longer than the
lease. Its jobs are taken over by the other host, none is lost, and when the link heals the
cut-off host's late settles are refused by fencing.

Needs root (``ip netns``, ``ip route``); CI runs as root. Marked slow (about 20 s).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer

from nuvom_kernel import JobStatus
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.testing.contracts import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="needs root for ip netns and tc (CI runs as root)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip)"),
]

TASKS = """
import os, pathlib, time
from nuvom_kernel import task

@task
def hold(name, secs):
    marks = pathlib.Path('marks')
    marks.mkdir(exist_ok=True)
    host = os.environ['HOST_TAG']
    (marks / f'{name}.{host}.start').write_text('')
    time.sleep(secs)
    (marks / f'{name}.{host}.end').write_text('')
    return name
"""
LEASE = 3.0
JOB_SECS = 6.0


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


class Host:
    """A network namespace joined to the root namespace by a veth pair."""

    def __init__(self, tag: str, subnet: str) -> None:
        suffix = uuid.uuid4().hex[:5]
        self.ns, self.outer, self.inner = f"nvr-{tag}-{suffix}", f"vo{tag}{suffix}", \
            f"vi{tag}{suffix}"
        self.gateway, self.address = f"{subnet}.1", f"{subnet}.2"
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        sh("ip", "link", "set", self.inner, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.outer)
        sh("ip", "link", "set", self.outer, "up")
        for cmd in (("ip", "addr", "add", f"{self.address}/24", "dev", self.inner),
                    ("ip", "link", "set", self.inner, "up"), ("ip", "link", "set", "lo", "up")):
            sh("ip", "netns", "exec", self.ns, *cmd)

    def blackhole(self, on: bool) -> None:
        """Discard every packet both ways with blackhole routes (no RST: the server only
        sees silence; this kernel has no netem)."""
        verb = "add" if on else "del"
        sh("ip", "route", verb, "blackhole", f"{self.address}/32")
        sh("ip", "netns", "exec", self.ns, "ip", "route", verb, "blackhole",
           f"{self.gateway}/32")

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, check=False)


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    base = f"10.{random.randint(100, 250)}"
    made: list[Host] = []
    try:
        made.append(Host("a", f"{base}.1"))
        made.append(Host("b", f"{base}.2"))
        yield made[0], made[1]
    finally:
        for host in made:
            host.remove()


def test_blackholed_host_loses_its_jobs_to_the_other_and_its_late_writes_are_refused(
        hosts: tuple[Host, Host], tmp_path: Path) -> None:
    a, b = hosts
    server = RedisServer(tmp_path, "127.0.0.1").start()
    server.stop()
    server.extra = ("--bind", f"127.0.0.1 {a.gateway} {b.gateway}", "--protected-mode", "no")
    server.start()
    project = tmp_path / "project"
    project.mkdir()
    (project / "part_tasks.py").write_text(TASKS)
    prefix = f"nuvom-part-{uuid.uuid4().hex[:8]}"
    base_env = {"NUVOM_QUEUE_BACKEND": "redis", "NUVOM_RESULT_BACKEND": "redis",
                "NUVOM_VISIBILITY_TIMEOUT_SECS": str(LEASE), "NUVOM_LOG_LEVEL": "INFO",
                "NUVOM_PLUGINS__REDIS__KEY_PREFIX": prefix,
                "NUVOM_PLUGINS__REDIS__SOCKET_TIMEOUT_SECS": "1",
                "NUVOM_PLUGINS__REDIS__SOCKET_CONNECT_TIMEOUT_SECS": "1",
                "NUVOM_PLUGINS__REDIS__BLOCK_SECS": "1"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    procs: dict[str, subprocess.Popen[str]] = {}

    def start(host: Host) -> subprocess.Popen[str]:
        env = {**clean, **base_env, "HOST_TAG": host.ns,
               "NUVOM_PLUGINS__REDIS__URL": f"redis://{host.gateway}:{server.port}/0"}
        proc = subprocess.Popen(["ip", "netns", "exec", host.ns, sys.executable, "-m",
                                 "nuvom_kernel", "runworker", "--workers", "4"],
                                cwd=project, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        procs[host.ns] = proc
        return proc

    def marks(kind: str, host: Host) -> set[str]:
        folder = project / "marks"
        return {p.name.split(".")[0] for p in folder.glob(f"*.{host.ns}.{kind}")} \
            if folder.exists() else set()

    sys.path.insert(0, str(project))
    kernel = Kernel(root=project, environ={**base_env,
                                           "NUVOM_PLUGINS__REDIS__URL": server.url})
    try:
        with use_kernel(kernel):
            from part_tasks import hold

            jobs = {f"j{i}": hold.delay(f"j{i}", JOB_SECS) for i in range(4)}
            start(a)
            wait_until(lambda: marks("start", a) == set(jobs), 20, "host a never ran the jobs")
            a.blackhole(True)
            proc_b = start(b)
            wait_until(lambda: marks("start", b) == set(jobs), 30,
                       "host b never took over the blackholed host's jobs")
            a.blackhole(False)  # healed while b still runs them: a settles late
            wait_until(lambda: marks("end", a) == set(jobs), 30, "host a never finished")
            for job in jobs.values():
                assert job.get(timeout=60) == job.args[0]
            records = {name: kernel.results.get(job.id) for name, job in jobs.items()}
            # a's late settles came after its jobs ended; give them time to be refused
            procs[a.ns].send_signal(signal.SIGINT)
            out_a, _ = procs[a.ns].communicate(timeout=60)
            for name, job in jobs.items():
                record = kernel.results.get(job.id)
                assert record is not None and record.status is JobStatus.SUCCEEDED, name
                assert record.attempts == 2 and record.worker is not None and \
                    record.worker.endswith(f":{proc_b.pid}"), \
                    f"{name}: the stored outcome must be host b's, got {record.worker}\n{out_a}"
                assert record.to_dict() == records[name].to_dict(), \
                    f"{name}: host a's late write replaced host b's record\n{out_a}"
            assert kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        kernel.close()
        sys.path.remove(str(project))
        sys.modules.pop("part_tasks", None)
        server.stop()
