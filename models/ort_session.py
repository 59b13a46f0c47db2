"""onnxruntime sessions set up for a small device, with the optimised graph kept in the cache.

A Raspberry Pi Zero 2 W has 512 MB for everything and slow cores, and a cold `stripread read`
creates one session per process. So: one thread and no thread pool (a strip's models run in well
under a millisecond), no memory arena and no memory pattern (a strip's tensors are a few hundred
bytes: an arena only keeps freed chunks resident), and the graph optimised once and saved in ORT
format, which loads without parsing the protobuf or optimising again (on the generic-10 model,
one core: 3 ms and 2-3 MB less per process; bench/footprint.py).

The saved graph is named by the model file's SHA-256, the onnxruntime version and the machine
(calibration.cache), so a retrained model, an upgraded runtime or a copied cache folder never
loads a stale one; it is kept only once the model passed its checks on it.
"""
from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable
from pathlib import Path

from calibration import cache


def _options(ort, optimise: bool):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    # EXTENDED, not ALL: ALL adds layout transforms for convolutions (none here) that tie a saved
    # graph to the CPU it was made on and make onnxruntime warn on stderr as it saves
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if optimise
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return options


def _session(ort, model: bytes, save_to: Path | None):
    options = _options(ort, optimise=True)
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
        options.add_session_config_entry("session.save_model_format", "ORT")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def open_session(path: Path, check: Callable) -> None:
    """An InferenceSession of the model at `path`, handed to `check` (which raises when the model is
    unusable and keeps the session when it is not): the saved optimised graph when there is one
    and it passes `check`, else the file's own, optimised and then saved. onnxruntime's errors for
    a file it cannot load propagate."""
    import onnxruntime as ort
    model = path.read_bytes()
    saved = _saved_graph(ort, path, model)
    if saved.is_file():
        try:
            check(ort.InferenceSession(str(saved), _options(ort, optimise=False),
                                       providers=["CPUExecutionProvider"]))
            return
        except Exception:    # damaged, or not this model's: the file decides, and its graph replaces it
            pass
    partial = cache.partial(saved)
    try:
        saved.parent.mkdir(parents=True, exist_ok=True)
        session = _session(ort, model, partial)
    except Exception:        # no cache folder, or onnxruntime could not write there (or cannot load
        cache.remove(partial)    # the model: then this raises the same error again, without saving)
        partial = None
        session = _session(ort, model, None)
    try:
        check(session)
        if partial is not None:
            with contextlib.suppress(OSError):
                os.replace(partial, saved)
    finally:
        if partial is not None:
            cache.remove(partial)


def has_saved_graph(path: Path) -> bool:
    """Whether the model at `path` has its optimised graph in the cache (for this runtime and machine).
    Optimising keeps ~7 MiB of onnxruntime's optimiser resident for the rest of a process's life, so
    a long-lived process has it done by a short-lived one first (`models.onnx_model.optimise_apart`)."""
    import onnxruntime as ort
    return _saved_graph(ort, path, path.read_bytes()).is_file()


def _saved_graph(ort, path: Path, model: bytes) -> Path:
    return cache.entry(path.stem, model + f"|ort {ort.__version__}|{platform.machine()}".encode(), ".ort")
