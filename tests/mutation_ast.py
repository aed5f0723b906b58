"""Operator and constant mutants of chosen functions, generated from the source with `ast` (tests/mutation.py --auto).

Each mutant is one small edit of the source bytes: an arithmetic operator swapped (+ -, * /, ** *), a
comparison moved across its boundary (< <=, > >=, == !=), an augmented assignment turned round (+= -=),
a number changed (n -> n + 1, x -> 2x, 0 -> 1), a minus sign dropped, or a reduction swapped
(minimum / maximum, reduce_sum / reduce_mean, floor / ceil). Docstrings, strings, booleans and f-strings
(messages) are left alone, and so is shape bookkeeping, which fails loudly on its own: `axis=` / `shape=` /
`name=` arguments, subscripts, and the axis or shape arguments of argmax, sort, reshape, stack, ...

A mutant's id names its function and edit, not its line, so that it stays the same when code above it
moves: `<file>::<function>::<original> -> <replacement>#<k>`, k counting equal edits in that function.
"""

from __future__ import annotations

import ast
import dataclasses

BINARY = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
          ast.FloorDiv: ("//", "/"), ast.Pow: ("**", "*"), ast.Mod: ("%", "//")}
COMPARE = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
           ast.Eq: ("==", "!="), ast.NotEq: ("!=", "==")}
AUGMENTED = {ast.Add: ("+=", "-="), ast.Sub: ("-=", "+="), ast.Mult: ("*=", "/="), ast.Div: ("/=", "*=")}
SWAPPED_CALLS = {
    "tf.minimum": "tf.maximum", "tf.maximum": "tf.minimum", "min": "max", "max": "min",
    "np.minimum": "np.maximum", "np.maximum": "np.minimum",
    "tf.reduce_sum": "tf.reduce_mean", "tf.reduce_mean": "tf.reduce_sum",
    "ops.floor": "ops.ceil", "tf.floor": "tf.math.ceil", "np.floor": "np.ceil",
}
SKIPPED_KEYWORDS = {"axis", "keepdims", "name", "dtype", "seed", "shape"}
# Calls whose numeric arguments are axes or shapes.
SHAPE_CALLS = ("argmax", "argmin", "argsort", "sort", "reshape", "ensure_shape", "stack", "concat", "squeeze",
               "expand_dims", "transpose")
SEPARATORS = set(b" \t\r\n()\\")


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One edit of a file: bytes [start, end) become `replacement`."""

    id: str
    file: str
    function: str
    line: int
    start: int
    end: int
    original: str
    replacement: str

    def apply(self, source: bytes) -> bytes:
        """The source with this mutant's edit."""
        return source[: self.start] + self.replacement.encode() + source[self.end:]

    def describe(self, source: bytes) -> str:
        """`line N: <the mutated line>`."""
        mutated = self.apply(source).splitlines()
        return f"line {self.line}: {mutated[self.line - 1].decode(errors='replace').strip()}"


