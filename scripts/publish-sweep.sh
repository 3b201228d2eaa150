#!/bin/sh
# Copy a sweep's finished runs (no checkpoints) into DEST and write its report there.
#   scripts/publish-sweep.sh runs/paper-sweep docs/results/fashion-mnist/paper
set -eu
[ $# -eq 2 ] || { echo "usage: $0 SWEEP_DIR DEST_DIR" >&2; exit 2; }
src=$1 dest=$2
[ -f "$src/sweep.csv" ] || { echo "$0: $src/sweep.csv not found (no finished run yet?)" >&2; exit 1; }
# Never drop a published run the sweep lacks (runs/ of another machine or session).
for run in "$dest"/runs/*/; do
    [ -f "$run/results.json" ] || continue
    name=$(basename "$run")
    if [ ! -f "$src/runs/$name/results.json" ]; then
        echo "$0: $dest has run $name, which $src lacks: copy it back first (cp -r $dest/runs/$name $src/runs/)" >&2
        exit 1
    fi
done
# Never publish a table that lacks a finished run (written by a sweep over fewer seeds).
for run in "$src"/runs/*/; do
    [ -f "$run/results.json" ] || continue
    name=$(basename "$run")
    if ! awk -F, -v r="runs/$name" '{ sub(/\r$/, "") } $NF == r { found = 1 } END { exit !found }' "$src/sweep.csv"; then
        echo "$0: $src/sweep.csv lacks its finished run $name (written by a sweep over fewer seeds?): run the sweep again with every seed, which skips finished runs and rewrites it" >&2
        exit 1
    fi
done
rm -rf "$dest"
mkdir -p "$dest/runs"
cp "$src/sweep.csv" "$dest/"
for run in "$src"/runs/*/; do
    [ -f "$run/results.json" ] || continue
    name=$(basename "$run")
    mkdir -p "$dest/runs/$name"
    cp "$run"/results.json "$run"/results.md "$run"/rounds.csv "$run"/config.toml "$dest/runs/$name/"
done
"${FEDMOE:-fedmoe}" report "$dest"
