"""Data parallelism over MPI (portacnn.distributed), run for real under ``mpiexec -n 2``.

Each MPI test launches a job in a subprocess with a timeout and skips, with the reason, where
mpi4py or ``mpiexec`` is missing (``pip install -e ".[test,mpi]"`` brings both; CI sets
``PORTACNN_REQUIRE_MPI=1`` to fail instead). The MPI used is the one beside this Python (the
virtual environment's ``bin/``), else ``mpiexec`` on the PATH.
"""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

import portacnn
from portacnn import Dense, Dropout, Flatten, ReLU, Sequential, Tanh, distributed
from portacnn.distributed import agreement
from portacnn.optim import SGD

from helpers import write_mnist

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_worker.py"
TIMEOUT = 60                   # seconds; a hang fails the test instead of the suite


def _mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _environment():
    env = {k: v for k, v in os.environ.items() if k not in distributed.MPI_ENVIRONMENT}
    source = str(Path(portacnn.__file__).resolve().parents[1])   # the portacnn under test
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PORTACNN_DEVICE="cpu",
               # Open MPI 5 / 4: run 2 processes on a 1-core machine too
               PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    if hasattr(os, "geteuid") and os.geteuid() == 0:                # Open MPI refuses root
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _require_mpi():
    missing = ('mpi4py is not installed' if find_spec("mpi4py") is None else
               'no mpiexec found' if _mpiexec() is None else None)
    if missing:
        (pytest.fail if os.environ.get("PORTACNN_REQUIRE_MPI") == "1" else pytest.skip)(
            f'{missing}: pip install "portacnn[mpi]" (mpi4py and Open MPI)')


def run(args, *, processes=2, cwd=None, per_rank=None):
    """Run ``python ARGS`` under ``mpiexec -n processes`` (or alone with processes=None; or,
    with ``per_rank``, rank r runs ``python ARGS + per_rank[r]``); fail, killing the whole
    job, if it takes longer than TIMEOUT."""
    command = [sys.executable, *map(str, args)]
    if per_rank is not None:
        _require_mpi()
        command = [_mpiexec()]
        for extra in per_rank:
            command += [":"] * (len(command) > 1) + ["-n", "1", sys.executable,
                                                     *map(str, args), *map(str, extra)]
    elif processes is not None:
        _require_mpi()
        command = [_mpiexec(), "-n", str(processes), *command]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_environment(), cwd=cwd, start_new_session=True)
    try:
        out, err = job.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        out, err = job.communicate()
        pytest.fail(f"{' '.join(command)} did not end within {TIMEOUT} s (a hang)\n{out}\n{err}")
    return subprocess.CompletedProcess(command, job.returncode, out, err)


# --- without MPI ----------------------------------------------------------------------------
def test_shards_cover_the_batch_in_rank_order():
    for rows in (0, 1, 7, 64, 100):
        for size in (1, 2, 3, 8):
            bounds = [distributed.shard_bounds(rows, size, r) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_launcher_is_read_from_the_environment(monkeypatch):
    for name in distributed.MPI_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_mpi()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert distributed.launched_by_mpi()


def test_layers_coupling_the_batch_without_a_data_parallel_form_are_refused():
    class BatchCentring(portacnn.Layer):          # x - mean over the batch
        samples_independent = False

    class OneRank:                 # a communicator of one process: no MPI needed
        rank, size = 0, 1

        def allgather(self, value):
            return [value]

    model = Sequential([Flatten(), BatchCentring(), Dense(2)], input_shape=(1, 2, 2))
    with pytest.raises(distributed.DistributedError,
                       match=r"layer 1 \(BatchCentring\) couples the samples of a batch and has "
                             "no data-parallel form"):
        distributed.DataParallel(model, comm=OneRank())


def test_wait_bound_comes_from_the_argument_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_VARIABLE, raising=False)
    assert distributed.wait_timeout() == 300
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "12.5")
    assert distributed.wait_timeout() == 12.5
    assert distributed.wait_timeout(3) == 3
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "0")
    assert distributed.wait_timeout() is None                      # no bound
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "soon")
    with pytest.raises(distributed.DistributedError, match="PORTACNN_MPI_TIMEOUT='soon'"):
        distributed.wait_timeout()
    with pytest.raises(distributed.DistributedError, match=">= 0"):
        distributed.wait_timeout(-1)


