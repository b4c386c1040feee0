"""``handgrad train`` never loses work: an existing run is replaced only on request, every output
is checked before training starts, and a resumed run keeps its learning-rate schedule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_train_cli import ARGS, one_thread, tiny, train  # noqa: F401 (fixtures)

from handgrad import HandgradError
from handgrad.app.config import TrainConfig, config_for_resume
from handgrad.app.run import run_schedule
from handgrad.optim.schedules import make_schedule

from support import run_cli


def one_line_error(r, *words: str) -> None:
    assert r.status == 2, r.out + r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
    for word in words:
        assert word in r.err, r.err


@pytest.fixture(scope="module")
def two_epochs(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A finished 2-epoch one-cycle run (8 steps an epoch)."""
    out = tmp_path_factory.mktemp("run") / "two"
    r = train(tiny, out, "--epochs", "2")
    assert r.status == 0, r.err
    return out


# ------------------------------------------------------------------ item 2: existing runs
def test_out_onto_a_run_is_refused_then_overwritten_on_request(
    tiny: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    assert train(tiny, out, "--epochs", "2").status == 0
    weights = (out / "last.safetensors").read_bytes()
    again = train(tiny, out, "--epochs", "1")
    one_line_error(again, "already holds a run", "--resume", "--overwrite")
    assert (out / "last.safetensors").read_bytes() == weights  # untouched
    both = run_cli("train", "--resume", str(out / "last.safetensors"), "--overwrite")
    one_line_error(both, "give one of them")

    # what a report, evaluate and a killed save leave there goes with the old run
    (out / "plots").mkdir()
    (out / "plots" / "history.png").write_bytes(b"old")
    (out / "tensorboard").mkdir()  # an old --logger tensorboard's events
    (out / "tensorboard" / "events.out.tfevents.1").write_bytes(b"old")
    for name in ("report.html", "confusion-tiny-valid.png", ".last.safetensors.x1.tmp"):
        (out / name).write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    replaced = train(tiny, out, "--epochs", "1", "--overwrite")
    assert replaced.status == 0, replaced.err
    assert sorted(p.name for p in out.iterdir()) == [
        "best.json",
        "best.safetensors",
        "history.csv",
        "history.png",
        "last.json",
        "last.safetensors",
        "metrics.json",
        "notes.txt",
    ]
    assert json.loads((out / "metrics.json").read_text())["epoch"] == 1


# --------------------------------------------------- item 7: outputs checked before training
def bad_outputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {
        "--out is a file": (["--out", str(a_file)], "is a file"),
        "--out below a file": (["--out", str(a_file / "run")], "is a file"),
        "--out under /proc": (["--out", "/proc/handgrad-run"], "cannot write in /proc"),
        "--plots is a file": (["--out", str(tmp_path / "r"), "--plots", str(a_file)], "--plots"),
        "--weight-decay inf": (["--out", str(tmp_path / "r"), "--weight-decay", "inf"], "finite"),
        "--lr nan": (["--out", str(tmp_path / "r"), "--lr", "nan"], "--lr nan"),
        "--label-smoothing nan": (
            ["--out", str(tmp_path / "r"), "--label-smoothing", "nan"],
            "--label-smoothing nan",
        ),
    }
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        cases["--out read-only"] = (["--out", str(ro / "run")], "cannot write in")
    return cases


def test_bad_outputs_and_options_fail_before_anything_is_written(
    tiny: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    for name, (argv, message) in bad_outputs(tmp_path).items():
        before = sorted(tmp_path.rglob("*"))
        r = run_cli("train", "--data", str(tiny), *ARGS, "--epochs", "1", *argv)
        one_line_error(r, message)
        assert "epoch" not in r.out, name  # nothing trained
        assert sorted(tmp_path.rglob("*")) == before, name  # nothing written


def test_constant_pixels_are_one_line(tmp_path: Path) -> None:
    x, y = np.zeros((32, 8, 8), np.uint8), np.arange(32) % 4
    np.savez(tmp_path / "flat.npz", x_train=x, y_train=y, x_valid=x, y_valid=y)
    r = run_cli("train", "--data", str(tmp_path / "flat.npz"), "--out", str(tmp_path / "r"))
    one_line_error(r, "flat.npz", "no variance")
    assert not (tmp_path / "r").exists()


def test_lr_find_checks_its_output_and_rates(tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    base = ("lr-find", "--data", str(tiny), "--hidden", "8", "--steps", "5", "--quiet")
    one_line_error(run_cli(*base, "--out", "/proc/lr.png"), "--out /proc/lr.png")
    one_line_error(run_cli(*base, "--out", str(tmp_path)), "is a folder")
    one_line_error(run_cli(*base, "--end-lr", "inf", "--out", str(tmp_path / "x.png")), "finite")
    assert list(tmp_path.iterdir()) == []


def test_data_dir_and_no_download_reach_the_loader(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = []

    def fake_load(name, **kwargs):
        seen.append((name, kwargs["data_dir"], kwargs["download"]))
        raise HandgradError(f"{name}: not on this machine")

    monkeypatch.setattr("handgrad.app.run.load_dataset", fake_load)
    cache = str(tmp_path / "cache")
    for command in ("train", "lr-find"):
        r = run_cli(command, "--data", "mnist", "--data-dir", cache, "--no-download", "--quiet")
        one_line_error(r, "not on this machine")
    assert seen == [("mnist", cache, False)] * 2


# --------------------------------------------- item 10: resuming keeps the schedule it made
def test_extending_a_finished_run_continues_its_schedule_tail(
    two_epochs: Path, tmp_path: Path
) -> None:
    last = str(two_epochs / "last.safetensors")
    merged, _ = config_for_resume(TrainConfig(resume=last, epochs=4), {"resume", "epochs"})
    merged = merged.resolved()
    assert (merged.schedule_from, merged.schedule_until) == (0, 2)
    planned = make_schedule("onecycle", 1e-2, 16)  # the run's: 2 epochs of 8 steps
    lrs = [run_schedule(merged, 8)(s) for s in range(32)]
    assert lrs[:16] == [planned(s) for s in range(16)]
    assert lrs[16:] == [planned(15)] * 16  # the tail, not a new warm-up

    r = run_cli("train", "--resume", last, "--epochs", "3", "--quiet", "--out", str(tmp_path))
    assert r.status == 0, r.err
    assert "onecycle schedule ends at epoch 2; epochs 3-3 keep its last learning rate" in r.out
    assert "--lr LR and --schedule constant" in r.out


def test_resuming_with_a_new_rate_starts_a_new_schedule(two_epochs: Path, tmp_path: Path) -> None:
    last = str(two_epochs / "last.safetensors")
    given = {"resume", "epochs", "lr", "schedule"}
    merged, _ = config_for_resume(
        TrainConfig(resume=last, epochs=4, lr=1e-3, schedule="constant"), given
    )
    assert (merged.schedule_from, merged.schedule_until) == (2, None)
    assert [run_schedule(merged.resolved(), 8)(s) for s in (16, 31)] == [1e-3, 1e-3]
    r = run_cli(
        "train", "--resume", last, "--epochs", "3", "--lr", "1e-3", "--schedule", "constant",
        "--out", str(tmp_path / "tuned"), "--quiet",
    )  # fmt: skip
    assert r.status == 0, r.err
    assert "schedule ends" not in r.out and "constant schedule" in r.out
    saved = json.loads((tmp_path / "tuned" / "last.json").read_text())["config"]
    assert (saved["schedule"], saved["lr"], saved["schedule_from"]) == ("constant", 1e-3, 2)


# ------------------------------------------- item 13: per-epoch logs and the model summary
def test_a_run_logs_each_epoch_to_csv_and_starts_with_the_model_summary(
    tiny: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    r = run_cli("train", "--data", str(tiny), "--out", str(out), "--epochs", "2", "--hidden", "8",
                "--threads", "1")  # fmt: skip
    assert r.status == 0, r.err
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,valid_loss") and len(rows) == 3
    history = json.loads((out / "last.json").read_text())["callbacks"]["recorder"]["history"]
    assert [float(x) for x in rows[2].split(",")[:3]] == pytest.approx(
        [history[1]["epoch"], history[1]["train_loss"], history[1]["valid_loss"]]
    )
    # the summary table comes before the first epoch: layers, shapes, parameter counts
    head = r.out[: r.out.index("epoch 1/2")]
    assert "output shape" in head and "(N, 8)" in head and "parameters, output (N, " in head

    none = run_cli("train", "--data", str(tiny), "--out", str(tmp_path / "quiet"), "--epochs",
                   "1", "--hidden", "8", "--threads", "1", "--quiet", "--logger", "")  # fmt: skip
    assert none.status == 0 and not (tmp_path / "quiet" / "history.csv").exists()
    assert "output shape" not in none.out


@pytest.mark.parametrize("names", ["tensorboard", "csv,wandb"])
def test_a_logger_that_cannot_log_is_refused_before_training(
    tiny: Path,  # noqa: F811
    tmp_path: Path,
    names: str,
) -> None:
    try:
        import tensorboard  # noqa: F401

        if names == "tensorboard":
            pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    r = train(tiny, tmp_path / "run", "--logger", names)
    one_line_error(r, "--logger" if "wandb" in names else "tensorboard")
    assert "epoch 1" not in r.out and not (tmp_path / "run" / "last.json").exists()


def test_evaluate_report_and_predict_check_their_outputs_first(
    two_epochs: Path, tmp_path: Path
) -> None:
    """Each names its bad output in one line before it loads data or runs the model."""
    ckpt, a_file = str(two_epochs / "best.safetensors"), tmp_path / "a-file"
    a_file.write_text("x")
    png = tmp_path / "digit.png"
    png.write_bytes((two_epochs / "history.png").read_bytes())
    before = sorted(tmp_path.rglob("*"))
    cases = [
        (("evaluate", ckpt, "--out", str(tmp_path)), "is a folder"),
        (("evaluate", ckpt, "--out", "/proc/c.png"), "cannot write in /proc"),
        (("report", str(two_epochs), "--out", str(tmp_path)), "is a folder"),
        (("predict", ckpt, str(png), "--show", str(a_file)), "is a file, not a folder"),
    ]
    for argv, message in cases:
        r = run_cli(*argv)
        one_line_error(r, argv[-2], message)
        assert "accuracy" not in r.out and "wrote" not in r.out
    assert sorted(tmp_path.rglob("*")) == before
