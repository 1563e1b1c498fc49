"""fastlam.eval: the paper's evaluations of latent action world models (lam-spec.md section 5).

One module per protocol: ``capacity`` (one-step IDM error, regularizer sweeps), ``leakage``
(scene-cut splice), ``transfer`` (A -> B -> A cycle), ``controller`` (real -> latent action),
``planning`` (CEM, Delta_xyz, ATE / RPE, the action-conditioned baseline), ``sampling``
(latent actions from the prior, Langevin for sparse), ``action_data`` (action-labelled
trajectories: format, loaders, simulated arm and navigation generators) and ``report``.
Command line: ``python -m fastlam.eval <task> --help``.
"""
from .capacity import (
                         PAPER_GRIDS,
                         STRENGTH_PARAM,
                         capacity,
                         capacity_sweep,
                         compare_capacity,
                         plot_capacity_curve,
)
from .common import encode_batched, load_clips, load_lam, one_step_errors
from .controller import (
                         ActionMLPController,
                         ControllerConfig,
                         ControllerTrainConfig,
                         LatentController,
                         build_controller,
                         controller_error,
                         controller_pairs,
                         load_controller,
                         save_controller,
                         train_controller,
)
from .leakage import future_leakage, splice
from .planning import (
                         ARM_CEM,
                         NAV_CEM,
                         ACBaselineConfig,
                         ACRollout,
                         CEMConfig,
                         LatentRollout,
                         ate_rpe,
                         cem,
                         delta_xyz,
                         plan_arm,
                         plan_nav,
                         train_ac_baseline,
)
from .report import write_report
from .sampling import embedding_plot, langevin_sparse, sample_latents, sparse_energy
from .transfer import cycle_errors, cycle_transfer

__all__ = [
                         "ARM_CEM",
                         "NAV_CEM",
                         "PAPER_GRIDS",
                         "STRENGTH_PARAM",
                         "ACBaselineConfig",
                         "ACRollout",
                         "ActionMLPController",
                         "CEMConfig",
                         "ControllerConfig",
                         "ControllerTrainConfig",
                         "LatentController",
                         "LatentRollout",
                         "ate_rpe",
                         "build_controller",
                         "capacity",
                         "capacity_sweep",
                         "cem",
                         "compare_capacity",
                         "controller_error",
                         "controller_pairs",
                         "cycle_errors",
                         "cycle_transfer",
                         "delta_xyz",
                         "embedding_plot",
                         "encode_batched",
                         "future_leakage",
                         "langevin_sparse",
                         "load_clips",
                         "load_controller",
                         "load_lam",
                         "one_step_errors",
                         "plan_arm",
                         "plan_nav",
                         "plot_capacity_curve",
                         "sample_latents",
                         "save_controller",
                         "sparse_energy",
                         "splice",
                         "train_ac_baseline",
                         "train_controller",
                         "write_report",
]
