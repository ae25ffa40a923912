"""A saved model folder loads with ``trust_remote_code=True`` in a Python without onetower.

The fresh interpreter is the point: it blocks every ``onetower`` import (a finder first on
``sys.meta_path``), checks that ``import onetower`` really fails, then loads each folder with
transformers' Auto classes and writes its outputs on the inputs this process saved; they must
match the in-process models.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForVisualQuestionAnswering

from onetower import (
    OneTowerConfig,
    OneTowerForImagesAndTextClassification,
    OneTowerForQuestionAnswering,
    OneTowerModel,
    OneTowerProcessor,
)
from onetower.data import train_wordpiece_tokenizer
from onetower.hub import (
    RemoteCodeError,
    add_remote_code,
    has_remote_code,
    prepare_model_folder,
)
from onetower.hub.remote_code import MARKER, bundle

HELPERS = {
    "onetower_layers.py",
    "onetower_outputs.py",
    "onetower_pretrained.py",
    "onetower_sequence.py",
    "onetower_unimodal.py",
    "onetower_unimodal_image.py",
    "onetower_unimodal_positions.py",
    "onetower_unimodal_text.py",
    "onetower_unimodal_towers.py",
}
ENCODER_FILES = {"configuration_onetower.py", "modeling_onetower.py", *HELPERS}
TASK_FILES = {*ENCODER_FILES, "modeling_onetower_tasks.py"}

LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockOnetower(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "onetower" or name.startswith("onetower."):
                raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)

    sys.meta_path.insert(0, BlockOnetower())
    try:
        import onetower
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"onetower imported from {onetower.__file__} despite the block")

    import torch
    import transformers

    work, cases = sys.argv[1], json.loads(sys.argv[2])
    texts, tokens = json.loads(sys.argv[3])
    inputs, results = torch.load(f"{work}/inputs.pt"), {}
    for name, auto, cls in cases:
        folder = f"{work}/{name}"
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = getattr(transformers, auto).from_pretrained(folder, trust_remote_code=True)
        for obj in (config, model):  # the folder's code, not something installed
            assert type(obj).__module__.startswith("transformers_modules."), type(obj)
        assert type(model).__name__ == cls, type(model)
        if name in texts:  # the model card's way to load the tokenizer without onetower
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
            assert tokenizer(texts[name])["input_ids"] == tokens[name], name
        with torch.no_grad():
            out = model.eval()(**inputs[name])
        results[name] = {k: v for k, v in vars(out).items() if isinstance(v, torch.Tensor)}
    assert not any(m.split(".")[0] == "onetower" for m in sys.modules)
    torch.save(results, f"{work}/outputs.pt")
    print("loaded", len(results))
    """
)


