"""Parameter tables: validation messages, resolution order, shared rows, the shipped family files."""
import shutil
from pathlib import Path

import nbformat
import pytest

from nbutils import config
from nbutils.config import ParamsError

FIXTURES = Path(__file__).parent / "fixtures"
NOTEBOOKS = FIXTURES / "notebooks"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params_dir(tmp_path):
    """A writable copy of the fixture params folder (toy family + profiles)."""
    shutil.copytree(FIXTURES / "params", tmp_path / "params")
    return tmp_path / "params"


def write_family(params_dir, rows_yaml: str, name: str = "toy") -> None:
    """A one-table toy family whose rows are given as YAML list items."""
    (params_dir / f"{name}.yaml").write_text(f"family: {name}\ntables:\n  T:\n{rows_yaml}")


def load(params_dir, name="toy"):
    return config.load_family(name, params_dir, NOTEBOOKS)


def test_unknown_key_names_file_row_and_close_match(params_dir):
    write_family(params_dir, "    - {id: r1, label: {a: 1}, model: {block: {ratoi: 3}}}\n")
    with pytest.raises(ParamsError) as error:
        load(params_dir)
    message = str(error.value)
    assert "toy.yaml, row 'r1'" in message
    assert "unknown key 'model.block.ratoi'" in message
    assert "did you mean 'ratio'?" in message


def test_unknown_section_is_reported_too(params_dir):
    write_family(params_dir, "    - {id: r1, label: {a: 1}, modle: {depth: 3}}\n")
    with pytest.raises(ParamsError, match=r"row 'r1': unknown key 'modle' \(did you mean 'model'\?\)"):
        load(params_dir)


@pytest.mark.parametrize("knob, expected", [
    ("model: {depth: three}", "key 'model.depth' expects int, got str 'three'"),
    ("model: {depth: 2.5}", "key 'model.depth' expects int, got float 2.5"),
    ("train: {fail: 1}", "key 'train.fail' expects bool, got int 1"),
    ("train: {steps: 3}", "key 'train.steps' expects list, got int 3"),
    ("model: {block: 4}", "key 'model.block' expects mapping, got int 4"),
    ("train: {lr: 1e-3}", "YAML reads 1e-4 as text: write 1.0e-4"),
])
def test_wrong_types_are_named(params_dir, knob, expected):
    write_family(params_dir, f"    - {{id: r1, label: {{a: 1}}, {knob}}}\n")
    with pytest.raises(ParamsError) as error:
        load(params_dir)
    assert "toy.yaml, row 'r1'" in str(error.value)
    assert expected in str(error.value)


def test_compatible_types_are_accepted(params_dir):
    # int where float is expected, anything where the default is None, lists as lists
    write_family(params_dir, "    - {id: r1, label: {a: 1}, model: {width: 2, note: [1, 2]}, train: {steps: [], lr: 1.0e-2}}\n")
    family = load(params_dir)
    assert family.rows["r1"].overrides == {"model": {"width": 2, "note": [1, 2]}, "train": {"steps": [], "lr": 0.01}}


def test_missing_files_are_named(params_dir, tmp_path):
    with pytest.raises(ParamsError, match=r"nothere\.yaml: file not found"):
        config.load_family("nothere", params_dir, NOTEBOOKS)
    with pytest.raises(ParamsError, match=r"profiles/fast\.yaml: file not found \(profiles: all, tiny\)"):
        config.load_profile("fast", params_dir)
    with pytest.raises(ParamsError, match=r"toy\.ipynb: notebook not found"):
        config.load_family("toy", params_dir, tmp_path)


