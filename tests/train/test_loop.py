"""The worker loop's console line: one per epoch, from rank 0."""

from __future__ import annotations

from sstparse.train.loop import epoch_line


def test_epoch_line_says_loss_score_and_time_left():
    metrics = {"epoch": 3, "time/epoch_s": 60.0, "train/loss": 0.9123, "val/mean_miou": 0.142, "train/img_per_s": 21.4}
    assert epoch_line(metrics, 8) == ("epoch 3/8: loss 0.912, val mean mIoU 14.2%, 21 img/s per worker, 60 s, "
                                      "about 5.0 min left")
    unvalidated = {"epoch": 1, "time/epoch_s": 30.0, "train/loss": 1.0, "train/img_per_s": 8.0}
    assert epoch_line(unvalidated, 2) == "epoch 1/2: loss 1.000, 8 img/s per worker, 30 s, about 0.5 min left"
