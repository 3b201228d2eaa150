#!/bin/sh
# The head-to-head study (issue 20): every method, 3 seeds, in four families of settings.
#
#   scripts/head-to-head-study.sh FAMILY GROUP [fedmoe sweep options...]
#   scripts/head-to-head-study.sh FAMILY publish|merge
#
# FAMILY: majority    label skew, majority class p in {0.8, 0.5, 0.9, 1.0, 0.2}
#         dirichlet   label skew, Dirichlet alpha in {0.3, 0.1, 1.0}
#                     (the head-to-head-dirichlet preset: the choices tuned at alpha 0.3)
#         new-clients p = 0.8, opt-out 0.2 and 0.5: clients that never federate,
#                     personalised from what the federation produced
#         rotated     covariate shift: IID labels, four client groups whose images are
#                     rotated by 0, 90, 180 and 270 degrees
# GROUP:  one group of methods, a sweep of its own into runs/h2h/FAMILY/GROUP (each
#         method in one group only, with every method it builds on):
#         mixtures        fedavg local finetune moe moe-plus pfl-moe ditto ifca
#                         moe-ifca fedbabu moe-plus-fedbabu (about 35 single-thread
#                         minutes a run)
#         global-personal fedprox apfl pfedme per-fedavg (about 25)
#         split-model     fedper fedrep lg-fedavg (about 15)
#         centralised     centralised (the bound)
#         publish         copy each group's finished runs in runs/h2h/FAMILY into
#                         docs/results/fashion-mnist/head-to-head/FAMILY/GROUP
#                         (scripts/publish-sweep.sh), then merge
#         merge           merge the published groups there into one leaderboard
# Every sweep runs seed 0 of every cell before seed 1; it is resumable (run the same
# command again) and several workers may share it (one per core, --threads 1); give
# --seeds 1 to run seed 0 only (scripts/head-to-head-queue.sh runs the whole study so).
set -eu
[ $# -ge 2 ] || { sed -n '2,28p' "$0" >&2; exit 2; }
family=$1 group=$2
shift 2
fedmoe=${FEDMOE:-fedmoe}
docs=docs/results/fashion-mnist/head-to-head
preset=head-to-head
case $family in
    majority) axes="--grid p=0.8,0.5,0.9,1.0,0.2" ;;
    dirichlet) preset=head-to-head-dirichlet axes="--grid alpha=0.3,0.1,1.0" ;;
    new-clients) axes="--grid opt_out=0.2,0.5" ;;
    rotated) axes="--set partition.scheme=iid --grid partition.rotations=4" ;;
    *) echo "$0: unknown family $family (majority, dirichlet, new-clients, rotated)" >&2; exit 2 ;;
esac
case $group in
    mixtures)
        methods='["fedavg","local","finetune","moe","moe-plus","pfl-moe","ditto","ifca",'
        methods=$methods'"moe-ifca","fedbabu","moe-plus-fedbabu"]' ;;
    global-personal) methods='["fedprox","apfl","pfedme","per-fedavg"]' ;;
    split-model) methods='["fedper","fedrep","lg-fedavg"]' ;;
    centralised) methods='["centralised"]' ;;
    publish)
        for d in runs/h2h/"$family"/*/; do
            [ -f "$d/sweep.csv" ] || continue
            FEDMOE=$fedmoe scripts/publish-sweep.sh "${d%/}" "$docs/$family/$(basename "$d")"
        done
        exec "$0" "$family" merge ;;
    merge)
        set --
        for d in "$docs/$family"/*/; do
            if [ -f "$d/sweep.csv" ]; then set -- "$@" "${d%/}"; fi
        done
        [ $# -gt 0 ] || { echo "$0: no published group under $docs/$family" >&2; exit 1; }
        exec "$fedmoe" merge "$docs/$family" "$@" ;;
    *) echo "$0: unknown group $group" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086  # $axes is a list of options
exec "$fedmoe" sweep --preset "$preset" $axes --set "methods=$methods" --seeds 3 \
    --out "runs/h2h/$family/$group" "$@"
