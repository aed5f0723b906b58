"""Mutation testing: break the arithmetic on purpose and check that the tests that guard it fail.

    python tests/mutation.py                     # every named break of tests/mutation_breaks.yaml (CI runs this)
    python tests/mutation.py --list              # the named breaks and the tests that must catch each
    python tests/mutation.py --only NAME [--only NAME ...]
    python tests/mutation.py --auto              # generated operator / constant mutants of the chosen functions
    python tests/mutation.py --auto --module efficientnet_tf/models/ema.py --report mutants.json
    python tests/mutation.py --auto --dry-run    # the generated mutants, not run
    python tests/mutation.py --auto --rerun mutants.json   # only the survivors of an earlier report

A named break is a file, an exact piece of its code, the code that replaces it, and the tests that must
fail with it in place. A break whose code is no longer in the file (or is there more than once) is a
failure ("break X no longer applies: update it"), so a refactor cannot retire a break silently. Each
mutant runs only its own tests, in one pytest process (`-x`, any tier), and the file is restored
whatever happens: after the run, on Ctrl-C or SIGTERM, and, after a kill -9, at the start of the next
run (from the journal `.mutation-journal.json` at the repository root).

`--auto` generates mutants (tests/mutation_ast.py) over the functions listed under `auto:` in the same
file and prints killed / survived per module. A survivor listed under `equivalent:` with its reason is
reported as equivalent; any other survivor makes the exit status 1, as does a named break that survives.

Run it on a checkout nobody else is using: the mutants are written into the working tree.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Self

import yaml
from mutation_ast import Mutant, generate

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = ROOT / "tests" / "mutation_breaks.yaml"
JOURNAL = ROOT / ".mutation-journal.json"
DEFAULT_TIMEOUT = 600.0
# pytest's last line: "3 passed, 1 skipped in 12.3s" (with -q), or the same between "=" rules.
SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed|error|skipped|deselected).*?|no tests ran) in [\d.]+s\b")


@dataclasses.dataclass(frozen=True)
class Break:
    """A deliberate break: `find` in `file` becomes `replace`; every run of `tests` must then fail."""

    name: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    why: str = ""
    group: str = "core"  # CI runs the core group; `--group` picks another


@dataclasses.dataclass(frozen=True)
class AutoTarget:
    """Functions of one module to generate mutants over, and the tests that cover them."""

    file: str
    functions: tuple[str, ...]
    tests: tuple[str, ...]


@dataclasses.dataclass
class Outcome:
    """What the tests did with a mutant in place."""

    verdict: str  # killed | survived | timeout | error
    seconds: float
    detail: str = ""
    summary: str = ""
    cpu_seconds: float = 0.0  # of the test process and its children: what the run costs on an idle machine


def load_spec(path: pathlib.Path = SPEC) -> tuple[list[Break], list[AutoTarget], dict[str, str]]:
    """The named breaks, the auto targets and the known-equivalent auto mutants ({id: reason})."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    breaks = [Break(b["name"], b["file"], b["find"], b["replace"], tuple(b["tests"]), b.get("why", ""),
                    b.get("group", "core")) for b in spec.get("breaks", [])]
    names = [b.name for b in breaks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"{path}: break names used twice: {', '.join(duplicates)}")
    targets = [AutoTarget(t["file"], tuple(t["functions"]), tuple(t["tests"])) for t in spec.get("auto", [])]
    equivalent = {e["id"]: e["reason"] for e in spec.get("equivalent", [])}
    return breaks, targets, equivalent


# ------------------------------------------------------------------------------------------------
# Writing mutants into the tree and always taking them out again


class Stopped(KeyboardInterrupt):
    """SIGTERM / SIGHUP: stop like Ctrl-C, restoring the file on the way out."""


