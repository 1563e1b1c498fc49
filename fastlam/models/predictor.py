"""Predictor p(s_0..t, z_t) -> s_{t+1}: a frame-causal ViT conditioned frame-wise on the
latent action through AdaLN-zero, trained with teacher forcing.

``residual=True`` (``model.predictor_target: delta``) makes its head predict the change
s_{t+1} - s_t, added to s_t by a skip; the head starts at zero, so the untrained predictor is
exactly the copy baseline s_{t+1} = s_t (as AdaLN-zero starts each block at the identity)."""
from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from ..ops import Rope3D
from .blocks import AdaLNZeroBlock


class Predictor(nn.Module):
    def __init__(self, state_dim: int, width: int, depth: int, heads: int, action_dim: int,
                 grid_w: int, mlp_ratio: float = 4.0, rope_duplicated_freqs: bool = False, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.grid_w = grid_w
        self.width = width
        self.action_dim = action_dim
        self.rope_duplicated_freqs = rope_duplicated_freqs
        self.embed = nn.Linear(state_dim, width)
        self.action_embed = nn.Linear(action_dim, width)  # c_t = Linear(z_t)
        self.blocks = nn.ModuleList([AdaLNZeroBlock(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, state_dim)
        if residual:
            # Zero change at init: step 0 is the copy baseline, and learning starts from it
            # rather than from reproducing the whole state. The paper's head keeps its default
            # init (and draws from the RNG as before), so residual=False is bit-identical.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        # Recompute each block's activations in backward instead of storing them (set by the
        # trainer's ``activation_checkpointing``): memory for compute at large T x N.
        self.checkpoint_blocks = False

    def forward(self, states: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """states (B, T, N, D) and actions (B, T, action_dim) or None -> predictions (B, T, N, D).

        Output t predicts s_{t+1} from s_0..s_t and z_t (frame-causal attention). With
        ``actions=None`` (the deterministic reference) no action information enters. With
        ``residual`` the output is still the next state: s_t plus the head's change.
        """
        if states.dim() != 4:
            raise ValueError(f"states: expected (B, T, N, D), got shape {tuple(states.shape)}")
        B, T, N, D = states.shape
        if actions is not None and tuple(actions.shape) != (B, T, self.action_dim):
            raise ValueError(f"actions: expected shape {(B, T, self.action_dim)}, got {tuple(actions.shape)}")
        x = self.embed(states).flatten(1, 2)
        if actions is None:
            cond = x.new_zeros(B, T, self.width)
        else:
            cond = self.action_embed(actions.to(x.dtype))
        rope = Rope3D(grid_w=self.grid_w, duplicated_freqs=self.rope_duplicated_freqs)
        for blk in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                # Non-reentrant, calling the module itself, so parameter-gathering hooks (ZeRO-3)
                # also run during the recomputation.
                x = torch.utils.checkpoint.checkpoint(blk, x, cond, frame_len=N, mask="frame_causal", rope=rope,
                                                      use_reentrant=False)
            else:
                x = blk(x, cond, frame_len=N, mask="frame_causal", rope=rope)
        out = self.head(self.norm(x)).view(B, T, N, D)
        return states + out if self.residual else out
