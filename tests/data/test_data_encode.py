"""The answer-position helpers every layer shares, and eval_mode."""

from __future__ import annotations

import math

import torch

from soulcli.data.encode import answer_logprobs, answer_mask, eval_mode, pick_answer_logits

# two rows: prompt, prompt, answer, answer (EOS) / prompt, answer, padding, padding
LABELS = torch.tensor([[-100, -100, 2, 1], [-100, 3, -100, -100]])


def test_answer_mask_marks_the_logits_that_predict_an_answer_token():
    assert answer_mask(LABELS).tolist() == [[False, True, True], [True, False, False]]


def test_answer_logits_and_logprobs_on_a_hand_built_case():
    logits = torch.zeros(2, 4, 4)
    logits[0, 1, 2] = math.log(3.0)  # p(2) = 3/6 at the first answer position of row 0
    picked = pick_answer_logits(logits, LABELS)
    assert picked.shape == (3, 4) and picked.dtype == torch.float32
    assert torch.equal(picked[0], logits[0, 1]) and torch.equal(picked[2], logits[1, 0])
    assert pick_answer_logits(logits.double(), LABELS).dtype == torch.float64
    logp, mask = answer_logprobs(logits.bfloat16(), LABELS)
    assert logp.dtype == torch.float32 and torch.equal(mask, answer_mask(LABELS))
    expected = [[0.0, math.log(0.5), math.log(0.25)], [math.log(0.25), 0.0, 0.0]]
    torch.testing.assert_close(logp, torch.tensor(expected), rtol=0, atol=2e-3)


def test_eval_mode_restores_every_modules_own_flag():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    model.train()
    model[1].eval()  # a part deliberately frozen in eval mode
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training
    assert not model[1].training and not model[1][0].training
    model.eval()
    with eval_mode(model):
        pass
    assert not any(m.training for m in model.modules())
