"""``nuvom plugin test`` on a server-backed (namespaced) backend: the project's settings, a
fresh namespace per test.

A namespaced backend (a Redis or PostgreSQL store) must run the contract on the server the
project configured, isolated by a namespace per test; a file backend must never see the
project's settings (a test run clears what it tests, and a configured path is real data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = '''
import json, os
from nuvom_kernel.testing.stubs import StubQueue

class NamespacedQueue(StubQueue):
    """A stub "server" queue that logs the settings and namespace of every build."""

    name = "nsq"
    namespaced = True

    @classmethod
    def from_settings(cls, settings, context):
        with open(os.environ["NSQ_LOG"], "a") as log:
            log.write(json.dumps({"settings": dict(settings),
                                  "namespace": context.namespace}) + "\\n")
        return cls(visibility_timeout_secs=context.visibility_timeout_secs)
'''


def test_namespaced_backend_gets_configured_settings_and_a_namespace_per_test(
        tmp_path: Path) -> None:
    (tmp_path / "nsq_plugin.py").write_text(textwrap.dedent(PLUGIN))
    # visibility_timeout_secs, a documented key of the Redis and PostgreSQL plugins, is the
    # suite's own: the project's would override the lease tests' short leases
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins.nsq]\nurl = "nsq://server:1234/0"\nvisibility_timeout_secs = 120\n')
    log = tmp_path / "builds.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update(NSQ_LOG=str(log), PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "nuvom_kernel", "plugin", "test", "nsq_plugin:NamespacedQueue",
         "-k", "fifo or ack_removes or peek_state"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    builds = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(builds) >= 3, builds
    assert all(b["settings"] == {"url": "nsq://server:1234/0"} for b in builds), \
        "a namespaced backend is built from the project's [plugins.<name>] table, less " \
        f"visibility_timeout_secs: {builds}"
    namespaces = {b["namespace"] for b in builds}
    assert "" not in namespaces and len(namespaces) >= 3, \
        f"every test needs a fresh, non-empty namespace, got {namespaces}"
