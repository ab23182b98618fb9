"""fimbound rank through numeric.cli.main."""

import json

from numeric.cli import main


def test_text_output(capsys):
    assert main(["rank", "--families", "vgg", "densenet", "--depth", "vgg=n",
                 "--depth", "densenet=n"]) == 0
    out = capsys.readouterr().out
    assert "vgg       h**n" in out
    assert "vgg < densenet  iff  True" in out


def test_json_output_with_values_and_claim(capsys):
    assert main(["rank", "--families", "vgg16", "resnet18", "--value", "h=1.2",
                 "--claim", "resnet18,vgg16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["order"] == ["vgg16", "resnet18"]
    # torchvision's AdaptiveAvgPool2d((7, 7)) at its worst (a 1x1 feature map): 7
    assert data["entries"]["vgg16"]["lipschitz"] == "7*h**16"
    assert data["pairs"][0]["condition"] == "True" and data["pairs"][0]["holds"] is True
    assert data["claim"] == {"order": ["resnet18", "vgg16"], "condition": "False",
                             "holds": False}


def test_options_and_stage_depths(capsys):
    assert main(["rank", "--families", "resnet", "--depth", "resnet=2,2",
                 "--option", "resnet.block=bottleneck", "--option", "resnet.stem=true",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["entries"]["resnet"]["lipschitz"] == "2*h*(h**3 + 1)**4"


def test_user_error_exits_2(capsys):
    assert main(["rank", "--families", "lenet", "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["type"] == "FamilyError"
    assert "unknown family or preset 'lenet'" in captured.err


def test_vgg_preset_at_its_native_input_size(capsys):
    assert main(["rank", "--families", "vgg16", "vgg11", "--option", "vgg16.input_size=224",
                 "--option", "vgg11.input_size=[64, 64]", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    assert entries["vgg16"]["lipschitz"] == "h**16"
    assert entries["vgg11"]["lipschitz"] == "7*h**11/2"  # a 2x2 map upsampled to 7x7
