"""distrestore's benchmarks: every contender side by side, bit-exact, ratios against the targets
(``docs/benchmarks.md``; how to run them: ``README.md`` here). Importing this package changes
nothing in the environment; ``python -m benchmarks`` runs them.

- ``workloads``: sizes, building each checkpoint, the files a contender checks against;
- ``contenders``: what runs in each fresh child process (``local``, ``tf``, ``remote``);
- ``child``: the child's entry point; ``harness``: children, groups, calibration, targets;
- ``groups``: one module per workload, the groups it runs and the targets it judges;
- ``servers``: the object stores (fake-gcs-server, ``rclone serve s3``); ``latency_proxy``:
  the proxy in front of them; ``service_env``: the Ray cluster of the service workload;
- ``report``: ``RESULTS.md``; ``cli``: ``python -m benchmarks``;
- ``native_checksum``: a micro-benchmark of the C checksum kernels (docs/native.md).
"""
