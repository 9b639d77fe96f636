"""The README and docs/ stay true to the code: every command, flag, repository path, module and grid spec they show
exists or parses, and the README stays a two-minute read. Offline and fast: it reads files and argparse's parser
and runs no command."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEST_COMMAND = "python -m pytest -q"  # .ci/run runs exactly this line of the README
README_LIMIT = 10 * 1024

# The repository's top-level folders: a path in the docs that starts with one of them must exist. Paths outside
# them (runs/..., data/..., my.toml, OUT/..., ../shared/...) are examples of the user's own files.
TOP_LEVEL = ("bench", "configs", "docs", "drawbench", "findings", "imagen", "imagen_bench", "reports", "scripts",
             "tests", ".ci")
PACKAGES = ("imagen", "bench", "drawbench", "reports", "findings", "imagen_bench")
FILE_SUFFIXES = {"md", "py", "toml", "json", "png", "csv", "tsv", "txt", "sh", "parquet", "npz", "html", "sqlite",
                 "safetensors", "pth", "bin", "jsonl", "css"}
# Names docs/architecture.md writes as calls that no module of ours defines: maths in the prose, other libraries'
# functions, and callables named by their role in a signature (`sampler(denoise, x, ...)`, `func(args) -> int`).
NOT_OURS = {"sigmoid", "min", "max", "U", "make_resizer", "fully_shard", "compute_fid", "from_pretrained",
            "func", "make_unet", "sampler", "denoise", "model_fn", "write"}
# Paths inside the data folder ($IMAGEN_BENCH_DATA), whose first folder has the name of one of our packages.
DATA_FOLDER_PATHS = {"drawbench/prompts.csv"}
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "<"}


# ----------------------------------------------------------------------------- reading markdown

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+")


def text_of(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


def inline_spans(text: str) -> list[str]:
    """Inline code spans outside the fenced blocks (a span may wrap onto the next line)."""
    return [" ".join(s.split()) for s in INLINE.findall(FENCE.sub("", text))]


def logical_lines(block: str) -> list[str]:
    """A shell block's lines, backslash continuations joined, comments dropped."""
    lines = block.replace("\\\n", " ").splitlines()
    return [re.sub(r"(^|\s)#.*$", "", line) for line in lines]


def split_words(text: str) -> list[str]:
    """Shell words, less the backticks of a code span written inside a code block."""
    try:
        words = shlex.split(text)
    except ValueError:  # an unbalanced quote in prose-like code
        words = text.split()
    return [w.strip("`") for w in words if w.strip("`")]


# ----------------------------------------------------------------------------- the command line


@lru_cache(maxsize=1)
def parser() -> argparse.ArgumentParser:
    from imagen_bench import build_parser

    return build_parser()


def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sub for a in p._actions if isinstance(a, argparse._SubParsersAction)
            for name, sub in a.choices.items()}


def options(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings}


def placeholder(word: str) -> bool:
    """`<command>`, `...`, `COMMAND`: a stand-in, not a name."""
    return word.startswith(("<", "...")) or (word.upper() == word and any(c.isalpha() for c in word))


def check_invocation(words: list[str], where: str) -> list[str]:
    """Problems with one `imagen-bench ...` invocation: its (sub)command names, then every --flag after them."""
    p, path, i = parser(), [], 0
    while i < len(words) and subcommands(p):
        word = words[i]
        if word in subcommands(p):
            p, path, i = subcommands(p)[word], path + [word], i + 1
            continue
        if word.startswith("-") or placeholder(word) or word in SEPARATORS:
            break
        known = ", ".join(sorted(subcommands(p)))
        return [f"{where}: `imagen-bench {' '.join(path + [word])}`: no such command (there: {known})"]
    problems = []
    for word in words[i:]:
        if word in SEPARATORS or word.endswith(";"):
            break
        flag = word.strip("[](),.:")
        if not flag.startswith("--") or flag == "--":
            continue
        flag = flag.split("=", 1)[0]
        if flag not in options(p):
            problems.append(f"{where}: `imagen-bench {' '.join(path)}` has no flag {flag}")
    return problems


INVOCATION = re.compile(r"(?:(?<![\w./-])imagen-bench|-m imagen_bench)(?![\w:/`-])(.*)")


def invocations(doc: Path) -> list[tuple[list[str], str]]:
    """Every `imagen-bench ...` (or `-m imagen_bench ...`) shown in a code block or an inline span, as its words
    after the program name; and inline spans that start with a command name and show a subcommand or a flag
    (`grid run --model`)."""
    text, found = text_of(doc), []
    lines = [line for _, block in code_blocks(text) for line in logical_lines(block)]
    spans = inline_spans(text)
    for line in lines + spans:
        for m in INVOCATION.finditer(line):
            found.append((split_words(m.group(1)), line.strip()))
    top = subcommands(parser())
    for span in spans:
        words = split_words(span)
        if len(words) > 1 and words[0] in top and (words[1].startswith("--") or words[1] in subcommands(top[words[0]])):
            found.append((words, span))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_commands_and_flags_exist(doc):
    problems = []
    for words, line in invocations(doc):
        problems += check_invocation(words, f"{doc.name}: {line[:90]}")
    assert not problems, "\n".join(problems)


def test_the_command_check_catches_mistakes():
    """The check itself: a made-up command and a made-up flag are found, a real line passes."""
    assert check_invocation(split_words("grid run spec.toml --out runs/a --wait"), "x") == []
    assert check_invocation(split_words("grid walk spec.toml"), "x")
    assert check_invocation(split_words("report runs/qs --no-such-flag"), "x")
    assert check_invocation(split_words("<command> --help"), "x") == []


