"""The per-rule conda environments in envs/ agree with pyproject.toml and with the code.

``snakemake --use-conda`` builds one environment per step from envs/<step>.yaml. These
tests keep those files honest without conda: every rule that runs a command names an
environment; every package an environment lists is a dependency of pyproject.toml with
the same version bounds; and every third-party import of the step's code (found by
reading the modules it imports, function-level imports included) is in its environment.
"""

from __future__ import annotations

import ast
import re
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "astrodenoise"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _split(requirement: str) -> tuple[str, str]:
    """``"dask[array]>=2025.1"`` -> ``("dask", ">=2025.1")``; also conda's ``"dask >=2025.1"``."""
    match = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*(.*)", requirement)
    return _canonical(match.group(1)), match.group(3).replace(" ", "")


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return dict(_split(r) for r in project["dependencies"] + extras)


def _env_requirements(path: Path) -> dict[str, str]:
    requirements = {}
    for item in yaml.safe_load(path.read_text())["dependencies"]:
        for requirement in item["pip"] if isinstance(item, dict) else [item]:
            name, spec = _split(requirement)
            if name not in ("python", "pip"):
                requirements[name] = spec
    return requirements


def _rules() -> dict[str, str]:
    """``{rule name: its block of text}`` from workflow/rules/*.smk."""
    rules = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        preamble, *blocks = re.split(r"^(?=rule )", smk.read_text(), flags=re.M)
        for block in blocks:
            # The file's preamble may build the command (predict.smk does).
            rules[re.match(r"rule (\w+):", block).group(1)] = preamble + block
    return rules


def _step_modules(block: str) -> set[str]:
    """astrodenoise modules a rule's command imports: from the CLI's sub-command function."""
    command = re.search(r"python -m astrodenoise ([\w-]+)", block).group(1)
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    function = next(f for f in ast.walk(tree)
                    if isinstance(f, ast.FunctionDef) and f.name == "_" + command.replace("-", "_"))
    return {n.module for n in ast.walk(function) if isinstance(n, ast.ImportFrom) and n.level == 1}


def _cli_module_imports() -> set[str]:
    """astrodenoise modules cli.py imports at module level (every command loads them)."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    return {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 1}


def _third_party_imports(entry: set[str], reached: set[str] = frozenset()) -> set[str]:
    """Top-level third-party packages a step needs: what loading its code loads.

    The step's own modules (``entry``) count with all their imports, function-level ones
    included (the step calls those functions). Any other module counts with what
    importing it runs: its module-level imports, followed through relative imports;
    its function-level imports serve other steps (e.g. torch for checkpoints in io).
    """
    seen, todo, found = set(), set(entry) | set(reached), set()
    while todo:
        module = todo.pop()
        seen.add(module)
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        nodes = list(ast.walk(tree)) if module in entry else tree.body
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                todo |= {n for n in names if (PACKAGE / f"{n}.py").exists()} - seen
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
    return found


def _distributions(top_level: set[str]) -> set[str]:
    """Installed distributions providing these top-level packages (the standard library has none)."""
    mapping = packages_distributions()
    return {_canonical(d) for name in top_level for d in mapping.get(name, []) if name != "astrodenoise"}


COMMAND_RULES = {name: block for name, block in _rules().items() if "python -m astrodenoise" in block}


def test_every_command_rule_has_an_environment_file():
    assert {"ingest", "noise", "train", "predict", "evaluate", "report"} <= set(COMMAND_RULES)
    for name, block in COMMAND_RULES.items():
        match = re.search(r'conda:\s*\n\s*"\.\./\.\./(envs/[\w.-]+\.yaml)"', block)
        assert match, f"rule {name} has no conda: environment"
        assert (REPO / match.group(1)).is_file(), f"rule {name}: {match.group(1)} is missing"


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.stem)
def test_environment_versions_follow_pyproject(env):
    declared = _pyproject_requirements()

    for name, spec in _env_requirements(env).items():
        assert name in declared, f"{env.name}: {name} is not a dependency in pyproject.toml"
        assert spec == declared[name], f"{env.name}: {name}{spec}, pyproject.toml says {name}{declared[name]}"


@pytest.mark.parametrize("rule", sorted(COMMAND_RULES))
def test_environment_holds_every_import_of_the_step(rule):
    block = COMMAND_RULES[rule]
    env = REPO / re.search(r'conda:\s*\n\s*"\.\./\.\./(envs/[\w.-]+\.yaml)"', block).group(1)

    needed = _distributions(_third_party_imports(_step_modules(block), _cli_module_imports()))

    missing = needed - set(_env_requirements(env))
    assert not missing, f"rule {rule}: {env.name} lacks {sorted(missing)}"


def test_import_scan_sees_function_level_imports_of_the_step_only():
    # noise imports matplotlib inside a function: found. io imports torch inside its
    # checkpoint functions: not charged to noise, which never loads a checkpoint.
    assert "matplotlib" in _third_party_imports({"noise"}, {"io"})
    assert "torch" not in _third_party_imports({"noise"}, {"io"})
    assert "torch" in _third_party_imports({"predict"})
