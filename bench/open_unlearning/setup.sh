#!/usr/bin/env bash
# One-time set-up (not timed) of open-unlearning's TOFU evaluation, offline, for
# bench/bench_vs_open_unlearning.py. Usage:
#   bench/open_unlearning/setup.sh OU_SOURCE OU_HOME MODEL_DIR...
# OU_SOURCE: a clone of github.com/locuslab/open-unlearning (a work tree or a bare git dir; the
# benchmark ran commit d3d7cf9); OU_HOME: where the venv, the configured copy and the model copies
# go; MODEL_DIR: soulcli model folders (the target, the retain model) to evaluate.
# What changes in open-unlearning (no Python code): its TOFU dataset configs read local JSON files
# ($TOFU_DATA_DIR/<split>.json) instead of the hub, and a model config for soulcli's plain template.
set -euo pipefail
SRC=$(realpath "$1") HOME_DIR=$(realpath -m "$2"); shift 2
MODELS=(); for m in "$@"; do MODELS+=("$(realpath "$m")"); done
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$HOME_DIR" && cd "$HOME_DIR"
if [ ! -x venv/bin/python ]; then  # open-unlearning's pins (requirements.txt), torch the local CPU build
  python3.11 -m venv venv
  echo "torch==2.13.0" > constraints.txt
  venv/bin/pip install -q -c constraints.txt torch==2.13.0
  venv/bin/pip install -q -c constraints.txt transformers==4.45.1 huggingface-hub==0.29.1 datasets==3.0.1 \
    hydra-core==1.3 hydra_colorlog==1.2.0 omegaconf==2.3.0 rouge-score==0.1.2 scipy==1.14.1 \
    scikit-learn==1.5.2 accelerate==0.34.2 numpy==2.2.3
fi
if [ ! -d open-unlearning/src ]; then
  mkdir -p open-unlearning
  if [ -d "$SRC/.git" ] || [ -f "$SRC/HEAD" ]; then
    git --git-dir="$( [ -d "$SRC/.git" ] && echo "$SRC/.git" || echo "$SRC")" archive HEAD | tar -x -C open-unlearning
  else
    cp -r "$SRC"/. open-unlearning/
  fi
  sed -i -E 's#^( *)path: "locuslab/TOFU"#\1path: json\n\1data_files: $''{oc.env:TOFU_DATA_DIR}/$''{.name}.json#' \
    open-unlearning/configs/data/datasets/TOFU_*.yaml
  cat > open-unlearning/configs/model/soul_tiny_llama.yaml <<'YAML'
# soulcli's plain template, "Question: {q}\nAnswer: {a}" + EOS (the tags of Llama-2-7b-hf.yaml)
model_args:
  pretrained_model_name_or_path: null
  torch_dtype: float32
  device_map: cpu
tokenizer_args:
  pretrained_model_name_or_path: null
template_args:
  apply_chat_template: False
  user_start_tag: "Question: "
  user_end_tag: "\n"
  asst_start_tag: "Answer: "
  asst_end_tag: "\n\n"
YAML
fi
for m in "${MODELS[@]}"; do  # a copy transformers 4.45 reads (fix_model.py: rope_theta, tokenizer class)
  name=$(basename "$m")
  if [ ! -f "model/$name/model.safetensors" ]; then
    mkdir -p "model/$name"
    cp "$m"/{config.json,generation_config.json,model.safetensors,tokenizer.json,tokenizer_config.json} "model/$name/"
    venv/bin/python "$HERE/fix_model.py" "model/$name"
  fi
done
