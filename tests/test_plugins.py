"""Plugin loading: toml targets, capability checks, failures that name the plugin."""

from __future__ import annotations

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
    assert "pip install nuvom-plugins-redis" in text


def test_typo_hook_fails_check_pending_naming_it(proj: Path):
    with pytest.raises(PluginLoadError) as info:
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
        pm.collect("nuvom_register_queue_backends")
    text = str(info.value)
    assert "'memory'" in text and "local_plugins:DuplicateMemory" in text
    assert "nuvom_kernel.testing.memory.MemoryJobQueue" in text


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
