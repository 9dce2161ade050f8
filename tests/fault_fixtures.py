"""The ``faulty`` fixture: a real object store (moto for S3, fake-gcs-server for GCS) behind its
own fault proxy (``fault_proxy.py``), parametrized over both. Registered for every test module
by ``conftest.py``."""

from __future__ import annotations

import pytest
from conftest import FIXTURES_DIR
from fault_proxy import FaultProxy

from distrestore.storage import RetryPolicy, Storage

PATIENT = RetryPolicy(attempts=12, initial_backoff=0.01, max_backoff=0.2)


class Faulty:
    """An object store behind its own fault proxy: ``url(fixture)`` uploads (directly, not through
    the proxy) and gives the URL; ``options`` point the client at the proxy."""

    def __init__(self, store, flavor: str, seed: int):
        self.store = store
        self.name = store.name
        self.proxy = FaultProxy(store.endpoint, flavor, seed=seed).start()
        self.options = {**store.storage_options, "endpoint_url": self.proxy.url}

    def url(self, fixture: str) -> str:
        return self.store.upload_fixture(FIXTURES_DIR / fixture)

    def storage(self, retry=PATIENT, **kw) -> Storage:
        return Storage.for_url(self.store.url(), self.options, retry=retry, **kw)


@pytest.fixture(params=["s3", "gcs"])
def faulty(request):
    store = request.getfixturevalue({"s3": "s3_server", "gcs": "gcs_server"}[request.param])
    f = Faulty(store, request.param, seed=7)
    try:
        yield f
    finally:
        f.proxy.stop()