class _Offsets:
    """Byte offsets of (line, column) positions; ast's columns are UTF-8 byte offsets."""

    def __init__(self, source: bytes):
        self.source = source
        self.starts = [0]
        for line in source.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))

    def at(self, line: int, column: int) -> int:
        return self.starts[line - 1] + column

    def start(self, node: ast.AST) -> int:
        return self.at(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> int:
        return self.at(node.end_lineno, node.end_col_offset)


def find_functions(tree: ast.Module, names: list[str]) -> dict[str, ast.AST]:
    """The function definitions named `Class.method`, `function` or `outer.inner` (nested functions)."""
    found: dict[str, ast.AST] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if name in names:
                    found[name] = child
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _docstring_nodes(function: ast.AST) -> set[int]:
    body = getattr(function, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return {id(body[0].value)}
    return set()


def _skipped_nodes(function: ast.AST) -> set[int]:
    """Shape bookkeeping and messages: keyword arguments such as axis=, subscripts, the numeric arguments of
    axis / shape functions (argmax, reshape, ...), and f-strings."""
    skipped: set[int] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.keyword) and node.arg in SKIPPED_KEYWORDS:
            skipped |= {id(n) for n in ast.walk(node.value)}
        elif isinstance(node, ast.Subscript):
            skipped |= {id(n) for n in ast.walk(node.slice)}
        elif isinstance(node, ast.JoinedStr):
            skipped |= {id(n) for n in ast.walk(node)}
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(SHAPE_CALLS):
            skipped |= {id(n) for arg in node.args[1:] for n in ast.walk(arg)}
            if ast.unparse(node.func).endswith(("reshape", "ensure_shape")):
                skipped |= {id(n) for arg in node.args for n in ast.walk(arg)}
    return skipped


def _operator_span(offsets: _Offsets, left_end: int, right_start: int, symbol: str) -> tuple[int, int] | None:
    """Where `symbol` stands between two operands (only separators around it), or None."""
    between = offsets.source[left_end:right_start]
    index = between.find(symbol.encode())
    if index < 0:
        return None
    rest = between[:index] + between[index + len(symbol):]
    if any(byte not in SEPARATORS for byte in rest):
        return None
    return left_end + index, left_end + index + len(symbol)


def _number_mutation(value: float) -> str:
    if isinstance(value, int):
        return repr(value + 1)
    return "1.0" if value == 0 else repr(value * 2)


def generate(source: bytes, file: str, functions: list[str]) -> tuple[list[Mutant], list[str]]:
    """Every mutant of the named functions, in source order, and the names that were not found."""
    tree = ast.parse(source)
    offsets = _Offsets(source)
    found = find_functions(tree, functions)
    missing = [name for name in functions if name not in found]
    edits: list[tuple[str, int, int, int, str, str]] = []  # (function, line, start, end, original, replacement)
    seen_spans: set[tuple[int, int, str]] = set()
    for name in functions:
        if name not in found:
            continue
        function = found[name]
        skipped = _docstring_nodes(function) | _skipped_nodes(function)
        for node in ast.walk(function):
            for start, end, original, replacement in _edits(node, offsets, skipped):
                if (start, end, replacement) in seen_spans:  # a nested function listed on its own as well
                    continue
                seen_spans.add((start, end, replacement))
                line = offsets.source.count(b"\n", 0, start) + 1
                edits.append((name, line, start, end, original, replacement))
    edits.sort(key=lambda e: (e[2], e[5]))
    mutants, counts = [], {}
    for name, line, start, end, original, replacement in edits:
        key = (name, original, replacement)
        counts[key] = counts.get(key, 0) + 1
        mutant_id = f"{file}::{name}::{original} -> {replacement}#{counts[key]}"
        mutants.append(Mutant(mutant_id, file, name, line, start, end, original, replacement))
    return mutants, missing


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)))


def _edits(node: ast.AST, offsets: _Offsets, skipped: set[int]):
    """(start, end, original, replacement) for each mutation of one node."""
    if id(node) in skipped:
        return
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY and not _is_text(node.left) and not _is_text(node.right):
        symbol, other = BINARY[type(node.op)]
        span = _operator_span(offsets, offsets.end(node.left), offsets.start(node.right), symbol)
        if span:
            yield (*span, symbol, other)
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in COMPARE:
        symbol, other = COMPARE[type(node.ops[0])]
        span = _operator_span(offsets, offsets.end(node.left), offsets.start(node.comparators[0]), symbol)
        if span:
            yield (*span, symbol, other)
    elif isinstance(node, ast.AugAssign) and type(node.op) in AUGMENTED:
        symbol, other = AUGMENTED[type(node.op)]
        span = _operator_span(offsets, offsets.end(node.target), offsets.start(node.value), symbol)
        if span:
            yield (*span, symbol, other)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        start = offsets.start(node)
        if offsets.source[start:start + 1] == b"-":
            yield start, start + 1, "-", ""
    elif isinstance(node, ast.Constant) and not isinstance(node.value, bool) and isinstance(node.value, (int, float)):
        start, end = offsets.start(node), offsets.end(node)
        yield start, end, offsets.source[start:end].decode(), _number_mutation(node.value)
    elif isinstance(node, ast.Call):
        start, end = offsets.start(node.func), offsets.end(node.func)
        name = offsets.source[start:end].decode()
        if name in SWAPPED_CALLS:
            yield start, end, name, SWAPPED_CALLS[name]
