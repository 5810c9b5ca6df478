"""The import direction is enforced, and the contracts do catch a violation."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _run(cwd: Path, env_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=cwd,
        env={"PYTHONPATH": str(env_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )


def test_repository_keeps_every_contract() -> None:
    result = _run(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]"]
    lines += [f"root_packages = {json.dumps(contracts['root_packages'])}"]
    lines += ["include_external_packages = true", ""]
    for contract in contracts["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and lists are TOML
        lines.append("")
    (tmp_path / "pyproject.toml").write_text("\n".join(lines))
    # Every module a contract names exists in the scratch tree, as an empty package.
    named = {
        module.strip()
        for contract in contracts["contracts"]
        for key in ("layers", "source_modules")
        for entry in contract.get(key, [])
        for module in entry.split("|")
    }
    for module in named | set(contracts["root_packages"]):
        if module.split(".")[0] not in contracts["root_packages"]:
            continue
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            package = tmp_path.joinpath(*parts[:depth])
            package.mkdir(exist_ok=True)
            (package / "__init__.py").touch()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_domain_importing_a_client_is_caught(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"fleetops/domain/plan.py": "import fleetops.clients\n"})
    result = _run(tree, tree)
    assert result.returncode != 0
    assert "Imports point down" in result.stdout
    assert "BROKEN" in result.stdout


def test_product_code_importing_the_sandbox_is_caught(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"tasks/kube.py": "import sandbox\n"})
    result = _run(tree, tree)
    assert result.returncode != 0
    assert "Product code never imports the sandbox BROKEN" in result.stdout