def test_fingerprints_see_length_dtype_order_and_values():
    x = np.arange(5000 * 3, dtype=np.float32).reshape(5000, 3)
    same = agreement.fingerprint(x.copy())
    assert agreement.fingerprint(x) == same
    changed = x.copy()
    changed[0, 1] += 1                                  # a sampled row
    others = [x[:4999], x.astype(np.float64), x[::-1].copy(), changed, x / 255]
    assert all(agreement.fingerprint(o) != same for o in others)


def test_settings_compare_numbers_of_any_type_and_objects_by_type():
    assert agreement.setting(np.int64(3)) == agreement.setting(3)
    assert agreement.setting(np.float32(0.5)) == agreement.setting(0.5)
    assert agreement.setting(object()) == agreement.setting(object())     # not by address
    assert agreement.setting(SGD(0.1)) != agreement.setting(SGD(0.2))
    assert agreement.setting(SGD(0.1)) != agreement.setting(SGD(0.1, momentum=0.9))


def _model(activation, seed):
    return Sequential([Flatten(), Dense(8), activation(), Dropout(0.5, seed=seed), Dense(3)],
                      input_shape=(2, 2), seed=seed)


def test_the_first_difference_is_named_with_both_values():
    def everyone(*settings):
        return [{"call": "DataParallel.fit", **s} for s in settings]

    assert agreement.difference(everyone({"epochs": 2}, {"epochs": 2})) is None
    message = agreement.difference(everyone({"epochs": 2, "seed": 0}, {"epochs": 2, "seed": 0},
                                            {"epochs": 3, "seed": 1}))
    assert message.startswith("the processes differ in epochs at DataParallel.fit: 2 on rank 0, "
                              "3 on rank 2. Every process must make the same calls")
    lr = [{"optimizer": agreement.setting(SGD(rate))} for rate in (0.1, 0.2)]
    assert "optimizer.config.lr at the call: 0.1 on rank 0, 0.2 on rank 1" in \
        agreement.difference(lr)
    # models of the same shapes differ in an activation; seeds do not matter (rank 0's state)
    tanh, relu = (agreement.model_settings(_model(act, seed)) for act, seed in ((Tanh, 0),
                                                                                (ReLU, 1)))
    assert agreement.model_settings(_model(Tanh, 5)) == tanh
    assert "architecture.layers[2].type at the call: 'Tanh' on rank 0, 'ReLU' on rank 1" in \
        agreement.difference([tanh, relu])


# --- under mpiexec -n 2 ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("dp")
    job = run([WORKER, "equivalence", outdir])
    assert job.returncode == 0, job.stderr
    return outdir, job, json.loads((outdir / "results.json").read_text())


@pytest.mark.parametrize("case, tolerance", [
    ("float64", 1e-10), ("float32", 1e-5),
    ("batchnorm", 1e-10),                   # statistics over every process's rows
    ("batchnorm2d_empty_shard", 1e-10),     # ... one of which has none
    ("graph", 1e-10),                       # a residual block with batch norm (portacnn.Model)
])
def test_two_processes_reach_the_one_process_parameters(equivalence, case, tolerance):
    """Parameters and running statistics after 3 epochs, and the loss of every epoch."""
    _, _, results = equivalence
    got = results[case]
    assert results["size"] == 2
    assert got["moved"] > 1e-2                     # training did move the parameters
    assert got["parameters"] <= tolerance
    assert got["loss_history"] <= tolerance * 10
    assert got["ranks_identical"]                  # the ordered sum gives every rank the same bits


def test_shuffling_and_dropout_do_not_depend_on_the_process_count(equivalence):
    # shuffled batches and dropout masks of 50% differing anywhere would move the parameters
    # by ~0.2 (as measured with per-process masks); the same ones leave rounding only
    got = equivalence[2]["dropout"]
    assert got["moved"] > 1e-2 and got["parameters"] <= 1e-10


