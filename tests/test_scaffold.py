"""``nuvom plugin new``: the scaffold renders, its stubs point at the docs, and following
docs/writing_plugins.md with it ends in an installed, contract-passing queue plugin that
serves a real worker.

The last test is the "done when" of the plugin-authors issue: it writes the guide's own
code into the scaffold, pip-installs the distribution into a throwaway virtualenv, runs
``nuvom plugin test`` on it and runs ``nuvom runworker`` with it as the configured queue
backend while another process enqueues a job.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import site
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nuvom_kernel.cli import make_cli
from nuvom_kernel.kernel import Kernel
from tests.helpers import (
    GUIDE,
    fake_distribution,
    guide_block,
    guide_code,
    run_nuvom,
    stop_worker,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

QUEUE_TREE = {
    ".gitignore", "README.md", "pyproject.toml",
    "src/nuvom_plugins_listq/__init__.py", "src/nuvom_plugins_listq/plugin.py",
    "src/nuvom_plugins_listq/queue.py", "src/nuvom_plugins_listq/settings.py",
    "src/nuvom_plugins_listq/py.typed",
    "tests/test_contract.py", "tests/test_installed.py",
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NUVOM_") and k != "PYTHONPATH"}
    return {**env, **extra}


def _new(tmp_path: Path, *args: str) -> tuple[int, str, Path]:
    kernel = Kernel(root=tmp_path, environ={"NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    dest = tmp_path / "scaffold"
    result = CliRunner().invoke(make_cli(kernel), ["plugin", "new", *args, "--dir", str(dest)],
                                obj=kernel)
    return result.exit_code, result.output, dest


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_queue_scaffold_renders_an_installable_distribution(tmp_path: Path) -> None:
    code, output, dest = _new(tmp_path, "listq")
    assert code == 0, output
    assert _tree(dest) == QUEUE_TREE
    pyproject = tomllib.loads((dest / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "nuvom-plugins-listq"
    assert pyproject["project"]["entry-points"]["nuvom"] == {"listq": "nuvom_plugins_listq.plugin"}
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    queue = (dest / "src/nuvom_plugins_listq/queue.py").read_text()
    assert 'name = "listq"' in queue and "class ListqQueue(QueueBackend)" in queue
    contract = (dest / "tests/test_contract.py").read_text()
    assert "class TestListqQueue(QueueBackendContract)" in contract
    plugin = (dest / "src/nuvom_plugins_listq/plugin.py").read_text()
    assert "def nuvom_plugin_settings()" in plugin and "ListqSettings" in plugin
    assert 'pip install -e ".[test]"' in output and "nuvom plugin test listq" in output
    for path in dest.rglob("*"):
        if path.is_file():
            assert "{{" not in path.read_text(), f"unrendered placeholder in {path}"


def test_result_scaffold_and_name_checks(tmp_path: Path) -> None:
    code, output, dest = _new(tmp_path, "my_store", "--kind", "result")
    assert code == 0, output
    tree = _tree(dest)
    assert "src/nuvom_plugins_my_store/results.py" in tree and len(tree) == len(QUEUE_TREE)
    results = (dest / "src/nuvom_plugins_my_store/results.py").read_text()
    assert "class MyStoreResults(ResultBackend)" in results
    assert 'name = "my-store"' not in results and 'name = "my_store"' in results
    assert _new(tmp_path / "bad", "Bad-Name")[0] != 0
    kernel = Kernel(root=tmp_path, environ={})  # installed plugins: "memory" is taken
    taken = CliRunner().invoke(make_cli(kernel), ["plugin", "new", "memory", "--dir",
                                                   str(tmp_path / "m")], obj=kernel)
    assert taken.exit_code != 0 and "already used" in taken.output
    assert _new(tmp_path, "again")[0] != 0, "refuses to overwrite a non-empty directory"


def test_stub_methods_raise_with_a_pointer_to_the_guide(tmp_path: Path) -> None:
    _, _, dest = _new(tmp_path, "listq")
    sys.path.insert(0, str(dest / "src"))
    try:
        from nuvom_plugins_listq.queue import ListqQueue  # type: ignore[import-not-found]

        queue = ListqQueue()
        with pytest.raises(NotImplementedError, match=r"ListqQueue\.push\(\) is not written yet"
                           r".*docs/writing_plugins\.md, section 'push'"):
            queue.push([])
    finally:
        sys.path.remove(str(dest / "src"))
        for name in [m for m in sys.modules if m.startswith("nuvom_plugins_listq")]:
            del sys.modules[name]
    guide = GUIDE.read_text()
    for method in ("push", "claim", "ack", "retry", "release", "extend", "qsize", "clear"):
        assert f"\n### {method}\n" in guide


def _readme_toml(readme: str, kind: str) -> str:
    """The scaffold README's ``.nuvom_plugins.toml`` with its commented example setting
    uncommented, selecting the backend as ``kind`` (the README's comment says how)."""
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    assert "\n# path = " in block, block
    toml = block.replace("\n# path = ", "\npath = ")
    return toml if kind == "queue" else toml.replace("queue_backend =", "result_backend =")


def _installed_scaffold(tmp_path: Path, name: str, kind: str) -> tuple[Path, Path]:
    """``nuvom plugin new name --kind kind``, installed as ``pip install -e`` would: a
    ``.dist-info`` with its entry point in a site folder (for ``PYTHONPATH``, with the
    scaffold's ``src``). Returns the scaffold and the site folder."""
    code, output, dest = _new(tmp_path, name, "--kind", kind)
    assert code == 0, output
    site_dir = tmp_path / "site"
    info = site_dir / f"nuvom_plugins_{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: nuvom-plugins-{name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[nuvom]\n{name} = nuvom_plugins_{name}.plugin\n")
    return dest, site_dir