def _stop(signum: int, _frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def recover() -> list[str]:
    """Put back every file a killed earlier run left mutated; the files restored."""
    if not JOURNAL.exists():
        return []
    entries = json.loads(JOURNAL.read_text())
    restored = []
    for entry in entries:
        path = ROOT / entry["file"]
        path.write_bytes(bytes.fromhex(entry["original"]))
        os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]))
        restored.append(entry["file"])
    JOURNAL.unlink()
    return restored


class Mutated:
    """`with Mutated(file, new_bytes):` the file holds the mutant inside the block, its original after it."""

    _counter = 0

    def __init__(self, file: str, mutated: bytes):
        self.path = ROOT / file
        self.file = file
        self.mutated = mutated

    def __enter__(self) -> Self:
        with _signals_held():
            return self._write()

    def _write(self) -> Self:
        self.original = self.path.read_bytes()
        self.mtime_ns = self.path.stat().st_mtime_ns
        JOURNAL.write_text(json.dumps([{"file": self.file, "original": self.original.hex(),
                                        "mtime_ns": self.mtime_ns}]))
        self.path.write_bytes(self.mutated)
        # A modification time of its own: Python must not take a cached .pyc of the original (or of another
        # mutant of the same size written in the same second) for this source.
        Mutated._counter += 1
        stamp = self.mtime_ns + Mutated._counter * 1_000_000_000
        os.utime(self.path, ns=(stamp, stamp))
        return self

    def __exit__(self, *exc: object) -> None:
        with _signals_held():
            self.path.write_bytes(self.original)
            os.utime(self.path, ns=(self.mtime_ns, self.mtime_ns))
            JOURNAL.unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while a file is being written (they arrive right after)."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def run_tests(tests: tuple[str, ...], timeout: float) -> Outcome:
    """Run `tests` in one pytest process, whatever their tier; killed when any of them fails."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-n", "0", "-m", "", "-p", "no:cacheprovider",
               "--no-header", *tests]
    started, cpu = time.monotonic(), _children_cpu()
    try:
        proc = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome("timeout", time.monotonic() - started, f"no result within {timeout:.0f} s")
    seconds = time.monotonic() - started
    outcome = _verdict(proc, seconds)
    outcome.cpu_seconds = _children_cpu() - cpu
    return outcome


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _verdict(proc: subprocess.CompletedProcess, seconds: float) -> Outcome:
    """killed (a test failed), survived (all passed), or error (the tests could not run)."""
    output = proc.stdout + proc.stderr
    lines = output.splitlines()
    summary = next((m.group(1) for line in reversed(lines) if (m := SUMMARY.match(line))), "")
    if proc.returncode == 0:
        return Outcome("survived", seconds, "", summary)
    if proc.returncode == 1:
        failed = next((line.removeprefix("FAILED ") for line in lines if line.startswith("FAILED ")), "")
        return Outcome("killed", seconds, failed[:200], summary)
    if proc.returncode == 2:
        errors = [line for line in lines if line.startswith("ERROR ") or "Error" in line]
        return Outcome("error", seconds, "the tests could not be collected: " + (errors[0] if errors else ""),
                       summary)
    tail = " | ".join(line for line in lines[-6:] if line.strip())
    return Outcome("error", seconds, f"pytest exit status {proc.returncode}: {tail}", summary)


# ------------------------------------------------------------------------------------------------
# Named breaks


def check_break(item: Break) -> str | None:
    """Why the break cannot be applied to today's code, or None."""
    path = ROOT / item.file
    if not path.is_file():
        return f"break {item.name} no longer applies: {item.file} does not exist; update it"
    count = path.read_text(encoding="utf-8").count(item.find)
    if count == 0:
        return f"break {item.name} no longer applies: its code is not in {item.file}; update it"
    if count > 1:
        return f"break {item.name} is ambiguous: its code is in {item.file} {count} times; give more context"
    return None


