"""``python -m paramshare_nb explain SPEC``: name a group, see its designs explained.

A spec is ``NAME:ARGS``:

==================  ===========================================================
``cyclic:n``        ``C_n`` rotating ``n`` points
``dihedral:n``      ``D_n`` on the vertices of an ``n``-gon
``symmetric:n``     ``S_n`` on ``n <= 512`` points (``deepsets:n`` is an alias)
``alternating:n``   ``A_n`` on ``n <= 512`` points
``square:h``        ``D_4`` on the pixels of an ``h x h`` image
``rotations:h``     ``C_4`` on the pixels of an ``h x h`` image
``grid:h x w``      periodic translations of an ``h x w`` grid (``grid:4x5``)
``regular:NAME:n``  a named group acting on its own elements (e.g. ``regular:dihedral:5``)
==================  ===========================================================

The action is ``Action.same`` (outputs move like inputs) unless
``--out invariant`` asks for one invariant output.  A spec names at most 4096
points (and ``regular:`` at most 4096 elements), so that the answer comes in
seconds.
"""

from __future__ import annotations

import argparse
import io
import re
import warnings

import numpy as np

SPECS = {
    "cyclic": "C_n rotating n points",
    "dihedral": "D_n on the vertices of an n-gon",
    "symmetric": "S_n on n points",
    "deepsets": "S_n on n points (alias of symmetric)",
    "alternating": "A_n on n points",
    "square": "D_4 on the pixels of an h x h image",
    "rotations": "C_4 on the pixels of an h x h image",
    "grid": "periodic translations of an h x w grid, e.g. grid:4x5",
    "regular": "a named group on its own elements, e.g. regular:dihedral:5",
}

#: Upper bound on the points a spec may name: keeps the CLI interactive.
MAX_POINTS = 4096
#: Points of S_n and A_n: their stabilizer chains hold about 4 n**3 bytes (S_512's, 0.5
#: GB), which also sets the time (the whole explanation: S_128 0.06 s, S_512 2.4 s, A_512
#: 3.0 s).
MAX_SYMMETRIC = 512
#: ``regular:`` prefixes one spec may nest.
MAX_NESTING = 4


class SpecError(ValueError):
    """A group spec that cannot be parsed; the message says what is accepted."""


def _known() -> str:
    return ", ".join(f"{k}:..." for k in SPECS)


def _int_arg(name: str, text: str, minimum: int) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        example = "grid:4x5" if name == "grid" else f"{name}:5"
        raise SpecError(f"{name}: expected a whole number, got {text!r} (e.g. {example})")
    digits = text.strip().lstrip("0")
    if len(digits) > len(str(MAX_POINTS)):  # before int(): Python refuses 4300 digits
        raise SpecError(f"{name}:{digits[:8]}...: a {len(digits)}-digit size, more than "
                        f"{MAX_POINTS} points")
    value = int(text)
    if value < minimum:
        raise SpecError(f"{name}:{value}: the size must be >= {minimum}")
    return value


