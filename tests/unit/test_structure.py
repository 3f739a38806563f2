"""The import contract (issue 16): the library sits below the services and training.

- ``parrot`` (outside its CLI, ``parrot/cli/``) never imports ``services``, ``training`` or
  the CLI, not even inside a function;
- a service never imports another service (``services/asker`` never imports ``services.judge``, ...);
  only the composition roots, ``services/registry.py`` and ``services/model_server.py``, import them all;
- ``training`` never imports ``services`` (the asker contract both use lives in ``parrot.asking``).

Every import statement counts, at module level or inside a function, so a lazy import cannot hide a
climb back up.

And the tests' own layout: one package per level (unit, service, process, deploy) beside the shared
conftest.py and helpers/; a unit or service test imports nothing that starts a process.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

ROOTS = ("services/registry.py", "services/model_server.py")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out += [(node.lineno, module)] if node.module else [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


def files(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if "v1" not in p.relative_to(REPO).parts[:2])


def top(module: str, depth: int = 1) -> str:
    return ".".join(module.split(".")[:depth])


def is_cli(path: Path) -> bool:
    rel = path.relative_to(REPO)
    return rel.parts[:2] == ("parrot", "cli")


def test_the_library_never_imports_services_training_or_the_cli():
    bad = [f"{p.relative_to(REPO)}:{line}: {m}" for p in files("parrot") if not is_cli(p)
           for line, m in imports(p)
           if top(m) in ("services", "training") or top(m, 2) == "parrot.cli"]
    assert not bad, "the library reaches up:\n" + "\n".join(bad)


def test_services_never_import_each_other():
    bad = []
    for p in files("services"):
        rel = p.relative_to(REPO)
        if rel.as_posix() in ROOTS or len(rel.parts) < 3:
            continue
        own = f"services.{rel.parts[1]}"
        bad += [f"{rel}:{line}: {m}" for line, m in imports(p)
                if top(m) == "services" and top(m, 2) != own]
    assert not bad, "a service imports another service:\n" + "\n".join(bad)


def test_training_never_imports_services():
    bad = [f"{p.relative_to(REPO)}:{line}: {m}" for p in files("training") for line, m in imports(p) if top(m) == "services"]
    assert not bad, "training imports a service:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The contract would pass vacuously if the checker missed imports inside functions or relative ones."""
    probe = REPO / "parrot" / "_probe_for_test_structure.py"
    probe.write_text("def f():\n    from services.registry import SERVICES\n    from .cli import app\n")
    try:
        found = [m for _, m in imports(probe)]
        assert found == ["services.registry", "parrot.cli"], found
    finally:
        probe.unlink()


