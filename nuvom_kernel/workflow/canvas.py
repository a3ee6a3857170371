"""Building workflows: ``task.s()``/``task.si()`` steps, :func:`chain`, :func:`group`,
``.then()``, ``.on_failure()``, ``.finally_()``; ``.delay()`` stores the whole graph in one
backend call.

A canvas is plain immutable data until ``.delay()``: then :class:`_Builder` walks it once,
giving each step a node (a job id) and the list of nodes it waits for, and each step that
takes the previous result an *input*: a node id, or nested lists of them for a group's
result. The input travels in the step's envelope headers and is resolved by the worker when
the step runs (results pass by reference, never copied into messages).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn, Union

import attrs

from nuvom_kernel import events
from nuvom_kernel.dispatcher import observed
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import BackendCapabilityError, EnqueueError, NuvomError
from nuvom_kernel.workflow.graph import create
from nuvom_kernel.workflow.handle import Workflow
from nuvom_kernel.workflow.shape import INPUT_HEADER, POLICIES, WF_HEADER, Flow, Node

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel
    from nuvom_kernel.task import Task

__all__ = ["Chain", "Group", "Step", "chain", "group"]


class _Canvas:
    """What steps, chains and groups share: ``then``, ``finally_`` and ``delay``."""

    def then(self, *steps: Canvas) -> Chain:
        """This, then ``steps`` in order, each receiving the previous result."""
        return chain(self, *steps)  # type: ignore[arg-type]

    def finally_(self, step: Step) -> Chain:
        """Run ``step`` once after everything else, whatever the outcome; the workflow's
        status becomes final only after it ran. It receives no previous result."""
        base = self if isinstance(self, Chain) else chain(self)  # type: ignore[arg-type]
        if not isinstance(step, Step):
            raise TypeError(f"finally_() takes one step (task.si(...)), got {step!r}")
        if base.cleanup is not None:
            raise ValueError("this chain already has a finally_ step; give it one step")
        return attrs.evolve(base, cleanup=step)

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused, saying what to write: Celery submits ``chain(...)()`` and ``add.s(1)()``;
        here it said only "'Chain' object is not callable"."""
        raise TypeError(f"a {type(self).__name__.lower()} is not called: submit it with "
                        ".delay() (calling it, Celery's shorthand, is not supported)")

    def delay(self) -> Workflow:
        """Store the whole graph in one backend call and return its handle."""
        from nuvom_kernel.kernel import get_kernel

        return submit(get_kernel(), self)  # type: ignore[arg-type]


