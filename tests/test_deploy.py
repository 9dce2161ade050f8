"""Offline validation of ``deploy/``: the KubeRay manifests against KubeRay's CRD schemas, the
cluster launcher configs against Ray's launcher schema, and the RayJob entrypoint against the CLI.

The CRDs are vendored in ``deploy/schemas/kuberay/`` (source and license in its README). Each
validator is shown to reject a broken copy, so a validator that accepts everything cannot pass
these tests. Not checked offline: the CRDs' CEL rules
(``x-kubernetes-validations``), admission webhooks, that images exist, cloud permissions.
"""

from __future__ import annotations

import copy
import json
import shlex
from functools import cache
from pathlib import Path

import numpy as np
import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
LAUNCHER = DEPLOY / "cluster-launcher"
CRD_DIR = DEPLOY / "schemas" / "kuberay"

RAY_VERSION = "2.60.0"
RAY_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311"

# manifest -> (CRD file, kind)
MANIFESTS = {
    "rayjob.yaml": ("ray.io_rayjobs.yaml", "RayJob"),
    "rayjob-service.yaml": ("ray.io_rayjobs.yaml", "RayJob"),
    "raycluster.yaml": ("ray.io_rayclusters.yaml", "RayCluster"),
}

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1-2 MB of YAML


def _load(path: Path):
    with open(path) as f:
        return yaml.load(f, Loader=_Loader)


# -- the CRD schemas ----------------------------------------------------------------------------


