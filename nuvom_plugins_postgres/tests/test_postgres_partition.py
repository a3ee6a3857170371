"""Several hosts: workers in their own network namespaces reach a throwaway PostgreSQL
cluster listening on the veth addresses; one host's link is blackholed (packets dropped, no
reset) for longer than the lease. The other host's maintenance tick recovers the expired
leases and takes the jobs over, none is lost, and when the link heals the cut-off host's
late settles are refused by fencing (its tokens no longer match).

Needs root (``ip netns``, ``ip route``, a cluster run by the ``postgres`` user); CI runs as
root. Marked slow (about 20 s).
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
from pg_cluster import Cluster, unavailable_reason

from nuvom_kernel import JobStatus
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.testing.contracts import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="needs root for ip netns and blackhole routes (CI runs as root)"),
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
        self.ns, self.outer, self.inner = (f"nvp-{tag}-{suffix}", f"vpo{tag}{suffix}",
                                           f"vpi{tag}{suffix}")
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
        sees silence)."""
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


@pytest.fixture
def cluster(hosts: tuple[Host, Host]) -> Iterator[Cluster]:
    """A throwaway cluster on 127.0.0.1 and both hosts' gateway addresses (trust auth from
    their subnets only)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = Cluster()
    try:
        a, b = hosts
        with open(c.data / "postgresql.conf", "a") as fh:
            fh.write(f"listen_addresses = '127.0.0.1,{a.gateway},{b.gateway}'\n")
        with open(c.data / "pg_hba.conf", "a") as fh:
            for host in hosts:
                fh.write(f"host all all {host.address}/32 trust\n")
        c.restart()
        yield c
    finally:
        c.destroy()


def test_blackholed_host_loses_its_jobs_to_the_other_and_its_late_writes_are_refused(
        hosts: tuple[Host, Host], cluster: Cluster, tmp_path: Path) -> None:
    a, b = hosts
    project = tmp_path / "project"
    project.mkdir()
    (project / "part_tasks.py").write_text(TASKS)
    base_env = {"NUVOM_QUEUE_BACKEND": "postgres", "NUVOM_RESULT_BACKEND": "postgres",
                "NUVOM_VISIBILITY_TIMEOUT_SECS": str(LEASE), "NUVOM_LOG_LEVEL": "INFO"}
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("NUVOM_", "PG"))}
    procs: dict[str, subprocess.Popen[str]] = {}

    def start(host: Host) -> subprocess.Popen[str]:
        dsn = f"host={host.gateway} port={cluster.port} user=postgres dbname=postgres"
        env = {**clean, **base_env, "HOST_TAG": host.ns, "NUVOM_PLUGINS__POSTGRES__DSN": dsn}
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
                                           "NUVOM_PLUGINS__POSTGRES__DSN": cluster.dsn})
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
            # a's late settles come after its jobs end; its graceful stop flushes them
            procs[a.ns].send_signal(signal.SIGINT)
            out_a, _ = procs[a.ns].communicate(timeout=60)
            for name, job in jobs.items():
                record = kernel.results.get(job.id)
                assert record is not None and record.status is JobStatus.SUCCEEDED, name
                assert record.attempts == 2 and record.worker is not None and \
                    record.worker.endswith(f":{proc_b.pid}"), \
                    f"{name}: the stored outcome must be host b's, got {record.worker}\n{out_a}"
                before = records[name]
                assert before is not None and record.to_dict() == before.to_dict(), \
                    f"{name}: host a's late write replaced host b's record\n{out_a}"
                assert any(f"job={job.id}" in line and "lost its lease" in line
                           for line in out_a.splitlines()), \
                    f"{name}: host a was never told its lease was gone\n{out_a}"
            assert kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        kernel.close()
        sys.path.remove(str(project))
        sys.modules.pop("part_tasks", None)