def test_each_process_augments_its_rows_as_one_process_would(equivalence):
    # crops and flips drawn per process (or per shard) would differ from one process's and move
    # the parameters far more than rounding
    got = equivalence[2]["augment"]
    assert got["moved"] > 1e-2 and got["parameters"] <= 1e-10 and got["ranks_identical"]


def test_evaluate_and_predict_shard_and_gather_in_order(equivalence):
    for case in ("float64", "dropout"):
        got = equivalence[2][case]
        assert got["predict_rows"] == 201
        assert got["predict"] <= 1e-10 and got["evaluate_loss"] <= 1e-10
        assert got["evaluate_accuracy"] == 0


def test_only_rank_0_writes(equivalence):
    outdir, job, _ = equivalence
    assert (outdir / "rank0" / "model.safetensors").exists()
    assert (outdir / "rank0" / "best.safetensors").exists()          # ModelCheckpoint's
    saved = portacnn.load(outdir / "rank0" / "model.safetensors")       # the graph model
    assert isinstance(saved, portacnn.Model)
    assert list((outdir / "rank1").iterdir()) == []
    assert len(re.findall(r"^epoch 1/3:", job.stdout, re.M)) == 7       # one line a fit


def test_callbacks_stop_every_rank_together_on_rank_0s_word(equivalence):
    assert equivalence[2]["callbacks"]["epochs"] == [2, 2]      # rank 1 asked after epoch 1


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("checks")
    job = run([WORKER, "checks", outdir])
    assert job.returncode == 0, job.stderr
    return json.loads((outdir / "checks.json").read_text())


def test_ranks_seeded_differently_hold_rank_0s_parameters_and_dropout_state(checks):
    got = checks["broadcast"]
    assert got["differed_before"]              # the seeds did give different parameters
    assert got["identical_after"] and got["rank0_kept"] and got["masks_identical"]


