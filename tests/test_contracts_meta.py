"""The contract suites can fail: each broken fake fails exactly the tests it breaks.

A contract test that passes against a backend breaking its promise checks nothing. Every
fake in ``nuvom_kernel.testing.fakes`` changes one behaviour of a correct stub; this module
runs every contract against every fake (and the stubs, which must pass everything) in
separate pytest processes, reads their JUnit XML and compares the failed tests with
``EXPECTED_FAILURES``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nuvom_kernel.testing import fakes
from nuvom_kernel.testing.stubs import StubDiscoverer, StubQueue, StubResults

CONTRACT_OF = {StubQueue: "QueueBackendContract", StubResults: "ResultBackendContract",
               StubDiscoverer: "DiscovererContract"}
FIXTURE_OF = {"QueueBackendContract": "make_queue_backend",
              "ResultBackendContract": "make_result_backend",
              "DiscovererContract": "discoverer"}


def _contract(cls: type) -> str:
    return next(c for base, c in CONTRACT_OF.items() if issubclass(cls, base))


#: Tighter timing than the defaults: the stubs are in-memory and exact, and this module runs
#: the queue contract a dozen times.
QUEUE_KNOBS = {"short_visibility_secs": 0.15, "delay_secs": 0.15,
               "extend_visibility_secs": 0.25, "settle_secs": 0.05, "patience_secs": 1.5,
               "concurrency_messages": 100}


def _test_class(cls: type) -> str:
    contract = _contract(cls)
    build = (f"{cls.__name__}()" if contract == "DiscovererContract"
             else f"BackendFactory({cls.__name__})")
    knobs = "".join(f"    {k} = {v!r}\n" for k, v in QUEUE_KNOBS.items()
                    if contract == "QueueBackendContract")
    if contract == "QueueBackendContract":  # the stubs settle together with StubResults
        knobs += ("    @pytest.fixture\n    def settle_results(self):\n"
                  "        return StubResults()\n")
    return (f"\n\nclass Test{cls.__name__}({contract}):\n{knobs}"
            f"    @pytest.fixture\n    def {FIXTURE_OF[contract]}(self):\n"
            f"        return {build}\n")


def _write_suite(path: Path, classes: list[type]) -> None:
    imports = "".join(f"from {c.__module__} import {c.__name__}\n" for c in classes)
    header = textwrap.dedent("""\
        import pytest
        from nuvom_kernel.testing.contracts import (
            BackendFactory, DiscovererContract, QueueBackendContract, ResultBackendContract)
        from nuvom_kernel.testing.stubs import StubResults
        """) + imports
    path.write_text(header + "".join(_test_class(c) for c in classes))


def _run_groups(tmp_path: Path, groups: list[list[type]]) -> dict[str, dict[str, str]]:
    """Run each group in its own pytest process (concurrently: the suites mostly wait on
    timers); return {test class: {test name: outcome}}."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    procs = []
    for i, group in enumerate(groups):
        test_file = tmp_path / f"test_group{i}.py"
        _write_suite(test_file, group)
        xml = tmp_path / f"group{i}.xml"
        cmd = [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
               "--noconftest", f"--junitxml={xml}", "--rootdir", str(tmp_path),
               "-c", str(tmp_path / "pytest.ini")]
        env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # only what we test
        procs.append((subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True), xml))
    outcomes: dict[str, dict[str, str]] = {}
    for proc, xml in procs:
        out, _ = proc.communicate(timeout=300)
        assert xml.exists(), out
        for case in ET.parse(xml).getroot().iter("testcase"):
            cls = case.get("classname", "").rsplit(".", 1)[-1]
            kinds = {child.tag for child in case}
            outcome = ("failed" if kinds & {"failure", "error"} else
                       "skipped" if "skipped" in kinds else "passed")
            outcomes.setdefault(cls, {})[case.get("name", "")] = outcome
    return outcomes


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    fake_classes = [getattr(fakes, name) for name in fakes.EXPECTED_FAILURES]
    queue = [c for c in fake_classes if _contract(c) == "QueueBackendContract"]
    other = [c for c in fake_classes if _contract(c) != "QueueBackendContract"]
    groups = [[StubQueue, StubResults, StubDiscoverer, *other]]
    groups += [queue[i::4] for i in range(4)]
    return _run_groups(tmp_path_factory.mktemp("meta"), groups)


@pytest.mark.parametrize("stub", ["StubQueue", "StubResults", "StubDiscoverer"])
def test_stubs_pass_every_contract_test(outcomes: dict[str, dict[str, str]], stub: str
                                        ) -> None:
    results = outcomes[f"Test{stub}"]
    assert results, "no tests ran"
    failed = sorted(n for n, o in results.items() if o == "failed")
    assert failed == []


@pytest.mark.parametrize("fake", sorted(fakes.EXPECTED_FAILURES))
def test_fake_fails_exactly_the_tests_it_breaks(outcomes: dict[str, dict[str, str]],
                                                fake: str) -> None:
    results = outcomes[f"Test{fake}"]
    failed = {n for n, o in results.items() if o == "failed"}
    assert failed == fakes.EXPECTED_FAILURES[fake]
