"""Workers' side of the restore service: ``serve``, ``connect`` and ``ServiceClient``.

A client validates and plans a worker's wants locally, with the same planner as an in-process
restore, sends the coordinator the byte ranges the plan needs (numpy columns, and its node),
``ray.get``s the objects it is answered with (zero-copy on its own node) and assembles them
with the usual machinery (``coordination.delivered``): ``fetch`` is ``restore.fetch`` run with
an executor that reads from the service instead of storage. So ``VariableStore.initialize``,
``Checkpoint.restore`` (deferred restores included) and everything else that takes ``fetch=``
restore through the service unchanged.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .. import restore as _restore
from ..coordination.delivered import Placer
from ..coordination.ranges import needed_ranges
from ..coordination.state import Registration
from ..errors import (
    CheckpointNotFoundError,
    DistRestoreError,
    RayNotInitializedError,
    ReadWorkerLostError,
    ServiceExistsError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    StorageError,
)
from ..execute.sink import ReadSink
from ..index import CheckpointIndex
from ..readplan import ReadPlan
from ..storage import Storage
from .channel import Ticket, channel
from .service import Opened, RestoreService, ServiceOptions

__all__ = ["ServiceClient", "connect", "serve"]

DEFAULT_DEADLINE = 600.0  # seconds a call may take in all (a group: waiting for its members too)
_MARGIN = 30.0  # a client waits this much longer than the service, to hear the service's own error
_MAX_CONCURRENCY = 4096  # registrations one coordinator holds at once (a group's size at most)


def _require_ray() -> None:
    if not ray.is_initialized():
        raise RayNotInitializedError(
            "Ray is not initialized: call ray.init(...) (or ray.init(address='auto') inside a cluster) first"
        )


def _session() -> tuple[str, str]:
    """This process's Ray session: its node and job (job ids restart with each cluster)."""
    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), ctx.get_job_id()


def _where(name: str, namespace: str | None) -> str:
    return f"{name!r}" + (f" in namespace {namespace!r}" if namespace else "")


def serve(
    ckpt_dir_or_file=None,
    *,
    name: str = "distrestore",
    namespace: str | None = None,
    detached: bool = False,
    storage_options: dict | None = None,
    cache_bytes: int | None = None,
    chunk_bytes: int = 16 << 20,
    min_piece_bytes: int = 256 << 10,
    reads_per_node: int = 2,
    read_retries: int = 3,
    read_cpus: float = 0,
    deadline: float = DEFAULT_DEADLINE,
) -> ServiceClient:
    """Start the restore service's coordinator in the running Ray cluster; return a client.

    ``ckpt_dir_or_file``: a checkpoint (prefix, directory, or a list of them) to open now; others
    are opened when a worker first names them. ``name``/``namespace``: how workers find it
    (``connect``); another job reaches it only through a namespace it names. ``detached``: the
    coordinator outlives this job (stop it with ``shutdown()``); otherwise it lives as long as
    this job and the returned client. ``storage_options``: for the checkpoints it opens.
    ``cache_bytes``: read results kept after every worker took them (default: half the
    cluster's object store). ``chunk_bytes``: most bytes one read task reads.
    ``min_piece_bytes``: neighbouring runs smaller than this are read together. ``reads_per_node``:
    read tasks in flight per node. ``read_retries``: Ray re-runs a read whose worker or node
    died this often. ``read_cpus``: CPUs a read task reserves (0: reads never wait for CPUs the
    workers hold). ``deadline``: the returned client's default for a call's whole duration.
    Raises ``ServiceExistsError`` when the name is taken.
    """
    _require_ray()
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        pass
    else:
        raise ServiceExistsError(f"a restore service {_where(name, namespace)} already runs; connect() to it")
    if cache_bytes is None:
        cache_bytes = int(ray.cluster_resources().get("object_store_memory", 2 << 30) // 2)
    paths = [] if ckpt_dir_or_file is None else ckpt_dir_or_file
    paths = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    options = ServiceOptions(
        tuple(paths),
        name,
        namespace,
        dict(storage_options) if storage_options else None,
        cache_bytes,
        chunk_bytes,
        min_piece_bytes,
        reads_per_node,
        read_retries,
        read_cpus,
    )
    actor = (
        ray.remote(RestoreService)
        .options(
            name=name,
            namespace=namespace,
            lifetime="detached" if detached else None,
            num_cpus=0,
            max_concurrency=_MAX_CONCURRENCY,
            max_restarts=0,  # a new coordinator would not know the old one's objects
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True),
        )
        .remote(options)
    )
    client = ServiceClient(name, namespace, actor=actor, deadline=deadline)
    try:
        for path in paths:
            client.checkpoint(path)
    except BaseException:
        ray.kill(actor)
        raise
    return client


