"""Testing support for plugin authors and for users' own task tests.

* :mod:`nuvom_kernel.testing.contracts` — ``QueueBackendContract``, ``ResultBackendContract``
  and ``DiscovererContract``: subclass one, give it a fixture that builds your backend, and
  pytest checks the semantics every Nuvom backend must have (docs/writing_plugins.md).
* :mod:`nuvom_kernel.testing.pytest_plugin` — opt-in fixtures for testing your tasks: an
  isolated in-memory kernel, an eager mode and a real worker thread (docs/testing.md).
* :mod:`nuvom_kernel.testing.memory` — the in-memory reference store (the `memory` plugin
  registers it; its result half is :mod:`nuvom_kernel.testing.memory_results`);
  :mod:`nuvom_kernel.testing.stubs` — the same under the name `stub`;
  :mod:`nuvom_kernel.testing.fakes` — deliberately broken backends and discoverers that prove
  the contracts fail. There is no reference discoverer here: the one task scanner is the
  `ast` discoverer of `nuvom-plugins`, and the discoverer fakes wrap a real discoverer.

Nothing here is imported by the kernel at run time; it needs pytest.
"""
