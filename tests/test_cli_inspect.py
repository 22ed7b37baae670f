"""``cctr inspect``: ``curves`` draws a run folder's TensorBoard log as the demo's curves figure
and refuses a folder that is not a run; ``diagnostics`` reads a benchmark folder's logs into its
tables (best validation Dice and step, second-half means, when the validation gate shut RSL for
good, RSL by quarter of training)."""
from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from cctr.joint.app.cli import main
from cctr.joint.app.run_diagnostics import closed_from, quarter_means

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_log(folder: Path, tags: list[str]) -> None:
    with SummaryWriter(str(folder)) as writer:
        for step in (100, 200):
            for tag in tags:
                writer.add_scalar(tag, step / 1000, step)


def test_curves_of_a_run_folder_become_a_png_with_or_without_the_pretraining_log(tmp_path, capsys):
    run = tmp_path / "run"
    write_log(run / "tb", ["loss/total", "loss/a/sup", "val_a/dice", "val_b/dice", "val_gate/registration_dice"])
    write_log(tmp_path / "reg" / "tb", ["loss/total", "val/dice"])
    for extra, name in (([], "alone.png"), (["--reg-log", str(tmp_path / "reg" / "tb")], "with-reg.png")):
        assert main(["inspect", "curves", "--run", str(run), "--out", str(tmp_path / "fig" / name), *extra]) == 0
        assert (tmp_path / "fig" / name).read_bytes().startswith(PNG_MAGIC)
    assert str(tmp_path / "fig" / "with-reg.png") in capsys.readouterr().out


def test_curves_refuse_a_folder_without_a_log_and_a_missing_pretraining_log_by_name(tmp_path, capsys):
    assert main(["inspect", "curves", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "nothing: no tb/ folder here" in capsys.readouterr().err
    write_log(tmp_path / "run" / "tb", ["val_a/dice"])
    assert main(["inspect", "curves", "--run", str(tmp_path / "run"), "--reg-log", str(tmp_path / "noreg"),
                 "--out", str(tmp_path / "x.png")]) == 2
    assert f"--reg-log {tmp_path / 'noreg'}: not a folder" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def write_run(run: Path, dice: list[float], opened: list[float], gate_tag: str) -> None:
    with SummaryWriter(str(run / "tb")) as writer:
        for k, (d, o) in enumerate(zip(dice, opened)):
            writer.add_scalar("val_a/dice", d, 100 * (k + 1))
            writer.add_scalar(gate_tag, o, 100 * (k + 1))


def diagnostics(capsys, benchmark: Path, *extra: str) -> list[str]:
    assert main(["inspect", "diagnostics", str(benchmark), *extra]) == 0
    return capsys.readouterr().out.splitlines()


def test_closed_from_is_the_step_after_which_the_gate_stays_shut():
    assert closed_from([(100, 1.0), (200, 0.0), (300, 1.0), (400, 0.0), (500, 0.0)]) == 400
    assert closed_from([(100, 0.0), (200, 0.0)]) == 100
    assert closed_from([(100, 0.0), (200, 1.0)]) is None


def test_diagnostics_read_best_validation_and_gate_decisions_per_seed(tmp_path, capsys):
    runs = tmp_path / "runs" / "cctr" / "learned-x" / "labeled-1"
    write_run(runs / "draw-0" / "seed-0", [0.5, 0.7, 0.6], [1.0, 0.0, 0.0], "val_gate/open_a")
    write_run(runs / "draw-1" / "seed-0", [0.4, 0.5, 0.8], [1.0, 1.0, 1.0], "val_rsl/open_a")   # the older tag
    lines = diagnostics(capsys, tmp_path, "--out", str(tmp_path / "tables" / "diag.md"))
    mean_row = next(line for line in lines if line.startswith("| cctr | learned-x | 2 |"))
    # the sample std of 0.7 and 0.8
    assert "0.7500 ± 0.0707" in mean_row and mean_row.rstrip(" |").endswith("200 / -")
    seed0 = next(line for line in lines if line.startswith("| cctr | learned-x | 0/0 |"))
    assert "| 0.7000 | 200 | 0.6000 |" in seed0
    assert (tmp_path / "tables" / "diag.md").read_text().splitlines() == lines


def test_quarter_means_split_a_run_in_four_and_leave_empty_quarters_out():
    series = [(0, 1.0), (10, 3.0), (25, 5.0), (74, 7.0), (100, 9.0)]   # a run of 100 steps
    assert quarter_means(series, 100) == [2.0, 5.0, 7.0, 9.0]
    assert quarter_means([(0, 1.0), (99, 2.0)], 100) == [1.0, None, None, 2.0]


def test_quarters_show_only_the_rsl_figures_a_run_logged(tmp_path, capsys):
    run = tmp_path / "runs" / "cctr" / "learned-x" / "labeled-1" / "draw-0" / "seed-0"
    with SummaryWriter(str(run / "tb")) as writer:
        for step in range(0, 400, 10):
            writer.add_scalar("rsl/target_acc_hidden", 0.9 if step < 100 else 0.5, step)
            if step < 200:   # closed to both students from the middle on
                writer.add_scalar("rsl/acc_hidden_a", 0.1, step)
        writer.add_scalar("val_a/dice", 0.8, 400)
    assert not any(line.startswith("| method | backend | figure |") for line in diagnostics(capsys, tmp_path))
    lines = diagnostics(capsys, tmp_path, "--quarters")
    quarters = lines[lines.index("| method | backend | figure | quarter 1 | quarter 2 | quarter 3 | quarter 4 |"):]
    assert "| cctr | learned-x | RSL acc | 0.900 | 0.500 | 0.500 | 0.500 |" in quarters
    assert "| cctr | learned-x | A acc at RSL | 0.100 | 0.100 | - | - |" in quarters
    assert not any("B acc at RSL" in line for line in quarters)   # never logged: left out


def test_the_synthesised_samples_share_inside_the_atlas_is_a_column(tmp_path, capsys):
    run = tmp_path / "runs" / "cctr" / "learned-x" / "labeled-1" / "draw-0" / "seed-0"
    with SummaryWriter(str(run / "tb")) as writer:
        for step in range(0, 400, 10):
            writer.add_scalar("synth/inside", 0.5 if step < 200 else 0.75, step)   # the second half counts
        writer.add_scalar("val_a/dice", 0.8, 400)
    lines = diagnostics(capsys, tmp_path)
    header = next(line for line in lines if line.startswith("| method | backend | draw/seed |"))
    seed0 = next(line for line in lines if line.startswith("| cctr | learned-x | 0/0 |"))
    assert header.endswith("| synth inside | A closed from |") and seed0.endswith("| 0.7500 | - |")


def test_diagnostics_of_a_folder_without_runs_of_that_labeled_set_is_an_error_naming_it(tmp_path, capsys):
    write_run(tmp_path / "runs" / "cctr" / "learned-x" / "labeled-1" / "draw-0" / "seed-0", [0.5], [1.0],
              "val_gate/open_a")
    assert main(["inspect", "diagnostics", str(tmp_path), "--labeled", "3", "--out", str(tmp_path / "d.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cctr: error: {tmp_path}: no runs of labeled set '3'") and "labeled-3/draw-D/seed-N/tb" in err
    assert not (tmp_path / "d.md").exists()
