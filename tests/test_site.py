"""The docs site's generated pages cover what the code has (issue 21).

``mkdocs build --strict`` (in ``.ci/run``) fails on broken links and references; these tests
check what it cannot: that the generated references list every setting, every plugin key
and every command, and that every page is in the navigation.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import attrs
import click
import pytest

from nuvom_kernel.cli import make_cli
from nuvom_kernel.config import Settings
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.plugin_settings import plugin_env_var

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("site_hooks", ROOT / "docs" / "site_hooks.py")
assert _spec and _spec.loader
site_hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(site_hooks)


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return site_hooks.isolated_kernel()


def test_configuration_reference_has_every_setting_and_every_plugin_key(kernel: Kernel) -> None:
    page = site_hooks.configuration_page(kernel)
    for field in attrs.fields(Settings):
        assert f"| `{field.name}` | `{field.metadata['env']}` |" in page
    schemas = kernel.pm.plugin_settings_schemas()
    assert {"sqlite", "file"} <= set(schemas)
    for name, schema in schemas.items():
        assert f"## `[plugins.{name}]`" in page
        fields = attrs.fields(schema) if attrs.has(schema) else dataclasses.fields(schema)
        for field in fields:
            row = next(line for line in page.splitlines()
                       if f"`{plugin_env_var(name, field.name)}`" in line)
            assert row.startswith(f"| `{field.name}` |")
            assert len(row.rsplit("|", 2)[-2].strip()) > 10, f"{name}.{field.name}: no meaning"


def _leaf_commands(group: click.Group, path: str) -> set[str]:
    found = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= _leaf_commands(command, f"{path} {name}")
        else:
            found.add(f"{path} {name}")
    return found


def test_cli_reference_has_every_command_with_its_options(kernel: Kernel) -> None:
    page = site_hooks.cli_page(kernel)
    commands = _leaf_commands(make_cli(kernel), "nuvom")
    assert {"nuvom runworker", "nuvom plugin list", "nuvom status"} <= commands
    for command in commands:
        assert f"## `{command}`" in page
    runworker = page.split("## `nuvom runworker`", 1)[1].split("\n## ", 1)[0]
    assert "--workers" in runworker
    # the page says `nuvom COMMAND --help` prints the same text: -h too, as nuvom has it
    assert "-h, --help" in runworker and "-h, --help" in page.split("\n## ", 1)[0]


def test_links_become_site_pages_or_repository_paths() -> None:
    text = ("[docs](docs/workers.md#states) [plugin](nuvom_plugins_redis/README.md) "
            "[toml](.nuvom_plugins.toml) [web](https://example.org) [here](#x)")
    assert site_hooks.rewrite_links(text, "README.md") == (
        "[docs](workers.md#states) [plugin](plugins/redis.md) "
        "toml (`.nuvom_plugins.toml` in the repository) [web](https://example.org) [here](#x)")
    assert site_hooks.rewrite_links("[home](../README.md) [b](../benchmarks/README.md#redis)",
                                    "nuvom_plugins_redis/README.md") == \
        "[home](../index.md) [b](../benchmarks.md#redis)"
    assert site_hooks.rewrite_links("[a](../workers.md) [r](../../README.md)",
                                    "docs/reference/api.md") == \
        "[a](../workers.md) [r](../index.md)"


def test_every_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, re.M))
    pages = set(site_hooks.site_pages().values()) | {"reference/configuration.md",
                                                      "reference/cli.md"}
    assert listed == pages