def test_metadata_errors(params_dir):
    write_family(params_dir, "    - {id: R 1, label: {a: 1}}\n")
    with pytest.raises(ParamsError, match=r"table 'T', row 1: 'id' must be a lower-case filesystem-safe name"):
        load(params_dir)
    write_family(params_dir, "    - {id: r1, label: {a: 1}, reference: {ful: 1.0}}\n")
    with pytest.raises(ParamsError, match=r"row 'r1': unknown key 'reference.ful' \(did you mean 'full'\?\)"):
        load(params_dir)
    write_family(params_dir, "    - {id: r1, label: {a: 1}}\n    - {id: r1, label: {a: 2}}\n")
    with pytest.raises(ParamsError, match=r"row 'r1': id defined twice"):
        load(params_dir)
    write_family(params_dir, "    - use: nobody\n")
    with pytest.raises(ParamsError, match=r"'use: nobody' names no row under 'rows:'"):
        load(params_dir)


def test_non_literal_parameter_cell_is_rejected(tmp_path):
    cell = nbformat.v4.new_code_cell("epochs = 3\ntrain = dict(lr=0.1)", metadata={"tags": ["parameters"]})
    path = tmp_path / "bad.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), str(path))
    with pytest.raises(ParamsError, match=r"bad\.ipynb: parameters cell: 'train' is not a literal"):
        config.notebook_parameters(path)


def test_shared_row_is_defined_once_and_shown_in_every_table(params_dir):
    family = load(params_dir)
    assert family.rows["base"].tables == ["Toy depth", "Toy width"]
    assert family.tables["Toy depth"][0] == family.tables["Toy width"][0] == "base"
    assert family.rows["deep"].tables == ["Toy depth"]
    assert family.rows["unpublished"].reference == {"common": None, "challenge": None, "full": None, "test": None}


def test_resolution_order_defaults_profile_row_command_line(params_dir, tmp_path):
    (params_dir / "profiles" / "layered.yaml").write_text(
        "select: all\n"
        "model: {width: 9.0, block: {kind: dense}}\n"
        "train: {epochs: 5, lr: 0.25}\n"
        "families: {toy: {train: {steps: [7]}}}\n")
    params = config.resolve("toy", "wide", "layered", params_dir=params_dir, notebooks_dir=NOTEBOOKS,
                            outputs=tmp_path / "out", overrides=["train.lr=0.5", "model.block.ratio=8"])
    assert params["model"]["depth"] == 2                 # notebook default
    assert params["model"]["block"] == {"kind": "dense", "ratio": 8}   # profile, then command line (merged)
    assert params["train"]["epochs"] == 5                # profile
    assert params["train"]["steps"] == [7]               # profile's family section
    assert params["model"]["width"] == 2.5               # row beats profile
    assert params["train"]["lr"] == 0.5                  # command line beats profile
    assert params["train"]["seed"] == 111                # the row's seed
    assert params["run_dir"] == str((tmp_path / "out" / "toy" / "wide-s111-layered").resolve())
    other = config.resolve("toy", "wide", "layered", seed=7, params_dir=params_dir, notebooks_dir=NOTEBOOKS,
                           outputs=tmp_path / "out", data=str(tmp_path))
    assert other["train"]["seed"] == 7 and other["run_dir"].endswith("wide-s7-layered")
    assert other["data"]["root"] == str(tmp_path.resolve())


def test_profile_and_command_line_are_validated(params_dir, tmp_path):
    (params_dir / "profiles" / "typo.yaml").write_text("train: {epoch: 5}\n")
    with pytest.raises(ParamsError, match=r"profiles/typo\.yaml: unknown key 'train.epoch' \(did you mean 'epochs'\?\)"):
        config.resolve("toy", "base", "typo", params_dir=params_dir, notebooks_dir=NOTEBOOKS, outputs=tmp_path)
    with pytest.raises(ParamsError, match=r"command line --set: key 'train.epochs' expects int"):
        config.resolve("toy", "base", "all", params_dir=params_dir, notebooks_dir=NOTEBOOKS, outputs=tmp_path,
                       overrides=["train.epochs=many"])
    with pytest.raises(ParamsError, match=r"no row 'wdie' \(did you mean 'wide'\?\)"):
        config.resolve("toy", "wdie", "all", params_dir=params_dir, notebooks_dir=NOTEBOOKS, outputs=tmp_path)
    with pytest.raises(ParamsError, match=r"--data /no/such/300W: no such folder"):
        config.resolve("toy", "base", "all", data="/no/such/300W", params_dir=params_dir, notebooks_dir=NOTEBOOKS)