SCRIPT = re.compile(r"python (bench/perf/\w+\.py)([^\n]*)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_benchmark_script_flags_exist(doc):
    """`python bench/perf/X.py --flag`: the script's argparse has the flag."""
    text, problems = text_of(doc), []
    chunks = [line for _, block in code_blocks(text) for line in logical_lines(block)] + inline_spans(text)
    for chunk in chunks:
        for m in SCRIPT.finditer(chunk):
            script = ROOT / m.group(1)
            if not script.is_file():
                problems.append(f"{doc.name}: {m.group(1)} does not exist")
                continue
            declared = set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text(encoding="utf-8")))
            for flag in re.findall(r"(?<![\w-])--[\w-]+", m.group(2)):
                if flag not in declared | {"--help"}:
                    problems.append(f"{doc.name}: {m.group(1)} has no flag {flag}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- paths and modules

REPO_PATH = re.compile(r"(?<![\w./$~<>{}:@=-])((?:%s)/[^\s`'\"()\[\],;|]*)" % "|".join(re.escape(t) for t in TOP_LEVEL))


def repo_paths(text: str) -> list[str]:
    """Paths in the text that start at a top-level folder of the repository, less globs and placeholders."""
    text = URL.sub(" ", LINK.sub("]( )", text))
    out = []
    for m in REPO_PATH.finditer(text):
        path = m.group(1).rstrip(".:")
        if any(c in path for c in "*?{}<>$") or "..." in path:
            continue  # a glob or a placeholder: `findings/*.png`, `imagen/weights/<name>/`
        if any(placeholder(part) for part in path.split("/") if part):
            continue  # `imagen/weights/NAME`
        if path in DATA_FOLDER_PATHS:
            continue
        out.append(path)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_named_paths_exist(doc):
    text, problems = text_of(doc), []
    for path in repo_paths(text):
        if not ((ROOT / path).exists() or (doc.parent / path).exists()):
            problems.append(f"{doc.name}: `{path}` does not exist")
    for target in LINK.findall(text):
        if URL.match(target) or target.startswith(("#", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        dest = doc.parent / file if file else doc
        if not dest.exists():
            problems.append(f"{doc.name}: link ({target}) leads nowhere")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{doc.name}: link ({target}): {dest.name} has no heading with that anchor")
    assert not problems, "\n".join(sorted(set(problems)))


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", FENCE.sub("", text_of(doc)), re.M):
        out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_the_path_check_catches_moved_files():
    assert repo_paths("see `bench/cli/` and `reports/findings.py`") == ["bench/cli/", "reports/findings.py"]
    assert not (ROOT / "bench/cli").exists() and not (ROOT / "reports/findings.py").exists()
    assert repo_paths("`runs/qs`, `OUT/images`, `findings/*.png`, `imagen/weights/<name>/`, `../shared/data`") == []


@lru_cache(maxsize=None)
def top_names(module_file: Path) -> frozenset[str]:
    """Names a module defines or imports at its top level (and its classes' members: `Pipeline.load`)."""
    names = set()
    for node in ast.parse(module_file.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def module_problem(dotted: str) -> str | None:
    """None when `imagen.pipeline.Pipeline` names a module of ours and, after it, a name that module defines."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        file = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if file.is_file():
            rest = parts[i:]
            if rest and rest[0] not in top_names(file):
                return f"`{dotted}`: {'.'.join(parts[:i])} has no {rest[0]}"
            return None
    return f"`{dotted}`: no such module"


MODULE = re.compile(r"(?<![\w./-])((?:%s)(?:\.[A-Za-z_]\w*)+)" % "|".join(PACKAGES))


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_named_modules_exist(doc):
    """`imagen.train`, `bench.metrics.coco`, `findings.report.write_findings`: the module, and the name in it."""
    text = URL.sub(" ", text_of(doc))
    problems = []
    for dotted in set(MODULE.findall(text)):
        if dotted.rsplit(".", 1)[1] in FILE_SUFFIXES:
            continue  # a file name: findings.md
        problem = module_problem(dotted)
        if problem:
            problems.append(f"{doc.name}: {problem}")
    assert not problems, "\n".join(sorted(problems))


def test_architecture_names_are_defined():
    """Every `function(...)` and `Class(...)` docs/architecture.md writes as a call is defined in our packages."""
    defined = set()
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    defined.add(node.name)
    text = text_of(ROOT / "docs" / "architecture.md")
    chunks = inline_spans(text) + [body for _, body in code_blocks(text)]
    called = {m.group(1) for chunk in chunks for m in re.finditer(r"([A-Za-z_]\w*)\(", chunk)}
    missing = sorted(called - defined - NOT_OURS)
    assert not missing, f"docs/architecture.md names calls no module defines: {missing}"


# ----------------------------------------------------------------------------- grid specs and the README


def test_grid_specs_in_the_docs_parse():
    """A user copies these: every TOML block that is a grid spec parses as it stands."""
    from bench.grid import parse_spec

    n = 0
    for doc in DOCS:
        for lang, body in code_blocks(text_of(doc)):
            if lang == "toml" and re.search(r"^suites\s*=", body, re.M) and re.search(r"^model\s*=", body, re.M):
                spec = parse_spec(body, source=doc.name)
                assert spec.name and spec.suites
                n += 1
    assert n >= 4


def test_readme_is_a_two_minute_read():
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= README_LIMIT, f"README.md is {len(readme)} bytes; keep it <= {README_LIMIT}: move detail to docs/"
    lines = readme.decode("utf-8").splitlines()
    assert TEST_COMMAND in lines, f"README.md must show the test command `{TEST_COMMAND}` on a line of its own"
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
