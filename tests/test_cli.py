"""The command line as a whole: fast help, examples everywhere, one-line errors."""

import subprocess
import sys

import pytest

from imagen_bench import build_parser, main


def _subcommands(parser):
    """Yield (path, parser) for every leaf subcommand."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                children = list(_subcommands(sub))
                if children:
                    for path, leaf in children:
                        yield (name, *path), leaf
                else:
                    yield (name,), sub


def test_help_imports_no_heavy_library():
    code = ("import sys; from imagen_bench import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'torch_fidelity', 'open_clip', 'streamlit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_command_has_examples():
    leaves = list(_subcommands(build_parser()))
    names = {" ".join(path) for path, _ in leaves}
    for expected in ("sample", "model info", "train", "fid", "clip-score", "coco", "grid run", "report",
                     "quickstart", "drawbench pairs", "drawbench app", "drawbench stats", "data shapes",
                     "eval shapes"):
        assert expected in names, f"missing command {expected!r}; have {sorted(names)}"
    for path, leaf in leaves:
        assert "imagen-bench" in (leaf.epilog or ""), f"`imagen-bench {' '.join(path)} --help` shows no examples"


@pytest.mark.parametrize("argv", [
    ["model", "info", "--preset", "nope"],
    ["sample", "--preset", "tiny", "--prompt", "x", "--threshold", "dynamic:7", "--out", "x.png"],
    ["grid", "status", "/nonexistent/study"],
])
def test_user_mistakes_are_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imagen-bench: error: ")


def test_readme_grid_specs_parse():
    """Every TOML block of the README that is a grid spec parses as it stands (a user copies them)."""
    import re
    from pathlib import Path

    from bench.grid import parse_spec

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    specs = [b for b in blocks if "suites" in b and "model" in b]
    assert len(specs) >= 2
    for text in specs:
        spec = parse_spec(text, source="README")
        assert spec.name and spec.suites
