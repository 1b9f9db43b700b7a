"""Run configs of the tiny trained models shared by several test folders."""

TINY_RUN = {
    "name": "tiny-sample",
    "seed": 0,
    "data": {
        "synth": {"city": "tiny", "seed": 2, "height": 32, "width": 16, "days": 2, "users": 0, "pixels_per_bs": 12, "time_chunk": 24},
        "windows": {"patch": 8, "hours": 24, "test_fraction": 0.25, "split_by": "band"},
    },
    "model": {"kind": "zoomdiff", "width": 8, "blocks": 1, "heads": 2, "context_dim": 4, "tpe_dim": 8, "spe_dim": 4},
    "diffusion": {"kind": "drdm", "spatial": ["bs", "cell", "grid50"], "temporal": ["4h", "1h"], "steps": 24, "beta_end": 0.9},
    "train": {"steps": 3, "batch_size": 2, "log_every": 1, "checkpoint_every": 3, "warmup_steps": 0},
    "sample": {"steps_per_stage": 2, "batch_size": 4, "overlap": 2},
}