def parse_spec(spec: str) -> tuple[str, np.ndarray]:
    """Generators named by a short spec such as ``"dihedral:5"`` or ``"square:8"``.

    Parameters
    ----------
    spec : str
        ``NAME:ARGS``; see the module docstring for the names.

    Returns
    -------
    description : str
        What the spec names, in words.
    gens : numpy.ndarray
        ``(k, n)`` generators.

    Raises
    ------
    SpecError
        A :class:`ValueError` naming the accepted specs.
    """
    from . import groups
    from .actions import regular

    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str, got {type(spec).__name__}")
    name, sep, arg = spec.strip().partition(":")
    name = name.lower()
    if not sep or name not in SPECS:
        raise SpecError(f"unknown group spec {spec!r}; use one of {_known()}")
    if name == "regular":
        if spec.lower().count("regular:") > MAX_NESTING:
            raise SpecError(f"{spec[:40]}...: at most {MAX_NESTING} nested regular: prefixes")
        desc, gens = parse_spec(arg)
        # counted element by element, stopping past the bound, without a stabilizer chain
        # (regular:symmetric:400's would hold about 4 * 400**3 bytes, 256 MB, to refuse)
        size = groups._order_up_to(gens, MAX_POINTS)
        if size > MAX_POINTS:
            raise SpecError(f"{spec[:60]}: the group has more than {MAX_POINTS} elements")
        return f"{desc}, acting regularly on its {size} elements", regular(gens)
    if name == "grid":
        parts = re.split(r"[x,]", arg.lower())
        shape = tuple(_int_arg(name, p, 1) for p in parts)
        if len(shape) > 3:
            raise SpecError(f"{spec}: give 1 to 3 axes, e.g. grid:4x5")
        points = int(np.prod(shape, dtype=object))  # Python ints: no overflow
        if points > MAX_POINTS:  # before the generators are built
            raise SpecError(f"{spec} names {points} points, more than {MAX_POINTS}")
        desc = f"translations of a {'x'.join(map(str, shape))} periodic grid"
        gens = groups.grid_translations(shape)
    else:
        size = _int_arg(name, arg, 1)
        points = size * size if name in ("square", "rotations") else size
        if points > MAX_POINTS:
            raise SpecError(f"{spec} names {points} points, more than {MAX_POINTS}")
        if name in ("symmetric", "deepsets", "alternating") and size > MAX_SYMMETRIC:
            raise SpecError(f"{spec}: S_n and A_n are explained up to {MAX_SYMMETRIC} points "
                            f"here (their stabilizer chains take seconds and GBs past that); "
                            f"call ps.explain on the action for more")
        if name == "cyclic":
            desc, gens = f"C_{size} rotating {size} points", groups.cyclic(size)
        elif name == "dihedral":
            desc, gens = f"D_{size} on the vertices of a {size}-gon", groups.dihedral(size)
        elif name in ("symmetric", "deepsets"):
            desc, gens = f"S_{size} on {size} points", groups.symmetric(size)
        elif name == "alternating":
            desc, gens = f"A_{size} on {size} points", groups.alternating(size)
        elif name == "square":
            desc = f"D_4 on the pixels of a {size}x{size} image"
            gens = groups.square_symmetries(size)
        else:
            desc = f"C_4 on the pixels of a {size}x{size} image"
            gens = groups.square_symmetries(size, rotations_only=True)
    if points > MAX_POINTS:
        raise SpecError(f"{spec} names {points} points, more than {MAX_POINTS}")
    return desc, gens


def build_action(spec: str, out: str = "same"):
    """The :class:`~paramshare_nb.Action` a spec and an output kind name.

    Parameters
    ----------
    spec : str
        Group spec, e.g. ``"dihedral:5"``.
    out : {"same", "invariant"}
        Outputs transform like the inputs, or one invariant output.

    Returns
    -------
    description : str
        The action in words.
    action : Action
        The action.
    """
    from .actions import Action

    desc, gens = parse_spec(spec)
    n = gens.shape[1]
    if out == "same":
        return f"{desc}; outputs move like the inputs", Action.same(gens, n=n)
    if out == "invariant":
        return f"{desc}; one invariant output", Action.invariant(gens, n=n)
    raise SpecError(f"out must be 'same' or 'invariant', got {out!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``explain`` arguments to a sub-parser."""
    parser.add_argument("spec", help="group spec: " + "; ".join(
        f"{k}: {v}" for k, v in SPECS.items()))
    parser.add_argument("--out", choices=("same", "invariant"), default="same",
                        help="outputs move like inputs (default) or one invariant output")
    parser.add_argument("--design", choices=("dense", "sparse", "both"), default="both",
                        help="which design(s) to explain (default both)")


def _fallback_explain(pat, act) -> str:
    """Counts and the equivariance check, for builds without the symmetry module."""
    from .equivariance import is_equivariant

    m, n = pat.shape
    return (f"  {pat.n_params} parameters, {pat.nnz} non-zeros of {m * n} "
            f"({pat.nnz / max(m * n, 1):.0%})\n"
            f"  equivariant: {is_equivariant(pat, act)}\n"
            f"  (uniqueness not checked: paramshare_nb.symmetry is not available)")


def _symmetry():
    try:
        from . import symmetry
    except ImportError:
        return None
    return symmetry


def _explain(pat, act) -> str:
    explain = getattr(_symmetry(), "explain", None)
    if explain is None:
        return _fallback_explain(pat, act)
    buf = io.StringIO()
    explain(pat, act, file=buf)  # prints; returns None
    return buf.getvalue().rstrip("\n")


def run(args: argparse.Namespace) -> int:
    """Print the explanation of the designs for ``args.spec``; return the exit code."""
    from .patterns import dense_pattern, sparse_pattern

    desc, act = build_action(args.spec, args.out)
    print(f"{args.spec}: {desc}")
    if not hasattr(_symmetry(), "explain"):
        print(act.describe(warn=False))  # explain() reports the group itself
    designs = ["dense", "sparse"] if args.design == "both" else [args.design]
    for design in designs:
        print()
        if design == "dense":
            pat = dense_pattern(act)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pat = sparse_pattern(act)
            for w in caught:
                print(f"note: {w.message}")
        print(f"{design} design: {pat!r}")
        print(_explain(pat, act))
    return 0
