"""scripts/fashion_mnist.sh (run by setup.sh) and scripts/apt_install.sh against a fake ``apt-get`` first on the
PATH: it waits for a held dpkg lock, retries ``apt-get update`` while the lists' lock is held, shows apt's own
error when it still fails, and the library's "Fashion-MNIST not found" error says what setup tried. Then the
test suite's own setup in conftest: Debian packages installed through the same script, and the line that
counts skipped tests by what they need."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

import helpers
from helpers import REPO, fashion_mnist_skip_reason, install_debian_packages, needs_data_file, skip_summary
from ssl_siamese.data import DataNotFoundError, idx

DPKG_LOCKED = "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (unattended-upgr)"
LISTS_LOCKED = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)"
INSTALL = "-o DPkg::Lock::Timeout=7 install -y -q dataset-fashion-mnist"
UPDATE = "-o DPkg::Lock::Timeout=7 update -q"


def fake_apt(tmp_path: Path, outcomes: list[str], uid: int = 0) -> dict[str, str]:
    """A PATH whose ``apt-get`` records its arguments and answers with ``outcomes`` in turn ("ok" installs the
    package's files into the fake system folder; anything else is printed on stderr, exit status 100) and whose
    ``id -u`` says ``uid``; the environment to run the scripts with."""
    bin_dir, system = tmp_path / "bin", tmp_path / "usr-share-datasets-fashion-mnist"
    bin_dir.mkdir()
    (tmp_path / "outcomes").write_text("\n".join(outcomes) + "\n")
    (bin_dir / "apt-get").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >>{tmp_path}/calls
        outcome=$(head -n 1 {tmp_path}/outcomes); sed -i 1d {tmp_path}/outcomes
        if [ "$outcome" = ok ]; then
          case "$*" in *install*) mkdir -p {system} && for f in train-images-idx3 train-labels-idx1 \\
            t10k-images-idx3 t10k-labels-idx1; do echo x >{system}/$f-ubyte.gz; done;; esac
          echo "Reading package lists..."; exit 0
        fi
        echo "Reading package lists..."; echo "$outcome" >&2; exit 100
        """))
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "APT_LOCK_TIMEOUT": "7",
            "APT_RETRY_SECONDS": "0", "FASHION_MNIST_SOURCES": f"{tmp_path / 'no-copy'} {system}"}


def run_setup_data(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir()
    return subprocess.run([REPO / "scripts" / "fashion_mnist.sh"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=60)


def apt_calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


def test_a_held_lock_is_waited_for_then_update_retried_and_the_data_copied(tmp_path):
    env = fake_apt(tmp_path, [DPKG_LOCKED, LISTS_LOCKED, "ok", "ok"])
    done = run_setup_data(tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert apt_calls(tmp_path) == [INSTALL, UPDATE, UPDATE, INSTALL]
    assert "another apt holds the package lists' lock" in done.stderr
    assert len(list((tmp_path / "work" / "data" / "fashion-mnist").glob("*-ubyte.gz"))) == 4
    assert not (tmp_path / "work" / "data" / idx.SETUP_NOTE).exists()


def test_when_apt_still_fails_its_error_is_shown_and_quoted_by_the_not_found_error(tmp_path, monkeypatch):
    env = {**fake_apt(tmp_path, [DPKG_LOCKED] * 3), "APT_LOCK_TIMEOUT": "0"}
    done = run_setup_data(tmp_path, env)
    assert done.returncode == 0, "setup goes on: the library can still download the data"
    assert apt_calls(tmp_path) == [INSTALL.replace("=7", "=0"), UPDATE.replace("=7", "=0")]
    assert f"    {DPKG_LOCKED}" in done.stderr, "apt's own error, indented under the failure"
    data_dir = tmp_path / "work" / "data"
    monkeypatch.setattr(idx, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    monkeypatch.delenv(idx.FASHION_MNIST_ENV, raising=False)
    with pytest.raises(DataNotFoundError) as error:
        idx.load_fashion_mnist("test", data_dir, download=False)
    message = str(error.value)
    assert "scripts/setup.sh found no copy in:" in message
    assert f"`apt-get install dataset-fashion-mnist` failed: {DPKG_LOCKED}" in message
    assert "data/fashion-mnist-apt.log" in message


def test_without_root_apt_is_not_run_and_the_note_says_so(tmp_path):
    done = run_setup_data(tmp_path, fake_apt(tmp_path, [], uid=1000))
    assert done.returncode == 0
    assert not (tmp_path / "calls").exists()
    assert "not root" in (tmp_path / "work" / "data" / idx.SETUP_NOTE).read_text()
    assert "not root" in done.stderr


def test_debian_packages_for_the_tests_go_through_apt_install_as_root_and_are_skipped_otherwise(tmp_path,
                                                                                                 monkeypatch):
    env = fake_apt(tmp_path, ["ok", DPKG_LOCKED, DPKG_LOCKED])
    for name in ("PATH", "APT_LOCK_TIMEOUT", "APT_RETRY_SECONDS"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("APT_LOCK_TIMEOUT", "0")
    install = install_debian_packages.__wrapped__  # not the cached answer of an earlier call
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    install("adwaita-icon-theme")
    with pytest.raises(pytest.fail.Exception, match="Could not get lock /var/lib/dpkg/lock-frontend"):
        install("adwaita-icon-theme")
    assert apt_calls(tmp_path) == ["-o DPkg::Lock::Timeout=0 install -y -q adwaita-icon-theme",
                                   "-o DPkg::Lock::Timeout=0 install -y -q adwaita-icon-theme",
                                   "-o DPkg::Lock::Timeout=0 update -q"]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="sudo apt-get install adwaita-icon-theme"):
        install("adwaita-icon-theme")


def test_skipped_tests_are_counted_by_what_they_need(monkeypatch):
    monkeypatch.setattr(helpers, "ADWAITA", Path("/no/such/icons"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception) as skipped:
        helpers.adwaita_theme()
    reasons = [needs_data_file("imagenette-224/imagenette-224.tar").kwargs["reason"],
               needs_data_file("cifar10-jpg/cifar10-jpg.tar.gz").kwargs["reason"],
               needs_data_file("imagenette-224/imagenette-224.tar").kwargs["reason"],
               fashion_mnist_skip_reason(), str(skipped.value), 'needs a local S3 server: pip install "moto[server]"']
    assert skip_summary(reasons) == (
        "6 tests skipped: 3 need ../shared/data (Imagenette, CIFAR-10 JPEGs; CI has them), "
        "1 needs Fashion-MNIST (./scripts/setup.sh puts it in ./data), "
        "1 needs Debian's adwaita-icon-theme (the tests install it when run as root), "
        '1: needs a local S3 server: pip install "moto[server]"')