def test_parse_override_reads_yaml_values():
    assert config.parse_override("train.lr=1e-3") == (["train", "lr"], 0.001)
    assert config.parse_override("train.steps=[3, 4]") == (["train", "steps"], [3, 4])
    assert config.parse_override("model.note=null") == (["model", "note"], None)
    assert config.parse_override("model.init=pretrained:/ckpt/w18.pth") == (["model", "init"], "pretrained:/ckpt/w18.pth")
    with pytest.raises(ParamsError, match="expected key=value"):
        config.parse_override("train.lr")


def test_text_parameter_keeps_what_was_typed(params_dir, tmp_path):
    params = config.resolve("toy", "base", "all", params_dir=params_dir, notebooks_dir=NOTEBOOKS, outputs=tmp_path,
                            overrides=["model.block.kind=123"])
    assert params["model"]["block"]["kind"] == "123"


def test_environment_variables_in_rows(params_dir, tmp_path, monkeypatch):
    write_family(params_dir, "    - {id: r1, label: {a: 1}, model: {block: {kind: 'ckpt:${TOY_CKPT}'}}}\n"
                             "    - {id: r2, label: {a: 2}, model: {block: {kind: '${TOY_KIND:-plain}'}}}\n")
    resolve = lambda row, **kw: config.resolve("toy", row, "all", params_dir=params_dir, notebooks_dir=NOTEBOOKS,
                                               outputs=tmp_path, **kw)
    monkeypatch.delenv("TOY_CKPT", raising=False)
    monkeypatch.delenv("TOY_KIND", raising=False)
    with pytest.raises(ParamsError, match=r"row 'r1': key 'model.block.kind' needs environment variable TOY_CKPT"):
        resolve("r1")
    assert resolve("r1", overrides=["model.block.kind=given"])["model"]["block"]["kind"] == "given"
    assert resolve("r2")["model"]["block"]["kind"] == "plain"
    monkeypatch.setenv("TOY_CKPT", "/weights/w18.pth")
    assert resolve("r1")["model"]["block"]["kind"] == "ckpt:/weights/w18.pth"


def test_row_selection_by_profile_and_glob(params_dir):
    family = load(params_dir)
    tiny, every = config.load_profile("tiny", params_dir), config.load_profile("all", params_dir)
    assert [r.id for r in config.select_rows(family, tiny)] == ["base", "deep"]
    assert len(config.select_rows(family, every)) == len(family.rows) == 7
    assert [r.id for r in config.select_rows(family, tiny, "seed-*,wide")] == ["wide", "seed-a", "seed-b"]
    with pytest.raises(ParamsError, match="no row matches --rows 'zz\\*'"):
        config.select_rows(family, tiny, "zz*")


# ----------------------------------------------------------------------------- the shipped files

ATTENTION_TABLES = {   # heading (as in the seed file) -> number of lines in the seed table
    "HRNet-SE": 16, "HRNet-SE + residual": 16, "HRNet-SE + residual + seed": 10,
    "HRNet-SE + residual + feature fusion": 3, "HRNet-NonLocal": 5, "HRNet-CBAM/BAM": 7,
    "Integrating in resdiual unit": 5,
}


@pytest.fixture
def defaults_notebooks(tmp_path):
    """Notebooks whose parameters cell is config.DEFAULTS, the contract every family notebook mirrors."""
    source = "\n".join(f"{name} = {value!r}" for name, value in config.DEFAULTS.items())
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]})])
    for family in ("attention", "init"):
        nbformat.write(notebook, str(tmp_path / f"{family}.ipynb"))
    return tmp_path


