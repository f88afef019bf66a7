"""Brute-force numpy oracles for the tied multiply (obviously correct, slow).

Independent of the library's kernels and of ``Pattern.materialize``: ``W`` is
built by a plain Python loop over the edges, products by ``numpy.einsum``.
"""

import numpy as np


def dense_w(theta, pattern, dtype=None):
    """``W`` as ``(M, C_out, N, C_in)`` (scalar ``theta`` gives ``C_out = C_in = 1``)."""
    theta = np.asarray(theta)
    dtype = dtype or theta.dtype
    t3 = theta.reshape(theta.shape[0], 1, 1) if theta.ndim == 1 else theta
    m, n = pattern.shape
    w = np.zeros((m, t3.shape[1], n, t3.shape[2]), dtype=dtype)
    for r, c, p in zip(pattern.rows.tolist(), pattern.cols.tolist(), pattern.params.tolist()):
        w[r, :, c, :] += t3[p]
    return w


def forward(x, theta, pattern):
    """``y[..., m, o] = sum_{n, i} W[m, o, n, i] x[..., n, i]``."""
    x, theta = np.asarray(x), np.asarray(theta)
    dtype = np.result_type(x, theta)
    w = dense_w(theta, pattern, dtype)
    if theta.ndim == 1:
        return np.einsum("mn,...n->...m", w[:, 0, :, 0], x).astype(dtype)
    return np.einsum("monc,...nc->...mo", w, x).astype(dtype)


def grad(dy, x, theta, pattern):
    """Analytic ``(dx, dtheta)`` through the dense ``W`` and a loop over edges."""
    dy, x, theta = np.asarray(dy), np.asarray(x), np.asarray(theta)
    dtype = np.result_type(dy, x, theta)
    w = dense_w(theta, pattern, np.float64)
    scalar = theta.ndim == 1
    dy3 = dy[..., None] if scalar else dy
    x3 = x[..., None] if scalar else x
    dx = np.einsum("monc,...mo->...nc", w, dy3)
    dy2 = dy3.reshape((-1,) + dy3.shape[-2:]).astype(np.float64)
    x2 = x3.reshape((-1,) + x3.shape[-2:]).astype(np.float64)
    dw = np.einsum("bmo,bnc->monc", dy2, x2)
    dth = np.zeros((pattern.n_params,) + dw.shape[1:2] + dw.shape[3:4])
    for r, c, p in zip(pattern.rows.tolist(), pattern.cols.tolist(), pattern.params.tolist()):
        dth[p] += dw[r, :, c, :]
    if scalar:
        dx, dth = dx[..., 0], dth[:, 0, 0]
    return dx.astype(dtype), dth.astype(dtype)
