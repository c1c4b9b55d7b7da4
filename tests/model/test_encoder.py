"""Loading CLIP through the real from_pretrained path, offline errors, embeddings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.errors import ModelLoadError
from asap_core.model.encoder import ClipEncoder, inspect_checkpoint, resolve_model_id
from asap_core.settings import reload_settings


def test_loads_saved_checkpoint_and_matches_clipmodel(tiny_clip_dir):
    from transformers import CLIPModel

    enc = ClipEncoder.from_pretrained(str(tiny_clip_dir), device="cpu")
    assert enc.embed_dim == 64 and enc.patch_side == 4 and enc.image_size == 32
    assert enc.dtype == torch.float32
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]
    emb = enc.encode_images(images)
    assert emb.shape == (3, 64)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    # the same weights loaded as a full CLIPModel give the same (normalised) image features
    full = CLIPModel.from_pretrained(str(tiny_clip_dir)).eval()
    with torch.no_grad():
        feats = full.get_image_features(pixel_values=enc.preprocess(images))
    feats = getattr(feats, "pooler_output", feats)
    assert torch.allclose(emb, torch.nn.functional.normalize(feats, dim=-1), atol=1e-5)


def test_cache_key_follows_weights(tmp_path, tiny_clip_dir):
    from tests.conftest import write_tiny_clip

    other = write_tiny_clip(tmp_path / "other", seed=1)
    a, b = inspect_checkpoint(str(tiny_clip_dir)), inspect_checkpoint(str(other))
    assert a.cache_key != b.cache_key
    assert inspect_checkpoint(str(tiny_clip_dir)).cache_key == a.cache_key


def test_model_from_environment(monkeypatch, tiny_clip_dir):
    monkeypatch.setenv("ASAP_MODEL", str(tiny_clip_dir))
    reload_settings()
    assert resolve_model_id() == str(tiny_clip_dir)
    assert resolve_model_id("x/y") == "x/y"
    assert inspect_checkpoint().embed_dim == 64


@pytest.mark.parametrize("model", ["openai/clip-vit-base-patch32", "/no/such/dir", "./missing-model"])
def test_unavailable_weights_give_one_clear_message(model, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reload_settings()
    with pytest.raises(ModelLoadError) as err:
        ClipEncoder.from_pretrained(model)
    assert "--model" in err.value.hint and model.strip("./") in err.value.message


@pytest.mark.slow
def test_cli_reports_missing_model_without_traceback(tmp_path, small_folder):
    import subprocess
    import sys

    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
           "ASAP_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "asap_core", "analyze", str(small_folder), "--out",
                        str(tmp_path / "b"), "--model", "openai/clip-vit-base-patch32"],
                       capture_output=True, text=True, env=env, cwd=str(Path(__file__).parents[2]))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "error: Could not load CLIP model 'openai/clip-vit-base-patch32'" in r.stderr and "fix:" in r.stderr


def test_quick_gelu_fold_is_the_same_function(tiny_clip_dir):
    """The loaded encoder runs SiLU MLPs (folded scales) and matches the unfolded checkpoint to float rounding."""
    from transformers import CLIPVisionModelWithProjection
    from transformers.activations import QuickGELUActivation

    from asap_core.model.encoder import fold_quick_gelu

    enc = ClipEncoder.from_pretrained(str(tiny_clip_dir), device="cpu")
    acts = [m.activation_fn for m in enc.vision_model.modules() if hasattr(m, "activation_fn")]
    assert acts and all(isinstance(a, torch.nn.SiLU) for a in acts)
    raw = CLIPVisionModelWithProjection.from_pretrained(str(tiny_clip_dir)).eval()
    assert all(isinstance(m.activation_fn, QuickGELUActivation) for m in raw.modules() if hasattr(m, "activation_fn"))
    x = torch.randn(4, 3, 32, 32) * 2
    with torch.no_grad():
        ref = raw(pixel_values=x).image_embeds
        hidden_ref = raw(pixel_values=x, output_hidden_states=True).hidden_states
        got = enc.vision_model(pixel_values=x, output_hidden_states=True)
    assert torch.allclose(got.image_embeds, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(got.hidden_states, hidden_ref):  # every layer, not only the pooled output
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert fold_quick_gelu(enc.vision_model) == 0  # already folded: nothing left to rewrite


def test_folded_silu_writes_in_place_only_without_autograd():
    """No graph recorded: ``fc1``'s output is overwritten (no second buffer); with autograd the input is
    kept for the backward, and both give ``silu``."""
    from asap_core.model.encoder import SiLU

    act = SiLU()
    x = torch.randn(3, 5, 8)
    want = torch.nn.functional.silu(x)
    with torch.inference_mode():
        y = x.clone()
        assert act(y).data_ptr() == y.data_ptr() and torch.equal(y, want)
    with torch.no_grad():
        y = x.clone()
        assert act(y).data_ptr() == y.data_ptr()
    leaf = x.clone().requires_grad_(True)
    h = leaf * 1.0
    out = act(h)
    assert out.data_ptr() != h.data_ptr() and torch.equal(h, x) and torch.allclose(out, want)
    out.sum().backward()
    assert torch.allclose(leaf.grad, torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))), atol=1e-6)


def test_quick_gelu_fold_leaves_other_activations(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from asap_core.model.encoder import fold_quick_gelu

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16, hidden_act="gelu")
    model = CLIPVisionModelWithProjection(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fold_quick_gelu(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_image_forward_equals_the_full_forward(tiny_clip_dir, dtype, tol):
    """Embeddings through the class-token-only last layer equal the Hugging Face forward's, values and
    gradients, while the last MLP sees one token per image instead of T."""
    enc = ClipEncoder.from_pretrained(str(tiny_clip_dir), device="cpu", dtype=dtype)
    seen = []
    last_mlp = enc.vision_model.vision_model.encoder.layers[-1].mlp
    handle = last_mlp.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    torch.manual_seed(1)
    x = torch.randn(5, 3, 32, 32, dtype=dtype, requires_grad=True)
    try:
        got = enc.image_forward(x)
        ref = enc.vision_model(pixel_values=x).image_embeds
    finally:
        handle.remove()
    tokens = enc.patch_side ** 2 + 1
    width = enc.vision_model.config.hidden_size
    assert seen == [(5, 1, width), (5, tokens, width)]
    assert got.dtype == dtype and got.shape == ref.shape == (5, enc.embed_dim)
    assert torch.allclose(got.float(), ref.float(), atol=tol, rtol=tol)
    g_got, = torch.autograd.grad(got.float().pow(2).sum(), x)
    g_ref, = torch.autograd.grad(ref.float().pow(2).sum(), x)
    assert torch.allclose(g_got.float(), g_ref.float(), atol=tol * 10, rtol=tol * 10)
    # ClipEncoder.embed without attentions is this path, normalised
    with torch.no_grad():
        emb = enc.embed(x.detach())
    assert torch.allclose(emb, torch.nn.functional.normalize(got.detach().float(), dim=-1), atol=1e-6)


def test_image_forward_hands_out_the_last_layer_input(tiny_clip_dir):
    """``with_last_input``: the same embeddings, plus the last layer's input, which is Hugging Face's
    ``hidden_states[-2]`` and from which ``embeds_from`` gives the embeddings back."""
    enc = ClipEncoder.from_pretrained(str(tiny_clip_dir), device="cpu")
    torch.manual_seed(2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain = enc.image_forward(x)
        embeds, last = enc.image_forward(x, with_last_input=True)
        hidden = enc.vision_model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
        again = enc.image_forward.embeds_from(last)
    assert torch.equal(embeds, plain)
    assert last.shape == (4, enc.patch_side ** 2 + 1, enc.vision_model.config.hidden_size)
    assert torch.allclose(last, hidden[-2], atol=1e-5) and not torch.allclose(last, hidden[-1], atol=1e-3)
    assert torch.equal(again, plain)


def test_factory_loads_each_checkpoint_once_keyed_by_content(tiny_clip_dir, tmp_path, monkeypatch):
    """``load_encoder`` is the one way to a model: one load per checkpoint, device and dtype; a folder
    rewritten with other weights loads afresh; every encoder uses sdpa attention, and a call that needs
    attention maps gets them and leaves the shared model on sdpa."""
    import torch

    from asap_core.model import factory
    from tests.conftest import write_tiny_clip

    factory.clear_encoders()
    loads = []
    original = ClipEncoder.from_pretrained.__func__
    monkeypatch.setattr(ClipEncoder, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(a) or original(cls, *a, **k)))
    a = factory.load_encoder(str(tiny_clip_dir), device="cpu")
    assert factory.load_encoder(str(tiny_clip_dir), device="cpu") is a and len(loads) == 1
    other = write_tiny_clip(tmp_path / "other", seed=1)
    b = factory.load_encoder(str(other), device="cpu")
    assert b is not a and len(loads) == 2
    write_tiny_clip(tmp_path / "other", seed=2)  # same folder, other weights
    c = factory.load_encoder(str(other), device="cpu")
    assert c is not b and len(loads) == 3 and c.cache_key != b.cache_key
    assert a.vision_model.config._attn_implementation == "sdpa"
    px = torch.zeros(1, 3, a.image_size, a.image_size)
    _, attentions = a.embed(px, output_attentions=True)
    assert len(attentions) == a.vision_model.config.num_hidden_layers and attentions[-1].shape[-1] == 17
    assert a.vision_model.config._attn_implementation == "sdpa"
    factory.clear_encoders()
