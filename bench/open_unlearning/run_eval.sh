#!/usr/bin/env bash
# open-unlearning's standard TOFU evaluation (experiment eval/tofu/default, forget10, privleak
# left out: it needs holdout10, which the TOFU folder may lack), offline, one thread, from
# scratch (no cached metrics or datasets). Usage:
#   bench/open_unlearning/run_eval.sh OU_HOME MODEL_NAME TOFU_DATA_DIR [RETAIN_LOG]
# MODEL_NAME: a folder under OU_HOME/model (setup.sh); RETAIN_LOG: the retain model's
# TOFU_EVAL.json, for forget quality. Prints "[count] json {...}" (sitecustomize.py) at exit.
set -euo pipefail
HOME_DIR=$(realpath "$1") NAME=$2 DATA=$(realpath "$3") RETAIN=${4:-null}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HOME_DIR/saves/$NAME
rm -rf "$OUT" && mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_HOME=$OUT/hf_home HF_DATASETS_CACHE=$OUT/hf_home/datasets TOFU_DATA_DIR=$DATA
export PYTHONPATH=$HERE:$HERE/stubs  # sitecustomize.py; stubs for two imports eval never uses
cd "$HOME_DIR/open-unlearning"
exec "$HOME_DIR/venv/bin/python" src/eval.py experiment=eval/tofu/default model=soul_tiny_llama \
  model.model_args.pretrained_model_name_or_path="$HOME_DIR/model/$NAME" \
  model.tokenizer_args.pretrained_model_name_or_path="$HOME_DIR/model/$NAME" \
  forget_split=forget10 "~eval.tofu.metrics.privleak" retain_logs_path="$RETAIN" \
  task_name="$NAME" paths.output_dir="$OUT"
