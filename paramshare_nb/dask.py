"""Scale-out with Dask: blockwise tied multiplies and data-parallel training.

Needs the optional extra ``dask``: ``pip install 'paramshare_nb[dask]'``
(``dask[array]`` and ``distributed``).  Dask is imported only when a function
here is called, so ``import paramshare_nb`` stays cheap.

Data are dask arrays chunked along the **batch** (leading) axes only: every
chunk holds whole samples, so each chunk runs the library's own kernels on
its worker, lazily, through :func:`dask.array.map_blocks`.  An array chunked
along the index axis ``N`` (or the channel axis) is rechunked to one chunk
there, with a :class:`ChunkingWarning`, or refused with a clear message when a
resulting chunk would exceed ``max_chunk_bytes``.

Training is data parallel: :func:`gradients` computes each chunk's gradient
with the library's kernels where the chunk lives, and Dask sums the chunks'
results in a tree (``split_every`` at a time), so only parameter-sized arrays
travel; :func:`train_step` applies the sum once with the optimizer.  The same
graphs run on the threaded scheduler or on a :mod:`dask.distributed` cluster
(pass ``client=``, or have a default client).
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np

from ._validate import bytes_text

__all__ = ["ChunkingWarning", "tied_matmul", "apply", "gradients", "train_step"]

_EXTRA_HINT = "pip install 'paramshare_nb[dask]'"

#: Default bound, in bytes, on one chunk after rechunking the index axis.
DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20


class ChunkingWarning(UserWarning):
    """An input chunked along the index or channel axis was rechunked."""


def _da():
    """Import :mod:`dask.array`, or say which extra to install."""
    try:
        import dask
        import dask.array as da
    except ImportError as exc:
        raise ImportError(f"paramshare_nb.dask needs dask, which is not installed; install "
                          f"the extra with: {_EXTRA_HINT}") from exc
    return dask, da


def _check_dask_array(x, name: str, n_sample_axes: int | None = None):
    """``x``, a dask array with at least one axis and known chunks; ``n_sample_axes`` (default
    all but the first) are the axes that must be whole, for the hint to a non-dask ``x``."""
    _, da = _da()
    if not isinstance(x, da.Array):
        chunks = "(batch_chunk, -1, ...)"
        if isinstance(x, np.ndarray) and x.ndim:  # the exact chunks for its shape
            k = x.ndim - 1 if n_sample_axes is None else min(n_sample_axes, x.ndim)
            chunks = str(("batch_chunk",) * (x.ndim - k) + (-1,) * k).replace("'", "")
        raise TypeError(f"{name} must be a dask array chunked along the batch, got "
                        f"{type(x).__name__}; wrap it with dask.array.from_array({name}, "
                        f"chunks={chunks})")
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least one axis, shape (batch, ...), got a 0-d "
                         f"array")
    if isinstance(getattr(x, "_meta", None), np.ma.MaskedArray):  # chunks would drop masks
        raise TypeError(f"{name} has masked-array chunks, whose masks would be ignored; pass "
                        f"dask.array.ma.filled({name}, 0) to count masked entries as zeros")
    if any(math.isnan(c) for cs in x.chunks for c in cs):
        raise ValueError(f"{name} has unknown chunk sizes (shape {x.shape}), as after boolean "
                         f"indexing; call {name} = {name}.compute_chunk_sizes() first")
    return x


def _whole_trailing(x, n_trailing: int, name: str, max_chunk_bytes: int | None):
    """``x`` with its last ``n_trailing`` axes in one chunk each (rechunk with a warning)."""
    from ._validate import as_positive_int

    if max_chunk_bytes is None:
        max_chunk_bytes = DEFAULT_MAX_CHUNK_BYTES
    max_chunk_bytes = as_positive_int(max_chunk_bytes, "max_chunk_bytes")
    axes = list(range(x.ndim - n_trailing, x.ndim))
    split = [a for a in axes if len(x.chunks[a]) > 1]
    if not split:
        return x
    whole = ", ".join(f"{a}: -1" for a in axes)
    lead = x.ndim - n_trailing
    per_sample = math.prod(x.shape[lead:]) * x.dtype.itemsize
    chunk_bytes = math.prod(max(c) for c in x.chunks[:lead]) * per_sample
    if chunk_bytes > max_chunk_bytes:
        if per_sample > max_chunk_bytes:
            raise ValueError(
                f"{name} is chunked along axis {split[0]}, but axes {axes} must each be one "
                f"chunk, and one sample alone is {bytes_text(per_sample)}, over "
                f"max_chunk_bytes={bytes_text(max_chunk_bytes)}; pass "
                f"max_chunk_bytes={per_sample} or more")
        # whole samples per chunk, given to the innermost batch axes first
        budget, rows = max_chunk_bytes // per_sample, {}
        for a in reversed(range(lead)):
            rows[a] = max(1, min(x.shape[a], budget))
            budget = max(1, budget // rows[a])
        hint = ", ".join(f"{a}: {rows[a]}" for a in range(lead))
        raise ValueError(
            f"{name} is chunked along axis {split[0]}, but axes {axes} must each be one chunk "
            f"(whole samples); rechunking them would make chunks of "
            f"{bytes_text(chunk_bytes)}, over max_chunk_bytes={bytes_text(max_chunk_bytes)}; "
            f"rechunk yourself with smaller batch chunks, e.g. {name}.rechunk({{{hint}, {whole}}})")
    warnings.warn(f"{name} is chunked along axis {split[0]}, but axes {axes} must each be one "
                  f"chunk (whole samples); rechunking them (call {name}.rechunk({{{whole}}}) "
                  f"first to avoid this)", ChunkingWarning, stacklevel=3)
    return x.rechunk({a: -1 for a in axes})


def _pattern_and_theta(theta, pattern):
    # the tied multiply's own checks, so chunks never fail later for a reason found here
    from ._layouts import theta_layout
    from .ops import _as_float, _check_pattern

    pattern = _check_pattern(pattern)
    if hasattr(theta, "dask") or type(theta).__module__.startswith("dask"):
        raise TypeError("theta must be a numpy array (it is small and sent to every chunk), "
                        "got a dask collection; call .compute() on it first")
    theta = _as_float(theta, "theta")
    theta_layout(theta, pattern)
    # a snapshot: the graph computes with theta as it is now, whatever an optimizer's
    # in-place step does to the caller's array before .compute()
    return pattern, theta.copy()


def tied_matmul(x, theta, pattern, method: str = "auto", max_chunk_bytes: int | None = None):
    """The tied multiply, blockwise over a dask array chunked along the batch.

    Lazy: returns a dask array; each chunk is computed by
    :func:`paramshare_nb.tied_matmul` where it lives.

    Parameters
    ----------
    x : dask.array.Array, shape (..., N) or (..., N, C_in)
        Inputs, chunked along the leading (batch) axes.  The index axis ``N``
        and the channel axis should each be one chunk; otherwise they are
        rechunked with a :class:`ChunkingWarning`.
    theta : numpy.ndarray, shape (P,) or (P, C_out, C_in)
        Parameters (a small in-memory array, copied into the graph as it is
        when the graph is built).
    pattern : Pattern
        The tying pattern, shape ``(M, N)``.
    method : str, optional
        Strategy passed to :func:`paramshare_nb.tied_matmul` (default
        ``"auto"``).
    max_chunk_bytes : int, optional
        Largest chunk that rechunking the index axis may create (default
        256 MiB); beyond it a :class:`ValueError` asks for smaller batch chunks.

    Returns
    -------
    dask.array.Array
        ``(..., M)`` or ``(..., M, C_out)`` with the batch chunks of ``x``;
        dtype ``numpy.result_type(x, theta)``, float16 computing and returning
        in float32 (as :func:`paramshare_nb.tied_matmul`).

    Raises
    ------
    ImportError
        When dask is not installed (``pip install 'paramshare_nb[dask]'``).
    TypeError
        When ``x`` is not a dask array (the message gives the chunks to wrap
        it with) or not float32/float64, ``theta`` not a float numpy array,
        ``pattern`` not a :class:`~paramshare_nb.Pattern`, or
        ``max_chunk_bytes`` not an int.
    ValueError
        On shape mismatches, a 0-d ``x``, unknown chunk sizes (call
        ``x.compute_chunk_sizes()``), an unknown ``method``,
        ``max_chunk_bytes < 1``, or when rechunking the index axis would exceed
        ``max_chunk_bytes`` (the message gives a rechunk that fits).

    Examples
    --------
    >>> import numpy as np, dask.array as da, paramshare_nb as ps
    >>> pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4)))
    >>> x = da.ones((1000, 4), chunks=(250, 4))
    >>> y = ps.dask.tied_matmul(x, np.arange(4.0), pat)
    >>> y.chunks, float(y.sum().compute())
    (((250, 250, 250, 250), (4,)), 24000.0)
    """
    from . import ops

    pattern, theta = _pattern_and_theta(theta, pattern)
    m, n = pattern.shape
    scalar = theta.ndim == 1
    n_trailing = 1 if scalar else 2
    x = _check_dask_array(x, "x", n_trailing)
    if x.ndim < n_trailing:  # x is 1-D, theta has channels
        raise ValueError(f"x must have shape (..., {n}, {theta.shape[2]}) for channel theta, "
                         f"got {x.shape}")
    expect = (n,) if scalar else (n, theta.shape[2])
    if tuple(x.shape[x.ndim - n_trailing:]) != expect:
        raise ValueError(f"x must end with shape {expect} to match the pattern "
                         f"{pattern.shape} and theta {theta.shape}, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) or x.dtype.itemsize > 8:
        raise TypeError(f"x must be a float32 or float64 array, got dtype {x.dtype}; use "
                        f"x.astype(np.float32)")
    ops._check_method(method)
    x = _whole_trailing(x, n_trailing, "x", max_chunk_bytes)
    out_tail = ((m,),) if scalar else ((m,), (theta.shape[1],))
    # the chunks' own dtype (ops' rule: float16 computes and returns in float32)
    dtype = ops._result_dtype(np.empty(0, x.dtype), theta)
    return x.map_blocks(ops.tied_matmul, theta, pattern, method=method, dtype=dtype,
                        chunks=x.chunks[: x.ndim - n_trailing] + out_tail,
                        meta=np.empty((0,) * x.ndim, dtype=dtype))


def _check_model(model):
    from .nn import Module

    if not isinstance(model, Module):
        raise TypeError(f"model must be a paramshare_nb.nn.Module, got {type(model).__name__}")
    return model


def _run_model(model, xb):
    from .autograd import no_grad

    with no_grad():
        out = model(xb)
    return np.asarray(out.data if hasattr(out, "data") else out)


def _probe(model, x):
    """The model's output on two zero samples shaped like ``x``'s, run on a private copy
    (the model's random generators do not advance): its errors come before any graph runs,
    naming ``x``, and a model that does not keep the batch axis is refused."""
    try:
        out = _run_model(_private_copy(model), np.zeros((2,) + tuple(x.shape[1:]), x.dtype))
    except (TypeError, ValueError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(f"the model refuses samples of x (x has shape {x.shape}, dtype "
                   f"{x.dtype}; tried on 2 zero samples): {exc}") from exc
    if out.ndim < 1 or out.shape[0] != 2:
        raise ValueError(f"the model must keep the batch axis: 2 samples of x gave output "
                         f"shape {out.shape}, not (2, ...)")
    return out


def apply(model, x, max_chunk_bytes: int | None = None):
    """Apply a (trained) model blockwise to a dask array chunked along the batch.

    Lazy: a copy of the model as it is now is sent once with the graph and
    run, without gradients, on each chunk where it lives (later changes to
    the model, such as optimizer steps, do not reach the graph).  Put the
    model in evaluation mode first (``model.eval()``) when it has dropout.

    Parameters
    ----------
    model : paramshare_nb.nn.Module
        Maps a ``(b, ...)`` array to a ``(b, ...)`` output for any ``b``.
    x : dask.array.Array, shape (batch, ...)
        Inputs, chunked along axis 0 only; other axes split into several
        chunks are rechunked with a :class:`ChunkingWarning`.
    max_chunk_bytes : int, optional
        Largest chunk that rechunking may create (default 256 MiB).

    Returns
    -------
    dask.array.Array
        The outputs, with the batch chunks of ``x``.

    Raises
    ------
    ImportError
        When dask is not installed (``pip install 'paramshare_nb[dask]'``).
    TypeError
        When ``model`` is not a Module, ``x`` not a dask array,
        ``max_chunk_bytes`` not an int, or the model refuses the dtype of ``x``.
    ValueError
        When ``x`` is 0-d or has unknown chunk sizes (call
        ``x.compute_chunk_sizes()``), the model refuses the shape of its
        samples or does not keep the batch axis (both tried on two zero
        samples, on a copy of the model, before the graph is built), or
        rechunking would exceed ``max_chunk_bytes``.

    Examples
    --------
    >>> import numpy as np, dask.array as da, paramshare_nb as ps
    >>> act = ps.Action.same(ps.groups.cyclic(4))
    >>> model = ps.nn.EquivariantLinear(act, 1, 2, rng=0)
    >>> x = da.ones((100, 4, 1), chunks=(25, 4, 1), dtype=np.float32)
    >>> ps.dask.apply(model, x).shape
    (100, 4, 2)
    """
    _check_model(model)
    x = _check_dask_array(x, "x")
    x = _whole_trailing(x, x.ndim - 1, "x", max_chunk_bytes)
    probe = _probe(model, x)
    tail = tuple((s,) for s in probe.shape[1:])
    kwargs = {}
    if probe.ndim != x.ndim:
        kwargs = {"drop_axis": list(range(1, x.ndim)), "new_axis": list(range(1, probe.ndim))}
    # a snapshot of the model, as for theta in tied_matmul: optimizer steps taken before
    # .compute() do not reach the graph
    return x.map_blocks(lambda xb, mdl: _run_model(mdl, xb), _private_copy(model),
                        dtype=probe.dtype,
                        chunks=(x.chunks[0],) + tail,
                        meta=np.empty((0,) * probe.ndim, dtype=probe.dtype), **kwargs)


def _private_copy(model):
    """A copy whose parameters are its own, sharing the (immutable) patterns.

    Chunks may run concurrently in one process (the threaded scheduler, or
    several threads of a worker): each needs its own ``.grad`` slots.
    """
    memo = {}
    for _, pat in model.named_patterns():
        memo[id(pat)] = pat
    return copy.deepcopy(model, memo)


def _random_modules(model):
    """The modules that draw random numbers (Dropout's ``rng``), in a fixed order."""
    return [m for _, m in model.named_modules()
            if isinstance(getattr(m, "rng", None), np.random.Generator)]


def _chunk_seeds(model, n_chunks):
    """A seed per chunk and random module, drawn from the model's own generators: every
    chunk draws its own masks, and the model's generators advance as in one process."""
    rngs = [m.rng for m in _random_modules(model)]
    return [[int(g.integers(2**63)) for g in rngs] for _ in range(n_chunks)]


def _chunk_gradients(model, xb, yb, loss_fn, weight, seeds):
    """Weighted loss and gradients of one chunk (runs on a worker); ``seeds`` reseed the
    copy's random modules (:func:`_chunk_seeds`)."""
    model = _private_copy(model)
    for m, seed in zip(_random_modules(model), seeds, strict=True):
        m.rng = np.random.default_rng(seed)
    params = model.parameters()
    for p in params:
        p.grad = None
    out = model(xb)
    loss = loss_fn(out, yb)
    if not hasattr(loss, "backward"):
        raise TypeError(f"loss_fn must return a scalar Tensor (the mean over the batch), got "
                        f"{type(loss).__name__}")
    if np.size(loss.data) != 1:
        raise ValueError(f"loss_fn must return a scalar Tensor (the mean over the batch), got "
                         f"shape {np.shape(loss.data)}; reduce it, e.g. with .mean()")
    _check_mean(loss_fn, out, yb)
    loss.backward()
    grads = [np.zeros(p.shape, dtype=np.float64) if p.grad is None
             else np.asarray(p.grad, dtype=np.float64) * weight for p in params]
    return float(np.asarray(loss.data)) * weight, grads


def _check_mean(loss_fn, out, yb):
    """Refuse a ``loss_fn`` that is not a mean over the batch: the chunks' losses are
    combined weighted by their share of the batch, which a sum (``reduction="sum"``) makes
    wrong without a sign (103 samples in chunks of 25 gave 27.8 for a total of 117).  A
    mean gives one sample and the same sample twice the same loss; a sum twice as much."""
    from .autograd import Tensor, no_grad

    data = getattr(out, "data", None)  # a Tensor's array
    if type(data) is not np.ndarray or data.ndim == 0 or data.shape[0] == 0:
        return  # on a GPU, not a batch, or an empty chunk
    with no_grad():
        once = float(np.asarray(loss_fn(Tensor(data[:1]), yb[:1]).data))
        twice = float(np.asarray(loss_fn(Tensor(data[[0, 0]]), yb[[0, 0]]).data))
    if math.isfinite(once) and not math.isclose(once, twice, rel_tol=1e-4, abs_tol=1e-12):
        raise ValueError(f"loss_fn must be the mean of per-sample losses over its batch: it "
                         f"gave {once:.6g} for one sample and {twice:.6g} for the same sample "
                         f"twice (a sum gives twice as much); the chunks are combined weighted "
                         f"by their share of the batch, so use a mean (reduction='mean')")


def _add(*parts):
    loss = sum(p[0] for p in parts)
    grads = [sum(gs) for gs in zip(*(p[1] for p in parts), strict=True)]
    return loss, grads


def _check_targets(y, x, da):
    """``y`` as a dask array of numbers with the batch chunks of ``x``."""
    n = x.shape[0]
    if not isinstance(y, da.Array):
        try:
            y = np.asarray(y)
        except ValueError:  # ragged nested lists
            raise ValueError(f"y is ragged; give one target per sample of x, an array of "
                             f"shape ({n}, ...)") from None
    if y.dtype.kind not in "biuf":
        raise TypeError(f"y must hold numbers (class ids or float targets), got dtype "
                        f"{y.dtype}; give an int or float array of shape ({n}, ...)")
    if y.ndim < 1:
        raise ValueError(f"y must have a batch axis, one target per sample of x: shape "
                         f"({n}, ...), got a 0-d array")
    if isinstance(y, da.Array):
        _check_dask_array(y, "y")
    if y.shape[0] != n:
        raise ValueError(f"x and y must have one batch size (one target per sample), got "
                         f"{n} and {y.shape[0]}")
    chunks = (x.chunks[0],) + tuple((s,) for s in y.shape[1:])
    return y.rechunk(chunks) if isinstance(y, da.Array) else da.from_array(y, chunks=chunks)


def gradients(model, loss_fn, x, y, split_every: int = 4, client=None):
    """Loss and gradients of a model over a dask array, chunk by chunk.

    Each chunk's loss and gradients are computed with the library's kernels
    where the chunk lives, weighted by the chunk's share of the batch, and
    summed by Dask in a tree; the result equals the full-batch gradient of
    ``loss_fn`` to float tolerance.

    Parameters
    ----------
    model : paramshare_nb.nn.Module
        The model (sent once with the graph; not modified).
    loss_fn : callable
        ``loss_fn(output, target)`` returns a scalar Tensor, the **mean**
        over the batch (as :func:`paramshare_nb.nn.cross_entropy` and
        :func:`paramshare_nb.nn.mse` do by default).  Must be picklable for a
        distributed cluster (a module-level function).
    x : dask.array.Array, shape (batch, ...)
        Inputs, chunked along axis 0 only.
    y : dask.array.Array or numpy.ndarray, shape (batch, ...)
        Targets; rechunked to the batch chunks of ``x``.
    split_every : int, optional
        Fan-in of the tree sum (default 4).
    client : distributed.Client, optional
        Compute on this cluster (default: the default client if one exists,
        else the local threaded scheduler).

    Returns
    -------
    loss : float
        The full-batch loss.
    grads : list of numpy.ndarray
        One float64 gradient per ``model.parameters()`` entry.

    Raises
    ------
    ImportError
        When dask is not installed (``pip install 'paramshare_nb[dask]'``).
    TypeError
        For a non-Module model, a non-callable ``loss_fn``, a non-dask ``x``,
        a ``y`` that does not hold numbers, a non-int ``split_every``, a
        ``client`` that is not a Client, or a model that refuses the dtype of
        ``x``; and, when the chunks run, a ``loss_fn`` that does not return a
        Tensor.
    ValueError
        When ``x`` is 0-d or empty, ``y`` is 0-d or ragged, either has unknown
        chunk sizes (call ``.compute_chunk_sizes()``), ``x`` and ``y`` differ
        in batch size, ``split_every < 2``, or the model refuses the shape of
        the samples of ``x`` (tried as in :func:`apply`); and, when the chunks
        run, a ``loss_fn`` that returns a non-scalar or is not a mean over its
        batch (checked on each chunk's first sample, alone and twice: a sum,
        ``reduction="sum"``, gives twice as much).
    """
    from ._validate import as_positive_int

    dask, da = _da()
    _check_model(model)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    split_every = as_positive_int(split_every, "split_every", minimum=2)
    if client is not None and not callable(getattr(client, "compute", None)):
        raise TypeError(f"client must be a distributed.Client or None, got "
                        f"{type(client).__name__}")
    x = _check_dask_array(x, "x")
    x = _whole_trailing(x, x.ndim - 1, "x", None)
    if x.shape[0] == 0:
        raise ValueError("x is empty: no samples to compute gradients on")
    y = _check_targets(y, x, da)
    _probe(model, x)
    total = x.shape[0]
    delayed = dask.delayed
    model_d = delayed(model, pure=True)
    # unoptimised graphs keep the keys x and y share (y computed from x, say), so a
    # shared chunk is computed once per step instead of once per consumer
    xs = x.to_delayed(optimize_graph=False).ravel()
    ys = y.to_delayed(optimize_graph=False).ravel()
    seeds = _chunk_seeds(model, len(x.chunks[0]))
    parts = [delayed(_chunk_gradients, pure=True)(model_d, xb, yb, loss_fn, size / total, sd)
             for xb, yb, size, sd in zip(xs, ys, x.chunks[0], seeds, strict=True) if size]
    while len(parts) > 1:
        parts = [delayed(_add, pure=True)(*parts[i:i + split_every])
                 for i in range(0, len(parts), split_every)]
    if client is not None:
        loss, grads = client.compute(parts[0]).result()
    else:
        (loss, grads), = dask.compute(parts[0])
    return float(loss), grads


def train_step(model, loss_fn, optimizer, x, y, split_every: int = 4, client=None):
    """One data-parallel training step: chunk gradients, tree sum, one update.

    Parameters
    ----------
    model : paramshare_nb.nn.Module
        The model; its parameters are updated in place.
    loss_fn : callable
        ``loss_fn(output, target)``: a scalar Tensor, the mean over the batch.
    optimizer : paramshare_nb.optim.Optimizer
        Built on ``model.parameters()``; stepped once.
    x : dask.array.Array, shape (batch, ...)
        Inputs, chunked along axis 0.
    y : dask.array.Array or numpy.ndarray, shape (batch, ...)
        Targets.
    split_every : int, optional
        Fan-in of the tree sum (default 4).
    client : distributed.Client, optional
        Compute on this cluster.

    Returns
    -------
    float
        The full-batch loss before the update.

    Raises
    ------
    ImportError
        When dask is not installed (``pip install 'paramshare_nb[dask]'``).
    TypeError
        When ``optimizer`` is not an Optimizer (or see :func:`gradients`).
    ValueError
        When the optimizer holds parameters the model does not have (or see
        :func:`gradients`).

    Examples
    --------
    >>> import numpy as np, dask.array as da, paramshare_nb as ps
    >>> act = ps.Action.same(ps.groups.cyclic(4))
    >>> model = ps.nn.Sequential(ps.nn.EquivariantLinear(act, 1, 1, rng=0), ps.nn.Flatten())
    >>> opt = ps.optim.SGD(model.parameters(), lr=0.1)
    >>> x = da.ones((64, 4, 1), chunks=(16, 4, 1), dtype=np.float32)
    >>> y = np.zeros((64, 4), np.float32)
    >>> loss = ps.dask.train_step(model, ps.nn.mse, opt, x, y)
    """
    from .optim import Optimizer

    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a paramshare_nb.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    params = _check_model(model).parameters()
    known = {id(p) for p in params}
    if any(id(p) not in known for p in optimizer.params):
        raise ValueError("the optimizer holds parameters that are not the model's; build it "
                         "with optimizer = Adam(model.parameters(), ...)")
    loss, grads = gradients(model, loss_fn, x, y, split_every=split_every, client=client)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.astype(p.dtype, copy=False)
    optimizer.step()
    for p in params:
        p.grad = None
    return loss
