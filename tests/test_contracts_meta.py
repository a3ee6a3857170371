"""The contract suites can fail: each broken fake fails exactly the tests it breaks.

A contract test that passes against a backend breaking its promise checks nothing. Every
queue and result fake in ``nuvom_kernel.testing.fakes`` changes one behaviour of a correct
stub; every discoverer fake wraps a correct discoverer and breaks one of its promises. This
module runs every contract against every fake (and the correct ones, which must pass
everything) in separate pytest processes, reads their JUnit XML and compares the failed tests
with ``EXPECTED_FAILURES``.

The correct discoverer is the installed ``ast`` discoverer of ``nuvom-plugins``: the kernel
holds no task scanner of its own (there must be one AST scanner, and it is a plugin). Without
that distribution the discoverer half is skipped, saying why; the backend half still runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nuvom_kernel.config import load_config
from nuvom_kernel.discovery import Discoverer
from nuvom_kernel.plugins import NuvomPluginManager
from nuvom_kernel.testing import fakes
from nuvom_kernel.testing.stubs import StubQueue, StubResults

CONTRACT_OF = {StubQueue: "QueueBackendContract", StubResults: "ResultBackendContract",
               Discoverer: "DiscovererContract"}
FIXTURE_OF = {"QueueBackendContract": "make_queue_backend",
              "ResultBackendContract": "make_result_backend",
              "DiscovererContract": "discoverer"}


def _contract(cls: type) -> str:
    return next(c for base, c in CONTRACT_OF.items() if issubclass(cls, base))


#: The real discoverer: it must pass the whole discoverer contract, and each discoverer fake
#: wraps it, so every test a fake fails is failed by the fake's own breakage.
REAL_DISCOVERER = "ast"
NOT_INSTALLED = (
    f"no installed plugin provides the {REAL_DISCOVERER!r} discoverer (install nuvom-plugins: "
    "pip install -e nuvom_plugins): the kernel holds no task scanner, so the discoverer "
    "contract has nothing real to run against and the discoverer fakes nothing to wrap")


def _installed_discoverer(name: str) -> type[Discoverer] | None:
    """The class an installed plugin registers as discoverer ``name``, found through the
    entry points as the kernel finds it (never imported by name: the kernel's tests must not
    depend on a plugin distribution being there), or ``None``."""
    pm = NuvomPluginManager()
    pm.load(load_config(Path(__file__).resolve().parent / "fixtures" / "empty", environ={}),
            environ={})
    found = pm.collect("nuvom_register_discoverers").get(name)
    return found[0] if found else None


#: Tighter timing than the defaults: the stubs are in-memory and exact, and this module runs
#: the queue contract a dozen times.
QUEUE_KNOBS = {"short_visibility_secs": 0.15, "delay_secs": 0.15,
               "extend_visibility_secs": 0.25, "settle_secs": 0.05, "patience_secs": 1.5,
               "concurrency_messages": 100}


def _test_class(cls: type, real: type | None) -> str:
    contract = _contract(cls)
    if contract != "DiscovererContract":
        build = f"BackendFactory({cls.__name__})"
    elif real is None:
        raise ValueError(f"{cls.__name__} needs the real discoverer, which is not installed")
    elif cls is real:
        build = f"{real.__name__}()"
    else:  # a fake: the real discoverer with one promise broken
        build = f"{cls.__name__}({real.__name__}())"
    knobs = "".join(f"    {k} = {v!r}\n" for k, v in QUEUE_KNOBS.items()
                    if contract == "QueueBackendContract")
    if contract == "QueueBackendContract":  # the stubs settle together with StubResults
        knobs += ("    @pytest.fixture\n    def settle_results(self):\n"
                  "        return StubResults()\n")
    return (f"\n\nclass Test{cls.__name__}({contract}):\n{knobs}"
            f"    @pytest.fixture\n    def {FIXTURE_OF[contract]}(self):\n"
            f"        return {build}\n")


def _write_suite(path: Path, classes: list[type], real: type | None) -> None:
    needed = [*classes, *([real] if real is not None and any(
        _contract(c) == "DiscovererContract" for c in classes) else [])]
    imports = "".join(f"from {c.__module__} import {c.__name__}\n"
                      for c in dict.fromkeys(needed))
    header = textwrap.dedent("""\
        import pytest
        from nuvom_kernel.testing.contracts import (
            BackendFactory, DiscovererContract, QueueBackendContract, ResultBackendContract)
        from nuvom_kernel.testing.stubs import StubResults
        """) + imports
    path.write_text(header + "".join(_test_class(c, real) for c in classes))


def _run_groups(tmp_path: Path, groups: list[list[type]], real: type | None = None,
                failures: dict[str, dict[str, str]] | None = None
                ) -> dict[str, dict[str, str]]:
    """Run each group in its own pytest process (concurrently: the suites mostly wait on
    timers); return {test class: {test name: outcome}}, and fill ``failures`` (if given)
    with {test class: {test name: what its failure said}}."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    procs = []
    for i, group in enumerate(groups):
        test_file = tmp_path / f"test_group{i}.py"
        _write_suite(test_file, group, real)
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
            if failures is not None and outcome == "failed":
                said = [f"{c.get('message', '')}\n{c.text or ''}" for c in case
                        if c.tag in ("failure", "error")]
                failures.setdefault(cls, {})[case.get("name", "")] = "\n".join(said)
    return outcomes


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_discoverer() -> type[Discoverer] | None:
    return _installed_discoverer(REAL_DISCOVERER)