def run_breaks(breaks: list[Break], timeout: float) -> int:
    """Apply each break in turn and run its tests; 1 when any survives or cannot be applied."""
    problems = []
    width = max(len(b.name) for b in breaks)
    print(f"{len(breaks)} named breaks, each against its own tests", flush=True)
    started, cpu = time.monotonic(), 0.0
    for item in breaks:
        problem = check_break(item)
        if problem:
            print(f"  {item.name:<{width}}  NOT APPLIED  {problem}", flush=True)
            problems.append(problem)
            continue
        source = (ROOT / item.file).read_text(encoding="utf-8")
        with Mutated(item.file, source.replace(item.find, item.replace).encode("utf-8")):
            outcome = run_tests(item.tests, timeout)
        cpu += outcome.cpu_seconds
        line = (f"  {item.name:<{width}}  {outcome.verdict.upper():<8}  {outcome.seconds:5.0f} s "
                f"({outcome.cpu_seconds:4.0f} s CPU)  ")
        if outcome.verdict == "killed":
            print(line + f"by {outcome.detail}", flush=True)
        elif outcome.verdict == "timeout":
            print(line + outcome.detail, flush=True)
        else:
            message = (f"break {item.name} survived: {', '.join(item.tests)} passed with it ({outcome.summary})"
                       if outcome.verdict == "survived" else f"break {item.name}: {outcome.detail}")
            print(line + message, flush=True)
            problems.append(message)
    print(f"{len(breaks) - len(problems)} of {len(breaks)} breaks caught in {time.monotonic() - started:.0f} s "
          f"({cpu:.0f} s of CPU time in the test processes)", flush=True)
    for problem in problems:
        print(f"FAIL: {problem}", flush=True)
    return 1 if problems else 0


# ------------------------------------------------------------------------------------------------
# Generated mutants


def run_auto(targets: list[AutoTarget], equivalent: dict[str, str], timeout: float, modules: list[str],
             report: pathlib.Path | None, dry_run: bool = False, rerun: pathlib.Path | None = None) -> int:
    """Generate and run every mutant of the targets (or of `modules`, or the survivors of an earlier report);
    a table per module."""
    chosen = [t for t in targets if not modules or t.file in modules]
    if not chosen:
        raise SystemExit(f"no auto target among {', '.join(modules)}; targets: {', '.join(t.file for t in targets)}")
    plan: list[tuple[AutoTarget, Mutant]] = []
    for target in chosen:
        mutants, missing = generate((ROOT / target.file).read_bytes(), target.file, list(target.functions))
        if missing:
            raise SystemExit(f"{target.file}: no function {', '.join(missing)}; update the auto list in {SPEC.name}")
        plan += [(target, m) for m in mutants]
    if rerun:
        survivors = {row["id"] for row in json.loads(rerun.read_text())["mutants"] if row["verdict"] == "survived"}
        plan = [(target, m) for target, m in plan if m.id in survivors]
        print(f"{len(survivors)} survivors in {rerun}; {len(plan)} of them still generated", flush=True)
    print(f"{len(plan)} generated mutants in {len(chosen)} target(s)", flush=True)
    if dry_run:
        for target, mutant in plan:
            print(f"  {mutant.id}\n      {mutant.describe((ROOT / target.file).read_bytes())}")
        return 0
    for target in chosen:  # the tests must pass before any mutant can be said to be caught by them
        outcome = run_tests(target.tests, timeout)
        if outcome.verdict != "survived":
            raise SystemExit(f"the tests of {target.file} do not pass unmutated ({outcome.verdict}: "
                             f"{outcome.detail or outcome.summary}); fix them first")
    rows = []
    started = time.monotonic()
    for index, (target, mutant) in enumerate(plan, 1):
        source = (ROOT / target.file).read_bytes()
        with Mutated(target.file, mutant.apply(source)):
            outcome = run_tests(target.tests, timeout)
        verdict = outcome.verdict
        if verdict == "error":
            verdict = "killed"  # the mutant broke the import or collection: caught, if crudely
        if verdict == "survived" and mutant.id in equivalent:
            verdict = "equivalent"
        rows.append({"id": mutant.id, "file": target.file, "function": mutant.function, "line": mutant.line,
                     "change": mutant.describe(source), "verdict": verdict, "by": outcome.detail,
                     "seconds": round(outcome.seconds, 1), "cpu_seconds": round(outcome.cpu_seconds, 1),
                     "reason": equivalent.get(mutant.id, "")})
        print(f"  [{index}/{len(plan)}] {verdict.upper():<10} {outcome.seconds:5.0f} s  {mutant.id}", flush=True)
    elapsed = time.monotonic() - started
    print_table(rows, elapsed)
    if report:
        report.write_text(json.dumps({"seconds": round(elapsed), "mutants": rows}, indent=1) + "\n")
    stale = sorted(set(equivalent) - {row["id"] for row in rows})
    if stale and not modules:
        print("Listed as equivalent but no longer generated (update the list):", *stale, sep="\n  ")
    return 1 if any(row["verdict"] == "survived" for row in rows) else 0