@pytest.mark.parametrize("kind", ["queue", "result"])
def test_the_readmes_example_setting_builds_the_scaffolded_backend(tmp_path: Path, kind: str
                                                                  ) -> None:
    """Uncommenting the README's ``[plugins.<name>] path`` gave ``TypeError: ...__init__()
    got an unexpected keyword argument 'path'``: the stub accepted no setting at all. The
    scaffold, installed (a ``.dist-info`` on ``PYTHONPATH``), built by a real process from
    the README's configuration as every command builds it."""
    name = f"khreadme{kind}"
    dest, site_dir = _installed_scaffold(tmp_path, name, kind)
    project = tmp_path / "project"
    project.mkdir()
    toml = _readme_toml((dest / "README.md").read_text(), kind)
    (project / ".nuvom_plugins.toml").write_text(toml)
    backend = "queue" if kind == "queue" else "results"
    built = subprocess.run(
        [sys.executable, "-c", "from nuvom_kernel.kernel import get_kernel; "
         f"backend = get_kernel().{backend}; print(backend.name, backend.path)"],
        cwd=project, env=_env(PYTHONPATH=os.pathsep.join([str(site_dir), str(dest / "src")])),
        capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    path = tomllib.loads(toml)["plugins"][name]["path"]
    assert built.stdout.split() == [name, path]


@pytest.mark.parametrize("kind", ["queue", "result"])
def test_a_scaffolded_plugin_refuses_a_misspelt_setting(tmp_path: Path, kind: str) -> None:
    """The scaffold declared no settings, so a misspelt ``[plugins.<name>]`` key (``paht``)
    was accepted without a word and the backend used its default file. It declares them
    now: every command stops naming the key and the valid ones, and an environment value
    reaches ``from_settings`` converted to the declared type."""
    name = f"khtypo{kind}"
    dest, site_dir = _installed_scaffold(tmp_path, name, kind)
    project = tmp_path / "project"
    project.mkdir()
    selects = "queue_backend" if kind == "queue" else "result_backend"
    (project / ".nuvom_plugins.toml").write_text(
        f'[settings]\n{selects} = "{name}"\n\n[plugins.{name}]\npaht = "elsewhere.json"\n')
    pythonpath = os.pathsep.join([str(site_dir), str(dest / "src")])
    done = run_nuvom(["config"], project, PYTHONPATH=pythonpath)
    assert done.returncode == 2, done.stdout + done.stderr
    valid = "path, visibility_timeout_secs" if kind == "queue" else "path"
    assert (f"[plugins.{name}]: 'paht' is not a setting of plugin {name!r}. Valid keys: "
            f"{valid}.") in done.stderr, done.stderr

    (project / ".nuvom_plugins.toml").write_text(f'[settings]\n{selects} = "{name}"\n')
    backend = "queue" if kind == "queue" else "results"
    built = subprocess.run(
        [sys.executable, "-c", "from nuvom_kernel.kernel import get_kernel; "
         f"p = get_kernel().{backend}.path; print(type(p).__name__, p)"],
        cwd=project, env=_env(PYTHONPATH=pythonpath,
                              **{f"NUVOM_PLUGINS__{name.upper()}__PATH": "from-env.json"}),
        capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    assert built.stdout.split() == [type(Path()).__name__, "from-env.json"], built.stdout
    if kind == "queue":  # typed: a lease that never expires is refused by the kernel
        variable = f"NUVOM_PLUGINS__{name.upper()}__VISIBILITY_TIMEOUT_SECS"
        endless = run_nuvom(["config"], project, PYTHONPATH=pythonpath, **{variable: "inf"})
        assert endless.returncode == 2, endless.stdout + endless.stderr
        assert variable in endless.stderr and "inf" in endless.stderr, endless.stderr
        # empty is "none", the kernel's default: from_settings raised TypeError on None
        default = subprocess.run(
            [sys.executable, "-c", "from nuvom_kernel.kernel import get_kernel; "
             "print(get_kernel().queue.visibility_timeout_secs)"],
            cwd=project, env=_env(PYTHONPATH=pythonpath, NUVOM_VISIBILITY_TIMEOUT_SECS="42",
                                  **{variable: ""}),
            capture_output=True, text=True, timeout=120, check=False)
        assert default.returncode == 0, default.stderr
        assert default.stdout.strip() == "42.0", default.stdout



def test_names_of_installed_plugins_and_distributions_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`plugin new otel` generated nuvom-plugins-otel, the installed plugin's distribution;
    installing it hid the real plugin. Only backend names were checked, and only of the
    plugins this process loaded (none, with autoload off)."""
    site = fake_distribution(tmp_path / "site", "khshadow", "")
    dist_only = site / "nuvom_plugins_khdist-0.1.dist-info"  # a distribution, no entry point
    dist_only.mkdir()
    (dist_only / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: nuvom-plugins-khdist\nVersion: 0.1\n")
    monkeypatch.syspath_prepend(str(site))

    code, output, dest = _new(tmp_path / "a", "khshadow")
    assert code != 0 and not dest.exists(), output
    assert ("cannot scaffold a plugin named 'khshadow': the name is already used by the "
            "installed plugin 'khshadow' (entry point of distribution nuvom-plugins-khshadow)"
            ) in output
    assert "would hide it" in output and "`nuvom plugin new my_khshadow`" in output

    code, output, dest = _new(tmp_path / "b", "khdist")
    assert code != 0 and not dest.exists(), output
    assert ("already used by the installed distribution nuvom-plugins-khdist: the scaffold "
            "would be nuvom-plugins-khdist too") in output
    assert _new(tmp_path / "c", "my_khshadow")[0] == 0, "the suggested name is free"


@pytest.mark.parametrize("name", ["kh__x", "kh_", "kh___x"])
def test_names_the_environment_cannot_configure_are_refused(tmp_path: Path, name: str
                                                            ) -> None:
    """``kh__x`` was accepted, but NUVOM_PLUGINS__KH__X__SIZE cannot reach [plugins.kh__x]:
    "__" separates the name from the key."""
    code, output, dest = _new(tmp_path, name)
    assert code == 2 and not dest.exists(), output
    flat = " ".join(output.split())
    assert (f"{name!r} is not a valid plugin name: use lowercase letters and digits, "
            "starting with a letter, with single underscores between words") in flat
    assert "cannot contain '__' or end with '_'" in flat
    fixed = "kh" if name == "kh_" else "kh_x"
    assert f"Did you mean {fixed!r}?" in flat
    assert _new(tmp_path / "ok", "kh_x2")[0] == 0


def _guide_commands(marker: str) -> list[list[str]]:
    """The commands of a marked bash block, comments dropped, split as a shell would."""
    return [shlex.split(line, comments=True) for line in guide_block(marker, "bash").splitlines()
            if line.strip() and not line.startswith("#")]


def nested_venv(path: Path) -> Path:
    """A throwaway virtualenv that also sees this environment's packages; its python.

    ``--system-site-packages`` is not that: run from inside a virtualenv, it links the *base*
    interpreter's site-packages, where nothing of this environment is (the README installs
    into a virtualenv, so that is where this test usually runs). A ``.pth`` line that adds
    this environment's site directories (with their own ``.pth`` files, which editable
    installs need) gives the new venv the kernel and pytest, while whatever is installed
    into it stays in it and comes first.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=60)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    outer = [*site.getsitepackages(), *([site.getusersitepackages()]
                                        if site.ENABLE_USER_SITE else [])]
    Path(purelib.strip(), "_nuvom_outer_env.pth").write_text(
        f"import site; list(map(site.addsitedir, {outer!r}))\n")
    return python


