"""What a type checker sees of the public API; checked by tests/test_typing.py with mypy.

Each ``reveal_type`` line ends with a ``T:`` comment, the type mypy must reveal; each line
that must be an error ends with an ``E:`` comment, its mypy error code. Never run, only
checked.
"""
# ruff: noqa: F821  (reveal_type is mypy's builtin)

from __future__ import annotations

from nuvom_kernel import Job, get_job, task


@task
def add(x: int, y: int) -> int:
    return x + y


@task(retries=2, queue="mail")
def greet(name: str, *, shout: bool = False) -> str:
    return name.upper() if shout else name


@task
async def fetch(url: str) -> bytes:
    return url.encode()


reveal_type(add(1, 2))  # T: int
reveal_type(add.delay(1, 2))  # T: nuvom_kernel.job.Job[int]
reveal_type(add.delay(1, 2).get(timeout=10))  # T: int
reveal_type(add.apply_async((1, 2), delay_secs=5))  # T: nuvom_kernel.job.Job[int]
reveal_type(add.map([(1, 2), (3, 4)]))  # T: list[nuvom_kernel.job.Job[int]]
reveal_type([j.get() for j in add.map([(1, 2)])])  # T: list[int]
reveal_type(greet.delay("ada", shout=True).get())  # T: str
reveal_type(greet.delay("ada").refresh())  # T: nuvom_kernel.job.Job[str]
reveal_type(get_job("some-id"))  # T: nuvom_kernel.job.Job[Any]
reveal_type(get_job("some-id").get())  # T: Any
reveal_type(fetch.delay("https://example.org").get())  # T: bytes


async def producer() -> None:
    reveal_type(await add.delay_async(1, 2))  # T: nuvom_kernel.job.Job[int]
    reveal_type(await add.map_async([(1, 2)]))  # T: list[nuvom_kernel.job.Job[int]]
    reveal_type(await add.delay(1, 2).get_async(timeout=10))  # T: int
    reveal_type(await fetch.delay("https://example.org").get_async())  # T: bytes

job: Job[int] = add.delay(1, 2)
wrong: Job[str] = add.delay(1, 2)  # E: assignment
add.delay("1", 2)  # E: arg-type
greet.delay("ada", loud=True)  # E: call-arg