def connect(name: str = "distrestore", namespace: str | None = None, *, timeout: float = 0) -> ServiceClient:
    """A client of the running restore service ``name``, from any driver, task or actor of the
    cluster; waits up to ``timeout`` seconds for it to appear. Raises ``ServiceUnavailableError``."""
    _require_ray()
    deadline = time.monotonic() + timeout
    while True:
        try:
            actor = ray.get_actor(name, namespace=namespace)
            break
        except ValueError:
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(
                    f"no restore service {_where(name, namespace)} runs in this Ray cluster"
                    + ("" if namespace else " (from another job, pass the namespace it was started in)")
                ) from None
            time.sleep(0.2)
    return ServiceClient(name, namespace, actor=actor)


class _Known:
    """A coordinator's checkpoints as this process knows them: their indexes (by path and
    storage options) and the service's file id of each data file."""

    def __init__(self):
        self.indexes: dict[tuple, CheckpointIndex] = {}
        self.file_ids: dict[str, int] = {}


_KNOWN: dict = {}  # coordinator actor handle -> _Known, least recently used first
_KNOWN_LOCK = threading.Lock()
_KNOWN_SERVICES = 8
_KNOWN_INDEXES = 8  # per service: an index of 10^6 tensors holds tens of MB


class ServiceClient:
    """A worker's handle on the restore service (see ``docs/service.md``).

    ``checkpoint(path)`` gives a checkpoint's index without reading it from storage (the service
    read it once); pass it to ``init_from_checkpoint``/``Checkpoint.restore`` so that workers
    never read the index themselves. ``fetch`` has the signature of ``distrestore.fetch``:
    ``VariableStore.initialize(fetch=client.fetch)`` and ``Checkpoint.restore(..., fetch=...)``
    restore through the service (``initialize`` and ``restore`` do that for you). A client
    pickles as the service's name: hand it to tasks and actors, or ``connect()`` there.
    """

    def __init__(self, name: str, namespace: str | None = None, *, actor=None, deadline: float = DEFAULT_DEADLINE):
        self.name = name
        self.namespace = namespace
        self.deadline = deadline
        self._actor = actor
        self._session = _session() if actor is not None else None  # the Ray session the handle is of

    def __reduce__(self):
        return (ServiceClient, (self.name, self.namespace), {"deadline": self.deadline})

    def __setstate__(self, state):
        self.deadline = state["deadline"]

    def __repr__(self) -> str:
        return f"ServiceClient({self.name!r}, namespace={self.namespace!r})"

    @property
    def actor(self):
        """The coordinator's actor handle, looked up by name once per Ray session of this
        process (one of an earlier session, before ``ray.shutdown()``, is no use in the next).
        Without a Ray session: ``RayNotInitializedError``, never a Ray started by the call."""
        _require_ray()
        session = _session()
        if self._actor is None or self._session != session:
            self._actor, self._session = connect(self.name, self.namespace)._actor, session
        return self._actor

    def _call(self, method: str, *args, deadline: float | None = None):
        """Call the coordinator and wait (bounded); its errors re-raised as themselves."""
        return self._result(getattr(self.actor, method).remote(*args), deadline)

    def _result(self, ref, deadline: float | None = None):
        """The result of a call to the coordinator (bounded); its errors re-raised as themselves."""
        wait = (self.deadline if deadline is None else deadline) + _MARGIN
        try:
            return ray.get(ref, timeout=wait)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, DistRestoreError):
                raise cause from e
            raise
        except ray.exceptions.GetTimeoutError as e:
            raise ServiceTimeoutError(f"the restore service {self._service} did not answer in {wait:g} s") from e
        except (ray.exceptions.RayActorError, ray.exceptions.OwnerDiedError) as e:
            raise self._unavailable(e) from e

    @property
    def _known(self) -> _Known:
        """What this process learnt from the coordinator (shared by its clients of it)."""
        with _KNOWN_LOCK:
            known = _KNOWN.pop(self.actor, None) or _Known()
            _KNOWN[self.actor] = known  # most recently used last
            while len(_KNOWN) > _KNOWN_SERVICES:
                del _KNOWN[next(iter(_KNOWN))]
        return known

    @property
    def _service(self) -> str:
        return _where(self.name, self.namespace)

    def _unavailable(self, e: BaseException) -> ServiceUnavailableError:
        return ServiceUnavailableError(f"the restore service {self._service} is gone: {type(e).__name__}: {e}")

    # -- checkpoints --------------------------------------------------------------------------

    def checkpoint(self, path=None, *, storage_options: dict | None = None) -> CheckpointIndex:
        """The index of checkpoint ``path`` (a prefix or directory; None: the service's first),
        read by the service once and shared; cached in this process (for every client of this
        coordinator: the checkpoints it opened do not change)."""
        if isinstance(path, CheckpointIndex):
            return path
        path = None if path is None else os.fspath(path)
        key = (path, repr(sorted((storage_options or {}).items())))
        known = self._known
        index = known.indexes.get(key)
        if index is None:
            opened: Opened = self._call("open", path, storage_options)
            data = self._result(opened.index_bytes)
            index = CheckpointIndex.from_bytes(opened.prefix, data, opened.storage, file_sizes=opened.file_sizes)
            for i, f in enumerate(index.data_files()):
                known.file_ids[f] = opened.first_file + i
            known.indexes[key] = index
            while len(known.indexes) > _KNOWN_INDEXES:
                del known.indexes[next(iter(known.indexes))]
        return index

    def _file_ids_for(self, storages: Mapping[str, Storage]) -> dict[str, int]:
        """Service file ids of a plan's data files; a checkpoint this client opened itself is
        opened by the service too, matched by its prefix."""
        out = {}
        file_ids = self._known.file_ids
        for path, storage in storages.items():
            fid = file_ids.get(path)
            if fid is None:
                prefix = path[: path.rindex(".data-")] if ".data-" in path else path
                full = os.path.abspath(prefix) if storage.local else prefix
                opened: Opened = self._call("open", full, storage.storage_options)
                for i in range(opened.num_files):
                    shard = f".data-{i:05d}-of-{opened.num_files:05d}"
                    file_ids[prefix + shard] = file_ids[full + shard] = opened.first_file + i
                fid = file_ids.get(path)
                if fid is None:
                    raise CheckpointNotFoundError(
                        f"{path}: not a data file of {opened.prefix} as the service opened it"
                    )
            out[path] = fid
        return out

    # -- restoring ----------------------------------------------------------------------------

    def fetch(
        self,
        requests: Sequence[_restore.TensorRequest],
        *,
        verify: bool = True,
        group: str | None = None,
        world_size: int | None = None,
        deadline: float | None = None,
        timeout: float | None = None,
        executor=None,
        max_inflight_bytes: int | None = None,
        progress=None,
    ) -> list[np.ndarray]:
        """``distrestore.fetch`` through the service: arrays in request order, or an error and
        nothing. ``verify``: every byte handed over is covered by a checked CRC32C (the service
        reads whole stored entries to check them). ``group``/``world_size``: wait until
        ``world_size`` workers registered under ``group``, plan them together. ``deadline``:
        seconds for the whole call, waiting for the group included (default the client's).
        ``timeout`` (seconds per storage request), ``executor`` and ``max_inflight_bytes`` are
        accepted for the signature and not used: the service reads with its own storage
        settings (``serve(storage_options=...)``)."""
        reads = self._reads(verify, group, world_size, deadline)
        return _restore.fetch(requests, executor=reads, verify=False, progress=progress)

    def restore_tensors(
        self,
        path=None,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        group: str | None = None,
        world_size: int | None = None,
        deadline: float | None = None,
        progress=None,
    ) -> dict[str, np.ndarray]:
        """``distrestore.restore_tensors`` through the service: ``{name: array}`` of checkpoint
        ``path`` (None: the service's first; its index as the service read it), every tensor by
        default (variants skipped). Takes names as they are, so a worker wanting 10^4 tensors
        makes no ``TensorRequest`` of each. ``group``/``world_size``/``deadline`` as ``fetch``'s."""
        reads = self._reads(verify, group, world_size, deadline)
        return _restore.restore_tensors(self.checkpoint(path), names, executor=reads, verify=False, progress=progress)

    def _reads(self, verify: bool, group: str | None, world_size: int | None, deadline: float | None):
        """The executor a restore through the service runs its plan with."""
        if group is not None and (world_size is None or world_size < 1):
            raise ValueError("a group needs world_size >= 1")
        return _ServiceReads(self, verify, group, world_size, self.deadline if deadline is None else deadline)

    def get_tensor(self, name: str, region=None, *, path=None, verify: bool = True, deadline: float | None = None):
        """One tensor (or ``region``, a tuple of slices) of checkpoint ``path`` (default: the
        service's first)."""
        req = _restore.TensorRequest(self.checkpoint(path), name, region)
        return self.fetch([req], verify=verify, deadline=deadline)[0]

    def initialize(
        self,
        store,
        *,
        verify: bool = True,
        group: str | None = None,
        world_size: int | None = None,
        deadline: float | None = None,
    ) -> None:
        """``store.initialize()`` (a ``VariableStore``'s pending ``init_from_checkpoint``
        restores) through the service; nothing is assigned unless everything arrived."""
        fetch = functools.partial(self.fetch, group=group, world_size=world_size)
        store.initialize(verify=verify, fetch=fetch, deadline=deadline)

    def restore(self, root, path=None, *, verify: bool = True, deadline: float | None = None):
        """``root.restore(...)`` of a ``Checkpoint`` through the service; returns TF's status
        object. Objects attached later restore through the service too."""
        return root.restore(self.checkpoint(path), verify=verify, fetch=self.fetch, deadline=deadline)

    # -- the service --------------------------------------------------------------------------

    def stats(self) -> dict:
        """The service's counters: ``bytes_read`` and ``requests`` (storage), ``bytes_served``
        and ``reads_by_node`` (per node id), ``cache_bytes``, registrations, and more."""
        return self._call("stats")

    def release(self) -> None:
        """Drop the service's cached read results (now, or once the registrations waiting for
        them are answered); the service keeps serving."""
        self._call("release")

    def shutdown(self) -> None:
        """Stop the coordinator (a detached one too); its waiting clients fail at once."""
        try:
            ray.kill(self.actor)
        except ServiceUnavailableError:
            pass


