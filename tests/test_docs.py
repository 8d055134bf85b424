"""The docs are true to the project: in README.md and docs/*.md every relative link (and its #anchor) leads
somewhere, every `--flag` exists (a job's flag after `genre-sweep <job>`, in that job's parser), every `make`
target is in the Makefile, and every repository path and `file.py::test` they name exists.

Fast on purpose: it reads files and imports only the jobs' light config modules (no Ray, no torch).
"""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Flags of other tools the docs may name, each with the tool that takes it. Anything else must be a flag of a
# genre-sweep job, of `genre-sweep` itself, or of a bench script.
OTHER_TOOLS = {
    "--logdir": "tensorboard --logdir <storage>/<name>",
    "--port-forward": "ray exec CLUSTER '...' --port-forward PORT (launch prints it for TensorBoard and optuna)",
    "--address": "ray job logs/status --address URL (launch prints them)",
    "--follow": "ray job logs --follow JOB",
}
# Words the docs spell as flags without meaning one flag.
PLACEHOLDERS = {"--flag": "'a --flag per field': any job's flag, in prose"}
TOP_LEVEL = {"--help", "-h", "--version", "-V"}  # `genre-sweep --version`
TOOLS = {"tensorboard", "ray", "optuna-dashboard", "pytest", "pip", "ruff", "python", "python3"}
FLAG = re.compile(r"(?<![\w/-])--[A-Za-z][\w-]*")


@cache
def jobs() -> dict[str, str]:
    from genre_sweep.cli import JOBS

    return {name: job.config for name, job in JOBS.items()}


@cache
def job_flags(job: str) -> frozenset[str]:
    """Every option string `genre-sweep <job>` accepts, built by the job's own parser from its config class."""
    from genre_sweep.config import build_parser

    module, _, name = jobs()[job].partition(":")
    parser = build_parser(getattr(importlib.import_module(module), name), f"genre-sweep {job}", "")
    return frozenset(parser._option_string_actions)


@cache
def module_jobs() -> dict[str, str]:
    """`python -m genre_sweep.data.prepare` -> prepare: each job's module."""
    from genre_sweep.cli import JOBS

    return {job.run.partition(":")[0]: name for name, job in JOBS.items()}


@cache
def bench_flags(script: str) -> frozenset[str]:
    """The flags `bench/<script>` declares with argparse, read from its source (not imported: it imports torch)."""
    path = ROOT / "bench" / script
    if not path.is_file():
        return frozenset()
    flags = set(TOP_LEVEL)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return frozenset(flags)


@cache
def every_flag() -> frozenset[str]:
    flags = set(TOP_LEVEL) | set(OTHER_TOOLS) | set(PLACEHOLDERS)
    for job in jobs():
        flags |= job_flags(job)
    for script in (ROOT / "bench").glob("*.py"):
        flags |= bench_flags(script.name)
    return frozenset(flags)


@cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    return frozenset(m.group(1) for m in re.finditer(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.MULTILINE))


def split_code(text: str) -> tuple[str, list[str], list[str]]:
    """(the prose with code removed, the fenced blocks, the inline code spans)."""
    blocks = [m.group(2) for m in re.finditer(r"^ *(```+)[^\n]*\n(.*?)^ *\1 *$", text, re.DOTALL | re.MULTILINE)]
    text = re.sub(r"^ *(```+)[^\n]*\n(.*?)^ *\1 *$", "\n", text, flags=re.DOTALL | re.MULTILINE)
    span = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
    spans = [m.group(2).replace("\\|", "|") for m in span.finditer(text)]  # `a\|b` in a table cell is `a|b`
    return span.sub(" ", text), blocks, spans


def commands(code: str, inline: bool) -> list[list[str]]:
    """The shell commands in a code block or span, as token lists (continuations joined, comments cut)."""
    code = code.replace("\\\n", " ")
    if inline:
        code = code.replace("\n", " ")
    out = []
    for line in code.splitlines():
        for part in re.split(r"\s(?:\|\|?|&&)\s|;|&\s*$", line):
            tokens = [t.strip("`'\"()") for t in part.split()]  # `genre-sweep ... --resume` quoted in a span
            tokens = [t for t in tokens if t]
            if "#" in (t[:1] for t in tokens):
                tokens = tokens[: [t[:1] for t in tokens].index("#")]
            if tokens:
                out.append(tokens)
    return out


