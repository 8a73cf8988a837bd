"""The resize inferer's numeric steps in numpy, bit for bit as torch computes them on the CPU.

A shipped 2D model on onnxruntime needs torch only for three small steps around the network:
the antialiased bilinear resize to the network size (``F.interpolate(..., antialias=True)``),
the bilinear resize of the logits back (``align_corners=False``) and the sigmoid. Importing
torch costs about 2 CPU s, most of a one-slice ``covseg predict``; these functions let
:mod:`covseg.inference.onnx_start` predict without it and still write the same bytes as the
torch path (``tests/transforms/test_network_io.py`` compares them with torch on many sizes).

What "as torch computes them" means (torch's CPU kernels, float32, compiled with FMA):

* resize down (or up): PIL-style triangle weights per output pixel (normalised over the taps
  inside the image), width first, then height; taps are added in order, those that fall in
  the 4-way unrolled part of torch's loop by multiply-then-add, the rest by fused multiply-adds;
* resize back: torch's generic kernel ``(t00·w0 + t01·w1)·h0 + (...)·h1`` by FMAs; outputs with
  ``rows + cols <= 128`` go through its channels-last kernel (four weights, three FMAs);
* sigmoid: ``1 / (1 + exp(-x))`` with SLEEF's ``expf_u10`` (FMA) on blocks of two vectors (16
  values on AVX2, 32 where torch runs its AVX-512 kernels), and the C library's ``expf`` on each
  thread chunk's last ``n mod block`` values.

Everything is float32 numpy; float64 is used only to round a product-plus-sum once, which is
what a fused multiply-add does. The rules were read off torch 2.13's x86-64 CPU build (AVX2 and
AVX-512 kernels); a torch built otherwise may differ in the last bit, which the tests (against the
installed torch) show.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

F32 = np.float32
_GRAIN = 32768  # torch's at::internal::GRAIN_SIZE: elements per parallel chunk at least


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` rounded once to float32 (the product of two float32 values is exact in float64)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(F32)


def probs_to_labels(prob: np.ndarray, threshold: float = 0.5, num_classes: int = 1) -> np.ndarray:
    """Binary probabilities (any shape) → 0/1 at ``p >= threshold``; K-class ``(K, ...)`` → argmax labels."""
    if num_classes == 1:
        return (prob >= threshold).astype(np.uint8)
    return prob.argmax(axis=0).astype(np.uint8)


# -- the antialiased resize to the network size ------------------------------------------------------
def _aa_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the input indices ``(n_out, taps)``, their weights and how many are used,
    with torch's float32/double promotions (``_compute_indices_min_size_weights_aa``)."""
    scale = F32(n_in) / F32(n_out)
    support = scale if scale >= 1.0 else F32(1.0)
    taps = int(np.ceil(support)) * 2 + 1
    invscale = F32(1.0 / float(scale)) if scale >= 1.0 else F32(1.0)
    index = np.zeros((n_out, taps), np.int64)
    weights = np.zeros((n_out, taps), F32)
    used = np.zeros(n_out, np.int64)
    for i in range(n_out):
        center = F32(float(scale) * (i + 0.5))
        first = max(int(float(F32(center - support)) + 0.5), 0)
        size = min(max(min(int(float(F32(center + support)) + 0.5), n_in) - first, 0), taps)
        total = F32(0.0)
        for j in range(size):
            x = abs(F32((float(F32(F32(j + first) - center)) + 0.5) * float(invscale)))
            w = F32(1.0 - float(x)) if x < 1.0 else F32(0.0)
            weights[i, j] = w
            total = F32(total + w)
        if total != 0.0:
            weights[i, :size] = weights[i, :size] / total
        index[i] = first
        index[i, :size] = np.arange(first, first + size)
        used[i] = size
    return index, weights, used


