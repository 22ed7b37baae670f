"""``cctr config show``: every option a run would use, one a line, with its default and its
description; the plan applied as ``cctr train`` applies it; at most 90 option leaves in all."""
from __future__ import annotations

import re

from cctr.joint.app.cli import main
from cctr.joint.app.commands.config import all_rows
from cctr.joint.app.demo import DemoConfig
from cctr.joint.config import JointConfig
from cctr.reg.config import RegConfig
from cctr.reg.spec import BackendSpec
from cctr.seg.data.phantom import PhantomConfig, write_phantom

LINE = re.compile(r"^[ *] (?P<name>\S+) = (?P<value>\S*) +# (?P<doc>.+) \(default (?P<default>.*)\)$")


def shown(capsys, *args: str) -> dict[str, dict[str, str]]:
    assert main(["config", "show", *args]) == 0
    out = {}
    for line in capsys.readouterr().out.splitlines():
        if line and not line.startswith("#"):
            match = LINE.match(line)
            assert match, f"not an option line: {line!r}"
            out[match["name"]] = {**match.groupdict(), "changed": line.startswith("*")}
    return out


def test_every_option_is_described_and_there_are_at_most_90():
    sections = all_rows(JointConfig(), RegConfig(), None, DemoConfig())
    rows = [r for section in sections.values() for r in section]
    assert len(rows) <= 90
    assert [r.name for r in rows if not r.doc] == []
    assert all(len({r.name for r in section}) == len(section) for section in sections.values())


def test_show_prints_values_defaults_and_marks_what_differs(capsys):
    rows = shown(capsys, "--set", "iterations=123", "--set", "reg.train.steps=7", "--method", "cctr+",
                 "--reg-backend", "learned:x.pt?refine=3")
    assert rows["iterations"]["value"] == "123" and rows["iterations"]["default"] == "600" and rows["iterations"]["changed"]
    assert rows["reg.train.steps"]["value"] == "7" and rows["reg.train.steps"]["changed"]
    assert rows["method"]["value"] == "cctr+"
    assert rows["learned?refine"]["value"] == "3" and rows["learned?refine_fine"]["value"] == "4"
    assert not rows["lr"]["changed"] and rows["lr"]["doc"].startswith("base learning rate")
    assert {"patients", "sitk-demons?sigma_mm", "oracle.policy", "coupled.final_phase"} <= set(rows)


def test_show_applies_the_dataset_plan_as_train_does(tmp_path, capsys):
    data = write_phantom(tmp_path / "data", 4, seed=0, cfg=PhantomConfig(matrix=(40, 48), slices=(4, 6)), workers=1)
    rows = shown(capsys, "--data", str(data))
    assert rows["reg.grid.spacing"]["changed"]   # planned from the data, not the cardiac default
    assert (data / "cctr_plan.json").is_file()
    assert main(["config", "show", "--set", "nonsense=1"]) == 2


def test_spec_rows_read_the_spec_they_are_given():
    rows = {r.name: r.value for r in all_rows(JointConfig(), RegConfig(), BackendSpec.parse("sitk-demons?sigma_mm=2"),
                                              DemoConfig())["backend spec options (SPEC?key=value)"]}
    assert rows["sitk-demons?sigma_mm"] == 2.0 and rows["sitk-bspline?mesh_mm"] == 20.0
