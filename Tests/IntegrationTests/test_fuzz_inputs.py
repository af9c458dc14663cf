"""The fuzzers' seeds and the inputs kept from their findings, replayed through every target by
the normally built `fuzz` binary: a parser that crashes on one of them fails here."""

import os
import subprocess

import pytest

from harness import BUILD_DIR, REPO

FUZZ = os.path.join(REPO, "Tests", "Fuzz")
TARGETS = sorted(os.listdir(os.path.join(FUZZ, "seeds")))


@pytest.mark.parametrize("target", TARGETS)
def test_every_kept_input_parses_or_fails_cleanly(target, database_kind):
    if database_kind != "sqlite":
        pytest.skip("no store involved")
    inputs = [os.path.join(FUZZ, kind, target) for kind in ("seeds", "regressions")
              if os.path.isdir(os.path.join(FUZZ, kind, target))]
    done = subprocess.run([os.path.join(BUILD_DIR, "fuzz"), target, *inputs], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{target}: ") and " inputs replayed" in done.stdout