def test_attention_file_transcribes_the_seed_tables(defaults_notebooks):
    family = config.load_family("attention", notebooks_dir=defaults_notebooks)   # validates every row
    assert {t: len(rows) for t, rows in family.tables.items()} == ATTENTION_TABLES
    baseline = family.rows["baseline"]
    assert baseline.reference == {"common": 2.91, "challenge": 5.11, "full": 3.34, "test": 3.85}
    assert baseline.tables == ["HRNet-NonLocal", "HRNet-CBAM/BAM", "Integrating in resdiual unit"]
    assert family.rows["se-r16"].overrides == {"model": {"attention": {"type": "se", "reduction": 16}}}
    assert family.rows["se-r6"].reference["common"] == 3.14
    # the seed lists reduction 4 / seed 111 twice: two rows, same knobs, their own numbers
    twins = [family.rows["se-res-seed-r4-111a"], family.rows["se-res-seed-r4-111b"]]
    assert twins[0].overrides == twins[1].overrides and twins[0].seed == twins[1].seed == 111
    assert (twins[0].reference["challenge"], twins[1].reference["challenge"]) == (5.16, 5.15)
    assert [family.rows[r].seed for r in family.tables["HRNet-SE + residual + seed"]] == \
        [111, 111, 222, 333, 111, 222, 333, 111, 222, 333]
    assert set(family.rows["nl-concatenation"].reference.values()) == {None}
    assert family.rows["se-res-r4-fuse1234"].overrides["model"]["attention"]["fusion_stages"] == [1, 2, 3, 4]
    assert family.rows["block-cbam-w32"].overrides["model"]["width"] == 32
    cpu = [r.id for r in config.select_rows(family, config.load_profile("cpu"))]
    assert cpu == ["baseline", "se-r16", "se-res-r4", "se-res-r4-fuse1234", "nl-embedded-gaussian",
                   "cbam-r16", "bam-r16", "block-se-w18"]


def test_init_file_and_pretrained_convention(defaults_notebooks, tmp_path, monkeypatch):
    family = config.load_family("init", notebooks_dir=defaults_notebooks)
    assert family.tables == {"Train from scratch": ["pretrained", "normal", "xavier", "kaiming"]}
    assert family.rows["kaiming"].reference["common"] == 82.42
    assert [r.id for r in config.select_rows(family, config.load_profile("cpu"))] == ["normal", "xavier", "kaiming"]
    monkeypatch.setenv("NBUTILS_PRETRAINED_W18", "/weights/hrnetv2_w18.pth")
    params = config.resolve(family, "pretrained", "gpu", notebooks_dir=defaults_notebooks, outputs=tmp_path)
    assert params["model"]["init"] == "pretrained:/weights/hrnetv2_w18.pth"


def test_profiles_overlay_every_row(defaults_notebooks, tmp_path):
    family = config.load_family("attention", notebooks_dir=defaults_notebooks)
    for name in ("smoke", "cpu", "gpu"):
        profile = config.load_profile(name)
        for row in family.rows.values():
            config.resolve(family, row.id, profile, outputs=tmp_path)
    gpu = config.resolve(family, "se-r16", "gpu", outputs=tmp_path)
    assert (gpu["train"]["input_size"], gpu["train"]["heatmap_size"], gpu["train"]["epochs"]) == (256, 64, 60)
    assert (gpu["train"]["optimizer"], gpu["train"]["lr"], gpu["train"]["lr_steps"]) == ("adam", 1e-4, [30, 50])
    assert (gpu["train"]["batch_size"], gpu["data"]["synth_size"]) == (16, "paper")
    assert gpu["model"]["attention"] == {**config.DEFAULTS["model"]["attention"], "type": "se", "reduction": 16}
    smoke = config.resolve(family, "baseline", "smoke", outputs=tmp_path)
    assert (smoke["train"]["input_size"], smoke["train"]["heatmap_size"], smoke["train"]["epochs"]) == (64, 16, 1)
    assert (smoke["data"]["synth_size"], smoke["train"]["batch_size"]) == ("smoke", 8)


@pytest.mark.parametrize("family", ["attention", "init"])
def test_family_file_matches_its_notebook(family):
    notebook = REPO / "notebooks" / f"{family}.ipynb"
    if not notebook.exists():
        pytest.skip(f"{notebook} is not written yet; the rows are checked against config.DEFAULTS above")
    config.load_family(family)
