"""The restore service's decisions, without Ray: what to read, where, and who gets which bytes.

Pure data and numpy, tested without servers (``tests/test_coordination.py``), like ``plan.py``:

* ``ranges``: byte ranges of many data files as intervals on one axis (positions);
* ``entries``/``files``: the stored entries of the files served, extending reads to whole
  entries and saying what each read must check;
* ``cutting``: cutting new reads at consumer boundaries and into chunks, and placing each;
* ``pieces``: the cache of read results, and CRC32C combination for entries cut into pieces;
* ``state``: the coordinator as a state machine (registrations, groups, reads, answers).

The Ray actor that carries these messages is ``distrestore.ray.service``.
"""
