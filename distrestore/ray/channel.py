"""A worker process's line to the restore service's coordinator.

An actor call costs the coordinator about as much CPU as deciding on tens of registrations
(docs/service.md), so a process's calls travel together: registrations that its threads make
while one is on its way go in the next call, all of them (``register_many``), and one long poll
follows every registration of the process that is not done yet (``poll``). A registration that
arrives while nothing is on its way leaves at once: batching adds no wait of its own. A second
call may leave while the first is on its way once that one has been so for 20 ms (it waits for
reads), so that registrations of cached bytes are not held long behind it.

Each registration gets a :class:`Ticket`, the queue of what happens to it in order: the
coordinator's replies (objects handed over, then done) or its error, and the objects handed
over as they arrive (``Ticket.watch``). A thread of the channel's own sends the calls and takes
their answers; it ends once nothing was left to send or wait for during a second, and a later
registration starts another. If the coordinator dies, every ticket waiting on it gets the error
at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import ray

from ..coordination.state import Registration
from ..coordination.wire import pack

_MAX_REGISTER_CALLS = 2  # register_many calls on their way at once: the rest wait, and travel together
_SLOW_CALL_SECONDS = 0.02  # a call on its way this long waits for reads: a second may leave
LINGER_SECONDS = 1.0  # the channel's thread waits this long for more before it ends
POLL_SECONDS = 10.0  # a poll answers at least this often (then follows what is new since)
_CHANNELS: dict = {}  # actor handle -> this process's channel to it
_CHANNELS_LOCK = threading.Lock()


class Ticket:
    """What happens to one registration, in order: ``("reply", Reply)``, ``("error", exc)``,
    ``("piece", start, end, future)`` (an object handed over has arrived, or failed)."""

    def __init__(self):
        self.token = -1
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.abandoned = False

    def abandon(self) -> None:
        """Nobody waits for this registration any more (its caller returned or gave up): the
        channel stops following it, rather than polling for it until the coordinator is done."""
        self.abandoned = True

    def put(self, *event) -> None:
        self.events.put(event)

    def get(self, timeout: float) -> tuple:
        """The next event; raises ``queue.Empty`` after ``timeout`` seconds."""
        return self.events.get(timeout=max(0.0, timeout))

    def watch(self, ref, start: int, end: int) -> None:
        """Queue ``("piece", start, end, future)`` once the object ``ref`` arrived here (or failed)."""
        ref.future().add_done_callback(lambda fut: self.put("piece", start, end, fut))


class Channel:
    """One process's calls to one coordinator actor (made by :func:`channel`)."""

    def __init__(self, actor, unavailable: Callable[[BaseException], BaseException]):
        self.actor = actor
        self.unavailable = unavailable  # an actor call's Ray error -> the error the tickets get
        self._cond = threading.Condition()
        self._queue: list[tuple[tuple, Ticket]] = []  # registrations to send
        self._follow: dict[int, Ticket] = {}  # tokens to poll, not in a poll on its way
        self._answers: list[tuple[str, object, object]] = []  # (kind, what was sent, future)
        self._sent: list[float] = []  # when each register_many call on its way was sent
        self._polling = 0
        self._running = False

    def register(self, reg: Registration, timeout: float) -> Ticket:
        """Send ``reg`` (with the seconds the coordinator gives it) with the next call."""
        ticket = Ticket()
        with self._cond:
            self._queue.append((pack(reg, timeout), ticket))
            self._wake()
        return ticket

    def _wake(self) -> None:
        if not self._running:
            self._running = True
            threading.Thread(target=self._run, name="distrestore-service-channel", daemon=True).start()
        else:
            self._cond.notify()

    def _answered(self, kind: str, sent, fut) -> None:
        with self._cond:
            self._answers.append((kind, sent, fut))
            self._cond.notify()

    def _run(self) -> None:
        idle_since = None
        while True:
            with self._cond:
                while not self._answers:
                    wait = self._register_wait()
                    if wait == 0 or (self._follow and not self._polling):
                        break
                    if self._sent or self._polling or self._queue or self._follow:
                        idle_since = None
                        self._cond.wait(wait)
                        continue
                    now = time.monotonic()
                    idle_since = idle_since or now
                    if now - idle_since >= LINGER_SECONDS:  # idle: a later registration starts another
                        self._running = False
                        return
                    self._cond.wait(LINGER_SECONDS - (now - idle_since))
            # each step in a frame of its own: this loop holds nothing of a call while it waits
            self._take_answers()
            self._send_next()

    def _take_answers(self) -> None:
        """Hand over the answers that came. What they hold (object refs, futures) is released
        when this returns, while the Ray session is alive, never by the thread as it waits for
        more or ends a second later: a Ray object released while ``ray.shutdown()`` runs ends the
        process (Ray's core worker exits when touched as it shuts down)."""
        with self._cond:
            answers, self._answers = self._answers, []
        for kind, sent, fut in answers:
            self._take(kind, sent, fut)

    def _send_next(self) -> None:
        """Send what may leave now: the registrations queued, and a poll for those to follow."""
        with self._cond:
            batch = follow = None
            if self._register_wait() == 0:
                batch, self._queue = (self._queue, time.monotonic()), []
                self._sent.append(batch[1])
            if self._follow and not self._polling:
                follow, self._follow = self._follow, {}
                self._polling += 1
        if batch:
            self._send("register", batch, self.actor.register_many, [wire for wire, _ in batch[0]])
        if follow:
            self._send("poll", follow, self.actor.poll, list(follow), POLL_SECONDS)

    def _register_wait(self) -> float | None:
        """0 if registrations may be sent now, else the seconds until they may (None: until an
        answer comes). One call at a time, so that what arrives meanwhile travels together; a
        second once the first has been on its way for ``_SLOW_CALL_SECONDS`` (it waits for reads)."""
        if not self._queue:
            return None
        if not self._sent:
            return 0.0
        if len(self._sent) >= _MAX_REGISTER_CALLS:
            return None
        return max(0.0, self._sent[0] + _SLOW_CALL_SECONDS - time.monotonic())

    def _send(self, kind: str, sent, method, *args) -> None:
        if not ray.is_initialized():  # shut down: a call would start a Ray of its own (Ray's auto-init)
            self._answered(kind, sent, _failed(ray.exceptions.RaySystemError("Ray was shut down in this process")))
            return
        try:
            ref = method.remote(*args)
            ref.future().add_done_callback(lambda fut: self._answered(kind, sent, fut))
        except Exception as e:  # the actor handle is unusable: answer with the error
            fut = _failed(e)
            self._answered(kind, sent, fut)

    def _take(self, kind: str, sent, fut) -> None:
        """Hand a call's answer to the tickets it concerns; follow those not done."""
        tickets = [t for _, t in sent[0]] if kind == "register" else list(sent.values())
        err = None
        try:
            answer = fut.result()
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            err = cause if isinstance(cause, BaseException) else e
        except Exception as e:  # the coordinator is gone (a RayError), or the handle is of no use here
            err = self.unavailable(e)
            with _CHANNELS_LOCK:
                if _CHANNELS.get(self.actor) is self:
                    del _CHANNELS[self.actor]  # a coordinator started again under its name gets a new one
        if err is not None:
            pairs = [(t, err) for t in tickets]
        elif kind == "register":
            pairs = []
            for ticket, (token, news) in zip(tickets, answer):
                ticket.token = token
                pairs.append((ticket, news))
        else:
            heard = dict(answer)
            pairs = [(t, heard.get(token)) for token, t in sent.items()]
        follow = {t.token: t for t, news in pairs if self._deliver(t, news)}
        with self._cond:
            self._follow.update(follow)
            if kind == "register":
                self._sent.remove(sent[1])
            else:
                self._polling -= 1

    @staticmethod
    def _deliver(ticket: Ticket, news) -> bool:
        """Queue ``news`` on the ticket; whether it still needs following."""
        if ticket.abandoned:
            return False
        if news is None:
            return True
        if isinstance(news, BaseException):
            ticket.put("error", news)
            return False
        ticket.put("reply", news)
        return not news.done


def _failed(e: BaseException):
    import concurrent.futures

    fut: concurrent.futures.Future = concurrent.futures.Future()
    fut.set_exception(e)
    return fut


def channel(actor, unavailable: Callable[[BaseException], BaseException]) -> Channel:
    """This process's channel to coordinator ``actor`` (one per actor: handles of one actor are
    equal; dropped when the actor is found dead)."""
    with _CHANNELS_LOCK:
        ch = _CHANNELS.get(actor)
        if ch is None:
            ch = _CHANNELS[actor] = Channel(actor, unavailable)
        return ch
