"""Every code block of README.md runs, so the README cannot drift from the code.

The blocks run as written, each in a fresh process, in a prepared world that gives the paths and
buckets they name real checkpoints (TF-written fixtures):

* ``ckpts/run7`` is ``tests/fixtures/tf/tf1_sharded`` (TF1 ``Saver``, partitioned variables),
  ``ckpts/tf2`` is ``tf1_adam`` (``tf.train.Checkpoint`` with optimizer slots), ``ckpts/keras``
  is ``tf2_keras``;
* ``s3://bucket/run7`` and ``gs://bucket/run7`` hold ``tf1_sharded`` too, in the suite's moto
  server and fake-gcs-server. The AWS profile ``ml`` the README passes is an AWS config file of
  the test's that names moto's endpoint; gcsfs finds fake-gcs-server through
  ``STORAGE_EMULATOR_HOST``;
* ``python`` is this interpreter; ``ray.init()`` starts a small local Ray for the block
  (``RAY_ADDRESS=local``: a plain ``ray.init()`` would join any cluster running on the machine).

Python blocks run with ``python``, bash blocks with ``bash -euo pipefail``; any other fenced block
fails the test. The only block not run here is the install block under "Two commands from a fresh
machine": ``.ci/run`` runs exactly those two commands in a fresh venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INSTALL_SECTION = "Two commands from a fresh machine"
FIXTURES = {"run7": "tf1_sharded", "tf2": "tf1_adam", "keras": "tf2_keras"}
BUCKET = "bucket"


class Block(NamedTuple):
    lang: str
    code: str
    line: int  # of the opening fence
    section: str


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block, with the heading it sits under."""
    blocks, section = [], ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        m = re.match(r"^```(\S*)\s*$", line)
        if m:
            start = i
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise AssertionError(f"README.md:{start + 1}: unclosed code block")
            blocks.append(Block(m.group(1), "\n".join(body) + "\n", start + 1, section))
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUN = [b for b in BLOCKS if b.section != INSTALL_SECTION]


def _id(block: Block) -> str:
    return f"L{block.line}-{re.sub(r'[^a-z0-9]+', '-', block.section.lower()).strip('-')}"


def test_blocks_are_python_or_bash():
    assert RUN, "no code blocks found in README.md"
    bad = [f"README.md:{b.line} ```{b.lang}" for b in BLOCKS if b.lang not in ("python", "bash")]
    assert not bad, f"every README block must be runnable python or bash: {bad}"


def test_only_the_install_block_is_left_to_ci():
    install = [b for b in BLOCKS if b.section == INSTALL_SECTION]
    assert len(install) == 1 and install[0].lang == "bash"
    commands = [c.split("  #", 1)[0].strip() for c in install[0].code.splitlines()]
    commands = [c for c in commands if c]
    assert len(commands) == 2 and all("pip install -c constraints.txt" in c for c in commands), commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert INSTALL_SECTION in ci  # .ci/run takes its two commands from that same section


# -- the world the blocks run in ------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, fixtures_dir, s3_server, gcs_server):
    base = tmp_path_factory.mktemp("readme_world")
    for name, fixture in FIXTURES.items():
        shutil.copytree(fixtures_dir / fixture, base / "ckpts" / name)
    for store in (s3_server, gcs_server):
        if not store.fs.exists(BUCKET):
            store.fs.mkdir(BUCKET)
        store.fs.invalidate_cache()
        for path in sorted((fixtures_dir / "tf1_sharded").iterdir()):
            store.fs.pipe_file(f"{BUCKET}/run7/{path.name}", path.read_bytes())
        store.fs.invalidate_cache()
    (base / "aws_config").write_text(
        "[profile ml]\n"
        "aws_access_key_id = testing\n"
        "aws_secret_access_key = testing\n"
        "region = us-east-1\n"
        f"endpoint_url = {s3_server.endpoint}\n"
    )
    (base / "aws_credentials").write_text("")
    (base / "bin").mkdir()
    shim = base / "bin" / "python"  # a script, not a link: a link would leave the venv behind
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "DISTRESTORE_CI"))}
    env.update(
        AWS_CONFIG_FILE=str(base / "aws_config"),
        AWS_SHARED_CREDENTIALS_FILE=str(base / "aws_credentials"),
        AWS_DEFAULT_REGION="us-east-1",
        STORAGE_EMULATOR_HOST=gcs_server.endpoint,
        PATH=os.pathsep.join([str(base / "bin"), env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        # the block's own ray.init(): a new local Ray (never a cluster some `ray start` left on
        # this machine, which ray.init() would join), with a small object store
        RAY_ADDRESS="local",
        RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION="0.01",
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    yield base, env
    for store in (s3_server, gcs_server):
        try:
            store.fs.rm(f"{BUCKET}/run7", recursive=True)
        except FileNotFoundError:
            pass


@pytest.mark.parametrize("block", RUN, ids=_id)
def test_readme_block_runs(block, world, tmp_path):
    base, env = world
    os.symlink(base / "ckpts", tmp_path / "ckpts")
    if block.lang == "python":
        script = tmp_path / f"readme_{block.line}.py"
        script.write_text(block.code)
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (
        f"README.md:{block.line} ({block.section}) failed with exit code {run.returncode}\n"
        f"--- stdout ---\n{run.stdout[-3000:]}\n--- stderr ---\n{run.stderr[-5000:]}"
    )


def test_block_parsing():
    text = "# A\n```python\nx = 1\n```\n## B\ntext\n```bash\necho hi\n```\n"
    assert readme_blocks(text) == [Block("python", "x = 1\n", 2, "A"), Block("bash", "echo hi\n", 7, "B")]
    with pytest.raises(AssertionError, match="unclosed"):
        readme_blocks("```python\nx = 1\n")
