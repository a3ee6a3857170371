"""A backend whose ``from_settings`` (or constructor) raises: an error naming the plugin, the
backend, the ``[plugins.<name>]`` keys it was given and where, and the original error, with
exit status 2 (a configuration error), never a raw traceback.

Why: the scaffold's own README example (``[plugins.<name>] path = ...``) gave ``TypeError:
...Queue.__init__() got an unexpected keyword argument 'path'`` from every command. The
plugins are real installed distributions (a ``.dist-info`` on ``PYTHONPATH``) run by the real
``nuvom`` console script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel import hookimpl
from nuvom_kernel.errors import ConfigError, EnqueueError, PluginConfigError
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.testing.stubs import StubQueue
from tests.helpers import fake_distribution, run_nuvom

# A queue whose constructor takes no setting: the base from_settings passes it every key.
STRICT_QUEUE = '''
from nuvom_kernel import hookimpl
from nuvom_kernel.testing.stubs import StubQueue


class StrictQueue(StubQueue):
    name = "khstrict"

    def __init__(self, *, visibility_timeout_secs=30.0):
        super().__init__(visibility_timeout_secs=visibility_timeout_secs)


@hookimpl
def nuvom_register_queue_backends():
    return [StrictQueue]
'''

# A result backend that fails without any setting (a bug in the plugin itself).
BROKEN_RESULTS = '''
from nuvom_kernel import hookimpl
from nuvom_kernel.testing.stubs import StubResults


class BrokenResults(StubResults):
    name = "khbroken"

    @classmethod
    def from_settings(cls, settings, context):
        raise ValueError("no store configured")


@hookimpl
def nuvom_register_result_backends():
    return [BrokenResults]
'''


def test_a_key_the_queue_does_not_accept_is_a_config_error_naming_it(tmp_path: Path) -> None:
    site = fake_distribution(tmp_path / "site", "khstrict", STRICT_QUEUE)
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins.khstrict]\npath = "x.json"\n')
    done = run_nuvom(["status"], tmp_path, PYTHONPATH=str(site),
                     NUVOM_QUEUE_BACKEND="khstrict", NUVOM_RESULT_BACKEND="memory",
                     NUVOM_PLUGINS__KHSTRICT__TOKEN="s3cret-value")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    error = " ".join(done.stderr.split())
    assert error.startswith(
        "Error: plugin 'khstrict' (distribution nuvom-plugins-khstrict 0.1): its queue "
        "backend 'khstrict' (nuvom_fake_khstrict.StrictQueue) could not be built: its "
        "settings [plugins.khstrict] gave it path (in "), error
    assert (".nuvom_plugins.toml), token (from NUVOM_PLUGINS__KHSTRICT__TOKEN), and its "
            "from_settings raised TypeError: ") in error
    assert "unexpected keyword argument" in error
    assert "fix or remove them in [plugins.khstrict]" in error
    assert "NUVOM_QUEUE_BACKEND=<name>" in error
    assert "s3cret-value" not in error, "a setting's value may be a secret"


def test_a_backend_failing_without_settings_says_the_plugin_is_at_fault(tmp_path: Path
                                                                        ) -> None:
    site = fake_distribution(tmp_path / "site", "khbroken", BROKEN_RESULTS)
    done = run_nuvom(["status"], tmp_path, PYTHONPATH=str(site),
                     NUVOM_QUEUE_BACKEND="memory", NUVOM_RESULT_BACKEND="khbroken")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    error = " ".join(done.stderr.split())
    assert ("its result backend 'khbroken' (nuvom_fake_khbroken.BrokenResults) could not be "
            "built: it was given no settings (no [plugins.khbroken] table nor "
            "NUVOM_PLUGINS__KHBROKEN__<KEY> variable), and its from_settings raised "
            "ValueError: no store configured. The plugin fails without settings") in error
    assert "`nuvom plugin test khbroken`" in error
    assert "NUVOM_RESULT_BACKEND=<name>" in error


class _OwnWords(StubQueue):
    """Refuses its settings with its own configuration error."""

    name = "khownwords"

    @classmethod
    def from_settings(cls, settings: Any, context: Any) -> Any:
        raise PluginConfigError("[plugins.khownwords] needs a url")


class _Strict(StubQueue):
    name = "khstrictin"

    def __init__(self, *, visibility_timeout_secs: float = 30.0) -> None:
        super().__init__(visibility_timeout_secs=visibility_timeout_secs)


class _Away(StubQueue):
    """Connects while it is built, to a store that is not there."""

    name = "khaway"

    @classmethod
    def from_settings(cls, settings: Any, context: Any) -> Any:
        raise ConnectionRefusedError(111, "Connection refused")


class _Provider:
    @hookimpl
    def nuvom_register_queue_backends(self) -> list[type]:
        return [_OwnWords, _Strict, _Away]


def test_the_wrapped_error_keeps_its_cause_and_a_plugins_own_error_passes(tmp_path: Path
                                                                          ) -> None:
    """In process: the original exception is the ``__cause__`` (for a debugger, ``-v``
    logs); a :class:`NuvomError` the plugin raised already says what is wrong and is not
    wrapped in a second message."""
    def kernel(backend: str) -> Kernel:
        return Kernel(root=tmp_path, plugins={"khprovider": _Provider()},
                      environ={"NUVOM_QUEUE_BACKEND": backend,
                               "NUVOM_PLUGINS__KHSTRICTIN__SIZE": "3",
                               "NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1"})

    with pytest.raises(PluginConfigError, match=r"^plugin 'khprovider': its queue backend "
                       r"'khstrictin' .* gave it size \(from NUVOM_PLUGINS__KHSTRICTIN__SIZE"
                       r"\)") as caught:
        _ = kernel("khstrictin").queue
    assert isinstance(caught.value.__cause__, TypeError)
    with pytest.raises(PluginConfigError, match=r"^\[plugins.khownwords\] needs a url$"):
        _ = kernel("khownwords").queue
    # a store that is away is no configuration error (exit 1, not 2; the dashboard serves
    # its 503 pages meanwhile instead of refusing to start)
    with pytest.raises(EnqueueError, match=r"from_settings raised ConnectionRefusedError: "
                       r".*If it could not reach its store, check that the store runs") as away:
        _ = kernel("khaway").queue
    assert not isinstance(away.value, ConfigError), away.value


# A queue stub as `nuvom plugin new` writes it: its methods say they are not written yet.
UNWRITTEN_QUEUE = '''
from nuvom_kernel import hookimpl
from nuvom_kernel.errors import NotWrittenError
from nuvom_kernel.testing.stubs import StubQueue


class UnwrittenQueue(StubQueue):
    name = "khunwritten"

    def stats(self, queues=None):
        raise NotWrittenError("UnwrittenQueue.stats() is not written yet: count the jobs")

    def qsize(self, queues=None):
        raise NotWrittenError("UnwrittenQueue.qsize() is not written yet: count the jobs")


@hookimpl
def nuvom_register_queue_backends():
    return [UnwrittenQueue]
'''


def test_a_method_a_plugin_has_not_written_yet_is_one_error_line(tmp_path: Path) -> None:
    """``nuvom status`` on a fresh scaffold ended in a ``NotImplementedError`` traceback
    although the stub's message already says which method is missing; the stubs raise
    ``NotWrittenError`` (a ``NuvomError`` and a ``NotImplementedError``) now."""
    site = fake_distribution(tmp_path / "site", "khunwritten", UNWRITTEN_QUEUE)
    done = run_nuvom(["status"], tmp_path, PYTHONPATH=str(site),
                     NUVOM_QUEUE_BACKEND="khunwritten", NUVOM_RESULT_BACKEND="memory")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "Error: UnwrittenQueue." in done.stderr and "is not written yet" in done.stderr