@pytest.fixture(scope="module")
def failures() -> dict[str, dict[str, str]]:
    """What each failed contract test said, filled by the ``outcomes`` run."""
    return {}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, real_discoverer: type | None,
             failures: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    fake_classes = [getattr(fakes, name) for name in fakes.EXPECTED_FAILURES]
    queue = [c for c in fake_classes if _contract(c) == "QueueBackendContract"]
    results = [c for c in fake_classes if _contract(c) == "ResultBackendContract"]
    discoverers = [c for c in fake_classes if _contract(c) == "DiscovererContract"]
    first = [StubQueue, StubResults, *results]
    if real_discoverer is not None:
        first += [real_discoverer, *discoverers]
    groups = [first, *(queue[i::4] for i in range(4))]
    return _run_groups(tmp_path_factory.mktemp("meta"), groups, real_discoverer, failures)


@pytest.mark.parametrize("stub", ["StubQueue", "StubResults"])
def test_stubs_pass_every_contract_test(outcomes: dict[str, dict[str, str]], stub: str
                                        ) -> None:
    results = outcomes[f"Test{stub}"]
    assert results, "no tests ran"
    failed = sorted(n for n, o in results.items() if o == "failed")
    assert failed == []


def test_real_discoverer_passes_every_contract_test(
        outcomes: dict[str, dict[str, str]], real_discoverer: type | None) -> None:
    if real_discoverer is None:
        pytest.skip(NOT_INSTALLED)
    results = outcomes[f"Test{real_discoverer.__name__}"]
    assert results, "no tests ran"
    failed = sorted(n for n, o in results.items() if o == "failed")
    assert failed == []


@pytest.mark.parametrize("fake", sorted(fakes.EXPECTED_FAILURES))
def test_fake_fails_exactly_the_tests_it_breaks(outcomes: dict[str, dict[str, str]],
                                                real_discoverer: type | None,
                                                fake: str) -> None:
    if _contract(getattr(fakes, fake)) == "DiscovererContract" and real_discoverer is None:
        pytest.skip(NOT_INSTALLED)
    results = outcomes[f"Test{fake}"]
    failed = {n for n, o in results.items() if o == "failed"}
    assert failed == fakes.EXPECTED_FAILURES[fake]


#: fake -> (the contract test it breaks, words that test's failure must say): the promise
#: broken and the fix, so a plugin author reading ``nuvom plugin test`` knows what to change.
#: Why these fakes: each breaks a batch or put-back path the worker relies on, which the
#: single-call tests cannot see (the monitor only calls ``extend_many``, the settler
#: ``ack_many``).
NAMED_PROMISES = {
    "ContextIgnoringQueue": ("test_unacked_lease_becomes_visible_after_visibility_timeout",
                             ["the backend was built with context.visibility_timeout_secs=",
                              "but its visibility_timeout_secs is 30.0",
                              "Fix: from_settings passes"]),
    "NoopExtendManyQueue": ("test_extend_many_keeps_every_lease_alive",
                            ["extend_many must push every lease's expiry", "Fix:"]),
    "UnfencedExtendManyQueue": ("test_extend_many_is_fenced_per_lease",
                                ["extend_many must check every lease's token", "Fix:"]),
    "UnfencedAckManyQueue": ("test_ack_many_is_fenced_per_lease",
                             ["ack_many must check every lease's token", "Fix:"]),
    "PriorityLosingPutBackQueue": (
        "test_claim_order_survives_retry_release_and_expiry",
        ["claim order after retry, release and lease expiry must stay highest priority "
         "first", "Fix:"]),
}


@pytest.mark.parametrize("fake", sorted(NAMED_PROMISES))
def test_fake_failure_names_the_broken_promise(outcomes: dict[str, dict[str, str]],
                                               failures: dict[str, dict[str, str]],
                                               fake: str) -> None:
    test, words = NAMED_PROMISES[fake]
    assert outcomes[f"Test{fake}"].get(test) == "failed"
    said = failures[f"Test{fake}"][test]
    missing = [w for w in words if w not in said]
    assert missing == [], f"{test} failed on {fake} without saying {missing}:\n{said}"
