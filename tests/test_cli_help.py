"""The ``cctr`` entry point: every verb is listed and builds its options, and listing them
(or rejecting a mistyped verb) loads no command module, hence no torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cctr.joint.app.cli import COMMANDS, build_parser, main

PROBE = """
import sys
from cctr.joint.app.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "monai", "cctr.joint.app.commands.train") if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize("argv", [["--help"], ["trian"]])
def test_listing_the_verbs_loads_no_command_module(argv):
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    for verb in COMMANDS:
        assert verb in out.stdout + out.stderr


def test_every_verb_configures_its_options():
    parser = build_parser()
    for verb, argv in {"demo": ["demo"], "benchmark": ["benchmark", "--tabulate"], "predict": ["predict", "--ckpt", "c",
                       "--in", "i", "--out", "o"], "eval": ["eval", "--pred", "p", "--ref", "r"]}.items():
        args = parser.parse_args(argv)
        assert args.command == verb and callable(args.func)
    assert build_parser("train").parse_args(["train", "--data", "d", "--method", "cctr", "--out", "o"]).method == "cctr"


def test_the_atlas_policy_is_an_option_of_the_config_not_a_flag(capsys):
    # --set oracle.policy=... is its one way in
    with pytest.raises(SystemExit) as exc:
        build_parser("train").parse_args(["train", "--data", "d", "--method", "cctr", "--out", "o",
                                          "--atlas-policy", "fused"])
    assert exc.value.code == 2 and "--atlas-policy" in capsys.readouterr().err


def test_reg_eval_takes_the_device_of_learned_backends():
    argv = ["reg", "eval", "--data", "d", "--backend", "identity", "--out", "o"]
    assert build_parser("reg").parse_args(argv).device == "cpu"
    assert build_parser("reg").parse_args([*argv, "--device", "cuda:1"]).device == "cuda:1"


def test_a_verb_without_its_options_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train"])
    assert exc.value.code == 2 and "--data" in capsys.readouterr().err
