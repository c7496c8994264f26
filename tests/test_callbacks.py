"""Callbacks in fit: early stopping on a scripted metric sequence, restoring the best weights,
saving the best checkpoint, and the errors that name a missing metric."""

import numpy as np
import pytest

import portacnn
from portacnn import Dense, Flatten, Sequential
from portacnn.cli import main
from portacnn.callbacks import Callback, EarlyStopping, ModelCheckpoint
from portacnn.optim import SGD

from helpers import small_net, toy_data, write_mnist


class Script(Callback):
    """Replaces the logs' ``val_loss`` by the scripted value of each epoch (the callbacks after
    it see that) and keeps a copy of the weights at each epoch's end."""

    def __init__(self, values):
        self.values, self.weights = values, []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]
        self.weights.append([self.model.backend.to_numpy(p.value).copy()
                             for p in self.model.parameters()])


def _fit(callbacks, epochs=8, model=None):
    x, y = toy_data(12)
    model = small_net(seed=2) if model is None else model
    history = model.fit(x, y, epochs=epochs, batch_size=6, optimizer=SGD(0.05), verbose=0,
                        validation_data=(x, y), callbacks=callbacks)
    return model, history


@pytest.mark.parametrize("min_delta, patience, stops_after", [
    (0.0, 2, 5),        # best 0.79 at epoch 3; epochs 4 and 5 do not improve
    (0.02, 2, 3),       # 0.79 is not 0.02 below 0.80: epochs 2 and 3 do not improve
    (0.0, 0, 2),        # the first epoch that does not improve stops
])
def test_early_stopping_stops_at_the_right_epoch(min_delta, patience, stops_after):
    script = Script([1.0, 0.8, 0.85, 0.79, 0.9, 0.95, 0.5, 0.4])
    stop = EarlyStopping(patience=patience, min_delta=min_delta)
    _, history = _fit([script, stop])
    assert len(history["loss"]) == stops_after + 1 == stop.stopped_epoch + 1


def test_early_stopping_in_max_mode_stops_when_the_metric_falls():
    stop = EarlyStopping(monitor="loss", mode="max", patience=1)      # the loss falls
    _, history = _fit([stop], epochs=5)
    assert history["loss"][1] < history["loss"][0]
    assert len(history["loss"]) == 2 and stop.best == history["loss"][0]


def test_restore_best_weights_restores_the_best_epoch(core_backend):
    """The best epoch's parameters, kept as device copies on every backend."""
    script = Script([1.0, 0.5, 0.7, 0.8, 0.9, 0.95])
    model = Sequential([Flatten(), Dense(3)], input_shape=(1, 6, 6), device=core_backend)
    model, history = _fit([script, EarlyStopping(patience=2, restore_best_weights=True)],
                          model=model)
    assert len(history["loss"]) == 4
    for p, best, last in zip(model.parameters(), script.weights[1], script.weights[-1]):
        np.testing.assert_array_equal(core_backend.to_numpy(p.value), best)
        assert not np.array_equal(best, last)


def test_model_checkpoint_writes_only_on_improvement(tmp_path):
    script = Script([3.0, 2.0, 2.5, 1.0])
    path = tmp_path / "best-{epoch}.safetensors"
    _fit([script, ModelCheckpoint(path, save_best_only=True)], epochs=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best-1.safetensors", "best-2.safetensors", "best-4.safetensors"]
    saved = portacnn.load(tmp_path / "best-2.safetensors")
    for p, best in zip(saved.parameters(), script.weights[1]):
        np.testing.assert_array_equal(np.asarray(p.value), best)
    _fit([ModelCheckpoint(tmp_path / "every.safetensors")], epochs=1)
    assert (tmp_path / "every.safetensors").exists()


def test_a_metric_fit_does_not_record_is_named_with_the_fix():
    x, y = toy_data(12)
    with pytest.raises(ValueError, match="EarlyStopping monitors 'val_loss', which this fit does "
                                         "not record .*pass validation_data or validation_split"):
        small_net().fit(x, y, epochs=2, verbose=0, callbacks=[EarlyStopping()])
    with pytest.raises(TypeError, match="callbacks must be portacnn.training.Callback"):
        small_net().fit(x, y, epochs=1, verbose=0, callbacks=[print])


def test_the_command_line_schedules_clips_stops_and_keeps_the_best(tmp_path, capsys):
    write_mnist(tmp_path / "mnist", n_train=40, n_test=10)
    save = tmp_path / "best.safetensors"
    assert main(["train", "--data", str(tmp_path / "mnist"), "--epochs", "4", "--batch-size",
                 "8", "--lr", "0.5", "--schedule", "cosine", "--warmup", "1", "--clipnorm",
                 "0.5", "--early-stopping", "1", "--save", str(save), "--save-best",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "global_clipnorm=0.5" in out and "cosine schedule after 1 warm-up epochs" in out
    assert "validation: the last 10% of the training images" in out
    assert f"epoch 1: saved {save} (val_loss" in out
    optimizer = portacnn.load(save).optimizer       # the rate of the epoch it was saved after
    assert optimizer.global_clipnorm == 0.5
    assert optimizer.learning_rate in (0.25, 0.5, 0.375, 0.125)
    for args, message in ((["--save-best"], "--save-best writes the file of --save"),
                          (["--schedule", "step", "--warmup", "10"], "leaves no epoch")):
        assert main(["train", *args]) == 2
        assert message in capsys.readouterr().err
