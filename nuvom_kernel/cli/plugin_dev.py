"""Internal plugin: ``nuvom plugin test`` and ``nuvom plugin new`` (tools for plugin authors).

``test`` checks registration in this process (hooks match specs, names unique, toml keys
match) and runs the contract suites in a child pytest process, so a crashing backend cannot
take the CLI down and no state leaks between the suites and the kernel that resolved them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import click

from nuvom_kernel import __version__, hookimpl
from nuvom_kernel.cli.output import print_table
from nuvom_kernel.plugin_sources import normalized, nuvom_entry_points

if TYPE_CHECKING:
    from nuvom_kernel.config import Config
    from nuvom_kernel.plugins import NuvomPluginManager
    from nuvom_kernel.testing.contracts.targets import Target

__all__ = ["INSTALL_COMMAND", "SCAFFOLD", "render_scaffold"]


@hookimpl
def nuvom_register_commands(cli: click.Group) -> None:
    group = cli.commands.get("plugin")
    if not isinstance(group, click.Group):  # the kernel's group is registered first
        raise click.ClickException("the 'plugin' command group is missing")
    group.add_command(plugin_test)
    group.add_command(plugin_new)


def _kernel() -> Any:
    return click.get_current_context().find_root().obj


# --- nuvom plugin test ----------------------------------------------------------------------


def _key_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
                ) -> tuple[str, ...]:
    """Check ``--set`` values here, before anything runs.

    Why: the child pytest run parses them (``--nuvom-setting``), and a malformed one
    surfaced only as "the contract run did not complete (pytest exit status 4)".
    """
    for pair in values:
        key, sep, _ = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(
                f"{pair!r} is not KEY=VALUE (e.g. --set path=/tmp/q.db; a value is converted "
                f"to the type the plugin declares, as NUVOM_PLUGINS__<NAME>__<KEY> is: "
                f"--set fsync=false)", ctx=ctx, param=param)
    return values


@click.command(name="test")
@click.argument("targets", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Test every installed plugin.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", callback=_key_values,
              help="A setting handed to each backend's from_settings, converted and "
                   "checked by the plugin's declared settings (repeatable).")
@click.option("-k", "keyword", default=None, metavar="EXPR",
              help="Only run contract tests matching EXPR (pytest -k).")
@click.option("-x", "--exitfirst", is_flag=True, help="Stop at the first failure.")
@click.option("-v", "--verbose", is_flag=True, help="Show pytest's own output as it runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def plugin_test(targets: tuple[str, ...], all_: bool, settings: tuple[str, ...],
                keyword: str | None, exitfirst: bool, verbose: bool, as_json: bool) -> None:
    """Run the backend contract suites against TARGETS.

    A target is a plugin name (an entry point such as `memory` or `sqlite`), a backend name,
    or `module:attr` (a backend class or plugin module, e.g. one listed in
    .nuvom_plugins.toml). Backends are built with from_settings in a temporary data
    directory: the suite clears what it tests, so never point --set at production data.
    Exit status is 0 only if every check and contract test passed (and -k, if given,
    matched a contract test); 2 for a usage error or a --set value the plugin refuses.
    """
    from nuvom_kernel.testing.contracts.targets import TargetError, resolve

    if not targets and not all_:
        raise click.UsageError("name a plugin, a backend or module:attr to test, or use --all")
    kernel = _kernel()
    try:
        found, checks = resolve(kernel.pm, kernel.config, targets, all_)
    except TargetError as exc:  # a name that names nothing: a usage error, as documented
        raise click.UsageError(str(exc)) from exc
    report: dict[str, Any] = {"exitstatus": 0, "targets": [], "tests": []}
    problem = None
    if found:
        report = _run_contracts(kernel.config, found, targets, all_, settings, keyword,
                                exitfirst, verbose)
        problem = _nothing_matched(report, keyword, targets, all_)
    elif not checks:
        raise click.ClickException("nothing to test: the target registers no backend")
    failed = _show(report, [c.to_dict() for c in checks], as_json, problem)
    if failed:
        sys.exit(1)


def _nothing_matched(report: dict[str, Any], keyword: str | None, targets: Sequence[str],
                     all_: bool) -> str | None:
    """Why the run proves nothing, or ``None``: ``-k`` deselected every contract test.

    Why: pytest calls that "no tests collected" (exit status 5), and the report then said
    PASSED with 0 tests and exited 0, so a typo in ``-k`` (in CI too) looked like a passing
    plugin. Only with ``-k``: without it every target has contract tests to run, and a plugin
    with no backend (hooks only) never gets here (nothing to run, registration checks only).
    """
    if not keyword or report["tests"]:
        return None
    again = " ".join(["nuvom plugin test", *targets, *(["--all"] if all_ else []), "--json"])
    return (f"no contract test matched -k {keyword!r}, so nothing was tested. Check the "
            f"expression against the test names (`{again}` lists every test, without -k), "
            "or leave -k out.")


def _run_contracts(config: Config, found: Sequence[Target], targets: Sequence[str],
                   all_: bool, settings: Sequence[str], keyword: str | None, exitfirst: bool,
                   verbose: bool) -> dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        raise click.ClickException(
            "`nuvom plugin test` runs the contract suites with pytest, which is not installed "
            "here: pip install 'nuvom[test]' (or pytest)")
    from nuvom_kernel.testing.contracts import run_installed
    from nuvom_kernel.testing.contracts.runner import split_settings, target_settings

    # The child converts them the same way; checked here too so an unknown key or a bad
    # value is one "Error:" line (exit 2, a configuration error), not a failed pytest start.
    for target in found:
        target_settings(config, target, split_settings(settings), flag="--set")

    with tempfile.TemporaryDirectory(prefix="nuvom-plugin-test-") as tmp:
        ini = Path(tmp, "pytest.ini")
        ini.write_text("[pytest]\n")
        out = Path(tmp, "report.json")
        cmd = [sys.executable, "-m", "pytest", run_installed.__file__,
               "-p", "nuvom_kernel.testing.contracts.runner", "-p", "no:cacheprovider",
               "--noconftest", "--rootdir", tmp, "-c", str(ini), f"--nuvom-report={out}",
               "-v" if verbose else "-q", "--tb=short" if verbose else "--tb=no",
               *(f"--nuvom-plugin={t}" for t in targets),
               *(f"--nuvom-setting={s}" for s in settings)]
        if all_:
            cmd.append("--nuvom-all")
        if keyword:
            cmd += ["-k", keyword]
        if exitfirst:
            cmd.append("-x")
        # Only the runner plugin: the user's pytest plugins must not change the contract.
        env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        proc = subprocess.run(cmd, env=env, text=True,
                              stdout=None if verbose else subprocess.PIPE,
                              stderr=None if verbose else subprocess.STDOUT, check=False)
        if not out.exists():
            if proc.stdout:
                click.echo(proc.stdout, err=True)
            raise click.ClickException(
                f"the contract run did not complete (pytest exit status {proc.returncode})")
        report: dict[str, Any] = json.loads(out.read_text())
    return report


def _show(report: dict[str, Any], checks: list[dict[str, Any]], as_json: bool,
          problem: str | None = None) -> bool:
    """Print the report; return whether anything failed. ``problem``: why the run failed
    although no check or test did (printed before the verdict, ``error`` in the JSON)."""
    tests = report["tests"]
    failed = problem is not None or any(not c["ok"] for c in checks) or any(
        t["outcome"] in ("failed", "error") for t in tests) or report["exitstatus"] not in (0, 5)
    if as_json:
        extra = {"error": problem} if problem else {}
        click.echo(json.dumps({**report, "checks": checks, **extra, "ok": not failed},
                              indent=2))
        if problem:
            click.echo(f"Error: {problem}", err=True)
        return failed
    if checks:
        click.echo("Registration")
        print_table([{**c, "result": "ok" if c["ok"] else "FAIL"} for c in checks],
                    ["plugin", "check", "result", "detail"])
    rows = []
    for target in report["targets"]:
        mine = [t for t in tests if t["target"] == target["id"]]
        counts = {o: sum(1 for t in mine if t["outcome"] == o)
                  for o in ("passed", "failed", "error", "skipped")}
        bad = counts["failed"] + counts["error"]
        rows.append({"plugin": target["provider"], "kind": target["kind"],
                     "backend": target["name"], "passed": counts["passed"], "failed": bad,
                     "skipped": counts["skipped"],
                     "result": "FAIL" if bad else "PASS" if counts["passed"] else "-"})
    if rows:
        click.echo("\nContracts" if checks else "Contracts")
        print_table(rows, ["plugin", "kind", "backend", "passed", "failed", "skipped",
                           "result"])
    failures = [t for t in tests if t["outcome"] in ("failed", "error")]
    if failures:
        click.echo("\nFailures")
        for t in failures:
            click.echo(f"  {t['target']}: {t['test']}: {t['message'] or t['outcome']}")
    if problem:
        click.echo(f"\nError: {problem}", err=True)
    outcomes = [t["outcome"] for t in tests]
    click.echo(f"\n{'FAILED' if failed else 'PASSED'}: registration checks "
               f"{sum(c['ok'] for c in checks)}/{len(checks)} ok; contract tests "
               f"{outcomes.count('passed')} passed, {len(failures)} failed, "
               f"{outcomes.count('skipped')} skipped")
    return failed


# --- nuvom plugin new -----------------------------------------------------------------------

#: kind -> {output path: template path}, both relative; "{package}" is the import package.
SCAFFOLD: dict[str, dict[str, str]] = {
    kind: {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        ".gitignore": "gitignore.tmpl",
        "src/{package}/__init__.py": f"src/__init__{suffix}.py.tmpl",
        "src/{package}/plugin.py": f"src/plugin{suffix}.py.tmpl",
        f"src/{{package}}/{module}.py": f"src/{module}.py.tmpl",
        "src/{package}/settings.py": f"src/settings{suffix}.py.tmpl",
        "src/{package}/py.typed": "src/py.typed.tmpl",
        "tests/test_contract.py": f"tests/test_contract{suffix}.py.tmpl",
        "tests/test_installed.py": "tests/test_installed.py.tmpl",
    }
    for kind, suffix, module in (("queue", "_queue", "queue"), ("result", "_result", "results"))
}

#: Words of lowercase letters and digits joined by single underscores, starting with a letter.
#: Why no "__" and no trailing "_": the name is also the <NAME> of NUVOM_PLUGINS__<NAME>__<KEY>,
#: where "__" separates the name from the key (``kh__x`` or ``kh_`` could not be configured
#: from the environment, which docs/configuration.md promises for every plugin setting).
_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
#: What ``nuvom plugin new`` tells the author to run next, exactly as docs/writing_plugins.md
#: says it (a test keeps them equal): editable, with the test extra the contract needs.
INSTALL_COMMAND = 'pip install -e ".[test]"'


def render_scaffold(name: str, kind: str, dest: Path) -> list[Path]:
    """Write the plugin distribution for ``name`` under ``dest``; return the files written.

    :raises click.BadParameter: an invalid name.
    :raises click.ClickException: ``dest`` exists and is not empty.
    """
    _check_name(name)
    if dest.exists() and any(dest.iterdir()):
        raise click.ClickException(f"{dest} already exists and is not empty")
    package = f"nuvom_plugins_{name}"
    camel = "".join(part.capitalize() for part in name.split("_"))
    values = {
        "name": name,
        "package": package,
        "dist": _distribution(name),
        "class_name": camel + ("Queue" if kind == "queue" else "Results"),
        "capability": "queue_backend" if kind == "queue" else "result_backend",
        "settings_class": f"{camel}Settings",
        "env_name": name.upper(),
        "kernel_version": __version__,
        "kernel_below": _next_spi_break(__version__),
    }
    root = resources.files("nuvom_kernel") / "templates" / "plugin"
    written = []
    for out, template in SCAFFOLD[kind].items():
        text = (root / template).read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        path = dest / out.format(package=package)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _check_name(name: str) -> None:
    """Refuse a name the scaffold cannot use.

    :raises click.BadParameter: what a valid name is, why, and a corrected one if there is.
    """
    if _NAME.match(name):
        return
    fixed = re.sub(r"_+", "_", name.lower().replace("-", "_")).strip("_")
    hint = f" Did you mean {fixed!r}?" if _NAME.match(fixed) else ""
    raise click.BadParameter(
        f"{name!r} is not a valid plugin name: use lowercase letters and digits, starting "
        "with a letter, with single underscores between words (e.g. 'redis' or 'my_queue'). "
        "The name is also the <NAME> of the NUVOM_PLUGINS__<NAME>__<KEY> variables, where "
        f"'__' separates the name from the key, so it cannot contain '__' or end with '_'."
        f"{hint}", param_hint="NAME")


def _distribution(name: str) -> str:
    """The distribution a scaffold named ``name`` is (``nuvom-plugins-my-queue``)."""
    return f"nuvom-plugins-{name.replace('_', '-')}"


@attrs.frozen
class _Installed:
    """What is installed that a scaffold's names could clash with, read once per command:
    reading every distribution's metadata is the slow part, and a refusal checks several
    names (the one asked for, then the alternatives it suggests)."""

    entry_points: dict[str, tuple[str, str]]  # lower-case name -> (name, distribution)
    distributions: dict[str, str]  # normalized name -> name as installed
    packages: Mapping[str, list[str]]  # top-level import package -> distributions

    @classmethod
    def read(cls) -> _Installed:
        entry_points = {ep.name.lower(): (ep.name, dist.metadata["name"])
                        for dist, ep in nuvom_entry_points()}
        distributions = {normalized(name): name for dist in importlib.metadata.distributions()
                         if (name := dist.metadata["name"])}
        return cls(entry_points, distributions, importlib.metadata.packages_distributions())


def _collision(pm: NuvomPluginManager, installed: _Installed, name: str) -> str | None:
    """What a plugin scaffolded as ``name`` would clash with once installed, or ``None``.

    Why: its entry point is ``name`` (group ``nuvom``), its distribution
    ``nuvom-plugins-<name>`` and its package ``nuvom_plugins_<name>``. Installing it next to
    an installed plugin of that entry point name loads only one of them; with the same
    distribution name pip replaces the installed one; with the same package one shadows the
    other's import. Either way the real plugin disappears without a word, so this is checked
    against what is installed, whether or not this process loaded it (autoload may be off).
    """
    from nuvom_kernel.testing.contracts.targets import KINDS

    for hook, _ in KINDS.values():
        taken = pm.collect(hook)
        if name in taken:
            return (f"the backend name {name!r} of plugin {taken[name][1]!r} (backend names "
                    "must be unique)")
    if name in installed.entry_points:
        entry_point, dist = installed.entry_points[name]
        return (f"the installed plugin {entry_point!r} (entry point of distribution {dist}): "
                "installing the scaffold would hide it")
    wanted = _distribution(name)
    if wanted in installed.distributions:
        return (f"the installed distribution {installed.distributions[wanted]}: the scaffold "
                f"would be {wanted} too, and installing it would replace that one")
    package = f"nuvom_plugins_{name}"
    if owners := installed.packages.get(package):
        return (f"the package {package}, installed by {', '.join(sorted(set(owners)))}: the "
                "scaffold's package has that name, and one would shadow the other")
    return None


def _free_name(pm: NuvomPluginManager, installed: _Installed, name: str) -> str | None:
    """A name like ``name`` that is valid and clashes with nothing, for the error."""
    for candidate in (f"my_{name}", f"{name}_ext", f"{name}2"):
        if _NAME.match(candidate) and _collision(pm, installed, candidate) is None:
            return candidate
    return None


@click.command(name="new")
@click.argument("name")
@click.option("--kind", type=click.Choice(["queue", "result"]), default="queue",
              show_default=True, help="Which backend the stub implements.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where to create it (default: ./nuvom-plugins-NAME).")
def plugin_new(name: str, kind: str, directory: Path | None) -> None:
    """Scaffold an installable plugin distribution for a backend named NAME.

    Creates pyproject.toml (with the `nuvom` entry point), a src-layout package whose
    backend methods raise NotWrittenError pointing at docs/writing_plugins.md, a
    contract test and a README. Then: pip install -e ".[test]" (the distribution and pytest,
    which the contract runs on), and run `nuvom plugin test NAME`.
    """
    kernel = _kernel()
    _check_name(name)
    installed = _Installed.read()
    clash = _collision(kernel.pm, installed, name)
    if clash is not None:
        other = _free_name(kernel.pm, installed, name)
        raise click.ClickException(
            f"cannot scaffold a plugin named {name!r}: the name is already used by {clash}. "
            f"Choose another name{f', e.g. `nuvom plugin new {other}`' if other else ''}.")
    dest = directory or Path.cwd() / _distribution(name)
    files = render_scaffold(name, kind, dest)
    click.echo(f"Created {dest} ({len(files)} files):")
    for path in files:
        click.echo(f"  {path.relative_to(dest).as_posix()}")
    click.echo(f"\nNext:\n  cd {dest}\n  {INSTALL_COMMAND}\n  nuvom plugin test {name}\n"
               "Then implement each method until the contract passes "
               "(docs/writing_plugins.md walks through it).")


def _next_spi_break(version: str) -> str:
    """The first kernel release that may raise the SPI version (docs/versioning.md): the next
    minor before 1.0, the next major after. A scaffold's ``nuvom`` requirement stops there,
    which also keeps pip from the unrelated ``nuvom`` 0.11 on the public index."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return f"0.{minor + 1}" if major == 0 else f"{major + 1}"
