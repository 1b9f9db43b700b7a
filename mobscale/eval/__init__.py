"""Evaluation: mergeable statistics -> metrics over named dimensions -> report.

Public API (for the CLI and the paper-table drivers)::

    from mobscale.eval import traffic_metrics, trajectory_metrics, users_metrics, dcr_audit

* ``traffic_metrics(real_ds, synth_ds, levels, resolutions) -> xr.Dataset`` (value / spread over
  metric x level x resolution, per_sample, data_range): mobscale.eval.metrics
* ``trajectory_metrics(real, synth, coords, mode) -> dict`` (distance, radius, duration, dailyloc, grank, irank):
  mobscale.eval.trajectories
* ``users_metrics(real_root, real_users, synth_root, synth_users) -> dict``: mobscale.eval.users
* ``dcr_audit(train, synthetic, holdout, metric) -> dict``: mobscale.eval.privacy
"""

from mobscale.eval.metrics import TRAFFIC_METRICS, metrics_to_dict, traffic_metrics, traffic_statistics
from mobscale.eval.privacy import dcr_audit
from mobscale.eval.trajectories import TRAJECTORY_METRICS, trajectory_metrics
from mobscale.eval.users import users_metrics

__all__ = [
    "TRAFFIC_METRICS", "TRAJECTORY_METRICS", "dcr_audit", "metrics_to_dict", "traffic_metrics", "traffic_statistics",
    "trajectory_metrics", "users_metrics",
]