def test_backends_are_found_by_a_static_table_and_base_imports_none():
    """``parrot.backends.registry.BUILTIN`` names every built-in backend; importing the interface or the
    registry imports no backend (no import circle through base.py, no torch for `parrot --help`)."""
    import subprocess
    import sys

    from parrot.backends.registry import BUILTIN, backend_config_class, create_backend

    code = ("import sys, parrot.backends, parrot.backends.registry; "
            "print(sorted(m for m in sys.modules if m.endswith('_backend') or m in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    for name in BUILTIN:
        cls_module, cls_name, _ = BUILTIN[name]
        cls = getattr(__import__(cls_module, fromlist=[cls_name]), cls_name)
        assert cls.name == name and backend_config_class(name).__module__ == cls_module
    assert create_backend("echo", model_name="x").model_name == "x"


def test_every_command_renders_its_help():
    """`parrot X --help` for every command and group (Rich markup in a help text, such as a literal
    "[/prefix]", crashed `parrot serve --help`)."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from parrot.cli import app

    def paths(cmd: object, prefix: list[str]) -> list[list[str]]:
        out = [prefix]
        if getattr(cmd, "commands", None):  # a group
            for name, sub in cmd.commands.items():  # type: ignore[attr-defined]
                out += paths(sub, prefix + [name])
        return out

    def command(path: list[str]) -> object:
        cmd = get_command(app)
        for name in path:
            cmd = cmd.commands[name]  # type: ignore[attr-defined]
        return cmd

    def words(text: str) -> str:
        return " ".join(text.replace("│", " ").split())

    every = paths(get_command(app), [])
    assert len(every) > 20
    runner = CliRunner()
    for path in every:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "Usage" in result.output, (path, result.output[-2000:], result.exception)
        # a bracketed phrase in a help text ("[min, max]") is Rich markup and vanishes unless escaped
        shown = words(result.output).replace(" ", "")
        for param in getattr(command(path), "params", []):
            for phrase in re.findall(r"(?<!\\)\[([^\]]+)\]", getattr(param, "help", None) or ""):
                assert words(phrase).replace(" ", "") in shown, (path, param.name, phrase)


def test_the_library_imports_its_own_modules_lazily_only_for_heavy_dependencies():
    """An import of a project module inside a function hides the structure (and cycles). In the library
    (outside the CLI) one is allowed only where it keeps a heavy dependency lazy, saying which on its
    line (``# lazy: torch``), and there are few of them."""
    lazy, unexplained = [], []
    for p in files("parrot"):
        if is_cli(p):
            continue
        lines = p.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(node):
                module = n.module if isinstance(n, ast.ImportFrom) else n.names[0].name if isinstance(n, ast.Import) else None
                if module and (getattr(n, "level", 0) or top(module) in ("parrot", "services", "training")):
                    where = f"{p.relative_to(REPO)}:{n.lineno}"
                    lazy.append(where)
                    if "# lazy:" not in lines[n.end_lineno - 1]:
                        unexplained.append(f"{where}: {lines[n.lineno - 1].strip()}")
    assert not unexplained, "in-function imports of project modules without a '# lazy: <dependency>' reason:\n" + "\n".join(unexplained)
    assert len(set(lazy)) < 20, lazy


def test_serve_flags_are_generated_from_the_backend_settings():
    """Every backend setting is a `parrot serve` flag (written once, in its dataclass), the names users
    already type are kept, flags shared by backends fill each one's own field, and settings that could
    not be set before (batch_wait_ms, max_queue, num_threads) can."""
    from typer.testing import CliRunner

    from parrot.backends.flags import backend_config, backend_flags
    from parrot.cli import app
    from parrot.engines.llamacpp import LlamaServerSettings

    flags = {f.name: f for f in backend_flags()}
    kept = ["model", "dtype", "gguf-type", "engine-parallel", "engine-ctx-per-slot", "engine-threads", "engine-tokenizer",
            "engine-wait-s", "engine-scoring", "device", "max-batch-size", "prefix-cache-mib", "prefill-chunk-tokens",
            "base-url", "api-key-env", "api-key-file", "echo-delay-s"]
    assert set(kept) <= set(flags), set(kept) - set(flags)
    assert {"batch-wait-ms", "max-queue", "num-threads"} <= set(flags)
    assert flags["engine-parallel"].env == "PARROT_ENGINE_PARALLEL"
    helptext = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "400"}).output
    for name in flags:
        assert f"--{name}" in helptext, name

    echo, ignored = backend_config("echo", {"model": "fake-13b", "echo_delay_s": 0.25, "max_batch_size": 8})
    assert (echo.model_name, echo.delay_s) == ("fake-13b", 0.25)
    assert ignored == ["--max-batch-size / PARROT_MAX_BATCH_SIZE (for transformers)"]
    tgi, _ = backend_config("tgi", {"model": "llama", "base_url": "http://tgi:3000"})
    assert (tgi.model_name, tgi.url) == ("llama", "http://tgi:3000")
    llama, _ = backend_config("llamacpp", {"engine_parallel": 4, "engine_threads": 2, "gguf_type": "bf16"})
    assert llama.server == LlamaServerSettings(parallel=4, threads=2) and llama.gguf_type == "bf16"
    tf, _ = backend_config("transformers", {"batch_wait_ms": 1.5, "max_queue": 10, "num_threads": 2})
    assert (tf.batch_wait_ms, tf.max_queue, tf.num_threads, tf.model) == (1.5, 10, 2, "smollm2")
    engine, _ = backend_config("engine", {})  # unset: each backend's own defaults, no sentinel
    assert engine.model == "" and echo.__class__().model_name == "echo"


def test_readme_configuration_names_every_serve_flag():
    from parrot.cli.serve import ASKER_FLAGS, SERVE_FLAGS

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Configuration"):]
    assert {f.name for f in ASKER_FLAGS} == {"rerank-samples", "rerank-context-bonus", "rerank-repeat-penalty",
                                             "end-threshold"}
    missing = [f"--{f.name}" for f in SERVE_FLAGS + ASKER_FLAGS if f"`--{f.name}`" not in section]
    assert not missing, f"README's Configuration table lacks {missing}"


