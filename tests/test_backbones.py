"""The backbone catalogue, offline weights, and user-supplied weights files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from transfer.models import backbones
from transfer.models.backbones import (
    BUNDLED,
    UNAVAILABLE,
    BackboneError,
    UnsafeWeightsFile,
    WeightsUnavailable,
    get_backbone,
    list_backbones,
    load_backbone,
    load_weights_file,
)
from transfer.cli.main import main

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("TRANSFER_OFFLINE", "1")
    backbones.is_online.cache_clear()
    yield
    backbones.is_online.cache_clear()


def test_catalogue_lists_bundled_first_then_all_torchvision_models():
    entries = list_backbones()
    assert [e.name for e in entries[:3]] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert all(e.status == BUNDLED for e in entries[:3])
    torchvision_entries = [e for e in entries if e.source == "torchvision"]
    assert len(torchvision_entries) >= 80
    resnet = get_backbone("resnet18")
    assert resnet.params == 11_689_512 and resnet.imagenet_top1 == pytest.approx(69.758)
    assert resnet.preprocessing.input_size == 224 and resnet.preprocessing.resize_size == 256
    assert resnet.status == UNAVAILABLE  # offline and not cached


def test_every_entry_states_what_a_person_needs():
    for entry in list_backbones():
        row = entry.to_dict()
        for key in ("name", "source", "params", "preprocessing", "imagenet_top1", "license", "status", "speed"):
            assert key in row
        assert row["preprocessing"]["mean"] and row["preprocessing"]["std"]


def test_timm_models_are_searchable():
    found = list_backbones("convnext_atto", timm_limit=5)
    timm_entries = [e for e in found if e.source == "timm"]
    assert timm_entries and all(e.name.startswith("timm/convnext_atto") for e in timm_entries)
    assert timm_entries[0].params and timm_entries[0].params > 1_000_000


def test_unknown_backbone_says_how_to_find_one():
    with pytest.raises(BackboneError, match="transfer backbones"):
        get_backbone("resnet19")


def test_offline_without_cache_names_the_backbone_and_the_bundled_ones():
    with pytest.raises(WeightsUnavailable) as raised:
        load_backbone("resnet18")
    message = str(raised.value)
    assert "'resnet18'" in message and "offline" in message and "efficientnet_lite0" in message


def test_cached_torchvision_weights_load_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    (tmp_path / "checkpoints").mkdir()
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / Path(weights.url).name)
    assert get_backbone.__wrapped__("resnet18").status == "cached"
    model = load_backbone("resnet18")
    assert torch.equal(model.fc.weight, reference.fc.weight)


def test_bundled_weights_load_without_network():
    model = load_backbone("efficientnet_lite0")
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_user_safetensors_file_loads_with_a_report(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4")}
    state["fc.weight"] = torch.zeros(2, 512)  # made for two classes
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "mine.safetensors")
    target = torchvision.models.resnet18(weights=None)
    report = load_weights_file(target, tmp_path / "mine.safetensors")
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert any(k.startswith("layer4") for k in report.missing)
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched == [("fc.weight", (2, 512), (1000, 512))]
    text = report.describe()
    assert "missing" in text and "different shape" in text and not report.complete


def test_user_pt_checkpoint_with_nested_state_dict_loads(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ck.pt")
    target = torchvision.models.resnet18(weights=None)
    assert load_weights_file(target, tmp_path / "ck.pt").complete
    assert torch.equal(target.fc.weight, source.fc.weight)


class Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_pickled_code_is_refused(tmp_path):
    torch.save({"weights": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeWeightsFile, match="refused"):
        load_weights_file(torchvision.models.resnet18(weights=None), tmp_path / "evil.pth")


def test_weights_for_another_architecture_are_refused_clearly(tmp_path):
    save_file({"something.weight": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(BackboneError, match="None of the .* tensors .* another architecture"):
        load_weights_file(torchvision.models.resnet18(weights=None), tmp_path / "other.safetensors")


def test_cli_backbones_json(capsys):
    assert main(["backbones", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["backbones"]
    assert sum(e["source"] == "torchvision" for e in listing) >= 80
    assert [e["status"] for e in listing if e["source"] == "bundled"] == [BUNDLED] * 3


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="needs ../shared/datasets/hymenoptera_data")
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_bundled_weights_know_ants_and_bees(name):
    """ImageNet's "ant" (310) and "bee" (309) are in the top 5 for real photos of them."""
    from PIL import Image
    import torchvision.transforms.v2 as T

    entry = get_backbone(name)
    prep = entry.preprocessing
    transform = T.Compose([T.Resize(prep.resize_size), T.CenterCrop(prep.input_size), T.ToImage(),
                           T.ToDtype(torch.float32, scale=True), T.Normalize(prep.mean, prep.std)])
    model = load_backbone(name)
    labels = backbones.imagenet_labels(name)
    assert labels[310].startswith("ant") and labels[309] == "bee"
    for folder, index in (("ants", 310), ("bees", 309)):
        photos = sorted((HYMENOPTERA / "val" / folder).glob("*.jpg"))[:20]
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])
        with torch.no_grad():
            top5 = model(batch).topk(5).indices
        hit_rate = (top5 == index).any(dim=1).float().mean().item()
        assert hit_rate >= 0.8, (folder, hit_rate)  # chance would be 0.5%


def test_the_torchvision_snapshot_matches_the_installed_torchvision():
    """transfer/models/torchvision_catalogue.json is what pages read without torch: it must say what
    torchvision itself says (refresh: python -m transfer.models.backbones --write-torchvision-table)."""
    from transfer.models import catalogue

    live = catalogue.live_torchvision_table()
    stored = json.loads(catalogue.TORCHVISION_TABLE.read_text())
    assert stored["torchvision"] == live["torchvision"]
    assert stored["models"] == json.loads(json.dumps(live["models"]))


def test_timm_entries_are_described_by_a_child_when_timm_is_not_loaded(monkeypatch):
    """The server asks a child process (kept on disk afterwards); the engine asks timm directly."""
    import sys

    from transfer.models import catalogue

    direct = catalogue._timm_entry_here("timm/convnext_atto")
    monkeypatch.delitem(sys.modules, "timm")
    catalogue.get_backbone.cache_clear()
    try:
        asked = catalogue.get_backbone("timm/convnext_atto")
        assert asked.to_dict() == direct.to_dict()
        assert list(catalogue._timm_answers_dir().glob("describe-*.json"))  # kept: no child next time
        found = catalogue.search_timm("convnext_atto", 5)
        assert "timm/convnext_atto.d2_in1k" in found and all("convnext_atto" in name for name in found)
    finally:
        catalogue.get_backbone.cache_clear()
