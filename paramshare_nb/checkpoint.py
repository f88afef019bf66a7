"""Save and load a model's parameters, with its tying patterns' fingerprints.

Files are ``.npz`` archives read with ``allow_pickle=False``.  Each tying
pattern's SHA-256 fingerprint is stored beside the weights, so loading into a
model whose action or design differs is refused instead of silently giving
parameters the wrong meaning.  Writes go to a temporary file in the same
directory, are flushed to disk, then renamed over the target: an interrupted
save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os

import numpy as np

from ._npz import read_arrays, read_path, write_atomically, written_path

__all__ = ["save", "load"]

_FORMAT = "paramshare_nb.checkpoint/1"
_PARAM = "param/"
_PATTERN = "pattern/"


def _model_arrays(model, where: str) -> dict:
    from .nn import Module

    if not isinstance(model, Module):
        order = (f" (the path comes first: checkpoint.{where}(path, model))"
                 if isinstance(model, (str, os.PathLike)) else "")
        raise TypeError(f"checkpoint.{where}: model must be an nn.Module, got "
                        f"{type(model).__name__}{order}")
    arrays = {"__format__": np.array(_FORMAT)}
    for name, value in model.state_dict().items():
        if where == "save" and not np.isfinite(value).all():  # load would refuse the file
            raise ValueError(f"checkpoint.save: parameter {name!r} holds non-finite values "
                             f"(nan or inf), which a load refuses; nothing was written")
        arrays[_PARAM + name] = value
    for name, pat in model.named_patterns():
        arrays[_PATTERN + name] = np.array(pat.fingerprint())
    return arrays


def save(path, model) -> str:
    """Write ``model``'s parameters and pattern fingerprints to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination (``.npz`` is appended when missing).
    model : nn.Module

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        A parameter holds ``nan`` or ``inf`` (:func:`load` refuses such a
        file); nothing is written.
    IsADirectoryError
        ``path`` (with ``.npz``) is a folder.
    """
    arrays = _model_arrays(model, "save")
    path = written_path(path)
    write_atomically(path, arrays)
    return path


def load(path, model) -> None:
    """Load parameters saved by :func:`save` into ``model`` (in place).

    Parameters
    ----------
    path : str or os.PathLike
        As given to :func:`save`: ``name`` reads ``name.npz`` (what the save
        wrote), unless only ``name`` itself is a file.
    model : nn.Module
        Must have the same parameter names and shapes, and the same tying
        patterns, as the saved model.

    Raises
    ------
    ValueError
        The file is not a readable checkpoint (not an ``.npz`` archive, a
        corrupt one, pickled objects, an array whose header claims another
        size than it holds, arrays over ``config.max_bytes`` in all), or the
        model's patterns differ from the saved ones (a different action or
        design), or a parameter's shape or dtype is refused (see
        :meth:`nn.Module.load_state_dict`).  Nothing is loaded then: the
        model is unchanged.
    FileNotFoundError
        ``path`` does not exist.
    KeyError
        Parameter names differ.
    """
    current = _model_arrays(model, "load")
    path = read_path(path)  # what save wrote for this name
    try:
        saved = read_arrays(path)
    except ValueError as exc:  # corrupt members: bad deflate stream, CRC, pickled objects
        raise ValueError(f"checkpoint {path!r} is not a readable checkpoint .npz file "
                         f"({exc})") from None
    if str(saved.get("__format__", "")) != _FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a paramshare_nb checkpoint (format tag "
                         f"{saved.get('__format__')!r}, expected {_FORMAT!r})")
    mine = {k[len(_PATTERN):]: str(v) for k, v in current.items() if k.startswith(_PATTERN)}
    theirs = {k[len(_PATTERN):]: str(v) for k, v in saved.items() if k.startswith(_PATTERN)}
    for name in sorted(set(mine) | set(theirs)):
        a, b = theirs.get(name), mine.get(name)
        if a != b:
            if a is None or b is None:
                where = "the model" if a is None else "the checkpoint"
                raise ValueError(f"checkpoint refused: pattern '{name}' exists only in {where}; "
                                 f"the architectures differ")
            raise ValueError(f"checkpoint refused: layer pattern '{name}' differs (saved "
                             f"fingerprint {a[:12]}..., model {b[:12]}...): the model was built "
                             f"with another action or design than the checkpoint")
    state = {k[len(_PARAM):]: v for k, v in saved.items() if k.startswith(_PARAM)}
    model.load_state_dict(state, strict=True)


#: Aliases with explicit names (documented by save and load).
save_checkpoint = save
load_checkpoint = load
