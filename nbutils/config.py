"""Typed run parameters: the defaults every family shares, profile/row overlays, validation.

A run's parameters are three sections plus a run folder, mirrored one-to-one by the
`parameters` cell of every family notebook (papermill injects whole sections):

    run_dir : str            where checkpoints, metrics.json and figures of this run go
    data    : dict           which 300W copy and how much of it (see DATA_DEFAULTS)
    model   : dict           architecture, attention and initialisation (see MODEL_DEFAULTS)
    train   : dict           schedule, augmentation, heatmap geometry (see TRAIN_DEFAULTS)

Families add their own sections (e.g. `search` for the NAS families) in their notebook.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

DATA_DEFAULTS = {
    "root": "synth",        # "synth" = the embedded synth300w; otherwise a path to real 300W (CSV or raw iBUG tree)
    "synth_size": "cpu",    # smoke | cpu | paper (split sizes of the generated data)
    "synth_seed": 0,
    "cache_dir": None,      # where synth300w is generated; None = <outputs>/data
    "max_train": None,      # cap on training images (None = all)
    "max_eval": None,       # cap on images per evaluation subset (None = all)
    "workers": 0,           # DataLoader worker processes
    "skip_bad": False,      # skip (and count) unreadable samples instead of failing
}

MODEL_DEFAULTS = {
    "name": "hrnet",        # hrnet | darts | densenas | multiscale
    "width": 18,            # HRNetV2-W18 / W32 / ...
    "num_landmarks": 68,
    "attention": {
        "type": "none",     # none | se | cbam | bam | nonlocal_{embedded_gaussian,gaussian,dot_product,concatenation}
        "position": "prehead",  # prehead | block
        "reduction": 16,
        "residual": False,  # x + attn(x)
        "fusion_stages": [4],   # stages whose upsampled outputs are concatenated before the head
    },
    "init": "normal",       # normal | xavier | kaiming | kaiming_fan_out | pretrained:<path>
    "bn_momentum": 0.01,
}

TRAIN_DEFAULTS = {
    "input_size": 256,      # crop side in pixels
    "heatmap_size": 64,     # heatmap side in pixels
    "sigma": 1.0,           # Gaussian std in heatmap pixels
    "epochs": 60,
    "batch_size": 16,
    "optimizer": "adam",    # adam | sgd
    "lr": 1.0e-4,
    "weight_decay": 0.0,
    "momentum": 0.9,        # sgd only
    "nesterov": False,      # sgd only
    "schedule": "multistep",  # multistep | cosine
    "lr_steps": [30, 50],   # epochs at which a multistep schedule multiplies lr by lr_factor
    "lr_factor": 0.1,
    "eval_every": 1,        # epochs between evaluations (the last epoch is always evaluated)
    "seed": 111,
    "fast": False,          # CPU: channels_last + bf16 autocast where supported (CUDA always uses AMP)
    "flip_test": False,     # average prediction with the mirrored image's at evaluation
    "max_steps_per_epoch": None,
    "augment": {
        "scale": 0.25,      # scale factor ~ U(1 - s, 1 + s)
        "rotation": 30.0,   # degrees, ~ U(-r, r) ...
        "rotation_p": 0.6,  # ... applied with this probability
        "flip_p": 0.5,
    },
}

DEFAULTS = {"run_dir": "outputs/scratch", "data": DATA_DEFAULTS, "model": MODEL_DEFAULTS, "train": TRAIN_DEFAULTS}


def defaults() -> dict:
    """A deep copy of the shared defaults (safe to mutate)."""
    return copy.deepcopy(DEFAULTS)


def outputs_root() -> Path:
    """Root of all outputs: $NBUTILS_OUTPUTS if set, else ./outputs."""
    return Path(os.environ.get("NBUTILS_OUTPUTS", "outputs")).resolve()


# ---------------------------------------------------------------------------------------------
# Parameter tables: family files, profiles, validation and resolution (workbook machinery).
#
# params/<family>.yaml holds the seed's tables for one family notebook (notebooks/<family>.ipynb):
#
#     family: attention                # must equal the file name
#     notebook: attention.ipynb        # optional, relative to notebooks/ (default <family>.ipynb)
#     rows:                            # optional: rows shared by several tables, defined once
#       baseline: {label: {...}, reference: {...}, seed: 111, profiles: [cpu]}
#     tables:                          # seed table heading -> its rows, in the seed's order
#       HRNet-SE:
#         - id: se-r16                 # stable, filesystem-safe; unique in the file
#           label: {Model: HRNetV2-W18, reduction: 16}    # displayed knob values (report columns)
#           model: {attention: {type: se, reduction: 16}} # only the knobs this row changes
#           reference: {common: 2.92, challenge: 5.29, full: 3.39, test: 3.94}  # % NME, null = not published
#           seed: 111
#           profiles: [cpu]            # profiles whose default row selection includes this row
#         - use: baseline              # a shared row, shown in this table too (run once)
#
# Every row key that is not metadata (id, label, reference, seed, profiles, group, note) is a
# notebook parameter and is checked against the notebook's `parameters` cell. A row's table is
# the heading it sits under (a shared row belongs to every table that `use`s it).
#
# params/profiles/<profile>.yaml overlays every row of every family:
#
#     select: tagged                   # `all` = every row; `tagged` = rows whose `profiles` name this profile
#     data: {...}  train: {...}        # parameter overlays shared by all families
#     families: {darts: {search: {...}}}   # overlays for one family only (its own sections)
#
# Resolution order (later wins): notebook parameter defaults < profile < profile.families[family]
# < row < command line (--data, --set key=value). The seed goes to train.seed, the run folder to
# run_dir = <outputs>/<family>/<row>-s<seed>-<profile>.
#
# Strings in family and profile files may name environment variables: "${NAME}" (an error naming
# the row when NAME is unset) or "${NAME:-fallback}". This is how user-supplied files enter the
# tables, e.g. the ImageNet checkpoint: `model: {init: "pretrained:${NBUTILS_PRETRAINED_W18}"}`.
# "${NBUTILS_OUTPUTS}" is always the outputs root of the runs being resolved (--outputs, else the
# environment, else ./outputs), so a profile can start rows from another run's checkpoint.
# ---------------------------------------------------------------------------------------------
import ast
import dataclasses
import difflib
import fnmatch
import json
import re

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_DIR = REPO_ROOT / "params"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"

ROW_METADATA = ("id", "label", "reference", "seed", "profiles", "group", "note")
REFERENCE_KEYS = ("common", "challenge", "full", "test", "search_nme")
DEFAULT_SEED = 111          # the seed of every published row that names one
ROW_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ParamsError(ValueError):
    """A parameter file, row or override is wrong; the message names the file, row and key."""


class NeedsInput(FileNotFoundError):
    """A run needs a user-supplied file that is not there (an ImageNet checkpoint, CIFAR-10, real 300W).

    Raised by the notebook; the runner records the run as `needs input` with this message (which
    names the path it looked for) instead of a failure, and never substitutes anything for the file.
    """


def _shown(path) -> str:
    """A path as the user typed it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_json(path, missing: str):
    """The parsed content of the JSON file `path`. A missing file raises FileNotFoundError(missing)
    (say which key or step wanted it); a corrupt one raises ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def write_json_atomic(path, record, indent: int = 2, allow_nan: bool = False) -> Path:
    """Write `record` as JSON through a temporary file and os.replace: readers never see half a file.
    allow_nan=False (results, metrics) refuses NaN/inf instead of writing non-standard JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as handle:
            json.dump(record, handle, indent=indent, allow_nan=allow_nan)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ParamsError(f"{_shown(path)}: file not found")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{_shown(path)}: not valid YAML: {error}") from None
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise ParamsError(f"{_shown(path)}: expected a mapping at the top level, got {type(content).__name__}")
    return content


