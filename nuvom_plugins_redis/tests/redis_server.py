"""A throwaway ``redis-server`` per test, on a free port: the fault tests kill, pause and
restart it, which must never happen to the machine's shared server on 6379."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` on ``host:port`` (no persistence unless asked), started and
    restarted with a deadline on its first PING."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", *extra: str,
                 netns: str | None = None, env: dict[str, str] | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        self.host, self.port = host, free_port()
        self.workdir = workdir
        self.extra = extra
        self.netns = netns
        self.env = env  # the server's environment (None: this process's), e.g. its locale
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self) -> RedisServer:
        cmd = ["redis-server", "--port", str(self.port), "--bind", self.host, "--save", "",
               "--appendonly", "no", "--dir", str(self.workdir), *self.extra]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=self.env)
        deadline = time.monotonic() + 10
        password = dict(zip(self.extra[::2], self.extra[1::2], strict=False)).get(
            "--requirepass")
        while True:
            try:
                if self.client(password=password, socket_timeout=1).ping():
                    return self
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.url} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        """Kill -9 and start again on the same port: an unpersisted server comes back empty."""
        self.stop()
        self.start()
