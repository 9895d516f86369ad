"""Tests for ``napari_cell_anomaly.core.model``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_cell_anomaly.core.model import PRESETS, Autoencoder, ModelConfig, build_model


@pytest.fixture(scope="module", params=PRESETS)
def preset_model(request: pytest.FixtureRequest) -> Autoencoder:
    torch.manual_seed(0)
    return build_model(ModelConfig.from_preset(request.param)).eval()


def test_presets_build_with_expected_family() -> None:
    default = build_model(ModelConfig.from_preset("default"))
    seed = build_model(ModelConfig.from_preset("seed"))
    assert default.config.preset == "default"
    assert seed.config.preset == "seed"
    # The seed preset is the published design: max-pooling and nearest upsampling.
    assert any(isinstance(m, nn.MaxPool2d) for m in seed.modules())
    assert any(isinstance(m, nn.Upsample) for m in seed.modules())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in default.modules())
    assert seed.config.widths == (64, 32, 16)


@pytest.mark.parametrize("in_channels", [1, 2, 3, 5])
@pytest.mark.parametrize("hw", [(8, 8), (16, 16), (24, 40), (64, 64), (72, 32)])
def test_output_shape_equals_input_shape(preset_model: Autoencoder, in_channels: int,
                                         hw: tuple[int, int]) -> None:
    cfg = ModelConfig.from_preset(preset_model.config.preset, in_channels=in_channels)
    net = build_model(cfg).eval()
    assert hw[0] % net.align == 0 and hw[1] % net.align == 0
    x = torch.rand(2, in_channels, *hw)
    with torch.inference_mode():
        y = net(x)
    assert y.shape == x.shape
    # Sigmoid output: a valid image in [0, 1].
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("hw", [(16, 16), (32, 48)])
def test_latent_shape(preset_model: Autoencoder, hw: tuple[int, int]) -> None:
    cfg = preset_model.config
    x = torch.rand(3, cfg.in_channels, *hw)
    with torch.inference_mode():
        z = preset_model.encode(x)
        y = preset_model.decode(z)
    a = preset_model.align
    assert a == 2 ** len(cfg.widths) == cfg.align
    assert z.shape == (3, cfg.latent_channels, hw[0] // a, hw[1] // a)
    assert y.shape == x.shape


def test_forward_is_decode_of_encode(preset_model: Autoencoder) -> None:
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(preset_model(x), preset_model.decode(preset_model.encode(x)))


def test_build_model_is_channels_last_and_layout_does_not_change_results() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig()).eval()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert convs
    for m in convs:
        assert m.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        y_cl = net(x.contiguous(memory_format=torch.channels_last))
        y_plain = net(x.contiguous())
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y_plain, rtol=1e-5, atol=1e-6)


def test_flops_per_pixel_matches_hand_count_default() -> None:
    # Version 2, in 1 -> widths (2,) -> latent 1, so align = 2 (every layer at half
    # resolution: per input pixel / 4; the pixel (un)shuffles cost nothing):
    #   enc unshuffle 1 -> 4 channels; conv3x3 4->2:  2*9*4*2 / 4 = 36
    #   enc conv3x3 2->2:                           2*9*2*2 / 4 = 18
    #   enc conv1x1 2->1:                           2*1*2*1 / 4 = 1
    #   dec conv1x1 1->2:                           2*1*1*2 / 4 = 1
    #   dec conv3x3 2->4, then shuffle to 1 channel: 2*9*2*4 / 4 = 36
    net = build_model(ModelConfig(preset="default", in_channels=1, widths=(2,),
                                  latent_channels=1))
    assert net.config.version == 2
    assert net.flops_per_pixel() == pytest.approx(36 + 18 + 1 + 1 + 36)


def test_flops_per_pixel_matches_hand_count_default_version_1() -> None:
    # in 1 -> widths (2,) -> latent 1, so align = 2 ("full" = per input pixel, "half" = / 4):
    #   enc conv3x3 1->2 (full):            2*9*1*2      = 36
    #   enc conv3x3 s2 2->2 (half):         2*9*2*2 / 4  = 18
    #   enc conv1x1 2->1 (half):            2*1*2*1 / 4  = 1
    #   dec conv1x1 1->2 (half):            2*1*1*2 / 4  = 1
    #   dec convT2x2 s2 2->2 (each full-res output reads 1 tap of 2 channels): 2*2*2 = 8
    #   dec conv3x3 2->1 (full):            2*9*2*1      = 36
    net = build_model(ModelConfig(preset="default", in_channels=1, widths=(2,),
                                  latent_channels=1, version=1))
    assert net.flops_per_pixel() == pytest.approx(36 + 18 + 1 + 1 + 8 + 36)


def test_flops_per_pixel_matches_hand_count_seed() -> None:
    # in 1 -> widths (2,) -> latent 1:
    #   enc conv3x3 1->2 (full): 36; maxpool; enc conv1x1 2->1 (half): 1
    #   dec conv1x1 1->2 (half): 1; dec conv3x3 2->2 (half, before upsampling): 72 / 4 = 18
    #   upsample; dec conv3x3 2->1 (full): 36
    net = build_model(ModelConfig(preset="seed", in_channels=1, widths=(2,), latent_channels=1))
    assert net.flops_per_pixel() == pytest.approx(36 + 1 + 1 + 18 + 36)


def test_flops_per_pixel_positive_and_scales_with_width(preset_model: Autoencoder) -> None:
    f = preset_model.flops_per_pixel()
    assert f > 0
    cfg = preset_model.config
    wider = build_model(ModelConfig(preset=cfg.preset, in_channels=cfg.in_channels,
                                    widths=tuple(2 * w for w in cfg.widths),
                                    latent_channels=cfg.latent_channels))
    assert wider.flops_per_pixel() > f
    # The count is analytic: it does not leave hooks behind.
    assert not any(m._forward_hooks for m in preset_model.modules())


def test_config_round_trip_and_validation() -> None:
    for preset in PRESETS:
        cfg = ModelConfig.from_preset(preset, in_channels=1)
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="preset"):
        ModelConfig(preset="unet")
    with pytest.raises(ValueError, match="in_channels"):
        ModelConfig(in_channels=17)
    with pytest.raises(ValueError, match="positive"):
        ModelConfig(widths=())


def test_version_2_has_no_full_resolution_convolution_and_fewer_flops() -> None:
    v2 = build_model(ModelConfig())
    v1 = build_model(ModelConfig(widths=(16, 32, 64), version=1))
    assert ModelConfig().version == 2 and v2.align == v1.align == 8
    assert any(isinstance(m, nn.PixelUnshuffle) for m in v2.modules())
    assert any(isinstance(m, nn.PixelShuffle) for m in v2.modules())
    assert v2.flops_per_pixel() < v1.flops_per_pixel()
    # Every convolution of version 2 runs at half resolution or below.
    sides = []
    hooks = [m.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
             for m in v2.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    with torch.inference_mode():
        v2(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sides and max(sides) == 16


def test_files_without_a_version_are_version_1() -> None:
    # Model files written before the version existed hold the version-1 design.
    d = ModelConfig(widths=(16, 32, 64), version=1).to_dict()
    del d["version"]
    cfg = ModelConfig.from_dict(d)
    assert cfg.version == 1
    assert not any(isinstance(m, nn.PixelUnshuffle) for m in build_model(cfg).modules())
    assert ModelConfig.from_dict(ModelConfig().to_dict()).version == 2
    with pytest.raises(ValueError, match="version"):
        ModelConfig(version=3)
    # The seed preset has a single design.
    assert ModelConfig.from_preset("seed").version == 1


def test_init_output_bias_starts_chosen_channels_at_their_mean() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig.from_preset("default", in_channels=2))
    before = [m for m in net.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    kept = before.bias.detach().clone()
    net.init_output_bias([0.02, float("nan")])
    out = net(torch.rand(1, 2, 64, 64) * 0.04).detach()
    assert float(out[:, 0].mean()) < 0.1  # starts near the dark mean, not at 0.5
    repeat = before.out_channels // 2
    assert torch.equal(before.bias[repeat:], kept[repeat:])  # NaN: random start kept
    with pytest.raises(ValueError, match="channel means"):
        net.init_output_bias([0.5])



#: Narrower widths (a third of the default's FLOPs), tried as a cheaper default
#: (docs/benchmarks.md): a non-default network that a model file must rebuild from its record.
NARROW = ModelConfig(widths=(16, 32, 64))


def test_narrower_widths_keep_the_latent_grid_at_under_a_third_of_the_flops() -> None:
    narrow = build_model(NARROW)
    default = build_model(ModelConfig())
    assert narrow.align == default.align == 8
    x = torch.rand(2, 3, 40, 24)
    with torch.inference_mode():
        assert narrow.encode(x).shape == default.encode(x).shape == (2, 8, 5, 3)
    assert narrow.flops_per_pixel() < default.flops_per_pixel() / 3


def test_the_file_record_of_the_default_network_is_unchanged() -> None:
    # What the model files written so far record for the default network; changing a
    # default must keep this record building the same network (files store it, not defaults).
    record = {"preset": "default", "in_channels": 3, "widths": [32, 64, 64],
              "latent_channels": 8, "version": 2}
    assert ModelConfig().to_dict() == record
    assert ModelConfig.from_dict(record) == ModelConfig()
    widths = [m.out_channels for m in build_model(ModelConfig.from_dict(record)).encoder.modules()
              if isinstance(m, nn.Conv2d)]
    assert widths == [32, 32, 64, 64, 64, 8]


@pytest.mark.parametrize("config", [ModelConfig(), NARROW,
                                    ModelConfig(widths=(16, 32, 64), version=1)],
                         ids=["default", "narrow", "version-1"])
def test_each_network_round_trips_through_a_model_file(patch_detector, config: ModelConfig,
                                                       tmp_path) -> None:
    # A detector file with each network loads that network and scores exactly as saved.
    import dataclasses

    import numpy as np

    from napari_cell_anomaly.core.detector import AnomalyDetector
    from napari_cell_anomaly.core.modelfile import load_file
    from napari_cell_anomaly.core.sample import make_field

    torch.manual_seed(config.version)
    net = build_model(config).eval()
    det = dataclasses.replace(patch_detector, network=net)
    det.save(tmp_path / "model.safetensors")
    _, meta = load_file(tmp_path / "model.safetensors")
    assert ModelConfig.from_dict(meta["model"]) == config
    back = AnomalyDetector.load(tmp_path / "model.safetensors", device="cpu")
    assert back.network.config == config
    assert str(back.network) == str(net)
    img, _ = make_field((192, 200), n_cells=20, anomaly_fraction=0.3, seed=8)
    a, b = back.score(img), det.score(img)
    assert a.score == b.score and a.log_density == b.log_density
    np.testing.assert_array_equal(a.error_map, b.error_map)
    np.testing.assert_array_equal(a.reconstruction, b.reconstruction)
