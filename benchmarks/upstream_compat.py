"""Run the portable part of Monarch's own Python tests against an interpreter (a measurement).

Used by ``benchmarks/upstream_compat.sh``; fetches nothing. Given a checkout of Monarch's
repository (a git dir or a work tree), it extracts ``python/tests`` and ``pyproject.toml`` at the
requested revision into a temporary folder, collects the 12 files below with the given
interpreter, keeps the test ids that use only Monarch's public Python actor API (rule in
``select``), runs each id in its own pytest process with a timeout, and prints one line per id and
the pass count. The interpreter needs pytest, pytest-asyncio and pytest-timeout.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES = (
    "test_python_actors", "test_actor_error", "test_concurrent_endpoints",
    "test_supervision_hierarchy", "test_host_mesh", "test_proc_mesh", "test_cookbook",
    "test_actor_logging", "test_inter_mesh_ping_pong", "test_client_shutdown",
    "test_controller_dedup", "test_config",
)
SHIM = Path(__file__).resolve().parent / "upstream_shim"
sys.path.insert(0, str(SHIM))
from sitecustomize import PUBLIC  # noqa: E402  (the shim's table of public names)

# Private modules whose names a portable test may not use (unless the name is in PUBLIC).
PRIVATE_PREFIXES = ("monarch._src", "monarch._rust_bindings", "monarch.tools", "monarch._testing",
                    "monarch.mesh_controller", "monarch.tensor_engine", "monarch.common")
# Attributes of Monarch's objects that torchmonarch keeps private (its Rust-side handles and
# internals, not part of its Python API): a test reaching one is not portable either.
PRIVATE_ATTRS = {
    "_logging_manager": "ProcMesh._logging_manager (the Rust logging client)",
    "_as_rust": "Instance._as_rust (a Rust handle)",
}
# Other tokens that mark the tensor engine or CUDA.
FORBIDDEN_TOKENS = {"cuda": "CUDA", "tensor_engine": "tensor engine", "mesh_controller": "tensor engine"}


def extract(checkout: Path, rev: str, dest: Path) -> str:
    """Extract python/tests and pyproject.toml of ``rev`` into ``dest``; return the commit."""
    git_dir = checkout / ".git" if (checkout / ".git").exists() else checkout
    git = ["git", f"--git-dir={git_dir}"]
    commit = subprocess.run([*git, "rev-parse", rev], check=True, capture_output=True, text=True).stdout.strip()
    archive = subprocess.run([*git, "archive", commit, "python/tests", "pyproject.toml"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return commit


class _Refs(ast.NodeVisitor):
    """Names a function or class body refers to, plus private imports made inside it."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.private: set[str] = set()
        self.tokens: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        self.names.add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in PRIVATE_ATTRS:
            self.private.add(PRIVATE_ATTRS[node.attr])
        for token in FORBIDDEN_TOKENS:
            if token in node.attr:
                self.tokens.add(token)
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self.names.add(node.arg)  # fixtures are requested by parameter name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        for alias in node.names:
            if mod.startswith(PRIVATE_PREFIXES) and (mod, alias.name) not in PUBLIC:
                self.private.add(f"{mod}.{alias.name}")
            if any(t in mod for t in FORBIDDEN_TOKENS):
                self.tokens.update(t for t in FORBIDDEN_TOKENS if t in mod)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.startswith(PRIVATE_PREFIXES):
                self.private.add(alias.name)


def _marker_names(decorators: list[ast.expr]) -> set[str]:
    out = set()
    for d in decorators:
        text = ast.unparse(d)
        m = re.match(r"pytest\.mark\.(\w+)", text)
        if m:
            out.add(m.group(1))
    return out


