# Loaded at interpreter start (on PYTHONPATH) in the open-unlearning evaluation runs of
# bench/bench_vs_open_unlearning.py: one torch thread, and a count of the forward passes and token
# positions pushed through the causal LM, scoring and generation apart, printed at exit.
import atexit, os, sys, time

_T0 = time.time()
try:  # process start time from /proc (includes interpreter startup)
    _ticks = os.sysconf("SC_CLK_TCK")
    _start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
    _boot = float([l for l in open("/proc/stat") if l.startswith("btime")][0].split()[1])
    _PROC_START = _boot + _start_ticks / _ticks
except Exception:
    _PROC_START = _T0

import torch
torch.set_num_threads(1)
torch.set_num_interop_threads(1)

from transformers import LlamaForCausalLM, PreTrainedModel
from transformers.generation.utils import GenerationMixin

S = {"score_calls": 0, "score_pos": 0, "score_real": 0,
     "gen_calls": 0, "gen_prefill_pos": 0, "gen_step_pos": 0, "gen_steps": 0,
     "gen_prefill_real": 0, "generate_calls": 0, "gen_new_tokens": 0,
     "t_loaded": None, "t_first_fwd": None, "t_last_fwd": None}
_in_gen = [False]

_orig_fwd = LlamaForCausalLM.forward
def _fwd(self, input_ids=None, *a, **k):
    now = time.time()
    if S["t_first_fwd"] is None:
        S["t_first_fwd"] = now
    if input_ids is not None:
        n = input_ids.numel()
        if _in_gen[0]:
            S["gen_calls"] += 1
            pkv = k.get("past_key_values")
            prefill = pkv is None or (hasattr(pkv, "get_seq_length") and pkv.get_seq_length() == 0)
            if prefill:
                S["gen_prefill_pos"] += n
                am = k.get("attention_mask")
                S["gen_prefill_real"] += int(am.sum()) if am is not None else n
            else:
                S["gen_step_pos"] += n
                S["gen_steps"] += 1
        else:
            S["score_calls"] += 1
            S["score_pos"] += n
            am = k.get("attention_mask")
            S["score_real"] += int(am.sum()) if am is not None else n
    out = _orig_fwd(self, input_ids, *a, **k)
    S["t_last_fwd"] = time.time()
    return out
LlamaForCausalLM.forward = _fwd

_orig_gen = GenerationMixin.generate
def _gen(self, inputs=None, *a, **k):
    _in_gen[0] = True
    S["generate_calls"] += 1
    try:
        out = _orig_gen(self, inputs, *a, **k)
    finally:
        _in_gen[0] = False
    x = inputs if inputs is not None else k.get("input_ids")
    if x is not None:
        S["gen_new_tokens"] += out[:, x.shape[-1]:].numel()
    return out
GenerationMixin.generate = _gen

_orig_fp = PreTrainedModel.from_pretrained.__func__
@classmethod
def _fp(cls, *a, **k):
    m = _orig_fp(cls, *a, **k)
    S["t_loaded"] = time.time()
    return m
PreTrainedModel.from_pretrained = _fp

@atexit.register
def _report():
    end = time.time()
    p = lambda *x: print("[count]", *x, file=sys.stderr, flush=True)
    p(f"threads={torch.get_num_threads()} torch={torch.__version__}")
    p(f"scoring (teacher-forced) forward calls={S['score_calls']} positions(padded)={S['score_pos']} positions(non-pad)={S['score_real']}")
    p(f"generation: generate() calls={S['generate_calls']} forward calls={S['gen_calls']} "
      f"(prefill {S['gen_calls'] - S['gen_steps']}, decode steps {S['gen_steps']}) "
      f"prefill positions(padded)={S['gen_prefill_pos']} (non-pad {S['gen_prefill_real']}) "
      f"decode positions={S['gen_step_pos']} new-token slots={S['gen_new_tokens']}")
    p(f"total forward calls={S['score_calls'] + S['gen_calls']} total positions={S['score_pos'] + S['gen_prefill_pos'] + S['gen_step_pos']}")
    p(f"wall from process start={end - _PROC_START:.2f}s; from sitecustomize={end - _T0:.2f}s")
    if S["t_loaded"]:
        p(f"wall after model load (from_pretrained returned -> exit)={end - S['t_loaded']:.2f}s")
    if S["t_first_fwd"]:
        p(f"first forward -> last forward={S['t_last_fwd'] - S['t_first_fwd']:.2f}s")
    import json as _json
    p("json " + _json.dumps({"scoring_passes": S["score_calls"], "scoring_positions": S["score_pos"],
                             "scoring_positions_non_pad": S["score_real"], "generation_passes": S["gen_calls"],
                             "generation_positions": S["gen_prefill_pos"] + S["gen_step_pos"],
                             "seconds_from_process_start": end - _PROC_START, "threads": torch.get_num_threads()}))