def test_the_run_layout_is_written_once():
    """Store keys of a run are built by parrot.storage.layout only: no "runs/..." literal elsewhere."""
    import re

    literal = re.compile(r"""f?["']runs/""")
    bad = [f"{p.relative_to(REPO)}:{i}" for folder in ("parrot", "services", "bench") for p in files(folder)
           if p.name != "layout.py" for i, line in enumerate(p.read_text().splitlines(), 1)
           if literal.search(line) and "relative path like" not in line and "URL_SCHEMES" not in line]
    assert not bad, f"run keys written by hand (use parrot.storage.layout): {bad}"



LEVELS = ("unit", "service", "process", "deploy")
# What a test imports to start a real process: the parrot entry point or a service process, Prometheus, a browser.
STARTS_A_PROCESS = {"tests.conftest.PARROT", "tests.conftest.start_service", "tests.conftest.wait_serving",
                    "tests.helpers.prometheus", "tests.helpers.browser", "subprocess.Popen"}


def imported_names(path: Path) -> set[str]:
    """Every ``module.name`` a ``from module import name`` of ``path`` brings in, and every plain import."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_tests_are_grouped_by_level():
    """tests/ holds the shared conftest.py, helpers/ and data, and one package per level; a unit or service
    test imports nothing that starts a process (those sit in process/, however short the process)."""
    tests = REPO / "tests"
    assert sorted(p.name for p in tests.glob("test_*.py")) == [], "a test file outside the level folders"
    found = {p.parent.name for p in tests.rglob("test_*.py")}
    assert found == set(LEVELS), f"test files in {found - set(LEVELS)}"
    for level in (*LEVELS, "helpers"):
        assert (tests / level / "__init__.py").is_file(), f"tests/{level} is not a package"
    for level in ("unit", "service"):
        for path in sorted((tests / level).glob("test_*.py")):
            started = sorted(imported_names(path) & STARTS_A_PROCESS)
            assert not started, f"{path.relative_to(REPO)} imports {started}: it belongs in tests/process"
    # the check sees what a process test imports
    assert imported_names(tests / "process" / "test_up.py") & STARTS_A_PROCESS


def test_run_kinds_are_listed_once_each_in_its_own_module():
    """A run kind is one module under services/coordinator/kinds/ and one line of its registry (``KINDS``):
    every RunSpec kind is registered and implements RunKind, and no other coordinator module lists
    the kinds or compares a kind's name (the web UI, whose pages and templates are per kind, aside)."""
    import inspect

    from parrot.v1 import coordinator_pb2 as cpb
    from services.coordinator.kinds import KINDS
    from services.coordinator.kinds.base import RunKind

    oneof = {f.name for f in cpb.RunSpec.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert set(KINDS) == oneof, (set(KINDS), oneof)
    for name, kind in KINDS.items():
        cls = type(kind)
        assert isinstance(kind, RunKind) and kind.name == name and not inspect.isabstract(cls)
        assert cls.__module__ == f"services.coordinator.kinds.{name}", cls.__module__
        assert kind.inputs and all(hasattr(kind.section(cpb.RunSpec()), f) for f in kind.inputs), name
        module = __import__(cls.__module__, fromlist=["_"])
        kinds_there = [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, RunKind) and c is not RunKind]
        assert kinds_there == [cls], (name, kinds_there)

    def literals(node: ast.AST) -> list[str]:
        parts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return [p.value for p in parts if isinstance(p, ast.Constant) and p.value in KINDS]

    bad = []
    for p in files("services/coordinator"):
        rel = p.relative_to(REPO)
        if rel.parts[2] in ("kinds", "web"):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Compare):
                found = [v for side in (node.left, *node.comparators) for v in literals(side)]
            elif isinstance(node, ast.Dict):
                found = [v for k in node.keys if k is not None for v in literals(k)]
            else:
                continue
            bad += [f"{rel}:{node.lineno}: {v!r}" for v in found]
    assert not bad, "kind names compared or listed outside services/coordinator/kinds/:\n" + "\n".join(bad)
