"""mkdocs hooks (``hooks:`` in mkdocs.yml): the pages that are generated, so they cannot drift.

* ``reference/configuration.md``: every core setting from ``Settings`` (its variable, default
  and meaning) and every installed plugin's ``[plugins.<name>]`` table from the schema it
  declares through ``nuvom_plugin_settings``.
* ``reference/cli.md``: every command of the ``nuvom`` click group as built with the
  installed plugins, with click's own ``--help`` text.
* Pages whose source lives beside the code they describe (the README, each plugin
  distribution's README, the benchmarks, the changelog) are read from there; their relative
  links are rewritten to the site's pages, or to the repository path in code style where the
  site has no such page.

The page builders are plain functions of a kernel, so ``tests/test_site.py`` checks them
without mkdocs.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import tempfile
import typing
from pathlib import Path
from typing import Any

import attrs
import click

from nuvom_kernel.cli import make_cli
from nuvom_kernel.config import Settings, load_config
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.plugin_settings import plugin_env_var

ROOT = Path(__file__).resolve().parent.parent

def _distribution_pages() -> dict[str, str]:
    """Each plugin distribution's README (the ``-e ./folder`` lines of requirements-dev.txt)
    as ``plugins/<folder without nuvom_plugins_>.md``; ``nuvom_plugins`` is ``builtin``."""
    pages = {}
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        if line.startswith("-e ./nuvom_plugins"):
            folder = line.removeprefix("-e ./").split("[")[0]
            name = folder.removeprefix("nuvom_plugins").removeprefix("_") or "builtin"
            pages[f"{folder}/README.md"] = f"plugins/{name}.md"
    return pages


#: repository file -> site page, for every page read from outside docs/ (a new plugin
#: distribution joins by its line in requirements-dev.txt; tests/test_site.py then asks
#: for its page in mkdocs.yml's nav).
INCLUDED = {
    "README.md": "index.md",
    **_distribution_pages(),
    "benchmarks/README.md": "benchmarks.md",
    "CHANGELOG.md": "changelog.md",
}

_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def isolated_kernel() -> Kernel:
    """A kernel with every installed plugin and no project configuration (defaults only)."""
    with tempfile.TemporaryDirectory() as root:
        return Kernel(load_config(Path(root), environ={}), environ={})


def site_pages() -> dict[str, str]:
    """repository file -> site page, for every page of the site that has a source file."""
    docs = {f"docs/{p.relative_to(ROOT / 'docs').as_posix()}": p.relative_to(ROOT / "docs")
            .as_posix() for p in (ROOT / "docs").rglob("*.md")}
    return {**INCLUDED, **docs}


def rewrite_links(text: str, source: str) -> str:
    """Relative links of the repository file ``source`` as the site page it becomes."""
    pages = site_pages()
    page_dir = posixpath.dirname(pages[source]) or "."

    def one(match: re.Match[str]) -> str:
        label, target = match.groups()
        if re.match(r"[a-z]+:|#", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        if repo_path in pages:
            relative = posixpath.relpath(pages[repo_path], page_dir)
            return f"[{label}]({relative}{'#' + anchor if anchor else ''})"
        return f"{label} (`{repo_path}` in the repository)"

    return _LINK.sub(one, text)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _param_docs(source: type) -> dict[str, str]:
    """``:param key: text`` lines of a schema's docstring, joined per key."""
    found: dict[str, str] = {}
    for match in re.finditer(r":param (\w+):(.*?)(?=\n\s*:|\Z)", source.__doc__ or "", re.S):
        text = " ".join(match.group(2).split())
        found[match.group(1)] = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)  # :class:`X`
    return found


def _schema_rows(name: str, source: type) -> list[str]:
    hints = typing.get_type_hints(source)
    docs = _param_docs(source)
    if attrs.has(source):
        fields = [(f.name, f.default) for f in attrs.fields(source)]
    else:
        fields = [(f.name, f.default) for f in dataclasses.fields(source)]
    rows = []
    for key, default in fields:
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        shown = ("—" if default in (attrs.NOTHING, dataclasses.MISSING)
                 else "unset" if default is None else f"`{default!r}`")
        hint = hints.get(key, Any)
        kind = hint.__name__ if isinstance(hint, type) else re.sub(r"\b\w+\.", "", str(hint))
        rows.append(f"| `{key}` | `{_cell(kind)}` | {shown} | `{plugin_env_var(name, key)}` | "
                    f"{_cell(docs.get(key, ''))} |")
    return rows


def configuration_page(kernel: Kernel) -> str:
    """The configuration reference: core settings, then each plugin's table."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the code when the site is built: the core `Settings` and the "
        "settings schema each installed plugin declares (`nuvom_plugin_settings`). How the "
        "sources combine (defaults < `.nuvom_plugins.toml` < `NUVOM_*`) is in "
        "[Configuration](../configuration.md); `nuvom config` prints the effective values.",
        "",
        "## Core settings: `[settings]`",
        "",
        "| key | variable | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for field in attrs.fields(Settings):
        default = ("unset" if field.default is None else '`""`' if field.default == ""
                   else f"`{field.default}`")
        lines.append(f"| `{field.name}` | `{field.metadata['env']}` | {default} | "
                     f"{_cell(field.metadata['doc'])} |")
    sources = kernel.pm.sources
    for name, schema in sorted(kernel.pm.plugin_settings_schemas().items()):
        dist = (sources.get(name) or (None, None, None))[1]
        lines += ["", f"## `[plugins.{name}]`", ""]
        summary = " ".join((schema.__doc__ or "").split(":param", 1)[0].split())
        if summary:
            lines += [summary, ""]
        if dist:
            lines += [f"Declared by the distribution `{dist}` (`{schema.__qualname__}`).", ""]
        lines += ["| key | type | default | variable | meaning |",
                  "| --- | --- | --- | --- | --- |", *_schema_rows(name, schema)]
    return "\n".join(lines) + "\n"


def _commands(group: click.Group, ctx: click.Context) -> list[tuple[click.Context, bool]]:
    found: list[tuple[click.Context, bool]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        found.append((sub, isinstance(command, click.Group)))
        if isinstance(command, click.Group):
            found += _commands(command, sub)
    return found


def cli_page(kernel: Kernel) -> str:
    """The CLI reference: every command's ``--help``, as the installed plugins build it."""
    root = make_cli(kernel)
    # the group's own settings (``-h`` beside ``--help``), as ``nuvom`` itself runs it
    ctx = root.make_context("nuvom", [], resilient_parsing=True)
    lines = [
        "# CLI reference",
        "",
        "Generated from the `nuvom` command as built with the plugins installed where the "
        "site was built (plugins add commands through `nuvom_register_commands`); "
        "`nuvom COMMAND --help` prints the same text.",
        "",
        "```text",
        root.get_help(ctx),
        "```",
    ]
    for sub, is_group in _commands(root, ctx):
        if is_group:
            continue
        lines += ["", f"## `{sub.command_path}`", "", "```text", sub.command.get_help(sub), "```"]
    return "\n".join(lines) + "\n"


# --- mkdocs events ------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    kernel = isolated_kernel()
    generated = {
        "reference/configuration.md": configuration_page(kernel),
        "reference/cli.md": cli_page(kernel),
    }
    for source, page in INCLUDED.items():
        generated[page] = rewrite_links((ROOT / source).read_text(encoding="utf-8"), source)
    for page, content in generated.items():
        files.append(File.generated(config, page, content=content))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Pages under docs/ link to the repository's files too (the README, a plugin's)."""
    if page.file.generated_by:
        return markdown
    return rewrite_links(markdown, f"docs/{page.file.src_uri}")
