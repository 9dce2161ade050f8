"""Credentials never shown: a canary secret in ``storage_options`` (keys, secrets, tokens, nested
dicts) and in an endpoint URL's user-info never appears in a repr, str, error message, traceback,
log record (botocore, s3fs, fsspec at DEBUG included), plan summary, or an object printed after a
pickle round trip, through a successful restore and failing ones.
"""

from __future__ import annotations

import io
import logging
import pickle
import traceback
import uuid

import pytest

import distrestore as dr
from distrestore.errors import DistRestoreError
from distrestore.redact import redact_options, redact_text, redact_url, secret_values
from distrestore.storage import RetryPolicy, Storage
from distrestore.storage.wrappers import CountingStorage

FAST = RetryPolicy(attempts=2, initial_backoff=0.001, max_backoff=0.002)


def _canary(what: str) -> str:
    return f"CANARY{what}{uuid.uuid4().hex[:12]}"


KEY, SECRET, TOKEN, PASSWORD, NESTED = (_canary(w) for w in ("KEY", "SECRET", "TOKEN", "PASSWORD", "NESTED"))
CANARIES = (KEY, SECRET, TOKEN, PASSWORD, NESTED)


def _shown(*things) -> str:
    return "\n".join(repr(t) + "\n" + str(t) for t in things)


def _assert_clean(text: str, where: str) -> None:
    leaked = [c for c in CANARIES if c in text]
    assert not leaked, f"{where} shows {leaked}: {text[:2000]}"


@pytest.fixture
def debug_logs():
    """Every log record at DEBUG, formatted with tracebacks, as the text a handler would write."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    names = ["botocore", "aiobotocore", "s3fs", "fsspec", "gcsfs", "urllib3", "distrestore"]
    saved = (root.level, {n: logging.getLogger(n).level for n in names})
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for n in names:
        logging.getLogger(n).setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for n, level in saved[1].items():
            logging.getLogger(n).setLevel(level)


def test_canary_never_shown_through_a_restore_and_its_failures(s3_server, fixtures_dir, debug_logs):
    url = s3_server.upload_fixture(fixtures_dir / "tf1_sharded")
    host = s3_server.endpoint.split("://", 1)[1]
    options = {
        "endpoint_url": s3_server.endpoint,
        "key": KEY,  # moto accepts any credentials
        "secret": SECRET,
        "client_kwargs": {"aws_session_token": NESTED},  # a nested session token (s3fs's token=, one level up)
    }
    shown = []
    # a successful restore, and everything it leaves to look at
    index = dr.open_checkpoint(url, storage_options=options)
    reader = dr.load_checkpoint(url, storage_options=options)
    values = dr.restore_tensors(url, storage_options=options)
    assert values
    plan = dr.plan_requests([dr.TensorRequest(index, n) for n in index.entries])
    storage = index.storage
    shown += [storage, CountingStorage(storage), storage.storage_options, vars(storage), index, vars(index)]
    shown += [reader, vars(reader), plan, pickle.loads(pickle.dumps(storage)), pickle.loads(pickle.dumps(index))]
    # failures: a missing tensor, a missing checkpoint, a missing bucket, an endpoint with
    # user-info (aiohttp refuses it: a permanent error whose text names the endpoint)
    with_password = {**options, "endpoint_url": f"http://user:{PASSWORD}@{host}"}
    failing = [
        lambda: reader.get_tensor("no/such/tensor"),
        lambda: dr.restore_tensors(url + "/nope", storage_options=options),
        lambda: dr.restore_tensors("s3://distrestore-no-such-bucket-x/m", storage_options=options),
        lambda: dr.open_checkpoint(url, storage=Storage.for_url(url, with_password, retry=FAST)),
        lambda: dr.restore_tensors(
            url, storage_options={**with_password, "endpoint_url": "http://u:" + PASSWORD + "@127.0.0.1:9"}
        ),
        # gcsfs, with a token given as a dict (service-account info)
        lambda: dr.open_checkpoint(
            "gs://b/ckpt",
            storage=Storage.for_url(
                "gs://b",
                {
                    "token": {"type": "authorized_user", "refresh_token": NESTED},
                    "endpoint_url": f"http://u:{PASSWORD}@127.0.0.1:9",
                },
                retry=FAST,
            ),
        ),
    ]
    for call in failing:
        with pytest.raises(DistRestoreError) as info:
            call()
        err = info.value
        shown += [err, "".join(traceback.format_exception(err))]
        shown += [pickle.loads(pickle.dumps(err))]
    _assert_clean(_shown(*shown), "reprs, errors and plans")
    _assert_clean(debug_logs.getvalue(), "log records")
    assert "botocore" in debug_logs.getvalue()  # the libraries did log at DEBUG


def test_redacted_options():
    opts = {
        "key": KEY,
        "secret": SECRET,
        "endpoint_url": f"https://user:{PASSWORD}@host:9000/path",
        "client_kwargs": {"aws_secret_access_key": SECRET, "region_name": "eu-west-1"},
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "token": "anon",
        "anon": False,
        "profile": "default",
        "password": None,
        "credentials": {"type": "service_account", "private_key": NESTED},
    }
    shown = redact_options(opts)
    assert shown == {
        "key": "***",
        "secret": "***",
        "endpoint_url": "https://***@host:9000/path",
        "client_kwargs": {"aws_secret_access_key": "***", "region_name": "eu-west-1"},
        "headers": {"Authorization": "***"},
        "token": "anon",  # a gcsfs mode, not a credential
        "anon": False,
        "profile": "default",
        "password": None,
        "credentials": {"type": "***", "private_key": "***"},
    }
    found = secret_values(opts)
    assert {KEY, SECRET, PASSWORD, f"Bearer {TOKEN}", NESTED, f"user:{PASSWORD}"} <= found
    assert "anon" not in found and "eu-west-1" not in found


@pytest.mark.parametrize(
    "text,want",
    [
        ("https://user:pw@host/x", "https://***@host/x"),
        ("see http://u@h:1 and s3://bucket/key@odd", "see http://***@h:1 and s3://bucket/key@odd"),
        ('url="http://a:b@c"', 'url="http://***@c"'),
        ("no url here: a@b", "no url here: a@b"),
    ],
)
def test_url_user_info_is_masked(text, want):
    assert redact_url(text) == want
    assert redact_text(text) == want


def test_errors_mask_user_info():
    err = dr.StorageError(f"reading https://me:{PASSWORD}@host/ckpt.index failed")
    _assert_clean(_shown(err, pickle.loads(pickle.dumps(err))), "StorageError")
    assert "https://***@host/ckpt.index" in str(err)


def test_storage_repr_and_vars_mask_options():
    s = Storage.for_url("s3://b/x", {"key": KEY, "secret": SECRET, "endpoint_url": f"http://u:{PASSWORD}@h"})
    _assert_clean(_shown(s, vars(s), s.storage_options, pickle.loads(pickle.dumps(s))), "Storage")
    assert s.storage_options["secret"] == SECRET  # the real value is there for the filesystem
    assert s.secrets() >= {KEY, SECRET, PASSWORD}
