"""Plugin loading: toml targets, capability checks, failures that name the plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nuvom_kernel.config import load_config
from nuvom_kernel.errors import (
    BackendNotFoundError,
    DuplicateBackendError,
    PluginConfigError,
    PluginLoadError,
)
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.plugins import NuvomPluginManager

PLUGINS_DIR = Path(__file__).parent / "fixtures" / "plugins"


@pytest.fixture
def proj(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(PLUGINS_DIR))
    return project


def manager(root: Path, toml: str, environ: dict[str, str] | None = None
            ) -> NuvomPluginManager:
    (root / ".nuvom_plugins.toml").write_text(toml)
    pm = NuvomPluginManager()
    pm.load(load_config(root, environ={}), environ=environ or {})
    return pm


def test_toml_targets_are_loaded_listed_and_used(proj: Path):
    toml = ("[settings]\nqueue_backend = 'localq'\nresult_backend = 'localr'\n"
            "[plugins]\nqueue_backend = ['local_plugins:MyQueuePlugin']\n"
            "result_backend = ['local_plugins:MyResultPlugin']\n"
            "hooks = ['local_plugins:Configurable']\n"
            "[plugins.configurable]\ncolour = 'blue'\n")
    (proj / ".nuvom_plugins.toml").write_text(toml)
    kernel = Kernel(root=proj, environ={})
    assert kernel.queue.name == "localq" and kernel.results.name == "localr"
    infos = {i.name: i for i in kernel.pm.plugin_infos()}
    assert infos["local_plugins:MyQueuePlugin"].source == ".nuvom_plugins.toml"
    assert infos["local_plugins:MyQueuePlugin"].provides == {"queue_backend": ("localq",)}
    from local_plugins import Configurable

    assert Configurable.seen == {"colour": "blue"}


def test_bare_backend_class_as_target(proj: Path):
    pm = manager(proj, "[plugins]\nqueue_backend = ['local_plugins:LocalQueue']\n")
    assert "localq" in pm.collect("nuvom_register_queue_backends")


@pytest.mark.parametrize(("target", "message"), [
    ("no_such_module:X", "cannot be imported"),
    ("local_plugins:Missing", "has no attribute 'Missing'"),
    ("local_plugins:NOT_A_PLUGIN", "holds no Nuvom hook implementation"),
    ("local_plugins:MyResultPlugin", "does not implement nuvom_register_queue_backends"),
])
def test_bad_targets_name_target_and_key(proj: Path, target: str, message: str):
    with pytest.raises(PluginConfigError) as info:
        manager(proj, f"[plugins]\nqueue_backend = ['{target}']\n")
    text = str(info.value)
    assert message in text and target in text and "queue_backend" in text


def test_configure_failure_names_plugin_and_others_still_load(proj: Path):
    pm = manager(proj, "[plugins]\nhooks = ['local_plugins:BrokenConfigure', "
                       "'local_plugins:Configurable']\n"
                       "queue_backend = ['local_plugins:MyQueuePlugin']\n")
    assert "local_plugins:BrokenConfigure" in pm.failures
    assert "configure exploded" in pm.failures["local_plugins:BrokenConfigure"]
    assert pm.get_plugin("local_plugins:BrokenConfigure") is None
    assert pm.get_plugin("local_plugins:Configurable") is not None
    assert "localq" in pm.collect("nuvom_register_queue_backends")


def test_unknown_backend_lists_installed_and_pip_hint(proj: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    # Hidden from the plugin manager, so the test holds whether or not nuvom-plugins-redis
    # is installed (disabling it no longer works: the error then says it is disabled).
    import importlib.metadata as md

    real = md.distributions
    monkeypatch.setattr(md, "distributions", lambda: [
        d for d in real() if d.metadata["name"] != "nuvom-plugins-redis"])
    kernel = Kernel(root=proj, environ={"NUVOM_QUEUE_BACKEND": "redis"})
    with pytest.raises(BackendNotFoundError) as info:
        _ = kernel.queue
    text = str(info.value)
    assert "'redis'" in text and "memory" in text
    assert "from a clone of Nuvom, `pip install ./nuvom_plugins_redis`" in text


def test_typo_hook_fails_check_pending_naming_it(proj: Path):
    with pytest.raises(PluginConfigError) as info:  # listed in .nuvom_plugins.toml: exit 2
        manager(proj, "[plugins]\nhooks = ['local_plugins:Typo']\n")
    assert "nuvom_befor_execute" in str(info.value)
    assert "local_plugins:Typo" in str(info.value)


def test_a_hook_wrapper_that_would_wrap_nothing_is_refused_naming_it(proj: Path):
    with pytest.raises(PluginLoadError) as info:
        manager(proj, "[plugins]\nhooks = ['local_plugins:WrappedRegistration']\n")
    text = str(info.value)
    assert "plugin 'local_plugins:WrappedRegistration' could not be registered" in text, text
    assert "nuvom_register_queue_backends is marked as a hook wrapper" in text, text
    assert "plain @hookimpl" in text
    # Where pluggy calls the hook itself, a wrapper is honoured and loads.
    pm = manager(proj, "[plugins]\nhooks = ['local_plugins:WrappedPrepare']\n")
    assert pm.get_plugin("local_plugins:WrappedPrepare") is not None


def test_duplicate_backend_names_both_providers(proj: Path):
    pm = manager(proj, "[plugins]\nqueue_backend = ['local_plugins:DuplicateMemory']\n")
    with pytest.raises(DuplicateBackendError) as info:
        pm.collect("nuvom_register_queue_backends", "memory")
    text = str(info.value)
    assert "'memory'" in text and "local_plugins:DuplicateMemory" in text
    assert "nuvom_kernel.testing.memory.MemoryJobQueue" in text
    # Listing is not selecting: the first class is kept, and the clash is still named.
    listed = pm.collect("nuvom_register_queue_backends")
    assert "memory" in listed and "sqlite" in listed
    assert pm.clashes("nuvom_register_queue_backends") == [text.rstrip(".")]


def test_disable_by_name_and_env(proj: Path):
    pm = manager(proj, "[plugins]\ndisable = ['memory']\n")
    assert "memory" not in pm.collect("nuvom_register_queue_backends")
    pm2 = manager(proj, "", environ={"NUVOM_DISABLE_PLUGINS": "memory"})
    assert "memory" not in pm2.collect("nuvom_register_queue_backends")
    pm3 = manager(proj, "", environ={"NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert pm3.collect("nuvom_register_queue_backends") == {}


def test_load_is_idempotent_and_fresh_per_manager(proj: Path):
    config = load_config(proj, environ={})
    pm = NuvomPluginManager()
    pm.load(config, environ={})
    before = len(pm.get_plugins())
    pm.load(config, environ={})
    assert len(pm.get_plugins()) == before
    assert NuvomPluginManager().get_plugins() == set()


def test_broken_entry_point_is_reported_not_fatal(proj: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib.metadata as md

    real = md.distributions

    class FakeEP:
        name, group, value = "broken", "nuvom", "no_such_pkg.plugin"

        def load(self):
            raise ImportError("no_such_pkg is not installed")

    class FakeDist:
        metadata = {"name": "nuvom-plugins-broken"}
        version = "9.9"
        entry_points = [FakeEP()]

    monkeypatch.setattr(md, "distributions", lambda: [FakeDist(), *real()])
    pm = manager(proj, "")
    assert "broken" in pm.failures and "nuvom-plugins-broken" in pm.failures["broken"]
    assert "memory" in pm.collect("nuvom_register_queue_backends")


WRONG_SIGNATURE = """
from nuvom_kernel import hookimpl


