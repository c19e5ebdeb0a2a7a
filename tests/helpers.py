"""Helpers the test files share: real data found where the library looks for it, Debian packages, W&B run ids,
two-rank gloo groups. Test files import them from here (``from helpers import fashion_mnist_dir``); pytest's
fixtures and hooks stay in ``conftest.py``, which pytest loads itself.

Test files take Fashion-MNIST from :func:`fashion_mnist_dir` and mark the tests that need it with
``needs_fashion_mnist``; a skip says every place that was looked in. The folders are those of
:func:`ssl_siamese.data.fashion_mnist_search_paths` for the recipes' default ``./data`` (where
``scripts/setup.sh`` puts it; then ``$SSL_SIAMESE_FASHION_MNIST`` and Debian's
``/usr/share/datasets/fashion-mnist``), then this project's shared copy ``../shared/data/fashion-mnist``.

Debian packages the tests need (Chromium, adwaita-icon-theme) are installed by :func:`install_debian_packages`
when missing and the tests run as root; otherwise those tests are skipped, saying how to install them.
:func:`skip_summary` is the line that counts skipped tests by what they need, printed by ``conftest.py``.

Example:
    >>> from helpers import fashion_mnist_dir, needs_fashion_mnist  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from ssl_siamese import data
from ssl_siamese.data import idx

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ADWAITA = Path("/usr/share/icons/Adwaita")


def fashion_mnist_candidates() -> list[Path]:
    """Where the tests look for Fashion-MNIST, in order (the library's own search paths first)."""
    return data.fashion_mnist_search_paths(REPO / "data") + [SHARED_DATA / "fashion-mnist"]


def _holds_fashion_mnist(folder: Path) -> bool:
    stems = [stem for pair in idx._IDX_FILES.values() for stem in pair]  # noqa: SLF001 - the four file names
    return all((folder / stem).is_file() or (folder / f"{stem}.gz").is_file() for stem in stems)


def find_fashion_mnist() -> Path | None:
    """The first folder of :func:`fashion_mnist_candidates` that holds the four IDX files (gzipped or not)."""
    return next((folder for folder in fashion_mnist_candidates() if _holds_fashion_mnist(folder)), None)


def fashion_mnist_dir() -> Path:
    """The Fashion-MNIST folder found, or the library's default (absent) when there is none.

    Tests that use it carry ``needs_fashion_mnist``, so they are skipped, saying where it looked.
    """
    return find_fashion_mnist() or fashion_mnist_candidates()[0]


def _looked_in(paths: list[Path]) -> str:
    return ", ".join(dict.fromkeys(str(path) for path in paths))


def fashion_mnist_skip_reason() -> str:
    return f"Fashion-MNIST IDX files not found; looked in: {_looked_in(fashion_mnist_candidates())}"


needs_fashion_mnist = pytest.mark.skipif(find_fashion_mnist() is None, reason=fashion_mnist_skip_reason())


def data_file_candidates(relative: str) -> list[Path]:
    """Where the tests look for a file of the real-data collection: ``./data/<relative>``, then the shared copy."""
    return [REPO / "data" / relative, SHARED_DATA / relative]


def find_data_file(relative: str) -> Path | None:
    """The first of :func:`data_file_candidates` that exists (e.g. ``cifar10-jpg/cifar10-jpg.tar.gz``)."""
    return next((path for path in data_file_candidates(relative) if path.exists()), None)


def needs_data_file(relative: str) -> pytest.MarkDecorator:
    """Skip unless :func:`find_data_file` finds ``relative``, saying where it looked."""
    return pytest.mark.skipif(find_data_file(relative) is None,
                              reason=f"{relative} not found; looked in: {_looked_in(data_file_candidates(relative))}")


@functools.cache
def install_debian_packages(*packages: str) -> None:
    """Install Debian ``packages`` with ``scripts/apt_install.sh`` (it waits for another apt's lock) unless they
    are; skip the calling test, saying how to install them, without apt-get or root; fail with apt's error.

    Example:
        >>> install_debian_packages("chromium", "chromium-driver")  # doctest: +SKIP
    """
    needs = f"needs Debian's {' '.join(packages)}"
    command = f"apt-get install {' '.join(packages)}"
    if shutil.which("apt-get") is None:
        pytest.skip(f"{needs}: this machine has no apt-get to run `{command}`")
    if os.geteuid() != 0:
        pytest.skip(f"{needs}: run `sudo {command}` (the tests install it themselves when run as root)")
    done = subprocess.run([REPO / "scripts" / "apt_install.sh", *packages], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{needs}; `{command}` failed (a Debian mirror is needed):\n{done.stderr}", pytrace=False)


def adwaita_theme() -> Path:
    """Debian's adwaita-icon-theme (real RGBA/LA/palette PNG and SVG icons), installed when missing.

    Example:
        >>> icons = sorted(adwaita_theme().glob("48x48/*/*.png"))  # doctest: +SKIP
    """
    if not ADWAITA.is_dir():
        install_debian_packages("adwaita-icon-theme")
    return ADWAITA


# What skipped tests need, by a pattern of their skip reasons (first match wins); the rest are listed as they are.
SKIP_GROUPS = {
    "Fashion-MNIST (./scripts/setup.sh puts it in ./data)": r"fashion-mnist",
    "../shared/data ({names}; CI has them)": r"imagenette|cifar|coco128|shared/data",
    "Debian's adwaita-icon-theme (the tests install it when run as root)": r"adwaita",
    "Debian's chromium (the tests install it when run as root)": r"chromium",
}
DATA_NAMES = {"imagenette": "Imagenette", "cifar": "CIFAR-10 JPEGs", "coco128": "COCO128"}


def skip_summary(reasons: list[str]) -> str:
    """One line counting skipped tests by what they need, largest group first.

    Example:
        >>> skip_summary(["imagenette-224/imagenette-224.tar not found; looked in: ...", "no GPU"])
        '2 tests skipped: 1 needs ../shared/data (Imagenette; CI has them), 1: no GPU'
    """
    counts = Counter(next((label for label, pattern in SKIP_GROUPS.items() if re.search(pattern, reason, re.I)),
                          reason) for reason in reasons)
    names = [name for key, name in DATA_NAMES.items() if any(key in reason.lower() for reason in reasons)]
    parts = [f"{count} need{'s' * (count == 1)} {what.format(names=', '.join(names) or 'real data')}"
             if what in SKIP_GROUPS else f"{count}: {what}" for what, count in counts.most_common()]
    return f"{len(reasons)} test{'s' * (len(reasons) != 1)} skipped: " + ", ".join(parts)


def offline_wandb_run_ids(out: Path) -> list[str]:
    """The run id of each offline W&B run folder under ``out/wandb``, one entry per folder.

    Read from the ``run-<id>.wandb`` file, not the folder name: two runs started in the same second get
    folders ``offline-run-<time>-<id>`` and ``offline-run-<time>-<id>-1``.
    """
    return sorted(file.stem.removeprefix("run-") for file in out.glob("wandb/offline-run-*/run-*.wandb"))


def recipe_knn(method: str, args: list[str]) -> tuple[float, float, float]:
    """``python -m ssl_siamese.recipes.<method> *args`` run in this process (the module is ``main(Method, method)``;
    a fresh interpreter would cost ~6 s of imports): kNN top-1 at init, after training, and of the raw pixels
    (nan where the recipe did not measure them)."""
    from ssl_siamese.cli.lightning import main
    from ssl_siamese.methods.registry import method_class

    summary = main(method_class(method), method, args)
    history, pixels = summary["knn_history"], summary["knn_pixels"]
    assert history[0].epoch == -1, history
    return history[0].top1, history[-1].top1, pixels.top1 if pixels is not None else float("nan")


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for a gloo process group's ``tcp://`` rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_rank(rank: int, world_size: int, port: int, tasks, replies) -> None:
    """One rank of :class:`GlooRanks`: join the group once, then run each ``(fn, out_dir)`` task until ``None``."""
    import traceback
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    # a rank left waiting in a collective (its peer failed) raises after the timeout instead of hanging
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        while (task := tasks.get()) is not None:
            fn, out_dir = task
            torch.set_default_dtype(torch.float32)  # what an earlier task set does not leak into this one
            torch.set_grad_enabled(True)
            try:
                torch.save(fn(rank, world_size), f"{out_dir}/rank{rank}.pt")
                replies.put((rank, None))
            except BaseException:  # noqa: BLE001 - the traceback goes back to the test that sent the task
                replies.put((rank, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class GlooRanks:
    """``world_size`` processes joined in one gloo group, started once and reused by every test that needs ranks.

    Starting a rank costs a fresh interpreter (torch, ssl_siamese and the test module: seconds each); the suite
    has a dozen two-rank tests, so they share one group. A task that fails, or a rank that dies, ends the group
    (its collectives may be left half done): the next task starts a new one. Use :func:`run_gloo_ranks`.
    """

    def __init__(self, world_size: int) -> None:
        import torch.multiprocessing as mp

        context = mp.get_context("spawn")
        self.world_size = world_size
        self.tasks = [context.Queue() for _ in range(world_size)]
        self.replies = context.Queue()
        port = free_port()
        self.processes = [context.Process(target=_serve_rank, args=(rank, world_size, port, self.tasks[rank],
                                                                    self.replies), daemon=True)
                          for rank in range(world_size)]
        for process in self.processes:
            process.start()

    def run(self, fn, out_dir: Path, timeout_s: float = 600.0) -> list[str]:
        """Send ``fn`` to every rank and wait; the tracebacks of the ranks that failed (empty: all went well)."""
        import queue
        import time

        for rank_tasks in self.tasks:
            rank_tasks.put((fn, str(out_dir)))
        failures, answered, deadline = [], 0, time.monotonic() + timeout_s
        while answered < self.world_size:
            try:
                rank, error = self.replies.get(timeout=1.0)
            except queue.Empty:
                dead = [rank for rank, p in enumerate(self.processes) if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    codes = [p.exitcode for p in self.processes]
                    return failures + [f"ranks {dead} died (exit codes {codes})" if dead
                                       else f"no answer from every rank within {timeout_s:.0f} s"]
                continue
            answered += 1
            if error:
                failures.append(f"rank {rank}:\n{error}")
        return failures

    def close(self) -> None:
        for rank_tasks in self.tasks:
            rank_tasks.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


_GROUPS: dict[int, GlooRanks] = {}


def close_gloo_ranks() -> None:
    """End the shared groups (``conftest.py`` calls this when the session finishes)."""
    while _GROUPS:
        _GROUPS.popitem()[1].close()


def run_gloo_ranks(fn, world_size: int, out_dir: Path) -> list:
    """``fn(rank, world_size)`` on ``world_size`` ranks joined in one gloo group; each rank's return value.

    The ranks are a :class:`GlooRanks` group shared by the whole session: ``fn`` runs with the default process
    group already initialised (``torch.distributed`` collectives work; do not init or destroy a group), one torch
    thread per rank. ``fn`` must be picklable (a module-level function of a test file, or a ``functools.partial`` of
    one); its result goes through ``torch.save`` into ``out_dir``, read after every rank has finished. Never return
    results through a multiprocessing queue: a queued tensor is shared through its sender, so a read after the rank
    exited fails (ConnectionResetError / FileNotFoundError in ``queue.get``).

    Example:
        >>> losses = run_gloo_ranks(functools.partial(step, batch=batch), 2, tmp_path)  # doctest: +SKIP
    """
    import torch

    group = _GROUPS.get(world_size)
    if group is None or not all(p.is_alive() for p in group.processes):
        if group is not None:
            group.close()
        group = _GROUPS[world_size] = GlooRanks(world_size)
    failures = group.run(fn, out_dir)
    if failures:
        _GROUPS.pop(world_size).close()  # a failed task may leave a collective half done
        raise AssertionError("\n".join(failures))
    return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


def average_over_ranks(tensors) -> None:
    """All-reduce each tensor and divide it by the world size, in place: what DDP does to the gradients."""
    import torch.distributed as dist

    for tensor in tensors:
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
