"""The worker loop's console line: one per epoch, from rank 0."""

from __future__ import annotations

from sstparse.train.loop import epoch_line


def test_epoch_line_says_loss_score_and_time_left():
    metrics = {"epoch": 3, "time/epoch_s": 60.0, "train/loss": 0.9123, "val/mean_miou": 0.142, "train/img_per_s": 21.4}
    assert epoch_line(metrics, 8) == ("epoch 3/8: loss 0.912, val mean mIoU 14.2%, 21 img/s per worker, 60 s, "
                                      "about 5.0 min left")
    unvalidated = {"epoch": 1, "time/epoch_s": 30.0, "train/loss": 1.0, "train/img_per_s": 8.0}
    assert epoch_line(unvalidated, 2) == "epoch 1/2: loss 1.000, 8 img/s per worker, 30 s, about 0.5 min left"


def test_validation_stacks_consecutive_images_of_one_domain_and_size_only():
    import torch

    from sstparse.train.loop import same_size_groups

    def img(h, w, v):
        return torch.full((3, h, w), float(v))

    batches = [{"domain": torch.tensor([0, 0, 1, 1, 0]),
                "image": [img(4, 6, 0), img(4, 6, 1), img(4, 6, 2), img(5, 6, 3), img(5, 6, 4)],
                "label": [torch.full(im_shape, i) for i, im_shape in enumerate([(4, 6)] * 3 + [(5, 6)] * 2)]},
               {"domain": torch.tensor([0]), "image": [img(5, 6, 5)], "label": [torch.full((5, 6), 5)]}]
    groups = list(same_size_groups(batches))
    # same domain and size -> one stack; a change of either starts the next; never across batches
    assert [(d, tuple(x.shape), x[:, 0, 0, 0].tolist()) for d, x, _ in groups] == [
        (0, (2, 3, 4, 6), [0.0, 1.0]), (1, (1, 3, 4, 6), [2.0]), (1, (1, 3, 5, 6), [3.0]), (0, (1, 3, 5, 6), [4.0]),
        (0, (1, 3, 5, 6), [5.0])]
    assert [y[:, 0, 0].tolist() for _, _, y in groups] == [[0, 1], [2], [3], [4], [5]]


def test_time_to_accuracy_curve_is_drawn_from_validated_epochs(tmp_path):
    from sstparse.plots import time_to_accuracy_figure

    history = [{"epoch": 1, "time/elapsed_s": 60.0},  # not validated: no point
               {"epoch": 2, "time/elapsed_s": 120.0, "val/mean_miou": 0.1, "val/a/miou": 0.1},
               {"epoch": 3, "time/elapsed_s": 180.0, "val/mean_miou": 0.2, "val/a/miou": 0.2}]
    path = time_to_accuracy_figure(history, ["a"], tmp_path / "curve.png")
    assert path.stat().st_size > 1000
    assert time_to_accuracy_figure(history[:1], ["a"], tmp_path / "none.png") is None