@hookimpl
def nuvom_on_retry(job, error, delay):
    pass
"""

TYPO_HOOK = """
from nuvom_kernel import hookimpl


@hookimpl
def nuvom_before_exectue(job):
    pass
"""


@pytest.mark.parametrize(("source", "said"), [
    (WRONG_SIGNATURE, "Argument(s) {'delay'} are declared in the hookimpl"),
    (TYPO_HOOK, "(did you mean 'nuvom_before_execute'?)"),
], ids=["wrong signature", "misspelt hook"])
def test_an_installed_plugin_that_does_not_match_the_specs_is_disabled_not_fatal(
        tmp_path: Path, source: str, said: str) -> None:
    """An installed plugin with a hook of the wrong signature or a misspelt hook stopped every
    command (``nuvom plugin list`` and ``nuvom runworker`` too) with pluggy's words, without
    its distribution or a way out; one that fails to import is disabled for the process. Now
    both are: named, with the fix, listed as failed, and the other plugins keep working."""
    from tests.helpers import fake_distribution, run_nuvom

    site = str(fake_distribution(tmp_path / "site", "khbroken", source))
    project = tmp_path / "project"
    project.mkdir()
    listed = run_nuvom(["plugin", "list"], project, PYTHONPATH=site)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert [row for row in listed.stdout.splitlines()
            if row.startswith("khbroken") and "FAILED" in row], listed.stdout
    assert "plugin 'khbroken' (distribution nuvom-plugins-khbroken 0.1)" in listed.stderr
    assert said in listed.stderr, listed.stderr
    assert "NUVOM_DISABLE_PLUGINS=khbroken" in listed.stderr, listed.stderr
    status = run_nuvom(["status"], project, PYTHONPATH=site, NUVOM_QUEUE_BACKEND="memory",
                       NUVOM_RESULT_BACKEND="memory")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "queue backend: memory" in status.stdout
    assert "Traceback" not in status.stderr
    tested = run_nuvom(["plugin", "test", "khbroken"], project, PYTHONPATH=site)
    assert tested.returncode == 1 and said in tested.stdout, tested.stdout + tested.stderr


def test_a_toml_target_with_a_misspelt_hook_is_a_configuration_error(tmp_path: Path
                                                                    ) -> None:
    """It exited 1, where every other fault of a .nuvom_plugins.toml entry exits 2 (a
    configuration error, docs/configuration.md)."""
    from tests.helpers import run_nuvom

    (tmp_path / "typo_hooks.py").write_text(TYPO_HOOK)
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nhooks = ["typo_hooks"]\n')
    done = run_nuvom(["status"], tmp_path, NUVOM_QUEUE_BACKEND="memory",
                     NUVOM_RESULT_BACKEND="memory")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "(did you mean 'nuvom_before_execute'?)" in done.stderr, done.stderr
    assert "(listed in .nuvom_plugins.toml)." in done.stderr, done.stderr


CLASHING_PAIR = """
from nuvom_kernel import hookimpl
from nuvom_kernel.testing.stubs import StubQueue