def _pip(python: Path, args: list[str], cwd: Path) -> None:
    """``pip <args>`` of the guide, into the venv of ``python`` (pip runs from this
    environment: the throwaway venv has none, and nothing is downloaded)."""
    assert args[0] == "pip", args
    cmd = [sys.executable, "-m", "pip", "--python", str(python), *args[1:2], "--quiet",
           *args[2:]]
    if importlib.util.find_spec("wheel") is not None:  # else pip builds in isolation
        cmd.insert(cmd.index("--quiet"), "--no-build-isolation")
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _nuvom(python: Path, args: list[str], cwd: Path, **kwargs: object
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-c", "from nuvom_kernel.cli import main; main()",
                           *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=180, check=False, **kwargs)  # type: ignore[call-overload]


def test_scaffold_prints_the_guides_commands(tmp_path: Path) -> None:
    new, cd, install = _guide_commands("scaffold-commands")
    assert new == ["nuvom", "plugin", "new", "listq"] and cd == ["cd", "nuvom-plugins-listq"]
    done = run_nuvom(new[1:], tmp_path)
    assert done.returncode == 0, done.stderr
    steps = done.stdout.split("Next:\n", 1)[1].splitlines()
    assert [shlex.split(line) for line in steps[:3]] == [
        ["cd", str(tmp_path / "nuvom-plugins-listq")], install, ["nuvom", "plugin", "test",
                                                                  "listq"]]


