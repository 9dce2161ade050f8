"""The error module: every error class lives in ``distrestore/errors.py``, derives from
``DistRestoreError`` and from the stdlib class users catch."""

import ast
import inspect
import pathlib

import pytest

import distrestore as dr
from distrestore import errors

PACKAGE = pathlib.Path(dr.__file__).parent

NOT_YET_MOVED: set[str] = set()

STDLIB = (FileNotFoundError, KeyError, ValueError, OSError, AssertionError)


def error_classes():
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, BaseException)]


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_every_error_is_ours_and_a_stdlib_class(cls):
    assert issubclass(cls, dr.DistRestoreError)
    if cls is not dr.DistRestoreError:
        assert issubclass(cls, STDLIB), cls.__mro__


def test_every_error_is_exported():
    missing = [c.__name__ for c in error_classes() if getattr(dr, c.__name__, None) is not c]
    assert missing in ([], ["ShortReadError"]), missing  # ShortReadError stays inside storage's retries


def test_shape_and_dtype_mismatch_are_siblings():
    assert issubclass(dr.ShapeMismatchError, dr.MismatchError)
    assert issubclass(dr.DTypeMismatchError, dr.MismatchError)
    assert not issubclass(dr.DTypeMismatchError, dr.ShapeMismatchError)
    assert not issubclass(dr.ShapeMismatchError, dr.DTypeMismatchError)
    assert issubclass(dr.MismatchError, ValueError)


def test_short_read_is_a_storage_error():
    assert issubclass(errors.ShortReadError, dr.StorageError)


def _defined_error_classes(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(b) for b in node.bases]
            if any(b.endswith(("Error", "Exception")) for b in bases):
                yield node.name


def test_no_error_class_outside_the_error_module():
    stray = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "errors.py" or rel in NOT_YET_MOVED or rel.split("/")[0] in NOT_YET_MOVED:
            continue
        stray += [f"{rel}: {name}" for name in _defined_error_classes(path)]
    assert stray == []
