"""The package's layers: each imports only the layers below it, lazy imports included.

    errors, units, kernels < models < loaders, evaluation < zoo < variants, runtime
    < sim, server < cli
"""

import ast
from pathlib import Path

import blockllm

LAYER = {"errors": 0, "units": 0, "kernels": 0, "models": 1, "loaders": 2, "evaluation": 2,
         "zoo": 3, "variants": 4, "runtime": 4, "sim": 5, "server": 5, "cli": 6}
ROOT = Path(blockllm.__file__).parent


def imported(path: Path) -> set[str]:
    """The blockllm subpackages or modules a file imports, at any depth of its code."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "blockllm":
                out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names
                    if a.name.startswith("blockllm.")}
    return out


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or any(p.glob("*.py"))}
    assert parts == set(LAYER), "a new package needs a place in LAYER (and in docs/design.md)"


def test_no_layer_imports_a_higher_one():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        here = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if here == "__init__":
            continue
        for dep in imported(path):
            if dep in LAYER and LAYER[dep] > LAYER[here]:
                upward.append(f"{rel} ({here}) imports {dep}")
    assert not upward, "\n".join(upward)


def test_the_check_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from blockllm.cli.serve_cmd import serve\n"
                 "    import blockllm.zoo\n")
    assert imported(f) == {"cli", "zoo"}
