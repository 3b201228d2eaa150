#!/bin/sh
# The whole head-to-head study (issue 20) as one worker's queue: seed 0 of every group of
# every family first, then seed 1, then seed 2, so that each session's work completes
# whole (setting, seed) leaderboards. Start one per core; they share the sweeps (each
# skips the runs another is running) and resume where the last session stopped.
#
#   scripts/head-to-head-queue.sh [FAMILY...]   (default: majority dirichlet new-clients rotated)
#
# Publish what has finished with `scripts/head-to-head-study.sh FAMILY publish`.
set -eu
families=${*:-majority dirichlet new-clients rotated}
here=$(dirname "$0")
for seeds in 1 2 3; do
    for family in $families; do
        for group in mixtures global-personal split-model centralised; do
            echo "== $family $group, seeds 0..$((seeds - 1)): $(date +%T)"
            "$here/head-to-head-study.sh" "$family" "$group" --seeds "$seeds" --threads 1 --quiet
        done
    done
done
echo "== the study has run: $(date +%T)"
