#!/usr/bin/env bash
# The paper's Doom TakeCover experiment (`--preset doom`: V z=64, M LSTM 512 on 100 x 500
# windows, C evolved only in M's dream, pop 64 x 16, scored on 100 real games) on one CUDA
# machine, every stage given a fixed share of the wall time. Prints the pipeline's report
# (stage times, score). Usage:
#
#   benchmarks/doom_gpu.sh RUN_DIR [PRESET] [COLLECT_S V_S M_S C_S] [--set KEY=VALUE ...]
#
# defaults: preset doom; 100 s of collection (as many episodes as fit), V 90 s, M 120 s (at
# most the original's 24,000 steps), CMA-ES in the dream 100 s. A run stopped part-way
# resumes with the same command; a stage that has finished keeps its budget (the pipeline
# refuses to change a finished stage's settings). Arguments after the budgets go to the
# pipeline as they are (e.g. `--set collect.num_envs=16`).
set -uo pipefail
run=${1:?usage: benchmarks/doom_gpu.sh RUN_DIR [PRESET] [COLLECT_S V_S M_S C_S] [--set KEY=VALUE ...]}
preset=${2:-doom}
collect_s=${3:-100}
vae_s=${4:-90}
mdrnn_s=${5:-120}
controller_s=${6:-100}
shift $(($# < 6 ? $# : 6))
wm=(python3 -m worldmodels)
sets=(
    --set "vae.time_budget_s=$vae_s"
    --set "mdrnn.steps=24000" --set "mdrnn.time_budget_s=$mdrnn_s"
    --set "controller.time_budget_s=$controller_s"
    "$@"
)
if python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    sets+=(--set vae.bf16=true --set vae.channels_last=true)
fi
t0=$(date +%s)
if [ ! -e "$run/stages.json" ] || ! grep -q '"collect"' "$run/stages.json"; then
    # SIGTERM ends collection at a safe point; the finished episodes stay in the store
    timeout -s TERM "$collect_s" "${wm[@]}" pipeline --preset "$preset" --out "$run" \
        "${sets[@]}" --no-progress
    episodes=$(python3 -c "from worldmodels.data.store import EpisodeStore as S; \
print(len(S('$run/episodes')))")
    echo "collected $episodes episodes in $(($(date +%s) - t0)) s"
    sets+=(--set "collect.episodes=$episodes")
else
    sets+=(--set "collect.episodes=$(python3 -c "import json; \
print(json.load(open('$run/config.json'))['collect']['episodes'])")")
fi
"${wm[@]}" pipeline --preset "$preset" --out "$run" "${sets[@]}" --no-progress
status=$?
echo "wall time $(($(date +%s) - t0)) s, exit $status"
exit $status
