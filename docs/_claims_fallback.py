"""Print, as reST, the paper's parameter counts checked by the core library.

Used by ``conf.py`` for the theory page when ``docs/paper_claims.py`` (the
full claims table, with symmetry groups) is not there.  Every number in the
"library" column is computed here, at build time.
"""

import warnings

import paramshare_nb as ps


def _rows():
    g = ps.groups
    s4 = g.symmetric(4)
    yield ("Deep Sets: S_5 on a set of 5", "2", ps.dense_pattern(ps.Action.same(g.symmetric(5))))
    yield ("C_7 acting regularly (circulant W)", "7",
           ps.dense_pattern(ps.Action.same(g.cyclic(7))))
    yield ("S_4 on 2-tensors (Bell number B(4))", "15",
           ps.dense_pattern(ps.Action.same(ps.tensor_power(s4, 2))))
    yield ("S_4, 1-tensors to 2-tensors (B(3))", "5",
           ps.dense_pattern(ps.Action(s4, ps.tensor_power(s4, 2))))
    yield ("S_4, 2-tensors to an invariant", "2",
           ps.dense_pattern(ps.Action.invariant(ps.tensor_power(s4, 2))))
    d5 = ps.Action.same(ps.regular(g.dihedral(5)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield ("D_5 regular, sparse design: p q |A+| = 1 * 1 * 3", "3", ps.sparse_pattern(d5))
    yield ("D_5 regular, dense design: p q |G| = 10", "10", ps.dense_pattern(d5))


def main():
    rows = [(claim, paper, str(pat.n_params), "yes" if str(pat.n_params) == paper else "NO")
            for claim, paper, pat in _rows()]
    header = ("claim", "paper", "library", "agrees")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)
    print(rule)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(rule)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(rule)


if __name__ == "__main__":
    main()
