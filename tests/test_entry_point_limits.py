"""``timeout=``/``deadline=`` on the object and name-based entry points: ``Checkpoint.restore`` and
``read``, ``read_object_graph``, ``load_object_tree``, ``init_from_checkpoint``,
``VariableStore.checkpoint`` and ``convert_to_safetensors`` bound the opening of the index (and
the state-file read of a directory) too, not only the values' reads; a deadline covers the whole
call.

Against S3 (moto) and GCS (fake-gcs-server) behind the fault proxy: a stalled endpoint (every
request accepted, never answered) fails each of them with a ``DeadlineExceededError`` naming what
it was reading, within the deadline + 10 % + slack; a stall after the index was opened (the object
graph's data file) fails within the same one deadline for the call.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pytest
from conftest import FIXTURES_DIR
from fault_proxy import FaultProxy

import distrestore as dr
from distrestore.errors import DeadlineExceededError, StorageError
from distrestore.storage import RetryPolicy, Storage

SLACK = 1.0  # seconds: a loaded machine, on top of the 10 %
DEADLINE = 1.0
# for a stall that comes after other requests: the client's set-up (s3fs makes its botocore
# client on the first request, 1.3 s once in a loaded run) and the requests before the stall must
# not use up the deadline, or the error rightly names what was being read then instead
PAST_THE_FIRST_REQUESTS = 3 * DEADLINE


@pytest.fixture(params=["s3", "gcs"])
def stalled(request):
    """``(store, options through a proxy)``: the proxy's rules decide what stalls."""
    store = request.getfixturevalue({"s3": "s3_server", "gcs": "gcs_server"}[request.param])
    proxy = FaultProxy(store.endpoint, request.param).start()
    try:
        yield store, proxy, {**store.storage_options, "endpoint_url": proxy.url}
    finally:
        proxy.stop()


def _store_with_w():
    store = dr.VariableStore()
    store.get_variable("big/part5", shape=[100, 8])
    return store


CALLS = {
    "Checkpoint.restore": lambda url, o, **kw: dr.Checkpoint().restore(url, storage_options=o, **kw),
    "Checkpoint.read": lambda url, o, **kw: dr.Checkpoint().read(url, storage_options=o, **kw),
    "read_object_graph": lambda url, o, **kw: dr.read_object_graph(url, storage_options=o, **kw),
    "load_object_tree": lambda url, o, **kw: dr.load_object_tree(url, storage_options=o, **kw),
    "init_from_checkpoint": lambda url, o, **kw: dr.init_from_checkpoint(
        url, {"big/part5": "big/part5"}, store=_store_with_w(), storage_options=o, **kw
    ),
    "VariableStore.checkpoint": lambda url, o, **kw: dr.VariableStore().checkpoint(url, storage_options=o, **kw),
    "convert_to_safetensors": lambda url, o, **kw: dr.convert_to_safetensors(
        url, os.path.join(tempfile.mkdtemp(), "m.safetensors"), storage_options=o, **kw
    ),
}
FIXTURE_OF = {name: "tf2_keras" for name in CALLS} | {  # name-based restore: a TF1 checkpoint
    "init_from_checkpoint": "tf1_sharded",
    "VariableStore.checkpoint": "tf1_sharded",
    "convert_to_safetensors": "tf1_sharded",
}


def _fails_within_deadline(name: str, url: str, options: dict, deadline: float = DEADLINE) -> DeadlineExceededError:
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:
        CALLS[name](url, options, deadline=deadline)
    elapsed = time.monotonic() - t0
    assert elapsed <= deadline * 1.1 + SLACK, f"{name}({url}): failed after {elapsed:.2f} s"
    assert isinstance(info.value, StorageError) and isinstance(info.value, TimeoutError)
    return info.value


