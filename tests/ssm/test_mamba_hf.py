"""MambaLM.from_hf against transformers' own Mamba tester config and every MambaConfig field."""

from __future__ import annotations

import pytest
import torch

from neurostep.ssm import Mamba, MambaLM
from neurostep.ssm.mamba import HF_MAMBA_CONFIG_FIELDS

transformers = pytest.importorskip("transformers")

# The config of transformers' MambaModelTester (tests/models/mamba/test_modeling_mamba.py in the
# transformers repository; the tester is not installed with the package): intermediate_size=32
# with hidden_size=32, i.e. an inner width of 1 x hidden although expand stays 2.
TESTER = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, intermediate_size=32, activation_function="silu",
              n_positions=512, type_vocab_size=16, use_cache=True, bos_token_id=98, eos_token_id=98, pad_token_id=98,
              gradient_checkpointing=False, tie_word_embeddings=True)
BATCH, SEQ = 14, 7  # the tester's batch_size and seq_length


def _hf(seed: int = 0, strong: bool = False, dtype: torch.dtype = torch.float32, **overrides):
    torch.manual_seed(seed)
    cfg = transformers.MambaConfig(**{**TESTER, **overrides})
    model = transformers.MambaForCausalLM(cfg).eval().to(dtype)
    if strong:
        with torch.no_grad():
            # stronger mixers than HF's init, so that greedy decoding does not settle on one token
            for name, p in model.named_parameters():
                if name.endswith(("in_proj.weight", "out_proj.weight", "x_proj.weight")):
                    p.normal_(0, 3.0 / p.shape[1] ** 0.5)
    return model


def _ids(vocab: int = 99, batch: int = BATCH, seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_tester_config_loads_and_gives_the_same_logits():
    hf = _hf()
    assert hf.config.intermediate_size == 32 and hf.config.expand == 2
    ours = MambaLM.from_hf(hf).eval()
    assert all(layer.mixer.d_inner == 32 for layer in ours.backbone.layers)
    ids = _ids()
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits
        out = ours(ids)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("strong", [False, True])
def test_tester_config_same_greedy_tokens(strong):
    hf = _hf(seed=1, strong=strong)
    ours = MambaLM.from_hf(hf).eval()
    ids = _ids(batch=2, seed=1)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                          do_sample=False)
    out = ours.generate(ids, 12)
    assert out.tolist() == ref.tolist()
    if strong:
        assert len(set(out[0, SEQ:].tolist())) > 1, "degenerate test: generation is constant"


def test_every_config_field_is_mapped():
    declared = set(transformers.MambaConfig.__annotations__) | {"intermediate_size"}
    assert declared <= set(HF_MAMBA_CONFIG_FIELDS), sorted(declared - set(HF_MAMBA_CONFIG_FIELDS))


def test_non_default_fields_are_honoured():
    overrides = dict(intermediate_size=48, state_size=5, conv_kernel=3, time_step_rank=3, use_bias=True,
                     use_conv_bias=False, layer_norm_epsilon=1e-3, tie_word_embeddings=False, residual_in_fp32=False,
                     time_step_init_scheme="constant", time_step_scale=0.5, time_step_min=0.01, time_step_max=0.2)
    hf = _hf(seed=2, **overrides)
    with torch.no_grad():   # HF inits biases to zero; make them matter
        for name, p in hf.named_parameters():
            if name.endswith("proj.bias") and "dt_proj" not in name:
                p.normal_(0, 0.5)
    ours = MambaLM.from_hf(hf).eval()
    mixer = ours.backbone.layers[0].mixer
    assert (mixer.d_inner, mixer.d_state, mixer.d_conv, mixer.dt_rank) == (48, 5, 3, 3)
    assert mixer.in_proj.bias is not None and mixer.conv1d.bias is None and mixer.expand == 1.5
    assert not ours.tie_embeddings and ours.lm_head.weight is not ours.backbone.embedding.weight
    assert not ours.residual_in_fp32 and ours.backbone.norm_f.eps == 1e-3
    ids = _ids(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids, use_cache=False).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_bfloat16_model_and_residual_dtype(residual_in_fp32):
    hf = _hf(seed=3, dtype=torch.bfloat16, residual_in_fp32=residual_in_fp32)
    ours = MambaLM.from_hf(hf).eval()
    assert ours.lm_head.weight.dtype == torch.bfloat16
    seen = []
    handle = ours.backbone.layers[1].register_forward_hook(lambda m, args, out: seen.append(out[0].dtype))
    ids = _ids(seed=3)
    with torch.no_grad():
        out, ref = ours(ids).float(), hf(ids, use_cache=False).logits.float()
    handle.remove()
    assert seen == [torch.float32 if residual_in_fp32 else torch.bfloat16]
    # bf16 rounding (the norms round in a different order than HF's): compare at bf16 precision
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))


def test_unsupported_values_are_refused():
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        MambaLM.from_hf(_hf(hidden_act="gelu"))


def test_non_integer_expand():
    m = Mamba(32, d_state=4, expand=1.5)
    assert m.d_inner == 48 and m.in_proj.weight.shape == (96, 32)
    assert Mamba(32, d_state=4, d_inner=40).d_inner == 40
    for bad in (0, -1, "2", True):
        with pytest.raises(ValueError, match="expand"):
            Mamba(8, expand=bad)
    with pytest.raises(ValueError, match="d_inner"):
        Mamba(8, d_inner=0)