REFUSED = {                 # case of tests/mpi_worker.py checks: what the message must name
    "epochs": "epochs at DataParallel.fit: 1 on rank 0, 2 on rank 1",
    "batch_size": "batch_size at DataParallel.fit: 50 on rank 0, 64 on rank 1",
    "shuffle": "shuffle at DataParallel.fit: True on rank 0, False on rank 1",
    "seed": "seed at DataParallel.fit: 0 on rank 0, 1 on rank 1",
    "seed None": "seed at DataParallel.fit: None on rank 0, 0 on rank 1",
    "validation_split": "validation_split at DataParallel.fit: 0.1 on rank 0, 0.2 on rank 1",
    "validation_data rows": "validation_data[0].rows_hash at DataParallel.fit",
    "validation_data length": "validation_data[0].shape at DataParallel.fit: (100, 1, 8, 8) "
                              "on rank 0, (90, 1, 8, 8) on rank 1",
    "optimizer lr": "optimizer.config.lr at DataParallel.fit: 0.05 on rank 0, 0.1 on rank 1",
    "optimizer": "optimizer.config.name at DataParallel.fit: 'SGD' on rank 0, 'Adam' on rank 1",
    "x rows": "x.rows_hash at DataParallel.fit",
    "x length": "x.shape at DataParallel.fit: (201, 1, 8, 8) on rank 0, (200, 1, 8, 8) on rank 1",
    "y": "y.rows_hash at DataParallel.fit",
    "evaluate": "x.rows_hash at DataParallel.evaluate",
    "predict": "x.shape at DataParallel.predict",
    "call": "call at DataParallel.evaluate: 'DataParallel.evaluate' on rank 0, "
            "'DataParallel.predict' on rank 1",
    "activation": "model.architecture.layers[1].type at DataParallel(model): 'Tanh' on rank 0, "
                  "'ReLU' on rank 1",
    "dropout rate": "model.architecture.layers[6].config.p at DataParallel(model): 0.5 on rank "
                    "0, 0.25 on rank 1",
    "dtype": "model.architecture.dtype at DataParallel(model): 'float64' on rank 0, 'float32'",
    "reduction": "reduction at DataParallel(model): 'ordered' on rank 0, 'mpi' on rank 1",
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_settings_that_differ_between_ranks_are_refused_on_every_rank(checks, case):
    got = checks["refused"][case]
    assert got["raised"] == ["DistributedError", "DistributedError"], got
    assert got["messages"][0] == got["messages"][1]            # one message to print
    assert "the processes differ in " + REFUSED[case] in got["messages"][0]


def test_refusals_leave_the_ranks_in_step(checks):
    assert checks["refused"]["shuffle default"]["raised"] == [None, None]  # the default, given
    assert checks["fit_after_refusals"] == 1


def test_a_wait_past_its_bound_says_what_to_check(checks):
    got = checks["timeout"]
    assert got["raised"] == ["DistributedTimeoutError", None]
    message = got["messages"][0]
    assert "no answer from the other processes for 1 s in the sum of the losses" in message
    assert "epochs" in message and "PORTACNN_MPI_TIMEOUT=SECONDS" in message


def test_fit_starts_from_rank_0s_optimizer_state(checks):
    assert checks["optimizer_state"]["identical"]


def _assert_reported_once(job, text):
    """One copy of ``text``, on standard error, and none of Open MPI's abort text."""
    assert job.returncode != 0
    assert job.stderr.count(text) == 1, job.stderr
    for noise in ("MPI_ABORT", "non-zero status", "\0"):
        assert noise not in job.stderr + job.stdout, job.stderr


def test_a_failing_rank_ends_the_job_with_its_error():
    job = run([WORKER, "fail"])
    _assert_reported_once(job, "RuntimeError: rank 1 fails on purpose at step 3")
    assert "[process 1 of 2] Traceback" in job.stderr        # rank 0 reports rank 1's error
    assert "training ended" not in job.stdout


def test_an_error_of_every_rank_is_reported_once():
    job = run([WORKER, "same_error"])
    _assert_reported_once(job, "has no data-parallel form")
    assert job.stderr.count("Traceback") == 1 and "[process" not in job.stderr


REFUSE_CUDA_AWARE = """
import os, sys
from portacnn import Dense, Flatten, Sequential, distributed
model = Sequential([Flatten(), Dense(2)], input_shape=(1, 2, 2))
for how in ("argument", "variable"):
    if how == "variable":
        os.environ[distributed.CUDA_AWARE_VARIABLE] = "1"
    try:
        distributed.DataParallel(model, **({"cuda_aware": True} if how == "argument" else {}))
    except distributed.DistributedError as exc:
        print(how, "refused:", exc)
    else:
        print(how, "accepted")
print("MPI reports CUDA support:", distributed.mpi_cuda_support())
"""


def test_cuda_aware_mpi_is_refused_where_the_mpi_has_no_cuda_support():
    """The PyPI Open MPI that ``[mpi]`` installs is built without CUDA: handing it a device
    buffer would crash, so asking for it is refused with the fix, however asked."""
    job = run(["-c", REFUSE_CUDA_AWARE], processes=1)
    assert job.returncode == 0, job.stderr
    assert "MPI reports CUDA support: False" in job.stdout
    for how, named in (("argument", "cuda_aware=True"),
                       ("variable", "PORTACNN_CUDA_AWARE_MPI=1")):
        line = next(l for l in job.stdout.splitlines() if l.startswith(how))
        assert "refused" in line and "does not report CUDA support" in line, line
        assert named in line and "host buffers" in line and "Open MPI" in line, line


def test_command_line_trains_batch_norm_data_parallel(tmp_path):
    write_mnist(tmp_path, n_train=40, n_test=10)
    job = run(["-m", "portacnn", "train", "--model", "lenet5-bn", "--data", tmp_path,
               "--epochs", "1", "--batch-size", "16", "--quiet"])
    assert job.returncode == 0, job.stderr
    assert "bn1 (BatchNorm2D)" in job.stdout and "data parallel: 2 processes" in job.stdout
    assert 0 <= _accuracy(job.stdout) <= 1


@pytest.mark.parametrize("option, values, named", [
    ("--epochs", ("1", "2"), "epochs at DataParallel.fit: 1 on rank 0, 2 on rank 1"),
    ("--lr", ("0.02", "0.01"), "optimizer.config.lr at DataParallel.fit: 0.02 on rank 0, 0.01"),
    ("--model", ("lenet5", "lenet5-relu"), "model.architecture.layers[0].config.init"),
])
def test_command_line_refuses_settings_that_differ_between_ranks(option, values, named):
    start = time.monotonic()
    job = run(["-m", "portacnn", "train", "--quiet"], per_rank=[[option, v] for v in values])
    _assert_reported_once(job, "portacnn train: error: the processes differ in " + named)
    assert job.returncode == 2 and time.monotonic() - start < 30


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_ctrl_c_under_mpiexec_prints_interrupted_once():
    # mpiexec started from a terminal, as a user would; Ctrl-C reaches mpiexec alone (Open MPI
    # puts each process in its own process group), which passes it on to the processes
    import fcntl
    import termios

    _require_mpi()
    command = [_mpiexec(), "-n", "2", sys.executable, "-m", "portacnn", "train", "--quiet"]
    terminal, tty = os.openpty()
    job = subprocess.Popen(command, stdin=tty, stdout=tty, stderr=tty, env=_environment(),
                           start_new_session=True,
                           preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(tty)
    shown, interrupted_at = b"", None
    try:
        while time.monotonic() - (interrupted_at or time.monotonic()) < 10:
            if select.select([terminal], [], [], TIMEOUT)[0] == []:
                break
            try:
                chunk = os.read(terminal, 4096)
            except OSError:                        # the job ended: the terminal is closed
                break
            shown += chunk
            if interrupted_at is None and b"threads:" in shown:       # training has started
                time.sleep(0.5)
                os.write(terminal, b"\x03")                         # Ctrl-C
                interrupted_at = time.monotonic()
    finally:
        os.close(terminal)
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        status = job.wait()
    text = shown.decode(errors="replace")
    assert interrupted_at is not None, text
    assert status != 0 and text.count("interrupted") == 1, text


def _accuracy(text):
    found = re.findall(r"^test accuracy (\d\.\d+)", text, re.M)
    assert len(found) == 1, text          # one result, printed once
    return float(found[0])


def test_command_line_trains_data_parallel_to_the_one_process_accuracy(tmp_path):
    args = ["-m", "portacnn", "train", "--epochs", "2", "--quiet"]
    alone = run(["-c", "import sys; from portacnn.cli import main; status = main(sys.argv[1:]); "
                 "assert 'mpi4py' not in sys.modules, 'one process imported mpi4py'; "
                 "sys.exit(status)", *args[2:]], processes=None)
    assert alone.returncode == 0, alone.stderr
    job = run([*args, "--save", tmp_path / "model.safetensors"])
    assert job.returncode == 0, job.stderr
    assert "data parallel: 2 processes" in job.stdout
    assert abs(_accuracy(job.stdout) - _accuracy(alone.stdout)) <= 0.005
    assert (tmp_path / "model.safetensors").exists()


def test_benchmark_section_times_one_process_against_two(tmp_path):
    report = tmp_path / "bench.json"
    job = run([HERE.parent / "scripts" / "bench.py", "--data-parallel", "2", "--images", "256",
               "--repeats", "1", "--dp-batches", "64", "--json", report])
    assert job.returncode == 0, job.stderr
    section = json.loads(report.read_text())["data_parallel"]
    row = section["batches"][0]
    assert set(row["epoch_seconds"]) == {"one", "wide", "dp"}
    losses = row["first_epoch_loss"]            # the same work: the same first-epoch loss
    assert losses["dp"] == pytest.approx(losses["one"], rel=1e-5)
    assert section["gradient_values"] == 61_706
    assert all(seconds > 0 for seconds in section["sum_seconds"].values())
    assert job.stdout.count("global batch 64") == 1                  # rank 0 reports
