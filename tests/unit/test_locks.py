"""Parallel jobs preparing one dataset: one generates, the others wait and reuse its tree.

A 3-seed sweep under the joblib launcher lost jobs when two of them generated the same Fashion-MNIST class
at once: the second one's replace removed the tree the first was reading. These tests start two threads at
a barrier (flock locks conflict between separate opens, threads included) with a generator slowed down so
that both check before either finishes; without the lock both generate and the counts below fail.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from anomaly_attn.common.locks import exclusive
from anomaly_attn.data import fmnist as fmnist_module
from anomaly_attn.data import textures as textures_module
from tests.unit.test_fmnist import PER_CLASS, _write_fixture
from tests.unit.test_textures import SMALL


def test_a_held_lock_blocks_another_open_until_released(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / ".x.lock"
    acquired = threading.Event()

    def other() -> None:
        with exclusive(lock, "testing"):
            acquired.set()

    with exclusive(lock, "testing"):
        thread = threading.Thread(target=other)
        thread.start()
        assert not acquired.wait(0.3)  # the other open waits
    assert acquired.wait(5.0)  # and gets it once released
    thread.join()


def _race(prepare, count_calls, monkeypatch, owner, name: str) -> list:
    """Run ``prepare`` in two threads at once; ``owner.name`` (the generator) sleeps before working."""
    original = getattr(owner, name)
    calls = []

    def slow(*args, **kwargs):
        calls.append(1)
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, slow)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def job() -> None:
        barrier.wait()
        try:
            results.append(prepare())
        except Exception as error:  # noqa: BLE001 - collected and asserted on below
            errors.append(error)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    count_calls.extend(calls)
    return results


def test_two_jobs_generate_a_fashion_mnist_class_once(tmp_path: Path, monkeypatch) -> None:
    _write_fixture(tmp_path / "idx")
    calls: list = []
    layouts = _race(
        lambda: fmnist_module.FashionMNIST(root=tmp_path / "idx", cache_dir=tmp_path / "cache").prepare(3),
        calls, monkeypatch, fmnist_module.FashionMNIST, "_generate",
    )
    assert len(calls) == 1  # the waiting job found the tree current
    for layout in layouts:
        assert len(list((layout.root / "train" / "good").glob("*.png"))) == PER_CLASS


@pytest.mark.parametrize("category", ["gravel"])
def test_two_jobs_generate_a_texture_once(tmp_path: Path, monkeypatch, category: str) -> None:
    calls: list = []
    layouts = _race(
        lambda: textures_module.Textures(root=tmp_path, **SMALL).prepare(category),
        calls, monkeypatch, textures_module, "generate_category",
    )
    assert len(calls) == 1
    assert layouts[0].root == layouts[1].root and (layouts[0].root / "train" / "good").is_dir()
