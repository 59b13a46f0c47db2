"""What keeps a cold `stripread read` small (issue 20): imports only where used, the version without
a metadata scan, and the caches (the pad models' optimised graph, the card's drawn name) that are
exact, replaced when damaged and never required. The figures themselves are bench/footprint.py's."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from calibration import card_art, illumination
from calibration.errors import ReadError
from calibration.quantiles import median, percentile
from device.cli import commands as cli
from device.reading.reader import software_version
from models.onnx_model import OnnxPadModel, default_model_path, optimise_apart
from simulator import scene

ROOT = Path(__file__).resolve().parents[1]
# loaded by a cold read for nothing: OpenSSL (hashlib), SQLite without a store, the signing key's
# cryptography, the store, a scan of every installed distribution's metadata, numpy's masked arrays
NOT_ON_A_COLD_READ = ("hashlib", "_hashlib", "sqlite3", "cryptography", "device.store.results", "device.store.signing",
                      "importlib.metadata", "numpy.ma")


@pytest.fixture
def private_cache(tmp_path) -> Path:
    """This test's cache folder (conftest points STRIPREAD_CACHE at it)."""
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    data, _ = scene.photograph(scene.random_scene(rng, product="generic-10"), rng)
    path = tmp_path_factory.mktemp("photo") / "strip.jpg"
    path.write_bytes(data)
    return path


def test_a_cold_read_imports_the_model_runtime_and_nothing_it_does_not_use(photo, tmp_path):
    env = dict(os.environ, STRIPREAD_DATA=str(tmp_path / "data"))
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "device.cli.commands", "read", str(photo), "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert '"status": "ok"' in run.stdout
    imported = {ln.rpartition("|")[2].strip() for ln in run.stderr.splitlines() if ln.startswith("import time:")}
    assert {"cv2", "onnxruntime", "device.reading.reader"} <= imported          # the photo was read with the model
    assert sorted(m for m in imported if m in NOT_ON_A_COLD_READ or m.startswith("cryptography.")) == []


def test_software_version_is_the_installed_distributions():
    assert software_version() == metadata.version("stripread")


def test_a_damaged_results_database_is_still_named_without_sqlite3_imported_up_front(tmp_path, capsys):
    damaged = tmp_path / "results.db"
    damaged.write_bytes(b"this is not a SQLite database" * 200)
    assert cli.main(["history", "--db", str(damaged)]) == cli.EXIT_REFUSED
    assert f"the results database {damaged} cannot be used" in capsys.readouterr().err


def _saved_graphs(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.ort"))


def _feeds(model: OnnxPadModel) -> dict:
    rng = np.random.default_rng(0)
    return {i.name: rng.normal(0, 20, (500, i.shape[1])).astype(np.float32) for i in model.session.get_inputs()}


@pytest.fixture
def sessions_opened(monkeypatch) -> list:
    """What each new onnxruntime session was opened from (a path, or the model file's bytes)."""
    opened, session = [], ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda model, *a, **k: opened.append(model) or session(model, *a, **k))
    return opened


def test_the_optimised_graph_is_saved_once_then_loaded_and_computes_the_same(product, private_cache, monkeypatch,
                                                                             sessions_opened):
    first = OnnxPadModel(product)
    [saved] = _saved_graphs(private_cache)
    assert sessions_opened == [default_model_path(product).read_bytes()]
    again = OnnxPadModel(product)
    assert sessions_opened[1:] == [str(saved)]        # one session, from the saved graph
    monkeypatch.setenv("STRIPREAD_CACHE", "/dev/null/no-cache")
    plain = OnnxPadModel(product)                     # no cache folder: optimised in memory
    assert sessions_opened[2:] == [default_model_path(product).read_bytes()]
    feeds = _feeds(first)
    want = plain.session.run(None, feeds)
    for model in (first, again):
        assert all(np.array_equal(a, b) for a, b in zip(want, model.session.run(None, feeds)))
    assert first.version == again.version == plain.version


@pytest.mark.parametrize("damage", ["garbage", "another model's graph"])
def test_a_damaged_or_foreign_saved_graph_is_replaced_by_the_files_own(product, acr_product, private_cache, damage,
                                                                       sessions_opened):
    OnnxPadModel(product)
    [saved] = _saved_graphs(private_cache)
    if damage == "garbage":
        saved.write_bytes(b"\0" * 4096)
    else:
        OnnxPadModel(acr_product)
        other = next(p for p in _saved_graphs(private_cache) if p != saved)
        saved.write_bytes(other.read_bytes())
    damaged = saved.read_bytes()
    model = OnnxPadModel(product)
    assert model.product is product and model.version.startswith("pads/")
    assert saved.read_bytes() != damaged and not list(private_cache.glob("*.tmp"))
    del sessions_opened[:]
    OnnxPadModel(product)
    assert sessions_opened == [str(saved)]            # the replacement is this model's graph


