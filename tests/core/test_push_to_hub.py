"""push_to_hub end to end against a local stand-in for the Hub, and its failure modes.

The stand-in replaces ``HfApi.create_repo`` / ``create_branch`` / ``create_commit``: a commit
writes its ``CommitOperationAdd`` files into ``<tmp>/hub/<repo_id>``. Offline mode is forced on,
so anything the stand-in does not intercept fails instead of reaching the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx2
import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
)

from onetower import (
    OneTowerForImagesAndTextClassification,
    OneTowerForQuestionAnswering,
    OneTowerModel,
    OneTowerProcessor,
)
from onetower.hub import REAL_LIMITS, HubUploadError, ModelFolderError, push_to_hub
from onetower.training import ConfigError

from .conftest import NLVR2_RECORD, PRETRAIN_RECORD, VQA_RECORD, finite_metrics, make_run

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "push_to_hub.py"
# (model class, Auto class that must load the upload, extra config fields, images per text,
# the run record)
CASES = [
    pytest.param(OneTowerModel, AutoModel, {}, 1, PRETRAIN_RECORD, id="encoder"),
    pytest.param(
        OneTowerForQuestionAnswering,
        AutoModelForVisualQuestionAnswering,
        {"id2label": {0: "yes", 1: "no"}},
        1,
        VQA_RECORD,
        id="vqa",
    ),
    pytest.param(
        OneTowerForImagesAndTextClassification,
        AutoModelForSequenceClassification,
        {"num_segments": 3, "id2label": {0: "False", 1: "True"}},
        2,
        NLVR2_RECORD,
        id="nlvr2",
    ),
]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """The fake Hub: ``hub.dir(repo_id)`` holds the committed files, ``hub.calls`` the calls."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))  # to check clean-up
    (tmp_path / "tmp").mkdir()
    state = SimpleNamespace(calls=[], fail=None, dir=lambda r: tmp_path / "hub" / r)

    def create_repo(self, repo_id, **kw):
        state.calls.append(("create_repo", repo_id, kw))
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, **kw):
        state.calls.append(("create_branch", repo_id, kw))

    def create_commit(self, repo_id, operations, **kw):
        state.calls.append(("create_commit", repo_id, kw))
        if state.fail is not None:
            raise state.fail
        for op in operations:
            target = state.dir(repo_id) / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, target)
        return SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/1")

    for name, fn in [
        ("create_repo", create_repo),
        ("create_branch", create_branch),
        ("create_commit", create_commit),
    ]:
        monkeypatch.setattr(huggingface_hub.HfApi, name, fn)
    return state


def _tensors(output) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vars(output).items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize(("model_cls", "auto_cls", "extra", "n_images", "record"), CASES)
def test_push_round_trip(
    hub, tmp_path, tokenizer, model_cls, auto_cls, extra, n_images, record
) -> None:
    final = make_run(tmp_path / "run", tokenizer, model_cls, extra, record=record)
    assert (final / "README.md").is_file() and (final / "configuration_onetower.py").is_file()
    before = digest(tmp_path / "run")
    url = push_to_hub(
        final,
        "me/onetower-toy",
        private=True,
        revision="v1",
        commit_message="first upload",
        token="hf_test",
    )
    assert url == "https://hub.invalid/me/onetower-toy/commit/1"
    assert digest(tmp_path / "run") == before  # the user's folder is never written
    assert list((tmp_path / "tmp").iterdir()) == []  # the staging copy is removed
    names = [c[0] for c in hub.calls]
    assert names == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[0][2]["private"] is True and hub.calls[1][2]["branch"] == "v1"
    assert (
        hub.calls[2][2]["commit_message"] == "first upload" and hub.calls[2][2]["revision"] == "v1"
    )

    remote = hub.dir("me/onetower-toy")
    assert {p.name for p in remote.iterdir()} == {p.name for p in final.iterdir()}
    original = model_cls.from_pretrained(final).eval()
    loaded = auto_cls.from_pretrained(remote).eval()  # no trust_remote_code: onetower is imported
    assert type(loaded) is model_cls
    processor = AutoProcessor.from_pretrained(remote)
    assert type(processor) is OneTowerProcessor
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "green", "white")]
    images = [images[i : i + n_images] for i in range(2)] if n_images > 1 else images[:2]
    inputs = processor(images=images, text=["a red circle", "a green triangle above a star"])
    with torch.no_grad():
        want, got = _tensors(original(**inputs)), _tensors(loaded(**inputs))
    assert want.keys() == got.keys() and want
    assert all(torch.equal(want[k], got[k]) for k in want)

    card = (remote / "README.md").read_text()
    meta = ModelCard(card).data
    assert meta.library_name == "onetower" and "vision-language" in meta.tags
    assert record["recipe"] in meta.tags and record["task"] in meta.tags
    assert ("synthetic-data" in meta.tags) == (record is PRETRAIN_RECORD)  # from data.tags
    want = finite_metrics(record)
    assert {r.metric_name: r.metric_value for r in meta.eval_results} == want
    assert all(f"| {k} | {v:.4f} |" in card for k, v in want.items())  # the Evaluation table
    assert "eval/bad" not in card and "No metrics were recorded" not in card  # NaN dropped
    assert record["data"]["description"] in card and record["summary"] in card
    assert f"{record['steps']} steps on 1 process(es)" in card
    assert "```yaml\nrun:\n  recipe: flava_like" in card and "weight: 0.5" in card
    assert "1 layers, width 64" in card
    assert (record["data"].get("limitations") or REAL_LIMITS) in card
    assert f'{auto_cls.__name__}.from_pretrained("me/onetower-toy")' in card
    assert f'{auto_cls.__name__}.from_pretrained("me/onetower-toy", trust_remote_code=True)' in card


