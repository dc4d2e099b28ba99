#!/bin/bash
# whole cost of `curate dedup --dry-run` (Python and Ray start included) on a fresh copy of the demo
# dataset (`make demo`, 127 rows), session 25 (7f8bffc, fresh actors, checked out at ../old) vs this tree
# (../main); the two alternate, twice. Paths as on the development machine: edit them to rerun.
set -e
for i in 1 2; do
  for way in old main; do
    rm -rf /tmp/cd-$way.lance; cp -r /work/x/demo/demo.lance /tmp/cd-$way.lance; rm -rf /tmp/cd-$way.lance/_curation/vector
    cd /work/$way
    s=$(date +%s.%N)
    /work/main/.venv/bin/python -m cli dedup --dataset /tmp/cd-$way.lance --dry-run > /tmp/cd-$way.out 2>&1
    e=$(date +%s.%N)
    echo "$way run $i: $(echo "$e - $s" | bc) s; $(grep -iE 'would remove|removed|groups' /tmp/cd-$way.out | tail -1)"
  done
done
