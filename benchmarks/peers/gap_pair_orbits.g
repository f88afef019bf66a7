# GAP peer for benchmarks/bench_groups.py: orbits of D_n on the n*n pairs.
# Run: gap -q -o 8g benchmarks/peers/gap_pair_orbits.g  (Debian: apt-get install gap-core gap-libs)
n := 1000;;
G := DihedralGroup(IsPermGroup, 2*n);;
dom := Cartesian([1..n],[1..n]);;
t := Runtime();;
o := OrbitsDomain(G, dom, OnTuples);;
Print("orbits: ", Length(o), " ms: ", Runtime()-t, "\n");
n := 100;;
G := DihedralGroup(IsPermGroup, 2*n);;
dom := Cartesian([1..n],[1..n]);;
t := Runtime();;
o := OrbitsDomain(G, dom, OnTuples);;
Print("orbits: ", Length(o), " ms: ", Runtime()-t, "\n");
QUIT;
