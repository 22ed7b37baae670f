"""Project-level invariants: package layering and the README/CI contract."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_levels(package: str) -> dict[str, set[str]]:
    """Per file, the project packages it imports (``cctr.seg.x`` -> ``seg``) and any other top level."""
    def top(module: str) -> str:
        parts = module.split(".")
        return parts[1] if parts[0] == "cctr" and len(parts) > 1 else parts[0]
    return {f: {top(m) for m in mods} for f, mods in _imported_modules(package).items()}


def test_the_packages_install_under_one_namespace_only(tmp_path):
    """``cctr.reg`` / ``cctr.seg`` / ``cctr.joint`` import from anywhere; the bare folder names,
    which would shadow or be shadowed by other projects' modules, do not (run outside the
    repository, whose root would put the folders on sys.path)."""
    code = ("import importlib.util, cctr.joint.app.cli, cctr.reg.field, cctr.seg.metrics; "
            "print([importlib.util.find_spec(n) is None for n in ('reg', 'seg', 'joint')])")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[True, True, True]"


def test_no_module_imports_the_bare_folder_names():
    bare = {f: sorted(m for m in mods if m.split(".")[0] in ("reg", "seg", "joint"))
            for pkg in ("reg", "seg", "joint", "scripts", "tests") for f, mods in _imported_modules(pkg).items()}
    assert not {f: m for f, m in bare.items() if m}


def test_nothing_outside_tests_imports_from_them():
    """The packages and scripts/ run without the test folder: no import of ``tests`` or of a
    module that lives there (a script could reach one by putting tests/ on sys.path)."""
    test_modules = {"tests"} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    bad = {f: sorted(m for m in mods if m.split(".")[0] in test_modules)
           for pkg in ("reg", "seg", "joint", "scripts") for f, mods in _imported_modules(pkg).items()}
    assert not {f: m for f, m in bad.items() if m}


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
    bad = {f: sorted(m for m in mods if m == "cctr.joint.app" or m.startswith("cctr.joint.app."))
           for f, mods in method_files.items()}
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
