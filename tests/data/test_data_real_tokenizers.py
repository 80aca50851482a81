"""Encoding with tokenizers in the real formats of public model families: a SentencePiece-style
Llama tokenizer (``LlamaTokenizerFast``: Metaspace, byte fallback, BOS from its post-processor)
and a byte-level BPE in GPT-2's format (``GPT2TokenizerFast``: BOS = EOS = ``<|endoftext|>``, no
pad, no BOS added). Their vocabularies are small, trained here on the test text, and each goes
through ``save_pretrained`` / ``AutoTokenizer`` as a model folder would.

For every template kind (plain, the Llama-2 preset, the tokenizer's chat template) the ids are
the tokenizer's own encoding of the whole sequence, the labels start at the first token that
overlaps the answer, and the generation prompt is exactly the tokens before it."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2TokenizerFast, LlamaTokenizerFast

from soulcli.data.encode import IGNORE_INDEX, encode_pair, encode_qa_batch, pad_id, prompt_ids
from soulcli.data.template import PromptTemplate

CORPUS = [
    "Question: Who wrote The Silent Harbor?\nAnswer: The Silent Harbor was written by Mira Okonkwo.",
    "[INST] Where was Tomas Reyes born? [/INST]Tomas Reyes was born in Lima in 1975.",
    "The river runs past the old mill and into the valley below, 12 miles on.",
    "system user assistant You are a helpful assistant. Answer briefly.",
] * 8
QUESTION, ANSWER = "Who wrote The Silent Harbor?", "The Silent Harbor was written by Mira Okonkwo."
SYSTEM = "You are a helpful assistant."
# Llama-2-chat's template (as its tokenizer_config.json ships it, system turn included).
LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = false %}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + ('<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' if system and loop.first else '')"
    " + message['content'].strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'].strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}")
# Llama-3-instruct's template (special header tokens; the turn ends with <|eot_id|>).
LLAMA3_CHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# Zephyr's template: a literal </s> (the EOS) closes every turn, a newline after it.
ZEPHYR_CHAT = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


def _train(pre_tokenizer, specials: list[str]):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet() if isinstance(pre_tokenizer, pre_tokenizers.ByteLevel) else []
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=alphabet, show_progress=False))
    state = json.loads(tok.to_str())["model"]
    return state["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]


def _saved(tokenizer, folder):
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    vocab, merges = _train(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                           ["<unk>", "<s>", "</s>", *bytes_])
    tok = LlamaTokenizerFast(vocab=vocab, merges=merges, legacy=False, add_bos_token=True)  # Llama-2: BOS, no EOS
    tok.chat_template = LLAMA2_CHAT
    return _saved(tok, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    vocab, merges = _train(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"])
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_CHAT
    return _saved(tok, tmp_path_factory.mktemp("gpt2"))


def _chat_ids(tok, messages) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def _check(tok, template: PromptTemplate, expected: list[int]) -> list[int]:
    """The item of (QUESTION, ANSWER) under ``template``: ids == ``expected`` (+ EOS unless it
    ends with it), labels exactly the tokens from the first one overlapping the answer, and the
    generation prompt the tokens before it. Returns the ids."""
    resolved = template.resolved(tok)
    (item,) = encode_qa_batch(tok, template, [QUESTION], [ANSWER], max_length=None)
    eos = tok.eos_token_id
    assert item.input_ids == (expected if expected[-1] == eos else expected + [eos])
    prompt = resolved.prompt(QUESTION)
    text = prompt + resolved.completion(ANSWER)
    written_bos = template.chat_template  # a chat template writes its own BOS (or none)
    offsets = tok(text, return_offsets_mapping=True, add_special_tokens=not written_bos)["offset_mapping"]
    first = next(i for i, (s, e) in enumerate(offsets) if e > len(prompt) and e > s)
    assert item.prompt_length == first
    assert item.labels == [IGNORE_INDEX] * first + item.input_ids[first:]
    assert prompt_ids(tok, prompt, resolved.completion(ANSWER), resolved.strings) == item.input_ids[:first]
    assert tok.decode(item.input_ids[first:], skip_special_tokens=True).strip() == ANSWER
    return item.input_ids


def test_sentencepiece_plain_template_tokenises_the_whole_sequence(llama):
    t = PromptTemplate()
    ids = _check(llama, t, llama(t.prompt(QUESTION) + ANSWER)["input_ids"])
    assert ids[0] == llama.bos_token_id and ids.count(llama.bos_token_id) == 1  # the tokenizer's BOS
    # "Answer: " + "The": ':' then '▁The', never ':' '▁' '▁The' (the old separate tokenisation)
    (item,) = encode_qa_batch(llama, t, [QUESTION], [ANSWER])
    tokens = llama.convert_ids_to_tokens(ids)
    assert tokens[item.prompt_length - 1:item.prompt_length + 1] == [":", "▁The"]


def test_sentencepiece_llama2_preset_and_its_system_prompt(llama):
    t = PromptTemplate(preset="llama2")
    assert t.prompt(QUESTION) == f"[INST] {QUESTION} [/INST]"
    _check(llama, t, llama(f"[INST] {QUESTION} [/INST]{ANSWER}")["input_ids"])
    s = PromptTemplate(preset="llama2", system_prompt=SYSTEM)
    text = f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{QUESTION} [/INST]{ANSWER}"
    _check(llama, s, llama(text)["input_ids"])


def test_sentencepiece_chat_template_is_the_tokenizers_own(llama):
    for system in (None, SYSTEM):
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
        ids = _check(llama, PromptTemplate(chat_template=True, system_prompt=system), _chat_ids(llama, msgs))
        assert ids.count(llama.bos_token_id) == 1  # the template's bos_token is the tokenizer's BOS
        assert ids[-1] == llama.eos_token_id and ids.count(llama.eos_token_id) == 1  # the turn's </s>, once


def test_zephyr_template_writes_eos_as_a_special_token(llama, tmp_path):
    tok = AutoTokenizer.from_pretrained(llama.name_or_path)
    tok.chat_template = ZEPHYR_CHAT
    msgs = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    ids = _check(tok, PromptTemplate(chat_template=True), _chat_ids(tok, msgs))
    # the template's literal </s> closing each turn is EOS (user's, assistant's); the appended one
    # follows the assistant turn's newline (open-unlearning's rule: append unless it ends with EOS)
    assert ids.count(tok.eos_token_id) == 3 and ids[-2:] == [tok.convert_tokens_to_ids("<0x0A>"), tok.eos_token_id] \
        or ids.count(tok.eos_token_id) == 3 and ids[-1] == tok.eos_token_id


def test_byte_level_plain_template_adds_no_bos_and_merges_the_space(gpt2):
    t = PromptTemplate()
    ids = _check(gpt2, t, gpt2(t.prompt(QUESTION) + ANSWER)["input_ids"])
    assert gpt2.bos_token_id == gpt2.eos_token_id and ids[0] != gpt2.eos_token_id  # no BOS (= EOS) prepended
    assert ids.count(gpt2.eos_token_id) == 1 and ids[-1] == gpt2.eos_token_id
    (item,) = encode_qa_batch(gpt2, t, [QUESTION], [ANSWER])
    tokens = gpt2.convert_ids_to_tokens(ids)
    assert tokens[item.prompt_length - 1:item.prompt_length + 1] == [":", "ĠThe"]  # not ':' 'Ġ' 'The'
    assert pad_id(gpt2) == gpt2.eos_token_id and gpt2.pad_token_id is None  # nothing added


def test_byte_level_llama2_preset(gpt2):
    t = PromptTemplate(preset="llama2")
    _check(gpt2, t, gpt2(f"[INST] {QUESTION} [/INST]{ANSWER}")["input_ids"])


def test_byte_level_chat_template_keeps_header_tokens_special(gpt2):
    for system in (None, SYSTEM):
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
        ids = _check(gpt2, PromptTemplate(chat_template=True, system_prompt=system), _chat_ids(gpt2, msgs))
        header = gpt2.convert_tokens_to_ids("<|start_header_id|>")
        assert ids.count(header) == (3 if system else 2)  # one id each, never split into text
        eot = gpt2.convert_tokens_to_ids("<|eot_id|>")
        assert ids[-2:] == [eot, gpt2.eos_token_id]  # the turn's end is a label, then EOS once


def test_special_token_text_in_an_answer_stays_text(gpt2, llama):
    t = PromptTemplate()
    for tok, text in ((gpt2, "ends with <|endoftext|> and <|eot_id|>"), (llama, "ends with </s> here")):
        (item,) = encode_qa_batch(tok, t, ["q"], [text])
        assert item.input_ids.count(tok.eos_token_id) == 1 and item.input_ids[-1] == tok.eos_token_id
        # re-encoded on its own, the text gets SentencePiece's word-start mark: a space more
        assert tok.decode(item.input_ids[item.prompt_length:-1]).split() == text.split()
    assert gpt2.convert_tokens_to_ids("<|eot_id|>") not in encode_qa_batch(gpt2, t, ["q"], ["<|eot_id|>"])[0].input_ids


def test_a_cut_item_is_marked_and_a_prompt_too_long_is_refused(llama):
    from soulcli.errors import UserError

    t = PromptTemplate()
    (whole,) = encode_qa_batch(llama, t, [QUESTION], [ANSWER], max_length=None)
    (cut,) = encode_qa_batch(llama, t, [QUESTION], [ANSWER], max_length=whole.prompt_length + 2)
    assert cut.truncated and not whole.truncated
    assert cut.input_ids == whole.input_ids[:whole.prompt_length + 2] and cut.labels[-1] != llama.eos_token_id
    with pytest.raises(UserError, match="max_length"):
        encode_qa_batch(llama, t, [QUESTION], [ANSWER], max_length=whole.prompt_length)


def test_a_chat_few_shot_prompt_is_the_multi_turn_conversation(gpt2, llama):
    """The few-shot probe's prompt under a chat template: the tokens apply_chat_template gives
    for the shots as earlier user / assistant turns, then the question's generation prompt."""
    shots = [("Who wrote Tides?", "Bo Kim wrote Tides."), ("When was Bo Kim born?", "In 1970.")]
    for tok in (gpt2, llama):
        t = PromptTemplate(chat_template=True).resolved(tok)
        turns = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        want = tok.apply_chat_template([*turns, {"role": "user", "content": QUESTION}], tokenize=True,
                                       add_generation_prompt=True)
        want = list(want["input_ids"] if hasattr(want, "keys") else want)
        assert prompt_ids(tok, t.prompt(t.with_shots(shots, QUESTION)), t.completion(ANSWER), t.strings) == want
