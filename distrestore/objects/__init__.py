"""Object-based restore, as ``tf.train.Checkpoint`` does it: ``Checkpoint``, ``Node``, deferred
restore on attach, optimizer slot variables and TF's status assertions.

A checkpoint's object graph is matched against a tree of :class:`Node` objects by local name from
the root. Every matched variable is read in one parallel plan (``distrestore.restore.fetch``);
every checkpoint subtree that has values but no object yet is kept on its would-be parent and
restored the moment an object is attached under that name, newest restore first. The walk follows
``tensorflow/python/checkpoint/restore.py`` (``CheckpointPosition``) step by step, so the
assertions of the returned status raise in the same cases as TF's ``CheckpointLoadStatus``.

Differences from TF, on purpose:

* Values are validated (key present, shape, dtype) while walking, read in one ``fetch`` and
  assigned only when every read succeeded. On any error the whole step (a ``restore``/``read``
  call, an attach, an ``add_slot``) is undone: no value changes, no binding or deferred restore
  is recorded, and an attach that failed leaves the child unattached.
* TF logs unused checkpoint values when its restore coordinator is garbage collected; here the
  same report is a :class:`UnusedCheckpointValuesWarning` (``warnings.warn``) at the same moment:
  once the status object and every deferred restore of that checkpoint are gone (a pending
  restore keeps it alive), or at interpreter exit. ``status.expect_partial()`` silences it.
* ``restore`` creates ``save_counter`` before walking, not after, so that it is read in the same
  plan as everything else; the values and assertions are the same as TF's.
* Lists and dicts assigned to a node are copied into :class:`NodeList`/:class:`NodeDict` (TF wraps
  them in place); assigning a non-trackable value to a tracked name stops tracking it.
* A checkpoint without an object graph (TF1 ``Saver``, name-based) is refused; use
  ``VariableStore``/``init_from_checkpoint`` for those.

Not thread-safe: restore and attach from one thread at a time.

Modules: ``tree`` (the objects), ``walk`` (the restore walk and its undo journal), ``status``
(what a restore returns), ``checkpoint`` (``Checkpoint``, ``read_object_graph``).
"""

from .checkpoint import Checkpoint, read_object_graph
from .status import CheckpointLoadStatus, InitializationOnlyStatus
from .tree import Node, NodeDict, NodeList, Optimizer, tracked_children
from .walk import UnusedCheckpointValuesWarning

__all__ = [
    "Checkpoint",
    "CheckpointLoadStatus",
    "InitializationOnlyStatus",
    "Node",
    "NodeDict",
    "NodeList",
    "Optimizer",
    "UnusedCheckpointValuesWarning",
    "read_object_graph",
    "tracked_children",
]
