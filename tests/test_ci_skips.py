"""CI cannot pass on skipped tests: with TF, Ray or a C extension hidden, parts of this suite run
in a child pytest; they skip without ``DISTRESTORE_CI`` and fail with ``DISTRESTORE_CI=1``
(``tests/conftest.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CI_ALLOWED_SKIPS, ci_allows_skip

ROOT = Path(__file__).resolve().parents[1]

# imported at start-up from PYTHONPATH: makes the modules named in HIDE_MODULES unimportable
SITECUSTOMIZE = """
import os, sys
for name in filter(None, os.environ.get("HIDE_MODULES", "").split(",")):
    sys.modules[name] = None
"""


def _pytest(tmp_path, tests: list[str], hide: list[str], ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ, HIDE_MODULES=",".join(hide))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("DISTRESTORE_CI", None)
    if ci:
        env["DISTRESTORE_CI"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


CASES = {
    # a fixture's importorskip, inside a test
    "tensorflow": (["tests/test_partitioners.py::test_fixed_size_partitioner_matches_tf"], ["tensorflow"]),
    # a module-level importorskip: the whole module at collection
    "ray": (["tests/test_ray_executor.py"], ["ray"]),
    # a C extension: a module-level skipif and an importorskip
    "C extensions": (
        ["tests/test_index_speedups.py", "tests/test_native_mapped_read.py"],
        ["distrestore._native._index_decode", "distrestore._native._mapped_read"],
    ),
    # the object stores: the fixtures' importorskip
    "s3 and gcs": (["tests/test_object_tree.py::test_remote_checkpoint"], ["s3fs", "gcsfs"]),
}


@pytest.mark.parametrize("what", list(CASES))
def test_a_missing_component_skips_locally_and_fails_in_ci(tmp_path, what):
    tests, hide = CASES[what]
    local = _pytest(tmp_path, tests, hide, ci=False)
    # 5: nothing ran (a module skipped at collection)
    assert local.returncode in (0, 5) and "skipped" in local.stdout, local.stdout[-3000:]
    ci = _pytest(tmp_path, tests, hide, ci=True)
    assert ci.returncode != 0, ci.stdout[-3000:]
    assert "DISTRESTORE_CI=1" in ci.stdout, ci.stdout[-3000:]
    assert " skipped" not in ci.stdout.splitlines()[-1], ci.stdout[-3000:]


def test_a_swallowed_skip_fails_in_ci(tmp_path):
    """A test that catches importorskip's skip to do less (as ``_maybe_tf`` does) fails in CI."""
    suite = tmp_path / "suite"
    suite.mkdir()
    # the suite's conftest, loaded under another name (this directory's own is "conftest")
    (suite / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(ROOT / 'tests' / 'conftest.py')!r})\n"
        "suite = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(suite)\n"
        "pytest_runtest_makereport = suite.pytest_runtest_makereport\n"
        "pytest_make_collect_report = suite.pytest_make_collect_report\n"
    )
    (suite / "test_swallow.py").write_text(
        "import pytest\n\n"
        "def test_it():\n"
        "    try:\n"
        "        pytest.importorskip('tensorflow')\n"
        "    except pytest.skip.Exception:\n"
        "        pass\n"
    )
    target = [str(suite / "test_swallow.py"), "--rootdir", str(suite)]
    assert _pytest(tmp_path, target, ["tensorflow"], ci=False).returncode == 0
    ci = _pytest(tmp_path, target, ["tensorflow"], ci=True)
    assert ci.returncode != 0 and "tensorflow is needed and missing" in ci.stdout, ci.stdout[-3000:]


def test_the_allowlist_is_explicit():
    assert all(len(entry) == 3 and entry[2] for entry in CI_ALLOWED_SKIPS)  # each with its reason
    assert ci_allows_skip(
        "tests/test_storage.py::test_storage_works_in_another_process[memory]", "memory:// lives in this process only"
    )
    assert not ci_allows_skip("tests/test_storage.py::test_storage_works_in_another_process[s3]", "s3fs is missing")
    assert not ci_allows_skip("tests/test_native_mapped_read.py::test_x", "C accelerator not built")