def _strict(node: dict) -> dict:
    """A structural OpenAPI v3 schema made checkable by jsonschema, the way the API server reads it:
    ``x-kubernetes-*`` keys dropped, ``int-or-string`` spelled as ``anyOf``, and unknown fields
    rejected (``additionalProperties: false`` on objects with ``properties``, unless they preserve
    unknown fields): the API server would prune a misspelled field silently, here it fails.
    Recurses through schema positions only, so a field *named* ``properties`` is left alone."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [_strict(s) for s in out[key]]
    if isinstance(out.get("not"), dict):
        out["not"] = _strict(out["not"])
    return out


@cache
def _crd(crd_file: str) -> tuple[str, dict]:
    """(kind, strict v1 schema) of a KubeRay CRD."""
    crd = _load(CRD_DIR / crd_file)  # in the repository: a missing file fails, never skips
    versions = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert len(versions) == 1, f"{crd_file}: no single v1 version"
    schema = _strict(versions[0]["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return crd["spec"]["names"]["kind"], schema


def _errors(doc: dict, crd_file: str) -> list[str]:
    _, schema = _crd(crd_file)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]


@pytest.fixture(params=sorted(MANIFESTS))
def manifest(request):
    name = request.param
    return name, _load(KUBERAY / name), MANIFESTS[name][0]


def test_manifest_is_valid_against_kuberay_crd(manifest):
    name, doc, crd_file = manifest
    kind, _ = _crd(crd_file)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == kind
    assert doc["metadata"]["name"]
    errors = _errors(doc, crd_file)
    assert not errors, f"{name} does not match the {kind} CRD:\n" + "\n".join(errors)


def _cluster_spec(name: str, doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if name.startswith("rayjob") else doc["spec"]


# Each breakage must be caught, at the path named: the validator is not vacuous.
def _drop_head(spec):
    del spec["headGroupSpec"]


def _replicas_as_word(spec):
    spec["workerGroupSpecs"][0]["replicas"] = "four"


def _num_cpus_as_int(spec):
    spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # rayStartParams values are strings


def _misspelled_field(spec):
    spec["workerGroupSpecs"][0]["maxReplica"] = 4


def _no_group_name(spec):
    del spec["workerGroupSpecs"][0]["groupName"]


def _bad_shm_medium_type(spec):
    spec["headGroupSpec"]["template"]["spec"]["volumes"][0]["emptyDir"]["medium"] = ["Memory"]


def _cpu_as_list(spec):
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = [2]


BREAKAGES = {
    "cpu quantity a list": (_cpu_as_list, "cpu"),
    "no headGroupSpec": (_drop_head, "headGroupSpec"),
    "replicas not an integer": (_replicas_as_word, "replicas"),
    "num-cpus not a string": (_num_cpus_as_int, "num-cpus"),
    "misspelled field": (_misspelled_field, "maxReplica"),
    "no groupName": (_no_group_name, "groupName"),
    "emptyDir.medium not a string": (_bad_shm_medium_type, "medium"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_manifest_fails_validation(manifest, breakage):
    name, doc, crd_file = manifest
    broken = copy.deepcopy(doc)
    spec = _cluster_spec(name, broken)
    mutate, needle = BREAKAGES[breakage]
    mutate(spec)
    errors = _errors(broken, crd_file)
    assert errors, f"{name} with {breakage} passed validation: the validator catches nothing"
    assert any(needle in e for e in errors), errors


def test_int_or_string_quantities_accept_both(manifest):
    name, doc, crd_file = manifest
    for value in (2, "2", "1500m"):
        d = copy.deepcopy(doc)
        _cluster_spec(name, d)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = (
            value
        )
        assert not _errors(d, crd_file), value


def test_broken_rayjob_top_level_fails_validation():
    doc = _load(KUBERAY / "rayjob.yaml")
    for key, bad in [
        ("shutdownAfterJobFinishes", "yes"),
        ("activeDeadlineSeconds", "1h"),
        ("entrypoint", ["python", "-m", "distrestore"]),
        ("shutdownAfterJobsFinish", True),
    ]:
        broken = copy.deepcopy(doc)
        broken["spec"][key] = bad
        errors = _errors(broken, "ray.io_rayjobs.yaml")
        assert any(key in e for e in errors), (key, errors)


# -- conventions (deploy/README.md) -----------------------------------------------------------


def _pod_specs(name: str, doc: dict):
    spec = _cluster_spec(name, doc)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def test_manifest_conventions(manifest):
    name, doc, _ = manifest
    spec = _cluster_spec(name, doc)
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["workerGroupSpecs"], "no worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    for role, pod in _pod_specs(name, doc):
        assert pod.get("serviceAccountName"), f"{role}: no serviceAccountName (cloud credentials)"
        shm = [v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert shm, f"{role}: no Memory emptyDir"
        for c in pod["containers"]:
            assert c["image"].endswith(f":0.1.0-ray{RAY_VERSION}-py311"), (role, c["image"])
            assert {"mountPath": "/dev/shm", "name": shm[0]} in c["volumeMounts"], role
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("RAY_USAGE_STATS_ENABLED") == "0", role
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (role, kind)


@pytest.mark.parametrize("name", ["rayjob.yaml", "rayjob-service.yaml"])
def test_rayjob_lifecycle(name):
    spec = _load(KUBERAY / name)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["submissionMode"] == "K8sJobMode"
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)


def test_dockerfile_matches_ray_version():
    lines = (KUBERAY / "Dockerfile").read_text().splitlines()
    assert f"FROM {RAY_IMAGE}" in lines
    text = "\n".join(lines)
    assert 'pip install --no-cache-dir ".[s3,gcs]"' in text


# -- the RayJob entrypoint against the CLI ------------------------------------------------------


def test_rayjob_entrypoint_parses_with_cli():
    from distrestore import cli

    entrypoint = _load(KUBERAY / "rayjob.yaml")["spec"]["entrypoint"]
    argv = shlex.split(entrypoint)
    assert argv[:4] == ["python", "-m", "distrestore", "restore"], argv
    args = cli.parse_args(argv[3:])  # the real parser, nothing run
    assert args.command == "restore" and args.executor == "ray"
    assert args.checkpoint.startswith(("s3://", "gs://")), args.checkpoint
    if args.storage_options is not None:
        assert isinstance(args.storage_options, dict)


def test_bad_entrypoint_is_rejected_by_cli(capsys):
    from distrestore import cli

    with pytest.raises(SystemExit) as e:
        cli.parse_args(["restore", "s3://b/ckpt", "--executor", "dask"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["restore", "s3://b/ckpt", "--executor", "ray", "--workers", "4"])
    assert e.value.code == 2


def test_cli_restore_with_ray_executor_connects_to_ray(tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    from distrestore import cli
    from distrestore.writer import save_tensors

    prefix = save_tensors(str(tmp_path / "model.ckpt"), {"a": np.arange(4, dtype=np.float32)})

    class InitCalled(Exception):
        pass

    def fake_init(*args, **kwargs):
        raise InitCalled(args, kwargs)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # what a Ray job's driver sees
    assert cli.main(["restore", prefix, "--executor", "ray"]) == 1  # the CLI reports what ray.init raised
    assert "InitCalled" in capsys.readouterr().err


def test_service_rayjob_runs_the_example_with_one_worker_per_pod():
    """The service RayJob's entrypoint is the example baked into the image, and it parses."""
    import importlib.util

    doc = _load(KUBERAY / "rayjob-service.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["python", "/home/ray/examples/partitioned_init.py"], argv
    assert "COPY --chown=ray:users examples /home/ray/examples" in (KUBERAY / "Dockerfile").read_text()
    spec = importlib.util.spec_from_file_location("partitioned_init", ROOT / "examples" / "partitioned_init.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = example.parser().parse_args(argv[2:])
    assert args.checkpoint.startswith(("s3://", "gs://")), args.checkpoint
    assert isinstance(json.loads(args.storage_options), dict)
    groups = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert args.workers == sum(g["replicas"] for g in groups)
    with pytest.raises(SystemExit):
        example.parser().parse_args(["s3://b/ckpt", "--workers", "four"])


# -- the cluster launcher configs ---------------------------------------------------------------

LAUNCHER_CONFIGS = sorted(p.name for p in LAUNCHER.glob("*.yaml"))


def _ray_schema() -> dict:
    ray = pytest.importorskip("ray")
    with open(Path(ray.__file__).parent / "autoscaler" / "ray-schema.json") as f:
        return json.load(f)


@pytest.mark.parametrize("config", LAUNCHER_CONFIGS)
def test_launcher_config_is_valid(config):
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load(LAUNCHER / config)
    jsonschema.validate(cfg, _ray_schema())  # as written (prepare_config drops some keys)
    validate_config(prepare_config(copy.deepcopy(cfg)))  # as `ray up` sees it (offline: defaults only)


@pytest.mark.parametrize("config", LAUNCHER_CONFIGS)
def test_launcher_conventions(config):
    cfg = _load(LAUNCHER / config)
    assert "min_workers" not in cfg
    assert cfg["provider"]["type"] in ("aws", "gcp") and cfg["provider"]["region"]
    assert cfg["docker"]["image"] == RAY_IMAGE
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"].get("CPU") == 0
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert workers and all(0 < t["min_workers"] <= t["max_workers"] <= cfg["max_workers"] for t in workers)
    assert sum(t["min_workers"] for t in workers) <= cfg["max_workers"]
    assert any("distrestore" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("config", LAUNCHER_CONFIGS)
def test_broken_launcher_config_is_rejected(config):
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = _ray_schema()
    cfg = _load(LAUNCHER / config)

    broken = dict(cfg, min_workers=1)  # the current schema has no top-level min_workers
    with pytest.raises(jsonschema.ValidationError, match="min_workers"):
        jsonschema.validate(broken, schema)

    broken = copy.deepcopy(cfg)
    del broken["available_node_types"][cfg["head_node_type"]]["resources"]
    with pytest.raises(jsonschema.ValidationError, match="resources"):
        validate_config(prepare_config(broken))

    broken = dict(copy.deepcopy(cfg), head_node_type="no-such-type")
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))
