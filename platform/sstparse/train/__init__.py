"""Ray Train: the per-worker loop (loop.py), the driver (trainer.py) and the job entry (job.py)."""
