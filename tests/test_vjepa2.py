"""V-JEPA 2 compatibility: fastlam's encoder against transformers' VJEPA2Model (a peer
implementation), the official checkpoint layout, mismatch errors, and the V-JEPA 2-AC
predictor against an independent re-implementation of V-JEPA 2-AC's attention path."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fastlam.models import EncoderConfig, LatentActionWorldModel, ModelConfig, TransformerConfig, VideoEncoder
from fastlam.models.ac_predictor import ACPredictor, ACPredictorConfig, encode_frames
from fastlam.models.encoder import IMAGENET_MEAN, IMAGENET_STD
from fastlam.models.vjepa2 import CheckpointMismatchError, load_vjepa2_ac_predictor, load_vjepa2_encoder, main
from fastlam.ops.dispatch import kernel_import_error
from fastlam.train import DataConfig, TrainConfig, train

# Tiny V-JEPA 2: width 64 = fastlam "tiny", 4 heads -> head_dim 16, RoPE chunks of 4 channels and
# 4 unrotated channels (exercises the remainder); 16 px crops of patch 4 -> 4 x 4 grid.
TINY = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, patch_size=4, crop_size=16,
            frames_per_clip=4, tubelet_size=2, mlp_ratio=4.0)


def _hf_model(**overrides):
    transformers = pytest.importorskip("transformers", reason="transformers (the test-only peer) is not installed")
    cfg = transformers.VJEPA2Config(**{**TINY, **overrides}, pred_hidden_size=32, pred_num_attention_heads=4,
                                    pred_num_hidden_layers=1, num_pooler_layers=1)
    model = transformers.VJEPA2Model(cfg).eval()
    with torch.no_grad():  # every parameter random, LayerNorm affine included
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "layernorm.weight" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def _hf_states(model, video):
    """V-JEPA 2 takes ImageNet-normalised (B, T, C, H, W); fastlam takes [0, 1] (B, C, T, H, W)."""
    # Constants rounded to float32 first, as the encoder's buffers are, so fp64 runs compare exactly.
    mean = torch.tensor(IMAGENET_MEAN).to(video.dtype).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).to(video.dtype).view(1, 3, 1, 1, 1)
    pixels = ((video - mean) / std).permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        return model(pixels, skip_predictor=True).last_hidden_state


def _encoder(**kw):
    kw = {"size": "tiny", "patch_size": 4, "tubelet": 2, "frame_causal": False, **kw}
    return VideoEncoder(EncoderConfig(**kw)).eval()


def _official_state(hf_state, prefix="module.backbone."):
    """The official V-JEPA 2 encoder key layout, built by hand from a transformers state dict."""
    out = {prefix + "patch_embed.proj.weight": hf_state["encoder.embeddings.patch_embeddings.proj.weight"],
           prefix + "patch_embed.proj.bias": hf_state["encoder.embeddings.patch_embeddings.proj.bias"],
           prefix + "norm.weight": hf_state["encoder.layernorm.weight"],
           prefix + "norm.bias": hf_state["encoder.layernorm.bias"]}
    depth = 1 + max(int(k.split(".")[2]) for k in hf_state if k.startswith("encoder.layer."))
    for i in range(depth):
        src, dst = f"encoder.layer.{i}.", f"{prefix}blocks.{i}."
        for leaf in ("weight", "bias"):
            out[dst + f"attn.qkv.{leaf}"] = torch.cat(
                [hf_state[src + f"attention.{n}.{leaf}"] for n in ("query", "key", "value")])
            out[dst + f"attn.proj.{leaf}"] = hf_state[src + f"attention.proj.{leaf}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[dst + f"{n}.{leaf}"] = hf_state[src + f"{n}.{leaf}"]
    return out


# ---- encoder equivalence -----------------------------------------------------------------
def test_hf_directory_matches_peer_in_fp32_and_fp64(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")  # the real transformers on-disk format
    enc = _encoder()
    report = load_vjepa2_encoder(enc, tmp_path / "hf")
    assert report.format == "hf" and not report.missing and not report.unexpected
    assert any(k.startswith("predictor.") for k in report.ignored)

    video = torch.rand(2, 3, 4, 16, 16)
    ref = _hf_states(hf, video)
    with torch.no_grad():
        out = enc(video)
    assert out.shape == (2, 2, 16, 64)
    torch.testing.assert_close(out.flatten(1, 2), ref, rtol=1e-5, atol=2e-5)
    # In float64 the two must agree to ~1e-12: the same function, not merely a close one.
    hf64, enc64, v64 = hf.double(), enc.double(), video.double()
    with torch.no_grad():
        torch.testing.assert_close(enc64(v64).flatten(1, 2), _hf_states(hf64, v64), rtol=1e-10, atol=1e-10)


def test_hf_single_safetensors_file_and_config_checks(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    enc = _encoder()
    load_vjepa2_encoder(enc, tmp_path / "hf" / "model.safetensors")
    video = torch.rand(1, 3, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(enc(video).flatten(1, 2), _hf_states(hf, video), rtol=1e-5, atol=2e-5)
    # Head count leaves every shape unchanged; config.json is what catches it.
    with pytest.raises(CheckpointMismatchError, match="num_attention_heads=4 but model.encoder.heads is 2"):
        load_vjepa2_encoder(_encoder(heads=2), tmp_path / "hf")
    # convert keeps the head count (in the safetensors metadata) for the same check later.
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "enc.safetensors")]) == 0
    with pytest.raises(CheckpointMismatchError, match="num_attention_heads=4"):
        load_vjepa2_encoder(_encoder(heads=2), tmp_path / "enc.safetensors")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "hidden_act": "silu"}))
    with pytest.raises(CheckpointMismatchError, match="hidden_act='silu'"):
        load_vjepa2_encoder(_encoder(), tmp_path / "hf")


def test_official_checkpoint_layout_matches_peer(tmp_path):
    hf = _hf_model()
    state = _official_state(hf.state_dict())
    decoy = {k: torch.randn_like(v) for k, v in state.items()}
    ckpt = {"encoder": decoy, "target_encoder": {**state, "module.backbone.pos_embed": torch.zeros(1, 32, 64)},
            "predictor": {}, "epoch": 10, "lr": 1e-4}
    torch.save(ckpt, tmp_path / "vitl.pt")
    enc = _encoder()
    with pytest.warns(RuntimeWarning, match="pos_embed"):
        report = load_vjepa2_encoder(enc, tmp_path / "vitl.pt")  # auto -> target_encoder (the EMA weights)
    assert report.format == "official" and report.key == "target_encoder" and report.ignored == ["pos_embed"]
    video = torch.rand(2, 3, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(enc(video).flatten(1, 2), _hf_states(hf, video), rtol=1e-5, atol=2e-5)
        # key= picks another entry; only "backbone." as prefix also works.
        torch.save({"encoder": _official_state(hf.state_dict(), "backbone.")}, tmp_path / "ac.pt")
        other = _encoder()
        assert load_vjepa2_encoder(other, tmp_path / "ac.pt").key == "encoder"
        torch.testing.assert_close(other(video), enc(video), rtol=0, atol=0)
        load_vjepa2_encoder(other, tmp_path / "vitl.pt", key="encoder")
        assert (other(video) - enc(video)).abs().max() > 1e-2

    # The converter CLI writes fastlam names; the converted file loads to the same encoder.
    with pytest.warns(RuntimeWarning, match="pos_embed"):
        assert main(["convert", str(tmp_path / "vitl.pt"), str(tmp_path / "enc.safetensors")]) == 0
    conv = _encoder()
    assert load_vjepa2_encoder(conv, tmp_path / "enc.safetensors").format == "fastlam"
    with torch.no_grad():
        torch.testing.assert_close(conv(video), enc(video), rtol=0, atol=0)


def _official_checkpoint(path, **encoder_kw):
    """An official-layout checkpoint of random weights (no transformers needed)."""
    released = _randomize(_encoder(**encoder_kw))
    torch.save({"target_encoder": {"module.backbone." + k: v for k, v in released.state_dict().items()}}, path)
    return path


def test_frame_causal_encoder_with_released_weights(tmp_path):
    """Frame-causal mode (the paper's) keeps step 0 independent of later frames; full attention does not."""
    _official_checkpoint(tmp_path / "w.pt")
    causal, full = _encoder(frame_causal=True), _encoder(frame_causal=False)
    load_vjepa2_encoder(causal, tmp_path / "w.pt")
    load_vjepa2_encoder(full, tmp_path / "w.pt")
    video = torch.rand(1, 3, 4, 16, 16)
    later = video.clone()
    later[:, :, 2:] = torch.rand_like(later[:, :, 2:])
    with torch.no_grad():
        torch.testing.assert_close(causal(video)[:, 0], causal(later)[:, 0], rtol=0, atol=0)
        assert (full(video)[:, 0] - full(later)[:, 0]).abs().max() > 1e-4


def test_mismatch_errors_name_key_and_shapes(tmp_path):
    _official_checkpoint(tmp_path / "w.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_vjepa2_encoder(_encoder(width=96), tmp_path / "w.pt")
    msg = str(err.value)
    assert "'patch_embed.proj.weight'" in msg and "(64, 3, 2, 4, 4)" in msg and "(96, 3, 2, 4, 4)" in msg
    assert "'size': 'tiny'" in msg  # the hint says what the file is
    with pytest.raises(CheckpointMismatchError, match=r"'blocks\.2\.norm1\.weight' with shape \(64,\)"):
        load_vjepa2_encoder(_encoder(depth=3), tmp_path / "w.pt")
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint key 'blocks\.1\.[a-z0-9.]+' \(shape"):
        load_vjepa2_encoder(_encoder(depth=1), tmp_path / "w.pt")
    deeper = _encoder(depth=3)
    report = load_vjepa2_encoder(deeper, tmp_path / "w.pt", strict=False)
    assert report.missing and all(k.startswith("blocks.2.") for k in report.missing)
    with pytest.raises(CheckpointMismatchError, match="patch_embed"):  # shapes are checked even when not strict
        load_vjepa2_encoder(_encoder(patch_size=8), tmp_path / "w.pt", strict=False)
    with pytest.raises(KeyError, match="key='ema'"):
        load_vjepa2_encoder(_encoder(), tmp_path / "w.pt", key="ema")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_vjepa2_encoder(_encoder(), tmp_path / "missing.pt")


def test_refuses_pickled_objects(tmp_path):
    torch.save({"encoder": {"x": torch.zeros(1)}, "args": _Opaque()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_vjepa2_encoder(_encoder(), tmp_path / "evil.pt")


class _Opaque:
    pass


# ---- V-JEPA 2-AC predictor ---------------------------------------------------------------
AC = ACPredictorConfig(embed_dim=32, width=48, depth=2, heads=4, grid_size=4)  # head_dim 12: chunks of 4


def _ac_inputs(B=2, T=3, N=16, cfg=AC):
    return torch.randn(B, T, N, cfg.embed_dim), torch.randn(B, T, cfg.action_dim), torch.randn(B, T, cfg.action_dim)


def _randomize(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_((1 if "norm" in name and name.endswith("weight") else 0) + 0.2 * torch.randn_like(p))
    return module


def _vjepa_rotate(x, pos):
    """V-JEPA 2's rotate_queries_or_keys: frequencies repeated, adjacent pairs rotated."""
    D = x.shape[-1]
    omega = 1.0 / 10000 ** (torch.arange(D // 2, dtype=x.dtype) / (D / 2.0))
    freq = pos.to(x.dtype)[:, None] * omega
    sin, cos = freq.sin().repeat(1, 2), freq.cos().repeat(1, 2)
    y = x.unflatten(-1, (-1, 2))
    y = torch.stack((-y[..., 1], y[..., 0]), dim=-1).flatten(-2)
    return x * cos + y * sin


def _reference_ac(pred, states, actions, proprio):
    """V-JEPA 2-AC's forward written its own way: conditioning tokens split out of the sequence
    and rotated separately by time, patch tokens by (t, h * g / H, w * g / W), a loop-built
    dense block-causal mask, explicit softmax."""
    B, T, N, _ = states.shape
    H = W = math.isqrt(N)
    k = 2
    g = pred.cfg.grid_size
    x = torch.cat([pred.action_encoder(actions)[:, :, None], pred.state_encoder(proprio)[:, :, None],
                   pred.predictor_embed(states)], dim=2).flatten(1, 2)
    n_t = k + N
    mask = torch.zeros(T * n_t, T * n_t, dtype=torch.bool)
    for t1 in range(T):
        for t2 in range(t1 + 1):
            mask[t1 * n_t:(t1 + 1) * n_t, t2 * n_t:(t2 + 1) * n_t] = True
    ids = torch.arange(T * N)
    t_pos, h_pos, w_pos = ids // N, (ids % N) // W, ids % W
    h_pos, w_pos = h_pos * (g / H), w_pos * (g / W)
    for blk in pred.predictor_blocks:
        heads = blk.attn.num_heads
        hd = x.shape[-1] // heads
        d = 2 * ((hd // 3) // 2)
        qkv = blk.attn.qkv(blk.norm1(x)).view(B, T, n_t, 3, heads, hd).permute(3, 0, 4, 1, 2, 5)  # 3,B,h,T,n_t,hd
        out = []
        for z in qkv[:2]:  # q and k get rotated, v does not
            cond = z[:, :, :, :k]  # (B, h, T, k, hd)
            cond = torch.cat([_vjepa_rotate(cond.transpose(2, 3)[..., :d], torch.arange(T)).transpose(2, 3),
                              cond[..., d:]], dim=-1)
            pat = z[:, :, :, k:].flatten(2, 3)  # (B, h, T*N, hd)
            pat = torch.cat([_vjepa_rotate(pat[..., :d], t_pos), _vjepa_rotate(pat[..., d:2 * d], h_pos),
                             _vjepa_rotate(pat[..., 2 * d:3 * d], w_pos), pat[..., 3 * d:]], dim=-1)
            out.append(torch.cat([cond, pat.unflatten(2, (T, N))], dim=3).flatten(2, 3))
        q, kk = out
        v = qkv[2].flatten(2, 3)
        att = (q @ kk.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T * n_t, -1)
        x = x + blk.attn.proj(y)
        x = x + blk.mlp(blk.norm2(x))
    x = x.view(B, T, n_t, -1)[:, :, k:]
    return pred.predictor_proj(pred.predictor_norm(x))


@pytest.mark.parametrize("side", [4, 2])  # trained grid, and a coarser grid scaled onto it
def test_ac_predictor_matches_vjepa2_ac_algorithm(side):
    pred = _randomize(ACPredictor(AC)).double().eval()
    states, actions, proprio = (t.double() for t in _ac_inputs(N=side * side))
    with torch.no_grad():
        torch.testing.assert_close(pred(states, actions, proprio), _reference_ac(pred, states, actions, proprio),
                                   rtol=1e-10, atol=1e-10)


def test_ac_predictor_block_causal():
    pred = _randomize(ACPredictor(AC)).eval()
    states, actions, proprio = _ac_inputs(T=4)
    t = 1
    s2, a2, p2 = states.clone(), actions.clone(), proprio.clone()
    s2[:, t + 1:] += torch.randn_like(s2[:, t + 1:])
    a2[:, t + 1:] += 1.0
    p2[:, t + 1:] -= 1.0
    with torch.no_grad():
        out, out2 = pred(states, actions, proprio), pred(s2, a2, p2)
    torch.testing.assert_close(out[:, : t + 1], out2[:, : t + 1], rtol=0, atol=0)
    assert (out[:, t + 1:] - out2[:, t + 1:]).abs().min() > 0
    # the action of frame t reaches frame t's prediction
    a3 = actions.clone()
    a3[:, t] += 1.0
    with torch.no_grad():
        assert (pred(states, a3, proprio)[:, t] - out[:, t]).abs().max() > 1e-4


def test_ac_rope_quirk_changes_output():
    pred = _randomize(ACPredictor(AC)).eval()
    plain = ACPredictor(ACPredictorConfig(**{**AC.__dict__, "rope_duplicated_freqs": False}))
    plain.load_state_dict(pred.state_dict())
    inputs = _ac_inputs()
    with torch.no_grad():
        assert (pred(*inputs) - plain(*inputs)).abs().max() > 1e-3


def test_ac_save_load_and_official_checkpoint(tmp_path):
    pred = _randomize(ACPredictor(AC)).eval()
    inputs = _ac_inputs()
    with torch.no_grad():
        ref = pred(*inputs)
    back = ACPredictor.from_pretrained(pred.save_pretrained(tmp_path / "ac"))
    with torch.no_grad():
        torch.testing.assert_close(back(*inputs), ref, rtol=0, atol=0)
    # vjepa2-ac-vitg.pt layout: {"encoder": ..., "predictor": {"module.backbone.<name>": ...}}
    official = {"module.backbone." + k: v for k, v in pred.state_dict().items()}
    torch.save({"encoder": {}, "predictor": official, "epoch": 1}, tmp_path / "ac.pt")
    loaded = ACPredictor.from_vjepa2(tmp_path / "ac.pt", heads=4, grid_size=4)
    assert loaded.cfg == AC
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), ref, rtol=0, atol=0)
    with pytest.raises(CheckpointMismatchError, match=r"'predictor_embed.weight' has shape \(48, 32\)"):
        load_vjepa2_ac_predictor(ACPredictor(ACPredictorConfig(**{**AC.__dict__, "embed_dim": 40})), tmp_path / "ac.pt")


def test_ac_loss_trains_and_validates_inputs():
    pred = ACPredictor(AC)
    states, actions, proprio = _ac_inputs(T=4)
    out = pred.loss(states, actions[:, :3], proprio, rollout_steps=2)
    assert out.rollout > 0 and torch.isclose(out.loss.detach(), out.teacher_forcing + out.rollout)
    out.loss.backward()
    assert pred.action_encoder.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"actions: expected shape \(2, 3, 7\)"):
        pred(states[:, :3], actions[:, :2], proprio[:, :3])
    with pytest.raises(ValueError, match="square grid"):
        pred(states[:, :, :15], actions, proprio)
    with pytest.raises(ValueError, match="rollout_steps"):
        pred.loss(states, actions[:, :3], proprio, rollout_steps=4)


# ---- training a LAM on a converted checkpoint --------------------------------------------
def test_train_with_vjepa2_checkpoint(tmp_path):
    # An official-layout checkpoint (so this runs without transformers), converted by the CLI.
    released = _randomize(VideoEncoder(EncoderConfig(size="tiny", patch_size=16)))
    official = {"module.backbone." + k: v for k, v in released.state_dict().items()}
    torch.save({"encoder": official, "target_encoder": official, "epoch": 1}, tmp_path / "vit_tiny.pt")
    assert main(["convert", str(tmp_path / "vit_tiny.pt"), str(tmp_path / "tiny.safetensors")]) == 0
    model_cfg = ModelConfig(
        image_size=32, frames=4, action_dim=16,
        encoder=EncoderConfig(size="tiny", patch_size=16, checkpoint=str(tmp_path / "tiny.safetensors")),
        idm=TransformerConfig(width=32, depth=1, heads=2), predictor=TransformerConfig(width=32, depth=1, heads=2),
    )
    cfg = TrainConfig(model=model_cfg, data=DataConfig(source="synthetic", synthetic_clips=4), batch_size=2,
                      steps=2, out_dir=str(tmp_path / "run"), log_every=1, ckpt_every=100, progress=False)
    summary = train(cfg)
    assert summary["steps"] == 2 and math.isfinite(summary["last_loss"])
    trained = LatentActionWorldModel.from_checkpoint(summary["model"])
    for name, value in released.state_dict().items():  # the frozen encoder is the released one
        torch.testing.assert_close(trained.encoder.state_dict()[name], value, rtol=0, atol=0)


def test_ac_layout_on_fastlam_triton_kernel():
    """Prefix tokens, the scaled grid and the quirk through the fused kernel (the interpreter on CPU)."""
    pytest.importorskip("triton", reason="triton is not installed")
    # With triton importable the kernel module must import too: a broken kernel is a failure,
    # not one of the skips below (which are for what this machine's triton cannot run).
    assert kernel_import_error("attention") is None, kernel_import_error("attention")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = ACPredictorConfig(embed_dim=32, width=32, depth=1, heads=2, grid_size=4)  # head_dim 16
    pred = _randomize(ACPredictor(cfg)).to(device).eval()
    states, actions, proprio = (t.to(device) for t in _ac_inputs(B=1, T=2, N=4, cfg=cfg))  # 2 x 2 grid, scale 2
    with torch.no_grad():
        for blk in pred.predictor_blocks:
            blk.attn.backend = "math"
        ref = pred(states, actions, proprio)
        for blk in pred.predictor_blocks:
            blk.attn.backend = "triton"
        try:
            out = pred(states, actions, proprio)
        except ValueError as exc:
            pytest.skip(f"triton backend unavailable here: {exc}")
    tol = 1e-5 if device == "cpu" else 5e-3 * ref.abs().max().item()  # CUDA fp32 dots may use TF32
    torch.testing.assert_close(out, ref, rtol=0, atol=tol)


def test_encode_frames_one_state_per_frame():
    """V-JEPA 2-AC's states: each frame repeated into its own tubelet and encoded alone."""
    enc = _randomize(_encoder(frame_causal=True))
    video = torch.rand(2, 3, 3, 16, 16)
    states = encode_frames(enc, video)
    assert states.shape == (2, 3, 16, 64)
    with torch.no_grad():
        alone = enc(video[1:2, :, 2:3].repeat(1, 1, 2, 1, 1))  # frame 2 of clip 1, by itself
    torch.testing.assert_close(states[1, 2], alone[0, 0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"video: expected \(B, C, T, H, W\)"):
        encode_frames(enc, video[0])
