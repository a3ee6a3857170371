"""The reference docs cannot drift from the code they describe.

* ``docs/plugin_hooks.md``: every hook of ``hookspecs.py`` with its literal signature
  ``nuvom_x(a, b)``, its typed definition and its call mode; no hook that does not exist.
* ``docs/configuration.md``: every ``Settings`` field with its variable and default, every
  ``[plugins]`` capability key.
* ``docs/writing_plugins.md``: a section for every primitive the scaffold's stubs point at,
  queue and result alike.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import attrs
import pytest

from nuvom_kernel import hookspecs
from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_kernel.config import CAPABILITIES, Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("nuvom_")
               and inspect.isfunction(getattr(hookspecs, n)))


def _section(text: str, heading_contains: str) -> str:
    """The text from the ``###`` heading containing ``heading_contains`` to the next one."""
    match = re.search(rf"^### [^\n]*{re.escape(heading_contains)}[^\n]*\n(.*?)(?=^##)",
                      text + "\n##", re.M | re.S)
    assert match, f"no ### section mentions {heading_contains}"
    return match.group(1)


def _spec_opts(name: str) -> dict[str, object]:
    return getattr(getattr(hookspecs, name), "nuvom_spec", {})


@pytest.fixture(scope="module")
def hooks_doc() -> str:
    return (DOCS / "plugin_hooks.md").read_text(encoding="utf-8")


def test_there_are_hooks_to_check() -> None:
    assert "nuvom_configure" in HOOKS and len(HOOKS) >= 10


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented_with_its_signature(hooks_doc: str, name: str) -> None:
    fn = getattr(hookspecs, name)
    params = list(inspect.signature(fn).parameters)
    literal = f"{name}({', '.join(params)})"
    assert f"### `{literal}`" in hooks_doc, f"docs/plugin_hooks.md lacks a heading `{literal}`"
    section = _section(hooks_doc, literal)
    typed = ", ".join(f"{p}: {a}" for p, a in fn.__annotations__.items() if p != "return")
    assert f"def {name}({typed}) -> {fn.__annotations__['return']}" in section, \
        "the typed definition in the docs differs from hookspecs.py"
    for param in params:
        assert f"**{param}:**" in section, f"parameter {param!r} of {name} is not explained"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_states_its_call_mode(hooks_doc: str, name: str) -> None:
    fn = getattr(hookspecs, name)
    section = _section(hooks_doc, f"{name}(")
    opts = _spec_opts(name)
    mode = re.search(r"\*\*Call mode:\*\* ([^.;,]+)", section)
    assert mode, f"{name}: no **Call mode:** line"
    if opts.get("historic"):
        assert "historic" in mode.group(1)
        assert "@hookspec(historic=True)" in section
    elif opts.get("firstresult"):
        assert "firstresult" in mode.group(1)
    else:
        assert mode.group(1).startswith("1:N")
    if "observer" in (fn.__doc__ or "").split("Call mode:", 1)[-1].split(".")[0]:
        assert "observer" in mode.group(1), f"{name} is an observer hook"


def test_no_documented_hook_is_missing_from_the_specs(hooks_doc: str) -> None:
    documented = set(re.findall(r"^### `(nuvom_\w+)\(", hooks_doc, re.M))
    assert documented == set(HOOKS)


@pytest.fixture(scope="module")
def config_doc() -> str:
    return (DOCS / "configuration.md").read_text(encoding="utf-8")


def _default_cell(default: object) -> str:
    return "unset" if default is None else '`""`' if default == "" else f"`{default}`"


def _settings_table(config_doc: str) -> str:
    return config_doc.split("## Settings", 1)[1].split("\n## ", 1)[0].split("###", 1)[0]


@pytest.mark.parametrize("field", attrs.fields(Settings), ids=lambda f: f.name)
def test_every_setting_is_documented(config_doc: str, field: attrs.Attribute) -> None:
    rows = [line for line in _settings_table(config_doc).splitlines()
            if line.startswith(f"| `{field.name}` |")]
    assert len(rows) == 1, f"docs/configuration.md needs one table row for {field.name}"
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == f"`{field.metadata['env']}`"
    assert cells[2] == _default_cell(field.default), \
        f"{field.name}: documented default {cells[2]!r}, code says {field.default!r}"
    assert len(cells[3]) > 20, f"{field.name}: say what it means"


def test_no_documented_setting_is_unknown(config_doc: str) -> None:
    documented = set(re.findall(r"^\| `(\w+)` \|", _settings_table(config_doc), re.M))
    assert documented == set(Settings.field_names())


def test_toml_tables_and_capability_keys_are_documented(config_doc: str) -> None:
    for table in ("### `[settings]`", "### `[plugins]`", "### `[plugins.<name>]`"):
        assert table in config_doc
    plugins_table = config_doc.split("### `[plugins]`", 1)[1].split("###", 1)[0]
    for key, hook in CAPABILITIES.items():
        row = next((line for line in plugins_table.splitlines()
                    if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"[plugins] key {key!r} is not documented"
        if hook is not None:
            assert f"`{hook}`" in row
    assert "| `disable` |" in config_doc
    for variable in ("NUVOM_DISABLE_PLUGINS", "NUVOM_DISABLE_PLUGIN_AUTOLOAD"):
        assert f"`{variable}`" in config_doc


@pytest.mark.parametrize("base", [QueueBackend, ResultBackend], ids=lambda b: b.__name__)
def test_writing_plugins_explains_every_primitive(base: type) -> None:
    text = (DOCS / "writing_plugins.md").read_text(encoding="utf-8")
    for primitive in sorted(base.__abstractmethods__):
        assert f"`{primitive}(" in text, f"{base.__name__}.{primitive} is not in the guide"
    # The scaffold's NotImplementedError (queue and --kind result) points at these sections.
    headings = set(re.findall(r"^### (\w+)$", text, re.M))
    assert set(base.__abstractmethods__) <= headings


def test_docs_link_to_each_other() -> None:
    for name in ("writing_plugins.md", "plugin_hooks.md", "testing.md", "configuration.md"):
        text = (DOCS / name).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([\w.]+\.md)\)", text):
            assert (DOCS / target).exists(), f"{name} links to missing {target}"