def test_a_model_refused_on_its_checks_leaves_no_saved_graph(product, acr_product, private_cache):
    with pytest.raises(ReadError) as err:
        OnnxPadModel(acr_product, default_model_path(product))
    assert err.value.code == "model_error"
    assert _saved_graphs(private_cache) == [] and not list(private_cache.glob("*.tmp"))


def test_the_cards_drawn_name_comes_from_the_cache_unchanged(card, private_cache, monkeypatch):
    drawn = card_art.label_map(card, 2.0)
    [entry] = private_cache.glob("card-text-*.npy")
    draw = card_art._text_ink
    monkeypatch.setattr(card_art, "_text_ink", lambda *a: pytest.fail("drawn again despite the cache"))
    assert np.array_equal(card_art.label_map(card, 2.0), drawn)
    monkeypatch.setattr(card_art, "_text_ink", draw)
    entry.write_bytes(b"not an array")                # damaged: drawn again and replaced
    assert np.array_equal(card_art.label_map(card, 2.0), drawn)
    assert np.load(entry).shape == drawn.shape
    monkeypatch.setenv("STRIPREAD_CACHE", "/dev/null/no-cache")    # no cache folder: drawn each time
    assert np.array_equal(card_art.label_map(card, 2.0), drawn)
    big = card_art.label_map(card, 600 / 25.4)        # print size: drawn, never cached
    assert (big == card_art.INK).any() and len(list(private_cache.glob("card-text-*.npy"))) == 1


def test_white_points_do_not_depend_on_the_cache(card, monkeypatch):
    cold = illumination._white_points.__wrapped__(card)
    warm = illumination._white_points.__wrapped__(card)
    monkeypatch.setenv("STRIPREAD_CACHE", "/dev/null/no-cache")
    assert np.array_equal(cold, warm) and np.array_equal(cold, illumination._white_points.__wrapped__(card))


def test_median_and_percentile_are_numpys_to_the_last_bit():
    rng = np.random.default_rng(3)
    for i in range(600):
        shape = [(int(rng.integers(1, 40)),), (int(rng.integers(1, 30)), 3), (4, int(rng.integers(1, 9)), 3)][i % 3]
        values = rng.normal(0, 1, shape).astype([np.float64, np.float32][i % 2])
        if i % 4 == 0:
            values = np.round(values, 1)                           # ties
        if i % 7 == 0:
            values.flat[int(rng.integers(0, values.size))] = np.nan
        for axis in (None, *range(values.ndim)):
            want, got = np.median(values, axis=axis), median(values, axis=axis)
            assert np.asarray(got).dtype == np.asarray(want).dtype
            assert np.array_equal(want, got, equal_nan=True), (values, axis)
        pixels = rng.integers(0, 256, shape).astype(np.uint8)
        for q in (1, 50, 99):
            assert percentile(pixels, q) == np.percentile(pixels, q)


CHURN = """
import sys, threading
from device.runtime.service import bound_heap
def rss_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "bounded":
    bound_heap()
together = threading.Barrier(6)
def churn():                       # a worker thread handling photos: 30 MB of 300 kB blocks, freed
    frame = bytearray(4_000_000)   # a frame-sized block freed first: glibc then raises its mmap threshold,
    del frame                      # so the photo-sized blocks come from the threads' arenas, as in the service
    for _ in range(5):
        together.wait()            # all six at work at once, each in an arena of its own
        blocks = [bytearray(300_000) for _ in range(100)]
        together.wait()
        del blocks
before = rss_mib()
workers = [threading.Thread(target=churn) for _ in range(6)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print(rss_mib() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_service_hands_freed_photo_memory_back_from_every_thread():
    kept = {mode: float(subprocess.run([sys.executable, "-c", CHURN, mode], cwd=ROOT, capture_output=True, text=True,
                                       check=True, timeout=60).stdout)
            for mode in ("glibc default", "bounded")}
    assert kept["bounded"] < 5 < kept["glibc default"], kept


def test_a_long_lived_reader_never_optimises_the_graph_itself(product, private_cache, sessions_opened):
    """The service has a child process optimise, check and save the graph, then loads the saved one:
    the optimiser's memory never enters the process that keeps running."""
    optimise_apart(product.id, default_model_path(product))
    [saved] = _saved_graphs(private_cache)
    OnnxPadModel(product)
    assert sessions_opened == [str(saved)]
    optimise_apart(product.id, default_model_path(product))   # saved already: no child, nothing changes
    assert _saved_graphs(private_cache) == [saved]
