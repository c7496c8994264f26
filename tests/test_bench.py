"""scripts/bench.py runs end to end on a tiny workload (what it reports is checked, not how fast
anything is: speed is measured by running the script, never by a test)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench  # noqa: E402

TINY = ["--images", "192", "--repeats", "1", "--threads", "1", "--infer-batches", "64",
        "--scale-batches", "16,32"]


def test_bench_reports_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(TINY + ["--json", str(out)]) == 0
    report = json.loads(out.read_text())
    entry = report["by_threads"][0]
    assert entry["threads"] == 1 and entry["pools"]["openblas"] == 1
    assert [row["layer"] for row in entry["layers"]][:3] == ["conv1", "Tanh", "pool1"]
    assert entry["train"]["portacnn"]["runs"] == 1 and entry["train"]["portacnn"]["median"] > 0
    assert entry["inference"][0]["batch_size"] == 64
    sizes = [(r["batch_size"], r["image_size"]) for r in report["scaling"]]
    assert sizes == [(16, 28), (32, 28), (64, 56), (64, 112)]
    assert all(r["peak_mib"] > 0 for r in report["scaling"])
    assert report["scaling"][3]["peak_mib"] > report["scaling"][0]["peak_mib"]
    assert len(report["memory_mib_after_epochs"]) == bench.MEMORY_EPOCHS
    assert "ratio portacnn/pytorch" not in capsys.readouterr().out


def test_bench_against_torch_uses_the_same_network(tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (optional peer)")
    out = tmp_path / "bench.json"
    assert bench.main(TINY + ["--sections", "train,infer", "--compare-torch",
                              "--json", str(out)]) == 0
    train = json.loads(out.read_text())["by_threads"][0]["train"]
    # same initial weights, batches and optimizer: the first epoch's loss agrees
    assert train["portacnn_loss_first_epoch"] == pytest.approx(train["torch_loss_first_epoch"],
                                                               rel=1e-4)
    assert train["ratio_portacnn_over_torch"]["median"] > 0


def test_tutorial_comparison_times_both_sides_on_the_same_images(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(TINY + ["--sections", "none", "--compare-tutorial",
                              "--tutorial-images", "64", "--repeats", "2",
                              "--json", str(out)]) == 0
    tut = json.loads(out.read_text())["by_threads"][0]["tutorial"]
    assert tut["images_timed"] == 64
    theirs, ours = tut["epoch_seconds_scaled"], tut["portacnn_epoch_seconds_scaled"]
    assert theirs["runs"] == ours["runs"] == tut["speedup_portacnn_over_tutorial"]["runs"] == 2
    lo, hi = theirs["min"] / ours["max"], theirs["max"] / ours["min"]
    assert lo <= tut["speedup_portacnn_over_tutorial"]["median"] <= hi


def test_compare_torch_without_torch_says_how_to_install(hide_module, capsys):
    hide_module("torch")
    assert bench.main(["--compare-torch"]) == 2
    assert "pip install torch" in capsys.readouterr().err


def test_compile_off_jax_exits_2_naming_the_device(capsys):
    pytest.importorskip("torch", reason="torch is not installed (optional peer)")
    assert bench.main(["--device", "cpu", "--compile"]) == 2
    assert "run it with --device jax" in capsys.readouterr().err


def test_bench_unknown_device_exits_2(capsys):
    assert bench.main(["--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


class _FakeGPU:
    """A NumPy backend dressed as a GPU: accelerator, device fields, its own peak probe."""

    def __new__(cls):
        from portacnn.backends import NumpyBackend

        class FakeGPU(NumpyBackend):
            accelerator = True
            host_sync_is_free = False

            def device_info(self):
                return {**super().device_info(), "gpu": "Fake GPU", "cuda_device": 0,
                        "memory_gib": 80.0, "compute_capability": "9.0",
                        "cuda_driver": "12.8", "cuda_runtime": "12.9", "cupy": "14.2.0",
                        "nvrtc": "12.9"}

        return FakeGPU.create()


def test_on_a_gpu_the_header_names_it_and_one_thread_count_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.portacnn, "get_backend", lambda device: _FakeGPU())
    out = tmp_path / "bench.json"
    assert bench.main(TINY + ["--threads", "1,2", "--sections", "train,scaling",
                              "--scale-batches", "16", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    device = report["machine"]["device"]
    assert (device["gpu"], device["cuda_driver"], device["cuda_runtime"], device["cupy"]) == (
        "Fake GPU", "12.8", "12.9", "14.2.0")
    assert [e["threads"] for e in report["by_threads"]] == [1]
    header = capsys.readouterr().out
    assert "GPU Fake GPU (cuda:0, 80.0 GiB, sm 9.0), driver CUDA 12.8, runtime 12.9, CuPy 14.2.0" \
        in header
    assert all(row["peak_mib"] > 0 for row in report["scaling"])


def test_timed_synchronises_every_device_before_each_clock_read():
    calls = []

    class Sync:
        def __init__(self, name):
            self.name = name

        def synchronize(self):
            calls.append(self.name)

    bench.timed(lambda: calls.append("work"), Sync("portacnn"), Sync("torch"))
    assert calls == ["portacnn", "torch", "work", "portacnn", "torch"]


def test_peak_memory_is_a_peak_not_what_is_left():
    from portacnn.backends import get_backend

    import numpy as np

    def burst():
        big = np.ones(4_000_000)        # 32 MB, freed before the block ends
        del big
    peak = bench._peak_bytes(burst, get_backend("cpu"))
    assert peak >= 32_000_000


def test_the_data_parallel_clock_starts_after_the_shuffled_copy_is_on_the_device(monkeypatch):
    """The shuffled epoch is copied to the device before _run_timed; on a GPU that copy may
    still be running when the clock would start: every device is synchronised first, and again
    before the clock is read."""
    calls = []

    class Comm:
        rank = 0

        def Barrier(self):
            calls.append("barrier")

        def Ibarrier(self):
            return type("Request", (), {"Test": lambda self: True})()

        def bcast(self, value, root=0):
            return value

    clock = iter([10.0, 12.5])

    def perf_counter():
        calls.append("clock")
        return next(clock)

    monkeypatch.setattr(bench.time, "perf_counter", perf_counter)
    seconds = bench._run_timed(Comm(), lambda: calls.append("work"), True,
                               lambda: calls.append("sync"))
    assert seconds == 2.5
    assert calls == ["barrier", "sync", "clock", "work", "sync", "clock"]


def test_the_pytorch_peer_computes_float32_without_tf32_as_cupy_does():
    """PyTorch lets cuDNN (and may let cuBLAS) use TF32 for float32 on Ampere and newer GPUs;
    CuPy does not: the peer turns it off, so speed and loss compare like with like."""
    from types import SimpleNamespace

    matmul = SimpleNamespace(allow_tf32=True)
    cudnn = SimpleNamespace(allow_tf32=True)
    torch = SimpleNamespace(backends=SimpleNamespace(cuda=SimpleNamespace(matmul=matmul),
                                                     cudnn=cudnn),
                            device=lambda name: SimpleNamespace(type=name.split(":")[0]))
    peer = bench.Peer(torch, _FakeGPU())
    assert matmul.allow_tf32 is False and cudnn.allow_tf32 is False
    assert peer.device.type == "cuda" and peer.tf32 is False


# --- the convolution sweep and the networks (--sweep, --networks) -----------------------------

SHAPES_AND_NETWORKS = ["--sections", "none", "--sweep", "--networks", "--quick", "--repeats", "1",
                       "--network-threads", "1", "--only", "lenet5,resnet20"]


@pytest.fixture(scope="module")
def shapes_and_networks(tmp_path_factory):
    pytest.importorskip("torch", reason="torch is not installed (the sweep's peer)")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert bench.main(SHAPES_AND_NETWORKS + ["--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_sweep_times_every_shape_and_agrees_with_pytorch(shapes_and_networks):
    from benchmarks.sweep import QUICK_SHAPES, accepts_groups

    from portacnn.backends import get_backend

    rows = shapes_and_networks["sweep"]
    assert [row["what"] for row in rows] == [shape[-1] for shape in QUICK_SHAPES]
    grouped = accepts_groups(get_backend("cpu").kernels.conv2d_forward)
    for row in rows:
        if row["groups"] > 1 and not grouped:
            assert "groups=" in row["skipped"]
            continue
        assert row["max_rel_err"] < 1e-4 and row["route"]
        assert row["forward"]["portacnn_gflops"] > 0 and row["weight_grad"]["ratio"] > 0


def test_the_networks_start_alike_and_report_time_and_memory(shapes_and_networks):
    rows = {(row["network"], row.get("mode")): row for row in shapes_and_networks["networks"]}
    train = rows["lenet5", "train"]
    loss = train["first_step_loss"]             # same weights, same batch: the same loss
    assert loss["portacnn"] == pytest.approx(loss["torch"], rel=1e-5)
    assert train["by_threads"]["1"]["ratio"]["median"] > 0
    assert train["peak_mib"]["portacnn_traced"] > 0
    assert rows["lenet5", "infer"]["by_threads"]["1"]["portacnn_ms"]["runs"] == 1
    peak = shapes_and_networks["sgemm"]["peak_gflops"]
    one = train["by_threads"]["1"]
    assert train["flops"] == 8 * 2_263_920 and train["sgemm_at_shapes_gflops"] > 0   # batch 8
    assert one["portacnn_gflops"] == pytest.approx(
        train["flops"] / one["portacnn_ms"]["median"] / 1e6)
    assert one["torch_of_peak"] == pytest.approx(one["torch_gflops"] / peak)
    assert ("resnet20", None) in rows or ("resnet20", "train") in rows   # skipped, or timed
    assert "small_vgg" not in {name for name, _ in rows}                  # --only


def test_flops_are_counted_from_the_model():
    from benchmarks.flops import gemm_shapes, step_flops

    from portacnn import Conv2D, Dense, Flatten, Input, Model
    from portacnn.models import lenet5

    # LeNet-5 on 28x28, multiply-adds a sample: conv1 6*28*28 outputs * 1*5*5 = 117,600;
    # conv2 16*10*10 * 6*5*5 = 240,000; fc1 120*400 = 48,000; fc2 84*120 = 10,080; fc3
    # 10*84 = 840; forward 416,520. Training: 3x, less conv1's input gradient (the first
    # layer needs none): 3 * 416,520 - 117,600 = 1,131,960. FLOPs are twice those.
    assert step_flops(lenet5(), 4) == {"train": 4 * 2 * 1_131_960, "infer": 4 * 2 * 416_520}
    # a graph calling one convolution twice counts both calls, each with its input gradient
    # (its second call's input is not the model's): 2 * (2*4*4 * 2*3*3) + 3 * 2*4*4 = 1,248
    x = Input((2, 4, 4))
    conv = Conv2D(2, 3, padding=1)
    model = Model(x, Dense(3)(Flatten()(conv(conv(x)))))
    assert step_flops(model, 1) == {"train": 2 * 3 * 1_248, "infer": 2 * 1_248}
    assert gemm_shapes(lenet5(), 2, "train")[:3] == [      # conv1: forward, dW; no dx
        (1, ((6, 25), (25, 2 * 784))), (1, ((6, 2 * 784), (2 * 784, 25))),
        (1, ((16, 150), (150, 2 * 100)))]


def test_the_small_vgg_twin_starts_from_the_same_weights():
    torch = pytest.importorskip("torch")
    from benchmarks.networks import Pair
    from benchmarks.twins import networks

    from portacnn.backends import get_backend

    build, input_shape, _ = networks()["small_vgg"]
    pair = Pair("small_vgg", build, input_shape, get_backend("cpu"), torch, 2, 2)
    assert pair.same_weights
    assert pair.ours_train() == pytest.approx(pair.theirs_train(), rel=1e-5)


def test_write_docs_keeps_the_lenet_run_and_replaces_its_own_tables(shapes_and_networks,
                                                                    tmp_path):
    from benchmarks.report import BEGIN, write_docs

    kind = shapes_and_networks["machine_kind"]
    (tmp_path / "docs" / "bench").mkdir(parents=True)
    lenet_run = {"machine": {"cpu": "earlier"}, "by_threads": [{"threads": 1}]}
    (tmp_path / "docs" / "bench" / f"{kind}.json").write_text(json.dumps(lenet_run))
    (tmp_path / "docs" / "performance.md").write_text("# Performance\n\nText.\n")
    for _ in range(2):
        json_path, doc = write_docs(shapes_and_networks, tmp_path)
    data = json.loads(json_path.read_text())
    assert data["by_threads"] == lenet_run["by_threads"]       # no LeNet-5 run: kept
    assert data["shapes_and_networks"]["sweep"] == shapes_and_networks["sweep"]
    text = doc.read_text()
    assert text.startswith("# Performance\n\nText.\n") and text.count(BEGIN) == 1
    assert "| lenet5 train, 8 |" in text


def test_machine_kind_names_the_file_per_machine():
    from benchmarks.common import machine_kind

    assert machine_kind({"cpu": "AMD EPYC 9B14 96-Core Processor", "cores": 2}) == \
        "cpu-amd-epyc-2core"
    assert machine_kind({"cpu": "x", "cores": 1, "device": {"gpu": "NVIDIA H100 80GB HBM3"}}) \
        == "gpu-nvidia-h100-80gb-hbm3"


def test_grouped_rows_run_only_where_the_kernel_takes_groups():
    from benchmarks.sweep import accepts_groups

    def grouped(x, weight, *, groups=1, inference=False):
        pass

    def plain(x, weight, *, inference=False):
        pass

    assert accepts_groups(grouped) and not accepts_groups(plain)