def exclusions(path: Path) -> dict[str, str]:
    """Map each test function (``name`` or ``Class::name``) of ``path`` to a reason it is not portable."""
    tree = ast.parse(path.read_text())
    private_imports: dict[str, str] = {}
    defs: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PRIVATE_PREFIXES):
            for a in node.names:
                if (node.module, a.name) not in PUBLIC:
                    private_imports[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PRIVATE_PREFIXES):
                    private_imports[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    defs[t.id] = node

    def reason_for(root: ast.AST) -> str | None:
        seen: set[str] = set()
        todo = [root]
        while todo:
            node = todo.pop()
            refs = _Refs()
            refs.visit(node)
            if refs.private:
                return "uses torchmonarch-private " + sorted(refs.private)[0]
            if refs.tokens:
                return "uses the " + FORBIDDEN_TOKENS[sorted(refs.tokens)[0]]
            for name in refs.names:
                if name in private_imports and private_imports[name] != "monarch":
                    return "uses torchmonarch-private " + private_imports[name]
                if name in defs and name not in seen:
                    seen.add(name)
                    todo.append(defs[name])
        return None

    out: dict[str, str] = {}

    def consider(fn: ast.FunctionDef | ast.AsyncFunctionDef, key: str, class_marks: set[str]) -> None:
        marks = _marker_names(fn.decorator_list) | class_marks
        if "oss_skip" in marks:
            out[key] = "marked oss_skip upstream"
            return
        deco_text = " ".join(ast.unparse(d) for d in fn.decorator_list)
        if "cuda" in deco_text:
            out[key] = "needs CUDA"
            return
        reason = reason_for(fn)
        if reason:
            out[key] = reason

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            consider(node, node.name, set())
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            cmarks = _marker_names(node.decorator_list)
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and sub.name.startswith("test"):
                    consider(sub, f"{node.name}::{sub.name}", cmarks)
    return out


def collect(python: str, root: Path, env: dict[str, str]) -> list[str]:
    files = [f"python/tests/{f}.py" for f in FILES]
    proc = subprocess.run([python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    return [line.strip() for line in proc.stdout.splitlines() if line.startswith("python/tests/") and "::" in line]


def select(root: Path, ids: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split collected ids into the portable selection and the excluded ids with a reason each."""
    per_file = {f: exclusions(root / "python/tests" / f"{f}.py") for f in FILES}
    chosen, excluded = [], {}
    for node_id in ids:
        path, _, rest = node_id.partition("::")
        key = rest.split("[", 1)[0]
        reason = per_file[Path(path).stem].get(key)
        if reason:
            excluded[node_id] = reason
        else:
            chosen.append(node_id)
    return chosen, excluded


def run_one(python: str, root: Path, env: dict[str, str], node_id: str, timeout_s: float) -> tuple[str, str, float]:
    start = time.monotonic()
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:crash_recovery_plugin",
           f"--timeout={int(timeout_s)}", "-o", "faulthandler_timeout=0", node_id]
    # its own process group: whatever the test leaves behind (host agents it started, their
    # procs) is killed with the group once pytest is done, and cannot hold our pipes open
    # (output goes to a file, not a pipe, so a leftover holding it does not delay the result)
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout_s + 30)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)
            proc.wait()
        log.seek(0)
        out = log.read()
    if timed_out:
        return "timeout", _reason(out) or f"no result after {timeout_s + 30:.0f} s", time.monotonic() - start
    tail = out.strip().splitlines()[-1] if out.strip() else ""
    if "Timeout" in out and "+++++++ Timeout" in out:
        status = "timeout"
    elif re.search(r"\b1 passed\b", tail) and "failed" not in tail and "error" not in tail:
        status = "pass"
    elif " skipped" in tail and "passed" not in tail:
        status = "skip"
    elif "error" in tail:
        status = "error"
    else:
        status = "fail"
    return status, "" if status == "pass" else _reason(out), time.monotonic() - start


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reason(out: str) -> str:
    """The key error line of a pytest run: the first ``E   `` line, else the last summary line."""
    for line in out.splitlines():
        if line.startswith("E   ") and line[4:].strip():
            return line[4:].strip()[:220]
    for line in reversed(out.splitlines()):
        if line.startswith(("FAILED", "ERROR")):
            return line[:220]
    lines = [text for text in out.splitlines() if text.strip()]
    return lines[-1][:220] if lines else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="Monarch repository (git dir or work tree)")
    ap.add_argument("--python", default=sys.executable, help="interpreter under test (default: this one)")
    ap.add_argument("--collect-with", default=None,
                    help="interpreter that collects the ids (default: --python); use the torchmonarch venv so "
                         "that a file failing to import under the tested interpreter still counts its ids")
    ap.add_argument("--rev", default="HEAD", help="revision of the checkout (default HEAD)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-test timeout in seconds (default 120)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="tests run at once (default 2)")
    ap.add_argument("-k", dest="only", default=None, help="run only ids containing this substring")
    ap.add_argument("--list", action="store_true", help="print the selection and exclusions, run nothing")
    ap.add_argument("--out", type=Path, default=None, help="also write the result table (TSV) here")
    ap.add_argument("--cluster-token", default="upstream-compat-run",
                    help="MONARCH_CLUSTER_TOKEN for every process of the run (our TCP host agents refuse to "
                         "serve without one; Monarch's serve anyone, and torchmonarch ignores it); '' : unset")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="monarch-upstream-") as tmp:
        root = Path(tmp)
        commit = extract(args.checkout, args.rev, root)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SHIM), *filter(None, [env.get("PYTHONPATH")])])
        env.pop("PYTEST_ADDOPTS", None)
        env.pop("MONARCH_CLUSTER_TOKEN", None)
        if args.cluster_token:
            env["MONARCH_CLUSTER_TOKEN"] = args.cluster_token
        ids = collect(args.collect_with or args.python, root, env)
        chosen, excluded = select(root, ids)
        print(f"# Monarch commit {commit}; interpreter {args.python}; ids collected by {args.collect_with or args.python}")
        print(f"# collected {len(ids)} ids in {len(FILES)} files; selected {len(chosen)}; excluded {len(excluded)}")
        if args.list:
            for node_id in chosen:
                print(f"SELECT\t{node_id}")
            for node_id, why in excluded.items():
                print(f"EXCLUDE\t{node_id}\t{why}")
            return 0
        if args.only:
            chosen = [i for i in chosen if args.only in i]
        results: dict[str, tuple[str, str, float]] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(args.jobs, 2))) as pool:
            futs = {pool.submit(run_one, args.python, root, env, i, args.timeout): i for i in chosen}
            for fut in concurrent.futures.as_completed(futs):
                node_id = futs[fut]
                results[node_id] = fut.result()
                status, why, secs = results[node_id]
                print(f"{status:7s} {secs:6.1f}s  {node_id}  {why}", flush=True)
        passed = sum(1 for s, _, _ in results.values() if s == "pass")
        counts: dict[str, int] = {}
        for s, _, _ in results.values():
            counts[s] = counts.get(s, 0) + 1
        if args.out:
            args.out.write_text("".join(f"{i}\t{results[i][0]}\t{results[i][2]:.1f}\t{results[i][1]}\n" for i in chosen))
        print(f"# by status: {counts}")
        print(f"PASSED {passed}/{len(chosen)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