class _ServiceReads:
    """An executor (``distrestore.execute.Executor``) whose reads come from the service."""

    def __init__(self, client: ServiceClient, verify: bool, group, world_size, deadline: float):
        self.client = client
        self.verify = verify
        self.group = group
        self.world_size = world_size
        self.deadline = deadline

    def workers_for(self, local: bool) -> int:
        return 8  # sizes the worker's own plan only; the service cuts the reads

    def run(self, plan: ReadPlan, sink: ReadSink, storages: Mapping[str, Storage], *, progress=None, **_):
        client = self.client
        file_ids = client._file_ids_for({f: storages[f] for f in {r.file for r in plan.requests}})
        here, _ = _session()  # asked each time: a process may join another cluster
        reg = Registration(needed_ranges(plan, file_ids), here, self.verify, self.group, self.world_size)
        until = time.monotonic() + self.deadline + _MARGIN
        ticket = channel(client.actor, client._unavailable).register(reg, self.deadline)
        placer = Placer(plan, sink, file_ids, progress)
        try:
            self._receive(ticket, placer, until)
        finally:
            ticket.abandon()  # answered or given up: the channel need not follow it any more
        yield placer.completed

    def _receive(self, ticket: Ticket, placer: Placer, until: float) -> None:
        """Place what the coordinator hands over for ``ticket`` until every byte is in. The Ray
        objects it is answered with live in this frame only: released when it returns, not
        whenever the caller's generator is collected (by whichever thread, perhaps as Ray shuts
        down)."""
        client = self.client
        arriving = 0  # objects handed over, not yet placed
        done = False  # the coordinator said every byte is read and checked
        lost = None  # the first object that could not be fetched
        while not done or arriving:
            try:
                event = ticket.get(until - time.monotonic())
            except queue.Empty:
                raise ServiceTimeoutError(f"the restore service {client._service} did not answer in time") from None
            if event[0] == "error":
                raise event[1]
            if event[0] == "reply":
                reply = event[1]
                for obj, start, end in zip(reply.refs, reply.starts, reply.ends):
                    if isinstance(obj, ray.ObjectRef):
                        ticket.watch(obj, start, end)
                        arriving += 1
                    else:  # a small piece's bytes, handed over with the reply
                        placer.add(start, end, obj)
                done = reply.done
                continue
            _, start, end, fut = event
            arriving -= 1
            try:
                placer.add(start, end, fut.result())
            except ray.exceptions.OwnerDiedError as e:
                raise client._unavailable(e) from e
            except ray.exceptions.RayError as e:
                lost = lost or e  # the coordinator names what failed (a read, a check) next
        if lost is not None:
            raise ReadWorkerLostError(
                f"a read result of the restore service {client._service} was lost: {lost}"
            ) from lost
        if not placer.finished():
            raise StorageError(f"the restore service {client._service} delivered nothing for {placer.missing()}")