def flag_problems(tokens: list[str]) -> list[str]:
    """Each flag in one command that its program does not take."""
    allowed, what, rest = every_flag(), "any job, genre-sweep, a bench script or the allow-list", tokens
    for i, tok in enumerate(tokens):
        base = tok.rsplit("/", 1)[-1]
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        if base == "genre-sweep":
            if after in jobs():
                allowed, what, rest = job_flags(after), f"genre-sweep {after}", tokens[i + 2 :]
            elif after.startswith("-"):
                allowed, what, rest = TOP_LEVEL, "genre-sweep", tokens[i + 1 :]
            break
        if base.startswith("python") and after == "-m" and i + 2 < len(tokens):
            module, job = tokens[i + 2], tokens[i + 3] if i + 3 < len(tokens) else ""
            if module == "genre_sweep" and job in jobs():
                allowed, what, rest = job_flags(job), f"python -m genre_sweep {job}", tokens[i + 4 :]
            elif module in module_jobs():
                job = module_jobs()[module]
                allowed, what, rest = job_flags(job), f"python -m {module}", tokens[i + 3 :]
            break
        if re.fullmatch(r"(?:\S*/)?bench/\w+\.py", tok):
            allowed, what, rest = bench_flags(base), f"bench/{base}", tokens[i + 1 :]
            break
        if base in TOOLS and not (base.startswith("python") and after.endswith(".py")):  # python bench/x.py: below
            allowed, what, rest = frozenset(OTHER_TOOLS), f"{base} (OTHER_TOOLS)", tokens[i + 1 :]
            break
    flags = [f for tok in rest for f in FLAG.findall(tok)]
    return [f"{flag}: not a flag of {what} (in `{' '.join(tokens)}`)" for flag in flags if flag not in allowed]


def make_problems(tokens: list[str]) -> list[str]:
    if tokens[0].rsplit("/", 1)[-1] != "make":
        return []
    targets = []
    for tok in tokens[1:]:
        if tok.startswith("-") or "=" in tok or not re.fullmatch(r"[\w.-]+", tok):
            break
        targets.append(tok)
    return [f"make {t}: no such target in the Makefile" for t in targets if t not in make_targets()]


def github_anchors(path: Path) -> set[str]:
    """The #anchors GitHub gives a markdown file's headings (lowercase, punctuation dropped, spaces to dashes)."""
    prose, _, _ = split_code(re.sub(r"`", "", path.read_text()))
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def link_problems(doc: Path, prose: str) -> list[str]:
    problems = []
    for target in re.findall(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            problems.append(f"link {target}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} missing")
        elif anchor and path.suffix == ".md" and anchor not in github_anchors(path):
            problems.append(f"link {target}: no heading #{anchor} in {path.name}")
    return problems


def path_problems(spans: list[str]) -> list[str]:
    """Repository paths in code spans exist; a `file.py::test_name` names a test defined in that file."""
    problems = []
    for text in spans:
        for ref in re.findall(r"(?<![\w/.-])((?:core|data|model|tune|tests|bench|docs|\.ci)/[\w./-]*(?:::\w+)?)", text):
            file, _, test = ref.partition("::")
            if not (ROOT / file).exists():
                problems.append(f"{ref}: {file} does not exist")
            elif test and not re.search(rf"^\s*(?:async\s+)?def {test}\(", (ROOT / file).read_text(), re.MULTILINE):
                problems.append(f"{ref}: no test {test} in {file}")
    return problems


def problems(doc: Path, text: str) -> list[str]:
    prose, blocks, spans = split_code(text)
    found = link_problems(doc, prose)
    unknown = [flag for flag in FLAG.findall(prose) if flag not in every_flag()]
    found += [f"{flag}: not a flag of any job, genre-sweep, a bench script or the allow-list" for flag in unknown]
    for code, inline in [*((b, False) for b in blocks), *((s, True) for s in spans)]:
        for tokens in commands(code, inline):
            found += flag_problems(tokens) + make_problems(tokens)
    return found + path_problems(spans)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_flag_make_target_and_path_in_the_doc_exists(doc):
    assert problems(doc, doc.read_text()) == []


def test_the_readme_links_every_doc_and_stays_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert all(f"(docs/{doc.name})" in readme for doc in DOCS[1:])
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "make demo" in first_screen and "make test" in first_screen


def test_nothing_points_outside_the_clone():
    """The method is ours (docs/method.md); nothing names a file beside the repository."""
    for path in [*DOCS, *ROOT.glob("*.toml"), *ROOT.glob("*.yaml"), ROOT / "Makefile"]:
        assert "../shared" not in path.read_text(), path


def test_the_make_targets_pyproject_names_exist():
    _, _, spans = split_code((ROOT / "pyproject.toml").read_text())
    assert [p for s in spans for tokens in commands(s, True) for p in make_problems(tokens)] == []


def test_the_checks_find_a_bogus_flag_a_dead_link_a_missing_target_and_a_renamed_test(tmp_path):
    doc = ROOT / "docs" / "example.md"
    text = (
        "Run `genre-sweep sweep --storage s --trails 3` or `make test-fast`; see [x](nowhere.md) and "
        "[y](method.md#no-such-heading). Also `--no-such-flag` and "
        "`tests/tune/test_space.py::test_that_was_renamed`.\n\n"
        "```bash\ngenre-sweep prepare --source a \\\n    --out b --learning-rate 1\n```\n"
    )
    found = "\n".join(problems(doc, text))
    for expected in (
        "--trails: not a flag of genre-sweep sweep",
        "make test-fast: no such target",
        "link nowhere.md",
        "no heading #no-such-heading",
        "--no-such-flag: not a flag of any job",
        "no test test_that_was_renamed",
        "--learning-rate: not a flag of genre-sweep prepare",  # a continuation line still belongs to prepare
    ):
        assert expected in found, (expected, found)
    good = "`genre-sweep launch --ray-address URL`, `--learning_rate`, `--no-prefix-cache`, [m](method.md#model)"
    assert problems(doc, good) == []
