"""The restore service's coordinator: a named, asynchronous Ray actor around ``Coordinator``.

It opens checkpoint indexes (each read from storage once, its raw bytes shared with workers
through the object store), takes registrations, submits the read tasks its ``Coordinator``
decides on, awaits their small reports, and answers each registration with object references.
It never touches tensor bytes. Every decision is in ``distrestore.coordination``; this module
only carries messages between it and Ray. How it all fits: ``docs/service.md``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import NamedTuple

import numpy as np
import ray

from ..coordination.files import CheckpointInfo
from ..coordination.state import Answer, Coordinator, Evicted, Failure, Planned, Registration
from ..errors import (
    CheckpointNotFoundError,
    DistRestoreError,
    ReadWorkerLostError,
    ServiceTimeoutError,
    StorageError,
)
from ..index import CheckpointIndex, open_checkpoint, resolve_prefix
from ..storage import Storage
from .reads import submit_read, submit_slice

_FORGET_SECONDS = 300.0  # a registration done that nobody asked about is forgotten after this


class Opened(NamedTuple):
    """A checkpoint the service serves, as a worker needs it: its file ids and its index."""

    id: int
    prefix: str
    first_file: int
    num_files: int
    storage: Storage
    index_bytes: object  # ObjectRef of the raw ``.index`` file
    file_sizes: dict  # shard id -> data file size: workers check entries against them, asking nothing


class Reply(NamedTuple):
    """Objects handed to a registration: ``refs[i]`` holds (or will hold: its read may still be
    under way) bytes ``[starts[i], ends[i])`` (positions). ``done``: every byte it needs is read
    and checked, and every object handed over; otherwise ``updates(token)`` hands over more as
    their reads start, and says when it is done (or raises). Nothing may be used before."""

    starts: np.ndarray
    ends: np.ndarray
    refs: list
    token: int
    done: bool


class ServiceOptions(NamedTuple):
    checkpoints: tuple[str, ...]  # opened first: the first is the default
    name: str
    namespace: str | None
    storage_options: dict | None
    cache_bytes: int
    chunk_bytes: int
    min_piece_bytes: int
    reads_per_node: int
    read_retries: int
    read_cpus: float


class _Slot:
    """A registration from its arrival until it is done: ``reply`` (the first hand-over),
    ``done`` (read and checked), the deliveries whose reads have not started yet (``unsent``),
    and ``changed``, set when some have."""

    __slots__ = ("reg", "timeout", "reply", "done", "rid", "clock", "unsent", "changed")

    def __init__(self, reg: Registration, timeout: float, loop: asyncio.AbstractEventLoop):
        self.reg, self.timeout, self.rid = reg, timeout, -1
        self.reply, self.done = loop.create_future(), loop.create_future()
        self.clock = None
        self.unsent: list = []
        self.changed: asyncio.Future | None = None


def read_index(path: str, storage: Storage) -> tuple[str, bytes]:
    """(prefix, raw index bytes) of a checkpoint path, resolved like ``open_checkpoint``."""
    if storage.local:
        path = os.path.abspath(path)  # workers run elsewhere, in other directories
    if not storage.local:
        try:  # a prefix is the common case: its index in one GET
            return path, storage.read(path + ".index")
        except CheckpointNotFoundError:
            pass
    prefix = resolve_prefix(path, storage)
    try:
        return prefix, storage.read(prefix + ".index")
    except CheckpointNotFoundError:
        open_checkpoint(path, storage=storage)  # raises the error a local open would
        raise


def _file_sizes(index: CheckpointIndex) -> dict[int, int]:
    return {i: index.data_file_size(i) for i in range(len(index.data_files()))}


def _storage_key(storage: Storage) -> tuple:
    return storage.protocol, repr(sorted(storage.storage_options.items()))


class RestoreService:
    """The coordinator actor (made with ``ray.remote`` by ``client.serve``)."""

    def __init__(self, options: ServiceOptions):
        self.options = options
        self.state = Coordinator(
            cache_bytes=options.cache_bytes,
            chunk_bytes=options.chunk_bytes,
            min_piece_bytes=options.min_piece_bytes,
            reads_per_node=options.reads_per_node,
        )
        self.opened: dict[tuple, asyncio.Future] = {}  # (path, storage key) -> Future[Opened]
        self.storages: dict[int, Storage] = {}  # checkpoint id -> its storage
        self.pieces: dict[int, object] = {}  # piece id -> ObjectRef of its bytes
        self.waiters: dict[int, _Slot] = {}  # registration id -> its slot, until done
        self.following: dict[int, _Slot] = {}  # registrations handed part of their objects
        self.arriving: list[_Slot] = []  # registrations not yet handed to the coordinator
        self.default: Opened | None = None

    # -- checkpoints --------------------------------------------------------------------------

    async def open(self, path: str | None = None, storage_options: dict | None = None) -> Opened:
        """The checkpoint at ``path`` (None: the first one served), opened once."""
        if path is None and self.default is None and self.options.checkpoints:
            return await self.open(self.options.checkpoints[0])  # serve() may be opening it now
        if path is None:
            if self.default is None:
                raise CheckpointNotFoundError(
                    f"the restore service {self.options.name!r} serves no checkpoint yet: name one"
                )
            return self.default
        options = self.options.storage_options if storage_options is None else storage_options
        storage = Storage.for_url(path, options)
        key = (os.path.abspath(path) if storage.local else path, _storage_key(storage))
        fut = self.opened.get(key)
        if fut is None:
            fut = self.opened[key] = asyncio.get_running_loop().create_future()
            try:
                prefix, data = await asyncio.to_thread(read_index, path, storage)
                same = self.opened.get((prefix, key[1]))
                if same is not None and same is not fut:
                    result = await same  # a directory and its latest prefix share one checkpoint
                else:
                    self.opened[(prefix, key[1])] = fut
                    index = await asyncio.to_thread(CheckpointIndex.from_bytes, prefix, data, storage)
                    sizes = await asyncio.to_thread(_file_sizes, index)
                    info: CheckpointInfo = self.state.add_checkpoint(prefix, index)
                    self.storages[info.id] = storage
                    result = Opened(*info, storage, ray.put(data), sizes)
                fut.set_result(result)
            except BaseException as e:
                fut.set_exception(e)
                for k in [k for k, f in self.opened.items() if f is fut]:
                    del self.opened[k]  # a later call tries again
        result = await asyncio.shield(fut)
        if self.default is None:
            self.default = result
        return result

    # -- registrations ------------------------------------------------------------------------

    async def register(self, reg: Registration, timeout: float) -> Reply:
        """The objects that hold every byte ``reg`` needs, those whose reads started (see
        ``Reply``). Raises what fails it first, or ``ServiceTimeoutError`` after ``timeout``.
        Registrations that arrive together are planned together."""
        loop = asyncio.get_running_loop()
        slot = _Slot(reg, timeout, loop)
        self.arriving.append(slot)
        if len(self.arriving) == 1:
            loop.call_soon(self._plan_arrivals)
        slot.clock = loop.call_later(timeout, self._time_out, slot)
        slot.done.add_done_callback(lambda _: self._settled(slot))
        reply = await slot.reply
        if slot.done.done():
            slot.done.result()  # raises its error
            if not slot.unsent:
                return reply._replace(done=True)
        self.following[slot.rid] = slot
        return reply

    async def updates(self, token: int) -> Reply:
        """The next objects of registration ``token`` once their reads started, or that it is
        done (every byte read and checked); raises what failed it."""
        slot = self.following.get(token)
        if slot is None:
            raise ServiceTimeoutError(f"the restore service {self.options.name!r} no longer knows registration {token}")
        while True:
            handed = self._hand(slot, slot.unsent)
            if handed.refs or slot.done.done():
                break
            slot.changed = asyncio.get_running_loop().create_future()
            await asyncio.wait([slot.changed, slot.done], return_when=asyncio.FIRST_COMPLETED)
        if slot.done.done() and (slot.done.exception() is not None or not slot.unsent):
            self.following.pop(token, None)
            slot.done.result()  # raises its error
            return handed._replace(done=True)
        return handed

    def _settled(self, slot: _Slot) -> None:
        slot.clock.cancel()
        self.waiters.pop(slot.rid, None)
        if not slot.done.cancelled():
            slot.done.exception()  # retrieved: a worker that died never asks for it
        if slot.changed is not None and not slot.changed.done():
            slot.changed.set_result(None)
        # a worker that died before it asked for the rest: forget it after a while
        asyncio.get_running_loop().call_later(_FORGET_SECONDS, self.following.pop, slot.rid, None)

    def _time_out(self, slot: _Slot) -> None:
        what = f"group {slot.reg.group!r}" if slot.reg.group else "a registration"
        err = ServiceTimeoutError(f"{what} of service {self.options.name!r} not answered in {slot.timeout:g} s")
        if slot.rid < 0:  # not yet handed to the coordinator
            self.arriving.remove(slot)
            slot.reply.set_exception(err)
            slot.done.set_exception(err)
            return
        self._handle(self.state.withdraw(slot.rid, err))

    def _plan_arrivals(self) -> None:
        slots, self.arriving = self.arriving, []
        gathering = {s.reg.group for s in slots if s.reg.group is not None} - set(self.state.groups)
        rids, events = self.state.register_many([s.reg for s in slots])
        for slot, rid in zip(slots, rids):
            slot.rid = rid
            self.waiters[rid] = slot
        loop = asyncio.get_running_loop()
        for name in gathering & set(self.state.groups):  # a new group: its first member sets its clock
            timeout = min(s.timeout for s in slots if s.reg.group == name)
            loop.call_later(timeout, self._expire_group, name, self.state.group_generation(name))
        self._handle(events)
        self._pump()

    def _expire_group(self, name: str, generation: int) -> None:
        self._handle(self.state.expire_group(name, generation))

    def _handle(self, events: list) -> None:
        for ev in events:
            if isinstance(ev, Evicted):
                for pid in ev.pieces:
                    self.pieces.pop(pid, None)  # workers still holding it keep it alive
                continue
            slot = self.waiters.get(ev.reg)
            if slot is None:
                continue
            if isinstance(ev, Planned):
                if not slot.reply.done():
                    slot.reply.set_result(self._hand(slot, ev.deliveries))
            elif isinstance(ev, Answer):
                if not slot.done.done():
                    slot.done.set_result(None)
            elif isinstance(ev, Failure):
                for fut in (slot.reply, slot.done):
                    if not fut.done():
                        fut.set_exception(ev.error)

    def _hand(self, slot: _Slot, deliveries: list) -> Reply:
        """Refs of the deliveries whose pieces are being read or were read (slices made where
        the piece lives); the rest stay in ``slot.unsent``."""
        refs, starts, ends, unsent = [], [], [], []
        for d in deliveries:
            ref = self.pieces.get(d.piece)
            if ref is None:
                unsent.append(d)
                continue
            if d.sliced:
                ref = submit_slice(ref, d.offset, d.end - d.start, retries=self.options.read_retries)
            refs.append(ref)
            starts.append(d.start)
            ends.append(d.end)
        slot.unsent = unsent
        return Reply(np.asarray(starts, np.int64), np.asarray(ends, np.int64), refs, slot.rid, False)

    # -- reads --------------------------------------------------------------------------------

    def _pump(self) -> None:
        for orders in self.state.take_reads():
            data, reports = submit_read(
                self.storages[orders[0].checkpoint],
                orders,
                retries=self.options.read_retries,
                num_cpus=self.options.read_cpus,
            )
            pieces = [o.piece for o in orders]
            self.pieces.update(zip(pieces, data))
            asyncio.ensure_future(self._await_read(pieces, reports))
            for piece in pieces:  # registrations waiting for these refs: hand them over now
                for rid in self.state.waiting_for(piece):
                    slot = self.waiters.get(rid)
                    if slot is not None and slot.changed is not None and not slot.changed.done():
                        slot.changed.set_result(None)

    async def _await_read(self, pieces: list[int], reports_ref) -> None:
        try:
            reports = await reports_ref
        except ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None) if isinstance(e, ray.exceptions.RayTaskError) else None
            for piece in pieces:
                where = self.state.describe_piece(piece)
                if isinstance(cause, DistRestoreError):
                    err = type(cause)(f"{cause} (the service was reading {where})")
                elif isinstance(e, ray.exceptions.RayTaskError):
                    err = StorageError(f"the service's read of {where} failed: {e}")
                else:  # its worker or node died past the retries
                    err = ReadWorkerLostError(f"the service's read of {where} was lost: {type(e).__name__}: {e}")
                self.pieces.pop(piece, None)
                self._handle(self.state.read_failed(piece, err))
        else:
            for piece, report in zip(pieces, reports):
                self._handle(self.state.read_done(piece, report))
        self._pump()

    # -- the rest -----------------------------------------------------------------------------

    async def stats(self) -> dict:
        return {
            "name": self.options.name,
            "namespace": self.options.namespace,
            "cpu_seconds": time.process_time(),  # the coordinator's own CPU time, all threads
            **self.state.stats(),
        }

    async def release(self) -> None:
        self._handle(self.state.release())

    async def ping(self) -> str:
        return ray.get_runtime_context().get_node_id()
