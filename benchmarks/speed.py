"""Speed benchmark: prints a Markdown table of measured numbers next to the project's targets.

Run from the project root::

    python benchmarks/speed.py [--json results.json] [--quick]

Measures, on this machine:

* peak fp32 matmul throughput (torch 2048 x 2048 matmul, best of several), and the fp32 GEMM
  throughput of oneDNN (which runs the convolutions) as a second reference;
* training throughput of the ``default`` preset on 64 x 64 crops (batch 32, forward + backward +
  optimiser step);
* the per-pixel anomaly map of a 2048 x 2048 RGB image with a patch-mode detector
  (``AnomalyDetector.score``, best of 3 after a warm-up);
* the network forward's achieved GFLOP/s over the same tiles (``Autoencoder.flops_per_pixel``
  times the pixels of every tile, over the forward time), as a fraction of the matmul peak, for
  the ``default`` preset (channels_last, as shipped) and the ``seed`` preset run the plain way
  (contiguous NCHW);
* the time to train with the default settings on 2,500 crops: the real NIH malaria
  ``Uninfected`` crops from ``../shared/data/malaria/train/Uninfected`` when present, else 2,500
  synthetic crops from :func:`napari_cell_anomaly.core.sample.make_cells`.

This is a script that prints numbers, never a timed test. Timings on a shared machine vary with
its load, which is printed alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cell_anomaly.core import detector as detector_mod
from napari_cell_anomaly.core import errormaps
from napari_cell_anomaly.core.images import find_images, load_images
from napari_cell_anomaly.core.model import Autoencoder, ModelConfig, build_model
from napari_cell_anomaly.core.sample import make_cells, make_field
from napari_cell_anomaly.core.tiling import predict_tiled
from napari_cell_anomaly.core.training import TrainConfig, run_training

ROOT = Path(__file__).resolve().parent.parent
MALARIA = ROOT.parent / "shared" / "data" / "malaria" / "train" / "Uninfected"

TARGET_MAP_S = 2.0
TARGET_PEAK_FRACTION = 0.5
TARGET_TRAIN_S = 300.0


def best_of(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Best wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Peak fp32 matmul GFLOP/s (2 n^3 FLOPs per product), best of ``repeats``."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    out = torch.empty(n, n)
    seconds = best_of(lambda: torch.mm(a, b, out=out), repeats, warmup=2)
    return 2.0 * n**3 / seconds / 1e9


def onednn_gemm_gflops(repeats: int = 5) -> float:
    """fp32 GEMM throughput through oneDNN (the library behind CPU convolutions).

    A 1 x 1 convolution 256 -> 256 channels on a channels_last ``(8, 256, 128, 128)`` input is a
    plain matrix product of 131072 x 256 by 256 x 256. On CPUs where MKL's sgemm does not reach
    the hardware peak (e.g. MKL on AMD), this is the more telling reference for the network.
    """
    conv = torch.nn.Conv2d(256, 256, 1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(8, 256, 128, 128).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = best_of(lambda: conv(x), repeats, warmup=2)
    return 2.0 * 256 * 256 * x.numel() / 256 / seconds / 1e9


def train_images_per_s(steps: int = 6, repeats: int = 3) -> float:
    """Training throughput of the default preset: 64 x 64 RGB crops, batch 32.

    Best of ``repeats`` blocks of ``steps`` optimisation steps, after 3 warm-up steps.
    """
    torch.manual_seed(0)
    net = build_model(ModelConfig.from_preset("default")).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    crops = np.stack(make_cells(32, size=64, seed=0).images).astype(np.float32) / 255.0
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        y = net(x)
        loss = errormaps.reconstruction_loss(x, y, "mse")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def block() -> None:
        for _ in range(steps):
            step()

    for _ in range(3):
        step()
    seconds = best_of(block, repeats, warmup=0)
    return steps * 32 / seconds


def tile_pixels(h: int, w: int, align: int) -> int:
    """Pixels the network processes for an ``h x w`` image with the detector's tiling."""
    count = 0

    def fn(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += t.shape[0] * t.shape[2] * t.shape[3]
        return t[:, :1]

    predict_tiled(fn, np.zeros((1, h, w), np.float32), tile=detector_mod.TILE,
                  margin=detector_mod.TILE_MARGIN, align=align)
    return count


def forward_seconds(net: Autoencoder, image_chw: np.ndarray, *, channels_last: bool,
                    repeats: int = 3) -> float:
    """Best time of the bare network forward over the detector's tiles of one image."""
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

        def fn(t: torch.Tensor) -> torch.Tensor:
            return net(t)
    else:
        net = net.to(memory_format=torch.contiguous_format)

        def fn(t: torch.Tensor) -> torch.Tensor:
            return net(t.contiguous())

    net.eval()
    return best_of(lambda: predict_tiled(fn, image_chw, tile=detector_mod.TILE,
                                         margin=detector_mod.TILE_MARGIN, align=net.align),
                   repeats)


def score_breakdown(det: detector_mod.AnomalyDetector, chw: np.ndarray,
                    score_s: float) -> dict[str, float]:
    """Split ``score()`` time: network forward, error maps over the tiles, and the rest."""
    net = det.network
    sigma = det.scoring.sigma

    def with_maps(t: torch.Tensor) -> torch.Tensor:
        y = net(t)
        se = errormaps.gaussian_blur(errormaps.squared_error_map(t, y), sigma)
        dssim = errormaps.gaussian_blur(1.0 - errormaps.ssim_map(t, y), sigma)
        return torch.cat([y, se, dssim], dim=1)

    forward = forward_seconds(net, chw, channels_last=True)
    tiles = best_of(lambda: predict_tiled(with_maps, chw, tile=detector_mod.TILE,
                                          margin=detector_mod.TILE_MARGIN, align=net.align), 3)
    return {"forward_s": forward, "error_maps_s": max(tiles - forward, 0.0),
            "windows_density_rest_s": max(score_s - tiles, 0.0)}


def train_2500(quick: bool) -> dict[str, Any]:
    """Train with default settings on 2,500 crops; returns time and data source."""
    if MALARIA.is_dir():
        loaded = load_images(find_images(MALARIA))
        images = loaded.images[:2500]
        source = f"NIH malaria train/Uninfected ({len(images)} real crops, resized to 64x64)"
    else:
        images = make_cells(2500, size=64, seed=0).images
        source = "2,500 synthetic 64x64 crops (core.sample.make_cells)"
    config = TrainConfig(max_steps=20) if quick else TrainConfig()
    t0 = time.perf_counter()
    det = run_training(images, config, device="cpu")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "source": source, "steps": det.provenance["steps"],
            "epochs": det.provenance["epochs_run"],
            "best_val_loss": det.provenance["best_val_loss"], "quick": quick}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="cap the 2,500-crop training at 20 steps (smoke test only)")
    args = parser.parse_args(argv)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    env = {
        "python": platform.python_version(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "load_average_start": [round(v, 2) for v in load],
    }
    print(f"# napari-cell-anomaly speed benchmark ({platform.processor() or platform.machine()}, "
          f"{env['cpus']} CPUs, torch {env['torch']}, {env['threads']} threads, "
          f"load average {env['load_average_start']})", file=sys.stderr)

    res: dict[str, Any] = {"env": env}
    print("matmul peak ...", file=sys.stderr)
    peak = matmul_gflops()
    res["matmul_gflops"] = peak
    res["onednn_gemm_gflops"] = gemm = onednn_gemm_gflops()

    print("training throughput ...", file=sys.stderr)
    res["train_images_per_s"] = train_images_per_s()

    print("tiny patch-mode detector ...", file=sys.stderr)
    fields = [make_field((512, 512), anomaly_fraction=0.0, seed=s)[0] for s in range(2)]
    det = run_training(fields, TrainConfig(max_steps=10, seed=0), device="cpu")
    assert det.mode == "patch"
    big, _ = make_field((2048, 2048), n_cells=900, anomaly_fraction=0.05, seed=7)
    print("2048x2048 anomaly map ...", file=sys.stderr)
    map_s = best_of(lambda: det.score(big), repeats=3, warmup=1)
    res["map_2048_s"] = map_s

    chw = np.ascontiguousarray((big.astype(np.float32) / 255.0).transpose(2, 0, 1))
    res["map_breakdown"] = score_breakdown(det, chw, map_s)
    rows = []
    for preset, channels_last in (("default", True), ("seed", False), ("seed", True)):
        torch.manual_seed(0)
        net = Autoencoder(ModelConfig.from_preset(preset))
        fpp = net.flops_per_pixel()
        pixels = tile_pixels(2048, 2048, net.align)
        seconds = forward_seconds(net, chw, channels_last=channels_last)
        gflops = fpp * pixels / seconds / 1e9
        rows.append({"preset": preset, "channels_last": channels_last,
                     "flops_per_pixel": fpp, "tile_pixels": pixels, "forward_s": seconds,
                     "gflops": gflops, "peak_fraction": gflops / peak,
                     "onednn_gemm_fraction": gflops / gemm})
    res["forward"] = rows

    print("training on 2,500 crops with default settings ...", file=sys.stderr)
    res["train_2500"] = train_2500(args.quick)
    res["env"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]

    default_row = rows[0]
    table = [
        "| measure | value | target |",
        "| --- | --- | --- |",
        f"| fp32 matmul 2048x2048 (best of 10) | {peak:.1f} GFLOP/s | (reference peak) |",
        f"| fp32 GEMM via oneDNN (1x1 conv 256->256, 131072 px) | {gemm:.1f} GFLOP/s | "
        f"(second reference) |",
        f"| training, default preset, 64x64, batch 32 | "
        f"{res['train_images_per_s']:.0f} images/s | |",
        f"| anomaly map 2048x2048 RGB, patch mode, `score()` best of 3 | {map_s:.2f} s | "
        f"< {TARGET_MAP_S:.0f} s {'OK' if map_s < TARGET_MAP_S else 'MISSED'} |",
    ]
    bd = res["map_breakdown"]
    floor = default_row["flops_per_pixel"] * default_row["tile_pixels"] / (peak * 1e9)
    res["forward_at_peak_s"] = floor
    table.append(f"| of which: network forward / error maps (SSIM, smoothing) / windows + "
                 f"density + rest | {bd['forward_s']:.2f} / {bd['error_maps_s']:.2f} / "
                 f"{bd['windows_density_rest_s']:.2f} s | (forward at 100% of peak: "
                 f"{floor:.2f} s for {default_row['tile_pixels'] / 1e6:.1f} Mpx of tiles) |")
    for row in rows:
        layout = "channels_last" if row["channels_last"] else "plain NCHW"
        ok = "OK" if row["peak_fraction"] >= TARGET_PEAK_FRACTION else "MISSED"
        target = (f">= {TARGET_PEAK_FRACTION:.0%} of peak {ok}"
                  if row is default_row or not row["channels_last"] else "(for comparison)")
        table.append(
            f"| forward `{row['preset']}` ({layout}, {row['flops_per_pixel']:.0f} FLOP/px), "
            f"2048x2048 tiles | {row['forward_s']:.2f} s, {row['gflops']:.1f} GFLOP/s = "
            f"{row['peak_fraction']:.0%} of peak ({row['onednn_gemm_fraction']:.0%} of oneDNN "
            f"GEMM) | {target} |")
    tr = res["train_2500"]
    ok = "OK" if tr["seconds"] < TARGET_TRAIN_S else "MISSED"
    table.append(
        f"| train with defaults on {tr['source']}: {tr['epochs']} epochs, {tr['steps']} steps"
        f"{' (QUICK, capped)' if tr['quick'] else ''} | {tr['seconds']:.0f} s "
        f"({tr['seconds'] / 60:.1f} min) | < {TARGET_TRAIN_S / 60:.0f} min {ok} |")
    print("\n".join(table))
    print(f"\nload average start {env['load_average_start']}, end {env['load_average_end']}; "
          f"torch threads {env['threads']}; OMP_WAIT_POLICY {env['OMP_WAIT_POLICY']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