def _models() -> dict[str, tuple[torch.nn.Module, str, dict[str, torch.Tensor]]]:
    """name -> (model, Auto class that loads it, inputs): the encoder with unimodal towers and
    multiway blocks (per-modality attention, Sub-LN), the VQA model, the NLVR2 model (pair method)."""
    torch.manual_seed(0)
    tiny = dict(num_hidden_layers=1)
    ids = torch.randint(1, 512, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    pixels = torch.randn(2, 3, 32, 32)
    encoder = OneTowerModel(
        OneTowerConfig.from_size(
            "tiny",
            multiway=True,
            multiway_attention=True,
            subln=True,
            text_tower_layers=1,
            image_tower_layers=1,
            **tiny,
        )
    )
    vqa = OneTowerForQuestionAnswering(
        OneTowerConfig.from_size(
            "tiny", id2label={0: "yes", 1: "no", 2: "two"}, classifier_pooling="cls+patches", **tiny
        )
    )
    nlvr2 = OneTowerForImagesAndTextClassification(
        OneTowerConfig.from_size("tiny", num_segments=3, id2label={0: "False", 1: "True"}, **tiny)
    )
    pair = {"input_ids": ids, "attention_mask": mask}
    return {
        "encoder": (encoder, "AutoModel", {**pair, "pixel_values": pixels}),
        "vqa": (vqa, "AutoModelForVisualQuestionAnswering", {**pair, "pixel_values": pixels}),
        "nlvr2": (
            nlvr2,
            "AutoModelForSequenceClassification",
            {**pair, "pixel_values": torch.randn(2, 2, 3, 32, 32)},
        ),
    }


@pytest.mark.slow
def test_loads_with_trust_remote_code_without_onetower(tmp_path: Path) -> None:
    models = _models()
    for name, (model, _, _) in models.items():
        model.eval().save_pretrained(tmp_path / name)
        written = prepare_model_folder(tmp_path / name)
        assert not (tmp_path / name / "README.md").exists()  # no run_dir, no card
        assert set(written) == {
            "config.json",
            *(TASK_FILES if name != "encoder" else ENCODER_FILES),
        }
    torch.save({name: inputs for name, (_, _, inputs) in models.items()}, tmp_path / "inputs.pt")

    # the VQA folder also holds a tokenizer, as a run's final/ does
    tokenizer = train_wordpiece_tokenizer(["what colour is the cube"], vocab_size=64)
    tokenizer.save_pretrained(str(tmp_path / "vqa"))
    texts = {"vqa": "what colour is the sphere"}
    tokens = {"vqa": tokenizer(texts["vqa"])["input_ids"]}

    cases = [[name, auto, type(m).__name__] for name, (m, auto, _) in models.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            LOADER,
            str(tmp_path),
            json.dumps(cases),
            json.dumps([texts, tokens]),
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,  # transformers asks on stdin when trust is missing
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded 3" in done.stdout

    got = torch.load(tmp_path / "outputs.pt")
    for name, (model, _, inputs) in models.items():
        with torch.no_grad():
            out = model(**inputs)
        want = {k: v for k, v in vars(out).items() if isinstance(v, torch.Tensor)}
        assert want.keys() == got[name].keys() and want, name
        for key in want:
            torch.testing.assert_close(got[name][key], want[key], atol=1e-6, rtol=1e-6)


def test_bundle_is_the_model_modules_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = OneTowerConfig.from_size("tiny", num_hidden_layers=1, id2label={0: "a", 1: "b"})
    OneTowerForQuestionAnswering(config).save_pretrained(tmp_path)
    assert not has_remote_code(tmp_path)
    (tmp_path / "onetower_old_helper.py").write_text(f"{MARKER} from onetower.old\n")
    (tmp_path / "my_notes.py").write_text("# the user's own file\n")

    files = add_remote_code(tmp_path)
    assert set(files) == TASK_FILES and has_remote_code(tmp_path)
    assert not (tmp_path / "onetower_old_helper.py").exists()  # a stale copy of ours
    assert (tmp_path / "my_notes.py").exists()  # not ours: left alone
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_onetower.OneTowerConfig",
        "AutoModel": "modeling_onetower.OneTowerModel",
        "AutoModelForVisualQuestionAnswering": "modeling_onetower_tasks.OneTowerForQuestionAnswering",
    }
    for name in files:
        text = (tmp_path / name).read_text()
        assert text.startswith(MARKER)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] != "onetower", (name, node.module)
            if isinstance(node, ast.ImportFrom) and node.level:  # flat and present
                assert (tmp_path / f"{node.module}.py").is_file(), (name, node.module)
        assert ".register(" not in text  # transformers registers remote classes itself
    before = {n: (tmp_path / n).read_text() for n in [*files, "config.json"]}
    assert add_remote_code(tmp_path) == files  # a second call changes nothing
    assert before == {n: (tmp_path / n).read_text() for n in before}

    (tmp_path / "onetower_layers.py").unlink()  # a helper missing: not loadable
    assert not has_remote_code(tmp_path)

    # with onetower installed, its own classes load the folder, trust_remote_code or not
    for trust in (False, True):
        loaded = AutoModelForVisualQuestionAnswering.from_pretrained(
            tmp_path, trust_remote_code=trust
        )
        assert type(loaded) is OneTowerForQuestionAnswering


def test_code_that_needs_training_packages_is_refused() -> None:
    # the processor reads images with onetower.data: it cannot be part of the bundle
    with pytest.raises(RemoteCodeError, match=r"imports onetower\.data"):
        bundle([OneTowerProcessor])


def test_encoder_folder_loads_as_before(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = OneTowerModel(OneTowerConfig.from_size("tiny", num_hidden_layers=1)).eval()
    model.save_pretrained(tmp_path)
    prepare_model_folder(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()  # onetower imported: no remote code
    assert type(loaded) is OneTowerModel
    ids, px = torch.randint(1, 512, (1, 5)), torch.randn(1, 3, 32, 32)
    assert torch.equal(
        model(input_ids=ids, pixel_values=px).last_hidden_state,
        loaded(input_ids=ids, pixel_values=px).last_hidden_state,
    )
