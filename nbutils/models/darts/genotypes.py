"""DARTS genotypes: the published cells and safe parsing of user-given ones.

A genotype lists, for each intermediate node of a cell, two (op, input) edges; inputs 0 and 1
are the two cell inputs (outputs of the cells two back and one back), input k >= 2 is
intermediate node k - 2. `*_concat` names the nodes concatenated into the cell output.

DARTS_V1 (first order) and DARTS_V2 (second order) are the cells of Liu et al., "DARTS:
Differentiable Architecture Search" (ICLR 2019) as listed in the reference repository
(quark0/darts, cnn/genotypes.py); `DARTS` is DARTS_V2 as there.
"""
from __future__ import annotations

import ast
import json
from collections import namedtuple
from pathlib import Path

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

PRIMITIVES = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]

DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5],
)

DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)

DARTS = DARTS_V2

GENOTYPES = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS}


def validate_genotype(genotype: Genotype, source: str = "genotype") -> Genotype:
    """Check ops are DARTS primitives, each node has two edges from earlier nodes, concat is in range.

    Returns a normalised Genotype (lists of (str, int) tuples, concat as list of ints);
    raises ValueError naming `source` and the offending field.
    """
    out = {}
    for cell in ("normal", "reduce"):
        edges = getattr(genotype, cell)
        try:
            edges = [(str(op), int(index)) for op, index in edges]
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {cell} must be a list of (op, input) pairs ({err})") from err
        if not edges or len(edges) % 2:
            raise ValueError(f"{source}: {cell} needs two edges per node, got {len(edges)} edges")
        for k, (op, index) in enumerate(edges):
            if op not in PRIMITIVES:
                raise ValueError(f"{source}: {cell}[{k}] op {op!r} is not a DARTS primitive {PRIMITIVES}")
            node = k // 2
            if not 0 <= index < node + 2:
                raise ValueError(f"{source}: {cell}[{k}] input {index} must be in [0, {node + 2}) for node {node}")
        concat = getattr(genotype, f"{cell}_concat")
        try:
            concat = [int(c) for c in concat]
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {cell}_concat must be a list of node indices ({err})") from err
        steps = len(edges) // 2
        if not concat or any(not 0 <= c < steps + 2 for c in concat):
            raise ValueError(f"{source}: {cell}_concat {concat} must index nodes in [0, {steps + 2})")
        out[cell], out[f"{cell}_concat"] = edges, concat
    return Genotype(**out)


def _literal(node: ast.AST, source: str):
    """A literal or range(a[, b]) from an AST node (never evaluates code)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        return list(range(*[ast.literal_eval(arg) for arg in node.args]))
    try:
        return ast.literal_eval(node)
    except ValueError as err:
        raise ValueError(f"{source}: only literals and range(...) are allowed in a genotype ({err})") from err


def genotype_from_string(text: str, source: str = "genotype string") -> Genotype:
    """Parse "Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)" without eval."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"{source}: not a Genotype(...) expression ({err.msg})") from err
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, (ast.Name, ast.Attribute))
            and (getattr(call.func, "id", None) or getattr(call.func, "attr", None)) == "Genotype"):
        raise ValueError(f"{source}: expected Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)")
    fields = list(Genotype._fields)
    values = {}
    for field, arg in zip(fields, call.args):
        values[field] = _literal(arg, source)
    for kw in call.keywords:
        if kw.arg not in fields:
            raise ValueError(f"{source}: unknown Genotype field {kw.arg!r}")
        values[kw.arg] = _literal(kw.value, source)
    missing = [f for f in fields if f not in values]
    if missing:
        raise ValueError(f"{source}: missing Genotype field(s) {missing}")
    return validate_genotype(Genotype(**values), source)


def genotype_from_dict(data: dict, source: str = "genotype dict") -> Genotype:
    """Genotype from {"normal": [[op, input], ...], "normal_concat": [...], "reduce": ..., "reduce_concat": ...}."""
    missing = [f for f in Genotype._fields if f not in data]
    if missing:
        raise ValueError(f"{source}: missing key(s) {missing}")
    return validate_genotype(Genotype(**{f: data[f] for f in Genotype._fields}), source)


def genotype_to_dict(genotype: Genotype) -> dict:
    """JSON-friendly dict: {"normal": [[op, input], ...], "normal_concat": [...], ...}."""
    return {"normal": [[op, int(i)] for op, i in genotype.normal], "normal_concat": [int(c) for c in genotype.normal_concat],
            "reduce": [[op, int(i)] for op, i in genotype.reduce], "reduce_concat": [int(c) for c in genotype.reduce_concat]}


def parse_genotype(spec) -> Genotype:
    """Genotype from a name ("DARTS_V2"), a Genotype, a dict, a JSON string, a "Genotype(...)" string,
    or a path to a .json / .txt file holding one of those (e.g. the search's search_arch.json)."""
    if isinstance(spec, Genotype):
        return validate_genotype(spec)
    if isinstance(spec, dict):
        if "arch" in spec and isinstance(spec["arch"], dict):  # search_arch.json written by the search loop
            spec = spec["arch"]
        if "genotype" in spec and isinstance(spec["genotype"], (dict, str)):
            return parse_genotype(spec["genotype"])
        return genotype_from_dict(spec)
    if isinstance(spec, (str, Path)):
        text = str(spec).strip()
        if text in GENOTYPES:
            return GENOTYPES[text]
        if text.startswith("{"):
            try:
                return parse_genotype(json.loads(text))
            except json.JSONDecodeError as err:
                raise ValueError(f"genotype JSON: {err}") from err
        if "Genotype(" in text:
            return genotype_from_string(text)
        path = Path(text)
        if path.is_file():
            content = path.read_text()
            if content.lstrip().startswith("{"):
                try:
                    return parse_genotype(json.loads(content))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: not valid JSON ({err})") from err
            return genotype_from_string(content, source=str(path))
        raise ValueError(f"genotype {text!r}: not a known name ({', '.join(GENOTYPES)}), "
                         "a Genotype(...) string, JSON, or an existing file")
    raise ValueError(f"genotype: cannot interpret a {type(spec).__name__}")
