"""portacnn.viz: figures rendered headlessly and checked for real properties."""

import struct

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is not installed (portacnn[viz])")

from portacnn import viz  # noqa: E402
from portacnn.cli import main  # noqa: E402
from portacnn.data import load_sample, normalize  # noqa: E402
from portacnn.models import lenet5  # noqa: E402
from portacnn.optim import SGD  # noqa: E402


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", data[16:24])          # IHDR width, height


def not_blank(path):
    pixels = matplotlib.image.imread(str(path))[..., :3]
    return float(pixels.std()) > 0.05


@pytest.fixture(scope="module")
def trained():
    (x, y), (xt, yt) = load_sample()
    model = lenet5(seed=0)
    hist = model.fit(normalize(x[:1000]), y[:1000], epochs=2, batch_size=32,
                     optimizer=SGD(0.02, momentum=0.9), validation_data=(normalize(xt[:200]), yt[:200]),
                     verbose=0)
    return model, hist, normalize(xt[:200]), yt[:200]


def test_history_figure(trained, tmp_path):
    _, hist, _, _ = trained
    fig = viz.plot_history(hist, tmp_path / "h.png")
    w, h = png_size(tmp_path / "h.png")
    assert (w, h) == (900, 360)                       # figsize (9, 3.6) at 100 dpi
    assert not_blank(tmp_path / "h.png")
    loss_ax = fig.axes[0]
    assert [len(line.get_xdata()) for line in loss_ax.get_lines()] == [2, 2]   # train + val
    with pytest.raises(ValueError, match="the history is empty"):
        viz.plot_history({"loss": []})


@pytest.mark.parametrize("layer,tiles", [(None, 6), ("conv2", 96), (3, 96)])
def test_filter_grid_has_one_tile_per_kernel(trained, tmp_path, layer, tiles):
    model = trained[0]
    fig = viz.plot_filters(model, layer, path=tmp_path / "f.png")
    drawn = [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    assert fig.tiles == tiles == len(drawn)
    limits = {ax.get_images()[0].get_clim() for ax in drawn}
    assert len(limits) == 1                            # one shared colour scale...
    low, high = limits.pop()
    assert high == -low > 0                            # ...symmetric around zero
    assert not_blank(tmp_path / "f.png")
    with pytest.raises(ValueError, match=r"no convolution layer 'fc1'; the convolution layers are 0 \(conv1\), 3 \(conv2\)"):
        viz.plot_filters(model, "fc1")


def test_feature_maps_one_row_per_conv_and_pool_layer(trained, tmp_path):
    model, _, x, _ = trained
    fig = viz.plot_feature_maps(model, x[0], path=tmp_path / "m.png")
    assert len(fig.axes) == 4 * (16 + 1)               # conv1, pool1, conv2, pool2 x (input + 16)
    shown = [ax.get_images()[0].get_array().shape for ax in fig.axes if ax.get_images()]
    assert (28, 28) in shown and (14, 14) in shown and (10, 10) in shown and (5, 5) in shown
    assert model.training                              # mode restored
    assert not_blank(tmp_path / "m.png")
    with pytest.raises(ValueError, match="takes one image"):
        viz.plot_feature_maps(model, x[:2])


def test_predictions_mark_the_mistakes(trained, tmp_path):
    model, _, x, y = trained
    fig = viz.plot_predictions(model, x, y, n=25, path=tmp_path / "p.png")
    pred = np.argmax(model.predict(x[:25]), axis=1)
    wrong = int(np.sum(pred != y[:25]))
    assert fig._suptitle.get_text() == f"{25 - wrong} of 25 right; mistakes in red"
    red_titles = [ax for ax in fig.axes if ax.title.get_color() == "red"]
    assert len(red_titles) == wrong
    assert not_blank(tmp_path / "p.png")


def test_confusion_counts_sum_to_samples_and_match_evaluate(trained, tmp_path):
    model, _, x, y = trained
    fig = viz.plot_confusion(model, x, y, path=tmp_path / "c.png")
    matrix = fig.confusion
    assert matrix.shape == (10, 10) and matrix.sum() == len(y)
    assert np.trace(matrix) / len(y) == pytest.approx(model.evaluate(x, y)[1])
    assert np.array_equal(matrix.sum(axis=1), np.bincount(y, minlength=10))
    assert not_blank(tmp_path / "c.png")


def test_figures_for_a_model_on_another_backend(trained, tmp_path):
    model, hist, x, y = trained
    model.to("array_api_strict")
    try:
        viz.plot_filters(model, path=tmp_path / "f.png")
        viz.plot_feature_maps(model, x[0], path=tmp_path / "m.png")
        fig = viz.plot_confusion(model, x, y)
        assert fig.confusion.sum() == len(y)
    finally:
        model.to("cpu")


def test_train_command_writes_the_five_plots(tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["train", "--epochs", "1", "--batch-size", "128", "--quiet", "--plots", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["confusion.png", "feature_maps.png", "filters.png", "history.png",
                     "predictions.png"]
    assert all(not_blank(p) for p in out.iterdir())


def test_plots_without_matplotlib_exit_2_before_training(hide_module, capsys):
    hide_module("matplotlib")
    assert main(["train", "--plots", "somewhere"]) == 2
    captured = capsys.readouterr()
    assert 'pip install "portacnn[viz]"' in captured.err and "epoch" not in captured.out


def test_feature_maps_restore_the_training_mode_when_a_layer_fails(monkeypatch):
    model = lenet5(seed=0)
    model.train()
    calls = []

    def fails(h):
        calls.append(h.shape)
        raise RuntimeError("a layer failed mid-way")

    monkeypatch.setattr(model.layers[2], "_forward", fails)
    with pytest.raises(RuntimeError, match="mid-way"):
        viz.plot_feature_maps(model, np.zeros((1, 28, 28), dtype=np.float32))
    assert calls and model.training
    assert all(layer.training for layer in model.layers)