def notebook_parameters(notebook_path) -> dict:
    """The defaults in a notebook's `parameters` cell: {name: value} of its literal assignments.

    The cell is parsed, never executed: each `name = <literal>` is read with ast.literal_eval,
    so the cell must spell its values out (a call such as dict(...) is rejected with its name).
    """
    path = Path(notebook_path)
    if not path.is_file():
        raise ParamsError(f"{_shown(path)}: notebook not found")
    try:
        cells = json.loads(path.read_text())["cells"]
    except (ValueError, KeyError) as error:
        raise ParamsError(f"{_shown(path)}: not a readable notebook ({error})") from None
    for cell in cells:
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            break
    else:
        raise ParamsError(f"{_shown(path)}: no code cell tagged 'parameters'")
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise ParamsError(f"{_shown(path)}: parameters cell does not parse: {error}") from None
    parameters = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        else:
            continue   # imports or comments-only lines carry no parameter
        if not isinstance(target, ast.Name):
            continue
        try:
            parameters[target.id] = ast.literal_eval(value)
        except ValueError:
            raise ParamsError(f"{_shown(path)}: parameters cell: '{target.id}' is not a literal "
                              f"(write the value out; calls and names cannot be checked)") from None
    return parameters


def _describe(value) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _type_error(value, default):
    """None if `value` may replace `default`, else the expected type in words."""
    if default is None:
        return None                       # a None default accepts anything
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "bool"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "int"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "float"
    if isinstance(default, str):
        return None if isinstance(value, str) else "str"
    if isinstance(default, (list, tuple)):
        return None if isinstance(value, (list, tuple)) else "list"
    if isinstance(default, dict):
        return None if isinstance(value, dict) else "mapping"
    return None if isinstance(value, type(default)) else type(default).__name__


