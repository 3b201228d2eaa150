#!/bin/sh
# The head-to-head study's tuning grids (issue 20), seed 0, chosen on validation only.
#
#   scripts/head-to-head-tuning.sh SETTING STAGE [fedmoe sweep options...]
#
# SETTING: p08 (majority class p = 0.8) or alpha03 (Dirichlet alpha = 0.3).
# STAGE:   personalise  the shared personalisation stage (FT's and Local's, used by
#                       every method's post-federation training): Adam and SGD with
#                       momentum 0.9, learning rates over two decades;
#          <method>     that method's own options (see the case below), with the
#                       personalisation settings the previous stage chose (PERSONALISE).
#                       FedAvg, Local, FT, FedPer and LG-FedAvg have no options of
#                       their own beyond the shared phases.
# Each grid is a resumable `fedmoe sweep` into runs/h2h-tuning/SETTING/STAGE[-*]: run the
# same command again after an interruption; finished runs are skipped. Every run scores
# each method on the clients' validation sets, and `fedmoe report` writes the choice
# ("Chosen on validation"). Publish a finished grid with
#   scripts/publish-sweep.sh runs/h2h-tuning/SETTING/STAGE \
#       docs/results/fashion-mnist/head-to-head/tuning/SETTING/STAGE
# PERSONALISE: --set overrides for the personalisation stage, as one string (default:
# what the setting's personalise grids chose, below; at p = 0.8 Adam lr 5e-4, chosen
# over Adam 5e-5 .. 5e-3 and SGD with momentum 0.9 at 1e-3 .. 1e-1).
set -eu
[ $# -ge 2 ] || { sed -n '2,22p' "$0" >&2; exit 2; }
setting=$1 stage=$2
shift 2
# chosen: the personalisation settings the setting's personalise grids chose (empty
# until they have run; then every later grid of the setting uses them). ifca: the
# number of IFCA models the setting's ifca grid chose, for the moe-ifca grid; models:
# the ifca grid.
case $setting in
    p08) where="--set partition.p=0.8" chosen="--set personalise.lr=5e-4" ifca=3 models=2,3,4 ;;
    alpha03)  # 4 models were the best of 2, 3, 4: the grid goes on to 5
        where="--set partition.scheme=dirichlet --set partition.alpha=0.3"
        chosen="--set personalise.lr=5e-4" ifca=4 models=2,3,4,5 ;;
    *) echo "$0: unknown setting $setting (p08 or alpha03)" >&2; exit 2 ;;
esac
fedmoe=${FEDMOE:-fedmoe}
out=runs/h2h-tuning/$setting
personalise=${PERSONALISE-$chosen}

sweep() {  # sweep NAME METHODS GRID... : one grid, the methods in TOML array syntax
    name=$1 methods=$2
    shift 2
    # shellcheck disable=SC2086  # $where and $personalise are lists of options
    "$fedmoe" sweep --preset head-to-head $where $personalise --set "methods=$methods" \
        --seeds 1 --out "$out/$name" "$@"
}

case $stage in
    personalise)
        personalise=""
        sweep personalise-adam '["fedavg","local","finetune"]' \
            --grid personalise.lr=5e-5,5e-4,5e-3 "$@"
        sweep personalise-sgd '["fedavg","local","finetune"]' \
            --set personalise.optimizer=sgd --set personalise.momentum=0.9 \
            --grid personalise.lr=1e-3,1e-2,1e-1 "$@" ;;
    moe) sweep moe '["fedavg","finetune","moe"]' --grid method.moe.lr=1e-5,1e-4,1e-3 "$@" ;;
    moe-ditto)
        sweep moe-ditto '["fedavg","ditto","moe-ditto"]' \
            --grid method.moe-ditto.lr=1e-5,1e-4,1e-3 "$@" ;;
    fedprox) sweep fedprox '["fedprox"]' --grid method.fedprox.mu=0.001,0.01,0.1,1.0 "$@" ;;
    ditto) sweep ditto '["ditto"]' --grid method.ditto.lam=0.01,0.1,1.0 "$@" ;;
    apfl) sweep apfl '["apfl"]' --grid method.apfl.alpha=0.25,0.5,0.75,0.9,0.95,1.0 "$@" ;;
    pfedme) sweep pfedme '["pfedme"]' --grid method.pfedme.lam=5.0,15.0,30.0 "$@" ;;
    per-fedavg) sweep per-fedavg '["per-fedavg"]' --grid method.per-fedavg.alpha=0.001,0.01,0.1,0.3 "$@" ;;
    fedrep) sweep fedrep '["fedrep"]' --grid method.fedrep.head_epochs=1,5,10 "$@" ;;
    fedbabu) sweep fedbabu '["fedbabu"]' --grid method.fedbabu.finetune_epochs=5,20,0 "$@" ;;
    pfl-moe) sweep pfl-moe '["fedavg","pfl-moe"]' --grid method.pfl-moe.lr=1e-4,1e-3,1e-2,1e-1,1.0,10.0 "$@" ;;
    ifca) sweep ifca '["ifca"]' --grid "method.ifca.models=$models" "$@" ;;
    # The gate's learning rate: MoE+'s grid rose from 1e-4 to 1e-2 at p = 0.8, so it goes
    # on to 1e-1; the gates over other experts started at 1e-3, the best of MoE+
    # (FedBABU)'s and MoE+ IFCA's at p = 0.8, so their grids go down to 1e-4.
    moe-plus)
        sweep moe-plus '["fedavg","finetune","moe-plus"]' \
            --grid method.moe-plus.lr=1e-4,1e-3,1e-2,1e-1 "$@" ;;
    moe-plus-fedbabu)
        sweep moe-plus-fedbabu '["fedavg","fedbabu","moe-plus-fedbabu"]' \
            --grid method.moe-plus-fedbabu.lr=1e-4,1e-3,1e-2,1e-1 "$@" ;;
    moe-ifca)
        sweep moe-ifca '["fedavg","finetune","ifca","moe-ifca"]' \
            --set "method.ifca.models=$ifca" --grid method.moe-ifca.lr=1e-4,1e-3,1e-2,1e-1 "$@" ;;
    *) echo "$0: unknown stage $stage" >&2; exit 2 ;;
esac