@pytest.mark.parametrize(
    "error",
    [
        HfHubHTTPError(
            "403 Forbidden: you cannot write to me/onetower-toy",
            response=httpx2.Response(403, request=httpx2.Request("POST", "https://hub.invalid")),
        ),
        ConnectionError("connection reset by peer"),
    ],
    ids=["http_403", "connection"],
)
def test_failed_upload_is_a_clear_error_and_changes_nothing(
    hub, tmp_path, tokenizer, error
) -> None:
    final = make_run(tmp_path / "run", tokenizer)
    before = digest(tmp_path / "run")
    hub.fail = error
    with pytest.raises(HubUploadError) as info:
        push_to_hub(final, "me/onetower-toy", token="hf_test")
    message = str(info.value)
    assert "'me/onetower-toy'" in message and str(error) in message
    assert f"the model at {final} is untouched" in message
    assert ("cannot write to this repo" in message) == isinstance(error, HfHubHTTPError)
    assert info.value.__cause__ is error
    assert digest(tmp_path / "run") == before
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not hub.dir("me/onetower-toy").exists()


def test_offline_mode_is_reported(monkeypatch, tmp_path, tokenizer) -> None:
    # the real HfApi.create_repo, stopped by huggingface_hub's offline guard before any request
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    final = make_run(tmp_path / "run", tokenizer)
    with pytest.raises(
        HubUploadError, match="OfflineModeIsEnabled.*HF_HUB_OFFLINE is set.*untouched"
    ):
        push_to_hub(final, "me/onetower-toy", token="hf_test")


def _vilt(folder: Path) -> None:
    from transformers import ViltConfig, ViltModel

    ViltModel(
        ViltConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(folder)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("vilt", r"holds a 'vilt' model, not a onetower model"),
        ("no_weights", r"has no weights: model.safetensors is missing"),
        ("bad_weights", r"does not load as OneTowerModel"),
        ("no_processor", r"has no processor: missing processor_config.json"),
        ("no_config", r"is not a saved model: config.json is missing"),
        ("no_folder", r"model folder .*nowhere does not exist"),
        ("bad_repo_id", r"bad repo id 'not a/valid//id'"),
    ],
)
def test_bad_folder_fails_before_any_network_call(
    hub, tmp_path, tokenizer, breakage, message
) -> None:
    final = make_run(tmp_path / "run", tokenizer)
    if breakage == "vilt":
        shutil.rmtree(final)
        _vilt(final)
    elif breakage in ("no_weights", "bad_weights"):
        (final / "model.safetensors").unlink()
        if breakage == "bad_weights":
            (final / "model.safetensors").write_bytes(b"not safetensors")
    elif breakage == "no_processor":
        (final / "processor_config.json").unlink()
        (tmp_path / "run" / "config.yaml").unlink()  # nothing to rebuild the processor from
    elif breakage == "no_config":
        (final / "config.json").unlink()
    elif breakage == "no_folder":
        final = tmp_path / "nowhere"
    repo = "not a/valid//id" if breakage == "bad_repo_id" else "me/onetower-toy"
    with pytest.raises(ModelFolderError, match=message):
        push_to_hub(final, repo, token="hf_test")
    assert hub.calls == []


def test_older_run_gets_processor_and_remote_code_in_the_upload(hub, tmp_path, tokenizer) -> None:
    # an older run's final/: no processor, no remote code, no card
    final = make_run(tmp_path / "run", tokenizer, processor=False, prepared=False)
    before = digest(tmp_path / "run")
    push_to_hub(final, "me/old-run", token="hf_test")
    assert digest(tmp_path / "run") == before  # both were built in the staging copy
    remote = hub.dir("me/old-run")
    processor = AutoProcessor.from_pretrained(remote)
    assert processor.max_text_len == 16 and processor.image_processor.image_size == 32
    assert processor.image_processor.image_mean == [0.4, 0.45, 0.5]  # from config.yaml's data
    assert processor.image_processor.image_std == [0.2, 0.25, 0.3]
    config = json.loads((remote / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_onetower.OneTowerModel"
    assert {"configuration_onetower.py", "modeling_onetower.py", "onetower_layers.py"} <= {
        p.name for p in remote.iterdir()
    }
    card = (remote / "README.md").read_text()
    assert "| eval/i2t_r1 | 0.3750 |" in card and "trust_remote_code=True" in card


def test_recipe_pushes_and_names_bad_keys(hub, tmp_path, tokenizer) -> None:
    spec = importlib.util.spec_from_file_location("push_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    final = make_run(tmp_path / "run", tokenizer)
    url = recipe.main([f"checkpoint={final}", "repo_id=me/from-recipe", "private=true"])
    assert url.startswith("https://hub.invalid/me/from-recipe")
    assert hub.calls[0][2]["private"] is True
    assert (hub.dir("me/from-recipe") / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="'privat' \\(did you mean 'private'"):
        recipe.main([f"checkpoint={final}", "repo_id=me/x", "privat=true"])
    with pytest.raises(ModelFolderError, match="repo_id=... is required"):
        recipe.main([f"checkpoint={final}"])
