"""Data parallelism over MPI (portacnn.distributed), run for real under ``mpiexec -n 2``.

Each MPI test launches a job in a subprocess with a timeout and skips, with the reason, where
mpi4py or ``mpiexec`` is missing (``pip install -e ".[test,mpi]"`` brings both; CI sets
``PORTACNN_REQUIRE_MPI=1`` to fail instead). The MPI used is the one beside this Python (the
virtual environment's ``bin/``), else ``mpiexec`` on the PATH.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

import portacnn
from portacnn import distributed

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


def run(args, *, processes=2, cwd=None):
    """Run ``python ARGS`` under ``mpiexec -n processes`` (or alone with processes=None);
    fail, killing the whole job, if it takes longer than TIMEOUT."""
    command = [sys.executable, *map(str, args)]
    if processes is not None:
        missing = ('mpi4py is not installed' if find_spec("mpi4py") is None else
                   'no mpiexec found' if _mpiexec() is None else None)
        if missing:
            (pytest.fail if os.environ.get("PORTACNN_REQUIRE_MPI") == "1" else pytest.skip)(
                f'{missing}: pip install "portacnn[mpi]" (mpi4py and Open MPI)')
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


def test_batch_norm_models_are_refused_with_the_fix():
    from portacnn.models import MODELS

    class OneRank:                 # a communicator of one process: no MPI needed
        rank, size = 0, 1

        def allgather(self, value):
            return [value]

    with pytest.raises(distributed.DistributedError, match="without batch normalisation"):
        distributed.DataParallel(MODELS["lenet5-bn"](), comm=OneRank())


# --- under mpiexec -n 2 ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("dp")
    job = run([WORKER, "equivalence", outdir])
    assert job.returncode == 0, job.stderr
    return outdir, job, json.loads((outdir / "results.json").read_text())


@pytest.mark.parametrize("case, tolerance", [("float64", 1e-10), ("float32", 1e-5)])
def test_two_processes_reach_the_one_process_parameters(equivalence, case, tolerance):
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


def test_evaluate_and_predict_shard_and_gather_in_order(equivalence):
    for case in ("float64", "dropout"):
        got = equivalence[2][case]
        assert got["predict_rows"] == 201
        assert got["predict"] <= 1e-10 and got["evaluate_loss"] <= 1e-10
        assert got["evaluate_accuracy"] == 0


def test_only_rank_0_writes(equivalence):
    outdir, job, _ = equivalence
    assert (outdir / "rank0" / "model.safetensors").exists()
    assert list((outdir / "rank1").iterdir()) == []
    assert len(re.findall(r"^epoch 1/3:", job.stdout, re.M)) == 3       # one line a fit


def test_a_failing_rank_ends_the_job_with_its_error():
    job = run([WORKER, "fail"])
    assert job.returncode != 0
    assert "rank 1 fails on purpose at step 3" in job.stderr
    assert "training ended" not in job.stdout


def test_command_line_refuses_batch_norm_in_one_line():
    job = run(["-m", "portacnn", "train", "--model", "lenet5-bn", "--epochs", "1", "--quiet"])
    assert job.returncode != 0
    assert "without batch normalisation" in job.stderr


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
