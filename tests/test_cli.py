"""The training command: end to end on the bundled sample, and its error paths."""

import subprocess
import sys
from pathlib import Path

import pytest

import portacnn
from portacnn.cli import main

from helpers import write_cifar10, write_mnist

ROOT = Path(__file__).resolve().parents[1]


def test_default_training_reaches_95_percent_on_held_out_digits(tmp_path, capsys):
    """The README's command with its defaults: LeNet-5, 10 epochs, bundled sample."""
    save = tmp_path / "lenet.safetensors"
    assert main(["train", "--quiet", "--save", str(save)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [save.name]     # no probe file left
    out = capsys.readouterr().out
    assert "backend numpy" in out and "Total params: 61,706" in out and "epoch 10/10" in out
    line = [l for l in out.splitlines() if l.startswith("test accuracy")][0]
    accuracy = float(line.split()[2])
    assert accuracy >= 0.95, line
    model = portacnn.load(save)
    from portacnn.data import load_sample, normalize

    _, (xt, yt) = load_sample()
    assert model.evaluate(normalize(xt), yt)[1] == pytest.approx(accuracy, abs=1e-4)


def test_script_and_module_run(tmp_path):
    for cmd, model in (([sys.executable, str(ROOT / "scripts" / "train.py")], "lenet5-relu"),
                       ([sys.executable, "-m", "portacnn", "train"], "lenet5-bn")):
        res = subprocess.run(cmd + ["--epochs", "1", "--batch-size", "128", "--quiet",
                                    "--optimizer", "adam", "--model", model],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert "epoch 1/1" in res.stdout and "test accuracy" in res.stdout
        accuracy = float(res.stdout.split("test accuracy")[1].split()[0])
        assert accuracy > 0.8, (model, accuracy)         # one epoch already learns digits
    assert "bn1 (BatchNorm2D)" in res.stdout


@pytest.mark.parametrize("args,message", [
    (["--device", "gpu"], 'pip install "portacnn[gpu]"'),
    (["--device", "tpu"], "unknown device 'tpu'; valid devices"),
    (["--batch-size", "-3"], "argument --batch-size: must be a positive integer, got -3"),
    (["--epochs", "many"], "argument --epochs: expected a positive integer, got 'many'"),
    (["--lr", "0"], "argument --lr: must be positive"),
    (["--data", "/no/such/dir"], "--data /no/such/dir: no such directory"),
    (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["--device", "numpy", "--compile"], "--compile traces each step with jax.jit"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    if args == ["--device", "gpu"]:
        try:
            import cupy  # noqa: F401
            pytest.skip("cupy is installed: the missing-CuPy message does not apply")
        except ImportError:
            pass
        from portacnn.backends.cupy_doctor import nvidia_driver_signs

        if not nvidia_driver_signs():                 # no GPU: no install advice comes first
            message = "error: this machine shows no NVIDIA GPU"
    res = subprocess.run([sys.executable, "-m", "portacnn", "train", *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_each_dataset_trains_from_its_files_with_the_models_shape(tmp_path, monkeypatch, capsys):
    """--dataset: Fashion-MNIST from --data DIR; CIFAR-10 (LeNet-5 on 3x32x32, augmented) from
    the download cache; a missing cache says how to fill it."""
    write_mnist(tmp_path / "fashion", n_train=8, n_test=4)
    write_cifar10(tmp_path / "cache" / "cifar10", n=2)
    monkeypatch.setenv("PORTACNN_DATA", str(tmp_path / "cache"))
    fast = ["--epochs", "1", "--batch-size", "4", "--quiet"]
    assert main(["train", *fast, "--dataset", "fashion-mnist", "--data", str(tmp_path / "fashion")]) == 0
    out = capsys.readouterr().out
    assert f"data: Fashion-MNIST in {tmp_path / 'fashion'}, 8 training / 4 test images" in out
    assert main(["train", *fast, "--dataset", "cifar10", "--augment"]) == 0
    out = capsys.readouterr().out
    assert f"data: CIFAR-10 in {tmp_path / 'cache' / 'cifar10'}, 10 training / 2 test" in out
    assert "augmentation: RandomCropFlip(padding=4, flip=True)" in out
    assert "input (N, 3, 32, 32)" in out and "Total params: 62,006" in out   # conv1: 3 channels
    assert main(["train", *fast, "--dataset", "fashion-mnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fashion-mnist does not exist: add --download" in err[0], err


def test_unknown_command():
    assert main(["fly"]) == 2


def test_version_is_printed_by_the_command_and_by_train(capsys):
    import importlib.metadata

    try:                                            # installed, as the README's commands do
        importlib.metadata.version("portacnn")
        expected = f"portacnn {portacnn.__version__}\n"
    except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH alone
        expected = "portacnn (version unknown: not installed; pip install . records it)\n"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == expected
    with pytest.raises(SystemExit) as info:
        main(["train", "--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == expected
    assert main(["--help"]) == 0 and "--version" in capsys.readouterr().out


def test_help_shows_every_options_default():
    from portacnn.cli import train_parser

    parser = train_parser()
    text = " ".join(parser.format_help().split())
    for option, default in (("--epochs", "10"), ("--batch-size", "32"), ("--seed", "0"),
                            ("--dtype", "float32"), ("--optimizer", "sgd"),
                            ("--model", "lenet5"), ("--threads", "idle cores")):
        assert f"(default: {default})" in text.split(f"{option} ", 2)[-1].split(" --")[0], option
    for action in parser._actions:          # each option that takes a value says its default
        if action.option_strings and action.nargs != 0:
            assert "default" in (action.help or ""), action.option_strings
    assert "--quiet" in text and "progress" in text