def test_scaffold_and_plugin_test_work_where_pytest_is_not_installed(tmp_path: Path) -> None:
    """The guide installs pytest after ``nuvom plugin new`` (with the scaffold's ``[test]``
    extra): the scaffold must not need it, and ``nuvom plugin test`` must say it is missing
    rather than fail importing the contract suites. A real process in which ``import
    pytest`` fails (its ``sys.modules`` entry is ``None``)."""
    def nuvom(*args: str) -> subprocess.CompletedProcess[str]:
        code = ("import sys; sys.modules['pytest'] = None; from nuvom_kernel.cli import main; "
                f"sys.argv = ['nuvom', *{list(args)!r}]; main()")
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True,
                              capture_output=True, timeout=120, env=_env())

    made = nuvom("plugin", "new", "listq", "--dir", str(tmp_path / "listq"))
    assert made.returncode == 0, made.stderr
    assert QUEUE_TREE <= _tree(tmp_path / "listq")
    tested = nuvom("plugin", "test", "memory")
    assert tested.returncode == 1, tested.stdout + tested.stderr
    assert "runs the contract suites with pytest, which is not installed here" in tested.stderr
    assert "Traceback" not in tested.stderr


@pytest.mark.slow
def test_following_the_guide_ends_with_a_plugin_serving_a_worker(tmp_path: Path) -> None:
    new, _cd, install = _guide_commands("scaffold-commands")
    scaffolded = run_nuvom(new[1:], tmp_path)
    assert scaffolded.returncode == 0, scaffolded.stderr
    dest = tmp_path / "nuvom-plugins-listq"
    python = nested_venv(tmp_path / "venv")
    _pip(python, install, dest)

    project = tmp_path / "project"
    project.mkdir()
    listed = _nuvom(python, ["plugin", "list", "--json"], project)
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["listq"]["distribution"] == "nuvom-plugins-listq"
    assert plugins["listq"]["provides"] == {"queue_backend": ["listq"]}

    stub = _nuvom(python, ["plugin", "test", "listq"], project)
    assert stub.returncode == 1, stub.stdout + stub.stderr
    failures = [line for line in stub.stdout.splitlines() if line.startswith("  listq/")]
    assert len(failures) > 30
    first_failure = guide_block("stub-failure", "").strip()
    assert all(line.endswith(first_failure) for line in failures), failures[0]

    (dest / "src/nuvom_plugins_listq/queue.py").write_text(guide_code(
        "src/nuvom_plugins_listq/queue.py"))
    tested = _nuvom(python, ["plugin", "test", "listq"], project)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.rstrip() + "\n" == guide_block("plugin-test-output", ""), \
        "the guide's sample output of `nuvom plugin test listq` is not what it prints"

    (project / "tasks.py").write_text(
        "from nuvom_kernel import task\n\n\n@task\ndef add(x, y):\n    return x + y\n")
    (project / ".nuvom_plugins.toml").write_text(
        '[settings]\nqueue_backend = "listq"\nresult_backend = "sqlite"\n\n'
        '[plugins.listq]\npath = ".nuvom/listq.json"\n')
    worker = subprocess.Popen(
        [str(python), "-c", "from nuvom_kernel.cli import main; main()", "runworker",
         "--workers", "2"], cwd=project, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        producer = subprocess.run(
            [str(python), "-c", "from tasks import add; job = add.delay(2, 3); "
             "print(job.id, job.get(timeout=30))"],
            cwd=project, env=_env(), capture_output=True, text=True, timeout=60, check=False)
        assert producer.returncode == 0, producer.stderr
        job_id, result = producer.stdout.split()
        assert result == "5"
        assert (project / ".nuvom" / "listq.json").exists()
    finally:
        out = stop_worker(worker)
    assert worker.returncode == 0, out
    assert "backend=listq" in out and job_id in out and "SUCCEEDED" in out
    inspected = _nuvom(python, ["inspect", "job", job_id, "--format", "json"], project)
    assert json.loads(inspected.stdout)["status"] == "SUCCEEDED"

    # The guide's last section warns: a project copy listed in the toml collides with the
    # installed distribution. It does, and the error says so.
    local = tmp_path / "toml-project"
    local.mkdir()
    (local / "my_queues.py").write_text(guide_code("src/nuvom_plugins_listq/queue.py"))
    (local / ".nuvom_plugins.toml").write_text(
        guide_block("toml-project/.nuvom_plugins.toml", "toml"))
    clash = _nuvom(python, ["status"], local)
    assert clash.returncode == 1
    assert "two plugins register queue_backend 'listq'" in clash.stderr