@pytest.mark.parametrize("name", list(CALLS))
def test_a_stalled_endpoint_fails_each_entry_point_within_its_deadline(stalled, name):
    store, proxy, options = stalled
    directory = store.upload_fixture(FIXTURES_DIR / FIXTURE_OF[name])
    proxy.add_rule("stall")
    url = f"{directory}/{'model.ckpt-7' if FIXTURE_OF[name] == 'tf1_sharded' else 'ckpt-1'}"
    err = _fails_within_deadline(name, url, options)
    assert f"{url}.index" in str(err), str(err)  # names what it was reading


@pytest.mark.parametrize("name", ["Checkpoint.restore", "init_from_checkpoint"])
def test_a_stalled_state_file_is_bounded_too(stalled, name):
    store, proxy, options = stalled
    directory = store.upload_fixture(FIXTURES_DIR / FIXTURE_OF[name])
    # a directory: the prefix's own index is not there, the state file then stalls
    proxy.add_rule("stall", match="checkpoint" if store.name == "s3" else "%2Fcheckpoint")
    # the state file is asked for after the prefix's own .index (a 404): in one loaded CI run
    # that and the client's set-up took the whole of 1 s, and the deadline named the .index
    err = _fails_within_deadline(name, directory, options, deadline=PAST_THE_FIRST_REQUESTS)
    assert proxy.requests("checkpoint"), "the state file was never asked for"
    assert "checkpoint" in str(err)


def test_one_deadline_covers_opening_the_graph_and_the_values(stalled):
    store, proxy, options = stalled
    directory = store.upload_fixture(FIXTURES_DIR / "tf2_keras")
    proxy.add_rule("stall", match="ckpt-1.data-")  # the index answers, every data file stalls
    for name in ("Checkpoint.restore", "Checkpoint.read", "read_object_graph", "load_object_tree"):
        err = _fails_within_deadline(name, f"{directory}/ckpt-1", options, deadline=PAST_THE_FIRST_REQUESTS)
        assert "ckpt-1.data-" in str(err) and "bytes [" in str(err), str(err)


def test_timeout_bounds_each_request_of_init_from_checkpoint(stalled):
    # no deadline: each attempt to open the index is abandoned at `timeout` and retried
    store, proxy, options = stalled
    directory = store.upload_fixture(FIXTURES_DIR / "tf1_sharded")
    proxy.add_rule("stall")
    policy = RetryPolicy(attempts=2, initial_backoff=0.01, max_backoff=0.02)
    storage = Storage.for_url(directory, options, retry=policy)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="after 2 attempt") as info:
        dr.init_from_checkpoint(
            f"{directory}/model.ckpt-7", {"big/part5": "big/part5"}, store=_store_with_w(), storage=storage, timeout=0.5
        )
    assert not isinstance(info.value, DeadlineExceededError)
    # s3fs makes its botocore client on the first request (0.5 s here, unloaded; 1.3 s once in a
    # loaded full run): outside the attempts' bound. Unbounded, an attempt would wait ~60 s.
    assert time.monotonic() - t0 <= 2 * 0.5 * 1.1 + SLACK + 1.0


def test_with_time_to_spare_the_same_calls_work(s3_server):
    directory = s3_server.upload_fixture(FIXTURES_DIR / "tf2_keras")
    options = s3_server.storage_options
    tree = dr.load_object_tree(directory, storage_options=options, timeout=5, deadline=60)
    assert tree.model is not None
    status = dr.Checkpoint(model=dr.Node()).read(directory, storage_options=options, timeout=5, deadline=60)
    status.expect_partial()
    store = _store_with_w()
    tf1 = s3_server.upload_fixture(FIXTURES_DIR / "tf1_sharded")
    dr.init_from_checkpoint(tf1, {"big/part5": "big/part5"}, store=store, storage_options=options, deadline=60)
    store.initialize(timeout=5, deadline=60)
    assert np.asarray(store.get("big/part5").numpy()).shape == (100, 8)


@pytest.mark.parametrize("name", list(CALLS))
def test_a_passed_deadline_fails_before_any_read(name, fixtures_dir):
    with pytest.raises(DeadlineExceededError, match="deadline"):
        CALLS[name](str(fixtures_dir / FIXTURE_OF[name]), None, deadline=0)
