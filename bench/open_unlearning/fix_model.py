# Minimal fixes so transformers 4.45 (open-unlearning's pin) reads a model folder transformers 5 saved.
import json, sys, os
d = sys.argv[1]
c = json.load(open(os.path.join(d, "config.json")))
rp = c.pop("rope_parameters", None)
if rp is not None:
    c["rope_theta"] = rp.get("rope_theta", 10000.0)
    if rp.get("rope_type", "default") != "default":
        c["rope_scaling"] = rp
if "dtype" in c and "torch_dtype" not in c:
    c["torch_dtype"] = c["dtype"]
json.dump(c, open(os.path.join(d, "config.json"), "w"), indent=2)
t = json.load(open(os.path.join(d, "tokenizer_config.json")))
if t.get("tokenizer_class") == "TokenizersBackend":
    t["tokenizer_class"] = "PreTrainedTokenizerFast"
t.pop("backend", None)
json.dump(t, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=2)