def check_parameters(values: dict, defaults: dict, where: str, prefix: str = "") -> None:
    """Raise ParamsError unless every key of `values` exists in `defaults` with a compatible type.

    Nested mappings are checked recursively; an empty mapping default is free-form; int is
    accepted where float is expected; a None default accepts any type; lists are checked as lists.
    `where` names the file and row for the message.
    """
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            close = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(map(str, defaults))})"
            raise ParamsError(f"{where}: unknown key '{dotted}'{hint}")
        default = defaults[key]
        expected = _type_error(value, default)
        if expected:
            hint = ""
            if expected == "float" and isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
                hint = " (YAML reads 1e-4 as text: write 1.0e-4)"
            raise ParamsError(f"{where}: key '{dotted}' expects {expected}, got {_describe(value)}{hint}")
        if isinstance(default, dict) and default:
            check_parameters(value, default, where, prefix=f"{dotted}.")


def merge(base: dict, overlay: dict) -> dict:
    """A new dict: `overlay` on top of `base`; mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _expand_env(value, where: str, dotted: str = "", skip=frozenset(), known=None):
    """Replace ${NAME} / ${NAME:-fallback} in every string of `value` from `known`, then the environment.

    Keys in `skip` (dotted) are left alone: the command line replaces them anyway, so a row needing
    an unset variable still runs when --set supplies the value. `resolve` passes
    known = {"NBUTILS_OUTPUTS": the run's outputs root}, so a profile can point at another run's files.
    """
    known = known or {}
    if isinstance(value, dict):
        return {k: _expand_env(v, where, f"{dotted}{k}.", skip, known) for k, v in value.items()}
    key = dotted.rstrip(".")
    if isinstance(value, list):
        return [_expand_env(v, where, dotted, skip, known) for v in value]
    if not isinstance(value, str) or key in skip:
        return value

    def substitute(match):
        name, fallback = match.group(1), match.group(2)
        if name in known:
            return known[name]
        if name in os.environ:
            return os.environ[name]
        if fallback is not None:
            return fallback
        raise ParamsError(f"{where}: key '{key}' needs environment variable {name}, which is not set "
                          f"(export {name}=... or override the key with --set {key}=...)")

    return _ENV_PATTERN.sub(substitute, value)


def _leaf_keys(tree: dict, prefix: str = "") -> set:
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            keys |= _leaf_keys(value, f"{prefix}{key}.")
        keys.add(f"{prefix}{key}")
    return keys


@dataclasses.dataclass
class Row:
    """One line of a seed table: the knobs it changes and the published numbers (in % NME)."""
    id: str
    tables: list            # every table heading the row is shown under, in file order
    label: dict             # column -> displayed knob value
    reference: dict         # REFERENCE_KEYS -> float or None (None: not published)
    seed: int
    overrides: dict         # notebook parameters this row changes (nested)
    profiles: list          # profiles whose default selection includes this row
    group: str | None = None  # rows of one group are summarised together (mean ± std over seeds)
    note: str | None = None


@dataclasses.dataclass
class Family:
    """A parsed params/<family>.yaml: its tables (heading -> row ids) and rows (id -> Row)."""
    name: str
    path: Path
    notebook: Path
    tables: dict
    rows: dict
    description: str | None = None

    def where(self, row_id: str) -> str:
        return f"{_shown(self.path)}, row '{row_id}'"

    def defaults(self) -> dict:
        """The notebook's parameter defaults (parsed from its `parameters` cell)."""
        return notebook_parameters(self.notebook)


@dataclasses.dataclass
class Profile:
    """A parsed params/profiles/<profile>.yaml."""
    name: str
    path: Path
    selection: str          # "all" | "tagged"
    overlay: dict           # parameters for every family
    families: dict          # family -> parameters for that family only
    description: str | None = None


def _parse_row(entry: dict, shown: str, position: str, table: str | None) -> Row:
    """Check one row's metadata; `shown` is the file, `position` says where the row is when its id is bad."""
    row_id = entry.get("id")
    if not isinstance(row_id, str) or not ROW_ID_PATTERN.match(row_id):
        raise ParamsError(f"{shown}, {position}: 'id' must be a lower-case filesystem-safe name "
                          f"([a-z0-9._-], starting with a letter or digit), got {row_id!r}")
    where = f"{shown}, row '{row_id}'"
    if "table" in entry:
        raise ParamsError(f"{where}: rows take their table from the heading they are listed under; remove 'table'")
    label = entry.get("label")
    if not isinstance(label, dict) or not label:
        raise ParamsError(f"{where}: 'label' must be a non-empty mapping of column -> displayed value")
    reference = entry.get("reference") or {}
    if not isinstance(reference, dict):
        raise ParamsError(f"{where}: 'reference' must be a mapping with keys {', '.join(REFERENCE_KEYS)}")
    for key, value in reference.items():
        if key not in REFERENCE_KEYS:
            close = difflib.get_close_matches(str(key), REFERENCE_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(REFERENCE_KEYS)})"
            raise ParamsError(f"{where}: unknown key 'reference.{key}'{hint}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ParamsError(f"{where}: key 'reference.{key}' expects a number or null, got {_describe(value)}")
    seed = entry.get("seed", DEFAULT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParamsError(f"{where}: key 'seed' expects int, got {_describe(seed)}")
    profiles = entry.get("profiles", [])
    if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
        raise ParamsError(f"{where}: 'profiles' must be a list of profile names")
    for key in ("group", "note"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise ParamsError(f"{where}: key '{key}' expects str, got {_describe(entry[key])}")
    if "run_dir" in entry:
        raise ParamsError(f"{where}: 'run_dir' is chosen by the runner and cannot be set by a row")
    overrides = {k: v for k, v in entry.items() if k not in ROW_METADATA}
    return Row(id=row_id, tables=[table] if table else [], label=label,
               reference={k: (None if v is None else float(v)) for k, v in reference.items()},
               seed=seed, overrides=overrides, profiles=profiles,
               group=entry.get("group"), note=entry.get("note"))


def load_family(family: str, params_dir=None, notebooks_dir=None, validate: bool = True) -> Family:
    """Parse and check params/<family>.yaml.

    With validate=True every row's parameters are checked (keys and types) against the family
    notebook's `parameters` cell, so a typo anywhere in the file fails before any run starts.
    """
    params_dir = Path(params_dir or PARAMS_DIR)
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR)
    path = params_dir / f"{family}.yaml"
    content = _read_yaml(path)
    shown = _shown(path)
    allowed = {"family", "notebook", "description", "rows", "tables"}
    for key in content:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ParamsError(f"{shown}: unknown top-level key '{key}'{hint}")
    if content.get("family", family) != family:
        raise ParamsError(f"{shown}: 'family: {content['family']}' does not match the file name '{family}'")
    notebook = notebooks_dir / content.get("notebook", f"{family}.ipynb")

    shared_entries = content.get("rows") or {}
    if not isinstance(shared_entries, dict):
        raise ParamsError(f"{shown}: 'rows' must map a row id to its row")
    rows = {}
    for row_id, entry in shared_entries.items():
        if not isinstance(entry, dict):
            raise ParamsError(f"{shown}, row '{row_id}': expected a mapping")
        if entry.get("id", row_id) != row_id:
            raise ParamsError(f"{shown}, row '{row_id}': 'id: {entry['id']}' differs from its key")
        rows[row_id] = _parse_row({**entry, "id": row_id}, shown, f"rows: {row_id!r}", None)

    tables_content = content.get("tables")
    if not isinstance(tables_content, dict) or not tables_content:
        raise ParamsError(f"{shown}: 'tables' must map each seed table heading to a list of rows")
    tables = {}
    defined_in = {}
    for table, entries in tables_content.items():
        if not isinstance(entries, list) or not entries:
            raise ParamsError(f"{shown}, table '{table}': expected a non-empty list of rows")
        tables[table] = []
        for index, entry in enumerate(entries):
            where = f"{shown}, table '{table}', row {index + 1}"
            if not isinstance(entry, dict):
                raise ParamsError(f"{where}: expected a mapping")
            if "use" in entry:
                extra = set(entry) - {"use", "note"}
                if extra:
                    raise ParamsError(f"{where}: a 'use' entry takes no other keys (got {', '.join(sorted(extra))}); "
                                      f"change the shared row under 'rows:' instead")
                if entry["use"] not in shared_entries:
                    raise ParamsError(f"{where}: 'use: {entry['use']}' names no row under 'rows:' "
                                      f"(shared rows: {', '.join(shared_entries) or 'none'})")
                row = rows[entry["use"]]
                row.tables.append(table)
            else:
                row = _parse_row(entry, shown, f"table '{table}', row {index + 1}", table)
                if row.id in rows:
                    first = defined_in.get(row.id, "rows:")
                    raise ParamsError(f"{shown}, row '{row.id}': id defined twice (in '{first}' and '{table}'); "
                                      f"ids must be unique in a family file")
                rows[row.id] = row
                defined_in[row.id] = table
            tables[table].append(row.id)
    unused = [row_id for row_id in shared_entries if not rows[row_id].tables]
    if unused:
        raise ParamsError(f"{shown}: shared rows never used by a table: {', '.join(unused)}")

    result = Family(name=family, path=path, notebook=notebook, tables=tables, rows=rows,
                    description=content.get("description"))
    if validate:
        defaults = result.defaults()
        for row in rows.values():
            check_parameters(row.overrides, defaults, result.where(row.id))
    return result


def load_profile(profile: str, params_dir=None) -> Profile:
    """Parse params/profiles/<profile>.yaml (its parameters are checked per family in resolve)."""
    params_dir = Path(params_dir or PARAMS_DIR)
    path = params_dir / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (params_dir / "profiles").glob("*.yaml"))
        raise ParamsError(f"{_shown(path)}: file not found (profiles: {', '.join(known) or 'none'})")
    content = _read_yaml(path)
    selection = content.pop("select", "all")
    if selection not in ("all", "tagged"):
        raise ParamsError(f"{_shown(path)}: 'select' must be 'all' or 'tagged', got {selection!r}")
    families = content.pop("families", None) or {}
    if not isinstance(families, dict) or not all(isinstance(v, dict) for v in families.values()):
        raise ParamsError(f"{_shown(path)}: 'families' must map a family name to its parameter overlay")
    description = content.pop("description", None)
    return Profile(name=profile, path=path, selection=selection, overlay=content,
                   families=families, description=description)


def parse_override(text: str) -> tuple[list, object]:
    """'train.lr=1e-3' -> (['train', 'lr'], 0.001); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ParamsError(f"--set {text!r}: expected key=value, e.g. --set train.epochs=3")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".")]
    if not all(keys):
        raise ParamsError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        value = float(value)   # YAML 1.1 reads 1e-3 as text; on the command line it is a number
    return keys, value


def _overrides_to_overlay(overrides, defaults: dict) -> dict:
    overlay = {}
    for text in overrides:
        keys, value = parse_override(text)
        default = defaults
        for key in keys:
            default = default.get(key) if isinstance(default, dict) else None
        if isinstance(default, str) and not isinstance(value, str):
            value = text.split("=", 1)[1]   # the parameter is text: keep what was typed (e.g. a path "123")
        node = overlay
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return overlay


def run_id(row_id: str, seed: int, profile: str) -> str:
    """The run's folder name: <row>-s<seed>-<profile>."""
    return f"{row_id}-s{seed}-{profile}"


def select_rows(family: Family, profile: Profile, pattern: str | None = None) -> list:
    """Rows to run, in table order: those matching the glob `pattern` (comma-separated globs allowed),
    else the profile's default selection (all rows, or the rows tagged with the profile)."""
    if pattern:
        globs = [g.strip() for g in pattern.split(",") if g.strip()]
        chosen = [row for row in family.rows.values() if any(fnmatch.fnmatchcase(row.id, g) for g in globs)]
        if not chosen:
            raise ParamsError(f"{_shown(family.path)}: no row matches --rows {pattern!r} "
                              f"(rows: {', '.join(family.rows)})")
        return chosen
    if profile.selection == "all":
        return list(family.rows.values())
    return [row for row in family.rows.values() if profile.name in row.profiles]


def resolve(family, row_id: str, profile, seed: int | None = None, data: str | None = None,
            overrides=(), params_dir=None, notebooks_dir=None, outputs=None) -> dict:
    """The complete parameters of one run, as papermill injects them into the family notebook.

    family, profile: names (or already loaded Family / Profile objects); seed: None = the row's own;
    data: "synth" or a path to real 300W (sets data.root); overrides: ["key.sub=value", ...].
    Order: notebook defaults < profile < profile.families[family] < row < data < overrides.
    Returns {parameter name: value} for every parameter of the notebook, with run_dir set to
    <outputs>/<family>/<row>-s<seed>-<profile> (absolute) and train.seed to the seed.
    """
    if not isinstance(family, Family):
        family = load_family(family, params_dir, notebooks_dir, validate=False)
    if not isinstance(profile, Profile):
        profile = load_profile(profile, params_dir)
    if row_id not in family.rows:
        close = difflib.get_close_matches(row_id, list(family.rows), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ParamsError(f"{_shown(family.path)}: no row '{row_id}'{hint}")
    row = family.rows[row_id]
    defaults = family.defaults()
    profile_where = _shown(profile.path)

    command_line = _overrides_to_overlay(overrides, defaults)
    check_parameters(command_line, defaults, "command line --set")
    replaced = _leaf_keys(command_line)
    if data is not None:
        replaced.add("data.root")

    layers = [
        (profile.overlay, profile_where),
        (profile.families.get(family.name, {}), f"{profile_where}, families.{family.name}"),
        (row.overrides, family.where(row_id)),
    ]
    root = Path(outputs) if outputs is not None else outputs_root()
    known = {"NBUTILS_OUTPUTS": str(root.resolve())}
    params = copy.deepcopy(defaults)
    for overlay, where in layers:
        check_parameters(overlay, defaults, where)
        params = merge(params, _expand_env(overlay, where, skip=replaced, known=known))
    if data is not None:
        if not isinstance(defaults.get("data"), dict) or "root" not in defaults["data"]:
            raise ParamsError(f"{_shown(family.notebook)}: --data given but the notebook has no data['root'] parameter")
        params["data"]["root"] = data if data == "synth" else str(_existing_data_root(data))
    params = merge(params, command_line)

    seed = row.seed if seed is None else seed
    if not isinstance(params.get("train"), dict) or "seed" not in params["train"]:
        raise ParamsError(f"{_shown(family.notebook)}: parameters cell needs train['seed'] (the runner sets it)")
    params["train"]["seed"] = int(seed)
    params["run_dir"] = str((root / family.name / run_id(row_id, seed, profile.name)).resolve())
    return params


def _existing_data_root(data: str) -> Path:
    path = Path(data).expanduser().resolve()
    if not path.exists():
        raise ParamsError(f"--data {data}: no such folder (give 'synth' or the root of a real 300W copy)")
    return path