def print_table(rows: list[dict], seconds: float) -> None:
    """Killed / survived per module, then every survivor."""
    print(f"\n{'module':<42} {'mutants':>7} {'killed':>7} {'timeout':>7} {'equivalent':>10} {'survived':>8}")
    for file in dict.fromkeys(row["file"] for row in rows):
        mine = [row["verdict"] for row in rows if row["file"] == file]
        print(f"{file:<42} {len(mine):>7} {mine.count('killed'):>7} {mine.count('timeout'):>7} "
              f"{mine.count('equivalent'):>10} {mine.count('survived'):>8}")
    print(f"{len(rows)} mutants in {seconds / 60:.1f} min ({sum(r['cpu_seconds'] for r in rows) / 60:.1f} CPU-minutes "
          "in the test processes)")
    for row in rows:
        if row["verdict"] in ("survived", "equivalent"):
            note = f"  ({row['reason']})" if row["reason"] else ""
            print(f"{row['verdict'].upper()}: {row['id']}\n    {row['file']} {row['change']}{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the named breaks and their tests")
    parser.add_argument("--only", action="append", default=[], help="run only this named break (repeatable)")
    parser.add_argument("--group", action="append", default=[],
                        help="run only the named breaks of this group (repeatable): core (what CI runs), "
                             "efficientnetv2, qat")
    parser.add_argument("--auto", action="store_true", help="generated mutants instead of the named breaks")
    parser.add_argument("--module", action="append", default=[], help="--auto: only this target file (repeatable)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per mutant's test run")
    parser.add_argument("--report", type=pathlib.Path, help="--auto: also write the results as JSON")
    parser.add_argument("--dry-run", action="store_true", help="--auto: list the mutants without running them")
    parser.add_argument("--rerun", type=pathlib.Path, help="--auto: only the survivors of this earlier --report")
    parser.add_argument("--spec", type=pathlib.Path, default=SPEC, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    restored = recover()
    if restored:
        print(f"Restored {', '.join(restored)} from the journal of an interrupted run", flush=True)
    breaks, targets, equivalent = load_spec(args.spec)
    if args.list:
        for item in breaks:
            print(f"{item.name}: {item.file}\n    {item.why}\n    caught by: {', '.join(item.tests)}")
        return 0
    try:
        if args.auto:
            return run_auto(targets, equivalent, args.timeout, args.module, args.report, args.dry_run, args.rerun)
        unknown = sorted(set(args.only) - {b.name for b in breaks})
        if unknown:
            raise SystemExit(f"no named break {', '.join(unknown)}; see --list")
        groups = sorted({b.group for b in breaks})
        unknown = sorted(set(args.group) - set(groups))
        if unknown:
            raise SystemExit(f"no group {', '.join(unknown)}; the groups are {', '.join(groups)}")
        chosen = [b for b in breaks if (not args.only or b.name in args.only)
                  and (not args.group or b.group in args.group)]
        return run_breaks(chosen, args.timeout)
    except KeyboardInterrupt as stop:
        print(f"\nstopped ({stop or 'Ctrl-C'}); every file is back as it was", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