def _aa_last_axis(x: np.ndarray, n_out: int) -> np.ndarray:
    index, weights, used = _aa_taps(x.shape[-1], n_out)
    unrolled = 4 * ((used - 1) // 4)  # taps 1..unrolled go through torch's 4-way unrolled loop: no FMA there
    out = (x[..., index[:, 0]] * weights[:, 0]).astype(F32)
    for j in range(1, weights.shape[1]):
        t, w = x[..., index[:, j]], weights[:, j]
        step = np.where(j > unrolled, _fma(t, w, out), (out + (t * w).astype(F32)).astype(F32))
        out = np.where(j < used, step, out)
    return out


def resize_antialiased(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(C, H, W)`` float32 at ``size`` as torch's antialiased bilinear resize (``align_corners=False``)."""
    x = np.asarray(x, F32)
    rows, cols = (int(s) for s in size)
    if x.shape[-2:] == (rows, cols):
        return x
    if x.shape[-1] != cols:
        x = _aa_last_axis(x, cols)
    if x.shape[-2] != rows:
        x = np.swapaxes(_aa_last_axis(np.swapaxes(x, -1, -2), rows), -1, -2)
    return np.ascontiguousarray(x)


# -- the bilinear resize of the logits back to the image's size -------------------------------------
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two input indices and their weights (``compute_source_index_and_lambda``)."""
    if n_in == n_out:
        index = np.arange(n_out)
        return index, index, np.ones(n_out, F32), np.zeros(n_out, F32)
    scale = F32(n_in) / F32(n_out)
    source = _fma(np.full(n_out, scale), np.arange(n_out).astype(F32) + F32(0.5), np.full(n_out, F32(-0.5)))
    source = np.where(source < 0, F32(0.0), source).astype(F32)
    first = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    lam1 = np.clip((source - first.astype(F32)).astype(F32), F32(0.0), F32(1.0)).astype(F32)
    return first, first + (first < n_in - 1), (F32(1.0) - lam1).astype(F32), lam1


def restore_bilinear(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(C, h, w)`` float32 logits at ``size`` as torch's bilinear resize (``align_corners=False``, no antialias)."""
    x = np.asarray(x, F32)
    rows, cols = (int(s) for s in size)
    if x.shape[-2:] == (rows, cols):
        return x
    r0, r1, rl0, rl1 = _linear_taps(x.shape[-2], rows)
    c0, c1, cl0, cl1 = _linear_taps(x.shape[-1], cols)
    i00, i01 = x[:, r0][:, :, c0], x[:, r0][:, :, c1]
    i10, i11 = x[:, r1][:, :, c0], x[:, r1][:, :, c1]
    rl0, rl1 = rl0[:, None], rl1[:, None]
    if rows + cols <= 128:  # torch's channels-last kernel: four weights, three fused multiply-adds
        w00, w01 = (rl0 * cl0).astype(F32), (rl0 * cl1).astype(F32)
        w10, w11 = (rl1 * cl0).astype(F32), (rl1 * cl1).astype(F32)
        return _fma(w11, i11, _fma(w10, i10, _fma(w00, i00, (w01 * i01).astype(F32))))
    top = _fma(i00, cl0, (i01 * cl1).astype(F32))
    bottom = _fma(i10, cl0, (i11 * cl1).astype(F32))
    return _fma(top, rl0, (bottom * rl1).astype(F32))


# -- the sigmoid --------------------------------------------------------------------------------------
_EXP_POLY = (0.00139304355252534151077271, 0.00833336077630519866943359, 0.0416664853692054748535156,
             0.166666671633720397949219, 0.5)  # fmt: skip


def _sleef_expf(d: np.ndarray) -> np.ndarray:
    """SLEEF's ``expf_u10`` with FMA (torch's vectorised float ``exp`` in the sigmoid kernel)."""
    q = np.rint(
        (d * F32(1.442695040888963407359924681001892137426645954152985934135449406931)).astype(F32)
    ).astype(np.int32)
    qf = q.astype(F32)
    s = _fma(qf, F32(-0.693145751953125), d)
    s = _fma(qf, F32(-1.428606765330187045e-06), s)
    u = np.full(d.shape, F32(0.000198527617612853646278381))
    for c in _EXP_POLY:
        u = _fma(u, s, F32(c))
    u = (F32(1.0) + _fma((s * s).astype(F32), u, s)).astype(F32)
    half = q >> 1
    u = (u * np.ldexp(F32(1.0), half).astype(F32)).astype(F32)
    u = (u * np.ldexp(F32(1.0), q - half).astype(F32)).astype(F32)
    u = np.where(d < F32(-104.0), F32(0.0), u)
    return np.where(d > F32(100.0), F32(np.inf), u).astype(F32)


@functools.cache
def torch_vector_isa() -> str:
    """The vector kernels torch's CPU build dispatches to here (``torch.backends.cpu.get_cpu_capability()``),
    found without importing torch: ``AVX512`` when the CPU has AVX-512 F/CD/DQ/BW/VL (ATen's test) unless
    ``ATEN_CPU_CAPABILITY`` asks for less, else ``AVX2``."""
    asked = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if asked in ("avx2", "default"):
        return asked.upper()
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), [])
    except OSError:
        flags = []
    return "AVX512" if {"avx512f", "avx512cd", "avx512dq", "avx512bw", "avx512vl"} <= set(flags) else "AVX2"


def sigmoid(x: np.ndarray, threads: int = 1) -> np.ndarray:
    """``torch.sigmoid`` of a contiguous float32 array on ``threads`` CPU threads, bit for bit."""
    flat = np.ascontiguousarray(x, F32).reshape(-1)
    out = np.empty_like(flat)
    n = flat.size
    block = 32 if torch_vector_isa() == "AVX512" else 16  # two vectors of 16 or 8 floats
    chunk = n if n < _GRAIN else max(_GRAIN, -(-n // max(int(threads), 1)))
    with np.errstate(over="ignore"):
        for start in range(0, n, max(chunk, 1)):
            part = flat[start : start + chunk]
            vector = part.size - part.size % block
            out[start : start + vector] = F32(1.0) / (_sleef_expf(-part[:vector]) + F32(1.0))
            tail = part[vector:].astype(np.float64)
            out[start + vector : start + part.size] = (
                F32(1.0) / (F32(1.0) + np.exp(-tail).astype(F32))
            ).astype(F32)
    return out.reshape(np.shape(x))
