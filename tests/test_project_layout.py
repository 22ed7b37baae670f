"""Project-level invariants: package layering and the README/CI contract."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_levels(package: str) -> dict[str, set[str]]:
    return {f: {m.split(".")[0] for m in mods} for f, mods in _imported_modules(package).items()}


def test_reg_does_not_import_seg_or_joint():
    bad = {f: n & {"seg", "joint"} for f, n in _imported_top_levels("reg").items() if n & {"seg", "joint"}}
    assert not bad, f"reg must stay independent of seg and joint: {bad}"


def test_seg_does_not_import_reg_or_joint():
    bad = {f: n & {"reg", "joint"} for f, n in _imported_top_levels("seg").items() if n & {"reg", "joint"}}
    assert not bad, f"seg must stay independent of reg and joint: {bad}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmds = [b.strip() for b in blocks if "pytest" in b]
    assert len(test_cmds) == 1, "README must show exactly one test command"
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmds[0] in ci_lines


def test_torch_pinned_in_constraints():
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in pins


def test_joint_method_modules_never_import_the_application():
    method_files = {f: n for f, n in _imported_modules("joint").items() if not f.startswith("joint/app/")}
    bad = {f: sorted(m for m in mods if m == "joint.app" or m.startswith("joint.app.")) for f, mods in method_files.items()}
    bad = {f: m for f, m in bad.items() if m}
    assert method_files and not bad, f"the method part of joint must not import joint.app: {bad}"


def _imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found