class Clash(StubQueue):
    name = "khclash"


@hookimpl
def nuvom_register_queue_backends():
    return [Clash]
"""


def test_two_plugins_sharing_a_backend_name_stop_only_what_selects_it(tmp_path: Path) -> None:
    """Two installed plugins registering one backend name stopped every command that built
    any backend, the default ``sqlite`` too: ``nuvom status`` and a worker were refused for
    a clash between plugins nobody selected. Now only selecting that name is refused (both
    providers named, with the variable that disables one); otherwise it is a warning."""
    from tests.helpers import fake_distribution, run_nuvom

    site = fake_distribution(tmp_path / "site", "khone", CLASHING_PAIR)
    fake_distribution(site, "khtwo", CLASHING_PAIR)
    project = tmp_path / "project"
    project.mkdir()
    memory = {"NUVOM_QUEUE_BACKEND": "memory", "NUVOM_RESULT_BACKEND": "memory"}
    status = run_nuvom(["status"], project, PYTHONPATH=str(site), **memory)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "queue backend: memory" in status.stdout
    assert "two plugins register queue_backend 'khclash'" in status.stderr, status.stderr
    clash = run_nuvom(["status"], project, PYTHONPATH=str(site),
                      **{**memory, "NUVOM_QUEUE_BACKEND": "khclash"})
    assert clash.returncode == 1, clash.stdout + clash.stderr
    assert "Error: two plugins register queue_backend 'khclash'" in clash.stderr
    assert "'khone'" in clash.stderr and "'khtwo'" in clash.stderr, clash.stderr
    assert "NUVOM_DISABLE_PLUGINS=" in clash.stderr, clash.stderr
    # the listings and checks that show the clash keep working, and each names it
    new = run_nuvom(["plugin", "new", "khfresh", "--dir", str(tmp_path / "fresh")], project,
                    PYTHONPATH=str(site), **memory)
    assert new.returncode == 0, new.stdout + new.stderr
    tested = run_nuvom(["plugin", "test", "khtwo", "--json"], project,
                       PYTHONPATH=str(site), **memory)
    checks = {(c["plugin"], c["check"]): c for c in json.loads(tested.stdout)["checks"]}
    unique = checks[("khtwo", "unique names")]
    assert not unique["ok"] and "two plugins register queue_backend 'khclash'" in \
        unique["detail"], unique
    found = run_nuvom(["plugin", "test", "sqlite", "-k", "fifo"], project,
                      PYTHONPATH=str(site), **memory)
    assert "no installed plugin" not in found.stdout + found.stderr, found.stdout
