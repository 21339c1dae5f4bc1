import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

from neurostep.models import list_mixers  # noqa: E402
from neurostep.replace import replace_attention  # noqa: E402

OWN_MIXERS = ["softmax_attention", "ffnified_attention", "ninformer", "efficientmod", "crate_mssa"]


def _quiet_logging():
    transformers.logging.set_verbosity_error()


def _tiny_timm_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3, **kw)


def _tiny_hf_vit():
    _quiet_logging()
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    return transformers.ViTForImageClassification(cfg)


def _tiny_gpt2():
    _quiet_logging()
    cfg = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=32, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


class _EncoderClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x, mask=None, is_causal=None):
        return self.head(self.encoder(x, mask=mask, is_causal=is_causal).mean(1))


def _train_lowers_loss(model, loss_fn, steps=3, lr=3e-3):
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        if first is None:
            first = loss.item()
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, f"no gradient for {missing[:5]}"
        opt.step()
    assert loss_fn().item() < first


@pytest.mark.parametrize("kind", OWN_MIXERS)
def test_timm_vit(kind):
    torch.manual_seed(0)
    model = _tiny_timm_vit()
    replace_attention(model, kind)
    assert not any(type(m).__name__ == "Attention" for m in model.modules())
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    _train_lowers_loss(model, lambda: nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("kind", list_mixers())
def test_timm_vit_every_registered_mixer_runs(kind):
    torch.manual_seed(0)
    model = _tiny_timm_vit(reg_tokens=1)   # class + register token: 2 prefix tokens
    replace_attention(model, kind)
    core = model.blocks[0].attn.core
    assert core.num_prefix_tokens == 2 and core.grid_size == (4, 4)
    out = model(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_prefix_modes():
    torch.manual_seed(0)
    model = _tiny_timm_vit()
    replace_attention(model, "softmax_attention", prefix_mode="zero")
    x = torch.randn(1, 5, 16)
    y = model.blocks[0].attn(x)
    assert torch.all(y[:, 0] == 0)
    model = _tiny_timm_vit()
    replace_attention(model, "softmax_attention")
    y = model.blocks[0].attn(torch.randn(1, 17, 16))
    torch.testing.assert_close(y[:, 0], y[:, 1:].mean(1))   # class token: mean of the patch tokens' outputs
    with pytest.raises(ValueError, match="prefix_mode"):
        replace_attention(_tiny_timm_vit(), "softmax_attention", prefix_mode="first")


def test_transformer_encoder_layer_keeps_signature():
    torch.manual_seed(0)
    model = _EncoderClassifier()
    replace_attention(model, "efficientmod", grid_size=(2, 3))
    x, y = torch.randn(4, 6, 16), torch.tensor([0, 1, 2, 1])
    _train_lowers_loss(model, lambda: nn.functional.cross_entropy(model(x), y))
    model.eval()   # the inference fast path must not be taken (it reads the attention's weights)
    assert model(x).shape == (4, 3)
    with pytest.raises(ValueError, match="causal"):
        model(x, mask=nn.Transformer.generate_square_subsequent_mask(6), is_causal=True)


def test_ninformer_in_transformer_encoder_without_seq_len():
    """The host does not know N; the NiNformer mixer sizes its token MLP on the first batch."""
    torch.manual_seed(0)
    model = _EncoderClassifier()
    replace_attention(model, "ninformer")
    x, y = torch.randn(4, 6, 16), torch.tensor([0, 1, 2, 1])
    _train_lowers_loss(model, lambda: nn.functional.cross_entropy(model(x), y))
    assert all(layer.self_attn.core.mixer.seq_len == 6 for layer in model.encoder.layers)
    with pytest.raises(ValueError, match="seq_len=6"):
        model(torch.randn(4, 7, 16))


def test_2d_mixer_without_a_grid_names_the_module():
    model = _EncoderClassifier()
    replace_attention(model, "efficientmod")       # nn.MultiheadAttention: no grid to infer
    assert model(torch.randn(2, 9, 16)).shape == (2, 3)        # 9 tokens: a 3 x 3 square
    with pytest.raises(ValueError, match=r"encoder\.layers\.0\.self_attn.*grid_size=\(H, W\)"):
        model(torch.randn(2, 6, 16))


def test_causal_host_reads_the_declared_causality():
    """A bidirectional mixer that inherits a ``causal`` attribute (vim from Mamba) is still refused by a
    causal mask: the adapter reads the registry, not the module."""
    model = _EncoderClassifier()
    replace_attention(model, "vim", d_state=4)
    assert not model.encoder.layers[0].self_attn.core.causal
    with pytest.raises(ValueError, match="not causal"):
        model(torch.randn(2, 6, 16), mask=nn.Transformer.generate_square_subsequent_mask(6), is_causal=True)
    model = _EncoderClassifier()
    replace_attention(model, "mamba", d_state=4)
    assert model.encoder.layers[0].self_attn.core.causal
    assert model(torch.randn(2, 6, 16), mask=nn.Transformer.generate_square_subsequent_mask(6),
                 is_causal=True).shape == (2, 3)


def test_transformer_encoder_causal_mask_with_causal_mixer():
    torch.manual_seed(0)
    model = _EncoderClassifier()
    replace_attention(model, "softmax_attention", causal=True)
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    x = torch.randn(2, 6, 16)
    enc = model.encoder
    a = enc(x, mask=mask, is_causal=True)
    x2 = x.clone()
    x2[:, -1] += 1.0
    b = enc(x2, mask=mask, is_causal=True)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    other = torch.zeros(6, 6)
    other[0, 3] = float("-inf")
    with pytest.raises(ValueError, match="attn_mask"):
        enc(x, mask=other)


def test_multihead_attention_direct_calls():
    torch.manual_seed(0)
    holder = nn.Module()
    holder.mha = nn.MultiheadAttention(16, 2)   # sequence-first
    replace_attention(holder, "crate_mssa")
    x = torch.randn(5, 2, 16)
    out, weights = holder.mha(x, x, x)          # need_weights=True: no attention matrix exists
    assert out.shape == (5, 2, 16) and weights is None
    out1, _ = holder.mha(x[:, 0], x[:, 0], x[:, 0])     # unbatched (N, C)
    torch.testing.assert_close(out1, out[:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cross-attention"):
        holder.mha(x, torch.randn(5, 2, 16), x)
    with pytest.raises(ValueError, match="key_padding_mask"):
        holder.mha(x, x, x, key_padding_mask=torch.tensor([[False] * 4 + [True]] * 2))
    out2, _ = holder.mha(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    torch.testing.assert_close(out2, out)
    with pytest.raises(TypeError, match="cross-attention"):
        h = nn.Module()
        h.mha = nn.MultiheadAttention(16, 2, kdim=8, vdim=8)
        replace_attention(h, "softmax_attention")


def test_hf_vit():
    torch.manual_seed(0)
    model = _tiny_hf_vit()
    replace_attention(model, "ffnified_attention", kernel_size=3)
    core = model.get_submodule("vit.layers.0.attention").core
    assert core.grid_size == (4, 4) and core.num_prefix_tokens == 1
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    _train_lowers_loss(model, lambda: model(pixel_values=x, labels=y).loss)


@pytest.mark.parametrize("kind", ["softmax_attention", "mamba", "spikegpt_timemix"])
def test_gpt2_causal(kind):
    torch.manual_seed(0)
    model = _tiny_gpt2()
    replace_attention(model, kind)
    assert model.config.use_cache is False
    ids = torch.randint(0, 32, (2, 8))
    _train_lowers_loss(model, lambda: model(input_ids=ids, labels=ids).loss)
    # causality survives replacement: changing the last token leaves earlier logits unchanged
    model.eval()
    ids2 = ids.clone()
    ids2[:, -1] = (ids[:, -1] + 1) % 32
    torch.testing.assert_close(model(input_ids=ids).logits[:, :-1], model(input_ids=ids2).logits[:, :-1])
    with pytest.raises(ValueError, match="padding"):
        model(input_ids=ids, attention_mask=torch.tensor([[1] * 6 + [0] * 2] * 2))
    with pytest.raises(ValueError, match="KV cache"):
        model(input_ids=ids, use_cache=True)


def test_gpt2_noncausal_mixer_needs_opt_in():
    with pytest.raises(ValueError, match="not causal"):
        replace_attention(_tiny_gpt2(), "ninformer", seq_len=8)
    model = replace_attention(_tiny_gpt2(), "ninformer", seq_len=8, allow_noncausal=True)
    ids = torch.randint(0, 32, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()


def test_unknown_models_raise_naming_the_module():
    with pytest.raises(TypeError, match="no self-attention"):
        replace_attention(nn.Sequential(nn.Linear(4, 4)), "softmax_attention")
    _quiet_logging()
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=32, vocab_size=30))
    with pytest.raises(TypeError, match=r"encoder\.layer\.0\.attention"):
        replace_attention(bert, "softmax_attention")
    with pytest.raises(ValueError, match="unknown mixer"):
        replace_attention(_tiny_timm_vit(), "no_such_mixer")


def test_lazy_top_level_exports_and_bad_arguments():
    import neurostep

    assert neurostep.replace_attention is replace_attention
    assert "softmax_attention" in neurostep.list_mixers()
    with pytest.raises(TypeError, match="nn.Module"):
        replace_attention("not a model", "softmax_attention")
    with pytest.raises(AttributeError, match="no_such_name"):
        neurostep.no_such_name  # noqa: B018