@attrs.frozen(repr=False)
class Step(_Canvas):
    """One call of a task in a workflow (``task.s(...)`` or ``task.si(...)``)."""

    task: Task[Any, Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    takes_input: bool = True
    policy: str = "fail"

    def __repr__(self) -> str:
        kind = "s" if self.takes_input else "si"
        return f"{self.task.name}.{kind}(...)"

    def on_failure(self, policy: str) -> Step:
        """This step with a failure policy: ``"fail"`` (default: the workflow fails, steps
        depending on this one are CANCELLED), ``"continue"`` (dependents run and receive a
        :class:`~nuvom_kernel.StepFailed` in place of the result) or ``"skip"`` (dependents
        are SKIPPED, the workflow goes on)."""
        if policy not in POLICIES:
            raise ValueError(f"{self!r}.on_failure({policy!r}): the policy must be one of "
                             f"{', '.join(repr(p) for p in POLICIES)}")
        return attrs.evolve(self, policy=policy)


@attrs.frozen
class Chain(_Canvas):
    """Steps run one after the other; each receives the previous one's result."""

    steps: tuple[Canvas, ...]
    cleanup: Step | None = None


@attrs.frozen
class Group(_Canvas):
    """Members run in parallel; the group's result is the list of theirs, in order."""

    members: tuple[Canvas, ...]


Canvas = Union[Step, Chain, Group]  # noqa: UP007 - a runtime alias, used in isinstance


def _checked(items: Iterable[Any], where: str) -> tuple[Canvas, ...]:
    out = tuple(items)
    for item in out:
        if not isinstance(item, Step | Chain | Group):
            hint = (" (a Job: use task.s(...), not task.delay(...))"
                    if type(item).__name__ == "Job" else
                    " (use task.s(...) or task.si(...) to make a step)")
            raise TypeError(f"{where} takes steps, chains and groups; got {item!r}{hint}")
        if isinstance(item, Chain) and item.cleanup is not None:
            _nested_finally(item, where)
    return out


def _nested_finally(inner: Chain, where: str) -> None:
    """A ``finally_`` step runs after every other step of the *whole* workflow, so it is
    refused on a part of one (it used to be dropped there without a word, and never ran)."""
    raise ValueError(
        f"{where} got a chain with a finally_() step ({inner.cleanup!r}); finally_() must "
        "be the last call on the whole workflow: write chain(a, b).then(c).finally_(cleanup) "
        "or group(chain(a), b).finally_(cleanup), not chain(a).finally_(cleanup).then(c)")


def chain(*steps: Canvas) -> Chain:
    """``chain(a.s(), b.s(), c.s())``: a, then b with a's result, then c with b's.

    :raises ValueError: no steps (a workflow of nothing has no result to wait for), or a
        part with its own ``finally_`` step.
    """
    if not steps:
        raise ValueError("chain() needs at least one step: chain(a.s(...), b.s(), ...); "
                         "for a workflow that completes at once with [], use group()")
    return Chain(_checked(steps, "chain()"))


def group(*members: Canvas | Iterable[Canvas]) -> Group:
    """``group(a.s(1), a.s(2))`` or ``group(a.s(p) for p in ps)``: members run in
    parallel; the result is the list of their results."""
    if len(members) == 1 and not isinstance(members[0], Step | Chain | Group):
        one = members[0]
        if isinstance(one, str | bytes) or not hasattr(one, "__iter__"):
            return Group(_checked(members, "group()"))  # refused, with the hint for it
        return Group(_checked(one, "group()"))
    return Group(_checked(members, "group()"))


# --- building the graph ---------------------------------------------------------------------

Ref = Any  # a node id, or a list of refs (a group's result)


class _Builder:
    def __init__(self, kernel: Kernel, flow_id: str) -> None:
        self.kernel = kernel
        self.flow_id = flow_id
        self.nodes: list[Node] = []
        self.by_id: dict[str, Node] = {}
        self.envelopes: list[Envelope] = []

    def add(self, canvas: Canvas, incoming: Ref | None, after: list[str]
            ) -> tuple[Ref, list[str]]:
        """Add ``canvas`` after the nodes ``after`` (its input ``incoming``, ``None`` at the
        start); returns its output ref and the nodes whose end is its end."""
        if isinstance(canvas, Step):
            node_id = self.step(canvas, incoming if canvas.takes_input else None, after)
            return node_id, [node_id]
        if isinstance(canvas, Chain):
            # Chain(...) built by hand: chain() and group() refuse these already
            if not canvas.steps:
                raise ValueError("a chain with no steps cannot be a workflow or a part of one")
            if canvas.cleanup is not None:
                _nested_finally(canvas, "a workflow")
            ref, tails = incoming, after
            for item in canvas.steps:
                ref, tails = self.add(item, ref, tails)
            return ref, tails
        refs: list[Ref] = []
        ends: dict[str, None] = {}  # ordered and O(1) per member: a set would reorder
        for member in canvas.members:
            ref, tails = self.add(member, incoming, after)
            refs.append(ref)
            ends.update(dict.fromkeys(tails))
        return refs, list(ends) if canvas.members else after

    def step(self, step: Step, incoming: Ref | None, after: list[str], *,
             final: bool = False) -> str:
        task = step.task
        node_id = uuid.uuid4().hex
        # A step's result is read by its dependents: keep it whatever store_result says.
        options = attrs.evolve(task.options, store_result=True)
        params = task._params[1:] if incoming is not None else task._params
        task._arguments.check(task.name, step.args if incoming is None else
                              (incoming, *step.args), step.kwargs)  # the input comes first
        envelope = Envelope.for_call(task.name, task.module, options, step.args,
                                     step.kwargs, params, job_id=node_id)
        envelope.headers[WF_HEADER] = self.flow_id
        if incoming is not None:
            envelope.headers[INPUT_HEADER] = incoming
        self.envelopes.append(envelope)
        parents = [] if final else list(dict.fromkeys(after))
        node = Node(id=node_id, workflow=self.flow_id, task=task.name, pending=len(parents),
                    policy=step.policy, final=final, queue=options.queue)
        for parent in parents:
            self.by_id[parent].children.append(node_id)
        self.nodes.append(node)
        self.by_id[node_id] = node
        return node_id


def submit(kernel: Kernel, canvas: Canvas) -> Workflow:
    """Check the backend, build the graph and store it in one call."""
    kernel.before_first_enqueue()  # as .delay(): its steps are enqueued now
    queue = kernel.queue
    if not queue.capabilities.workflows:
        raise BackendCapabilityError(
            f"queue backend {queue.name!r} does not support workflows (chain, group); use a "
            "backend that declares 'workflows' (sqlite, file, memory), or enqueue the steps "
            "yourself")
    flow = Flow(id=uuid.uuid4().hex)
    builder = _Builder(kernel, flow.id)
    cleanup = None
    if isinstance(canvas, Chain) and canvas.cleanup is not None:
        cleanup, canvas = canvas.cleanup, attrs.evolve(canvas, cleanup=None)
    output, _ = builder.add(canvas, None, [])
    if cleanup is not None:
        flow.final = builder.step(cleanup, None, [], final=True)
    # Every step is enqueued now (the graph holds its message until its parents finish),
    # so every step is shown to the enqueue observers now, from the submitting code: what
    # they put in its headers (a trace context, a tenant) travels with it, as with .delay().
    envelopes = builder.envelopes
    before = events.observers(kernel.pm, "nuvom_before_enqueue")
    after = events.observers(kernel.pm, "nuvom_after_enqueue")
    jobs = [envelope.job() for envelope in envelopes] if before or after else []
    if before:
        observed(list(zip(envelopes, jobs, strict=True)), before)
    messages = [envelope.to_message(kernel.serializer) for envelope in envelopes]
    try:
        stored = queue.workflow_transaction(
            lambda txn: create(txn, attrs.evolve(flow), output, builder.nodes, messages))
    except NuvomError:
        raise
    except Exception as exc:
        raise EnqueueError(
            f"queue backend {queue.name!r} could not store workflow {flow.id} "
            f"({len(builder.nodes)} steps): {type(exc).__name__}: {exc}. Nothing was "
            "stored; check the backend's storage and submit again.") from exc
    if not stored:  # a fresh uuid4 never collides; say so loudly if it did
        raise NuvomError(f"workflow id {flow.id} already exists")
    queue.notify()
    for job in jobs:
        job._kernel = kernel
    events.call_per_job(after, "nuvom_after_enqueue", jobs)
    return Workflow(flow.id, kernel)
