"""Parameters of the tiny seeded synthetic city used by the data tests."""

TINY = dict(city="tiny", seed=3, height=16, width=16, days=2, pixels_per_bs=12, users=6, user_days=2, time_chunk=12)
