"""Speed benchmark: prints a Markdown table of measured numbers next to the project's targets.

Run from the project root::

    python benchmarks/speed.py [--json results.json] [--quick] [--baseline-src ../main/src]
                               [--skip-train-2500]

Everything is measured in one run, so that on a shared machine the numbers can be compared as
ratios (the load is printed alongside):

* the targets of issue 10 section 4, side by side: a 2048 x 2048 RGB field scored through
  ``cell-anomaly score`` (read the PNG, score, write the heatmap TIFF) beyond start-up, with
  ``--precision fp32`` and with the default ``--precision auto`` (bf16 on a CPU with native
  bfloat16; the targets are checked on it), next to
  the bare forward of the ``seed`` preset (the published design, plain NCHW) over the same
  tiles; the command line's start-up (``cell-anomaly score`` of a 64 x 64 image, and
  ``cell-anomaly --help``). Each command line run trains its own small patch-mode model first
  (``cell-anomaly train`` on two synthetic 512 x 512 fields, one epoch). With
  ``--baseline-src DIR`` the same command-line measurements are repeated with the package
  sources in ``DIR`` (e.g. a checkout of the code before a change), in the same run; and
  the steps of that path, each timed in a fresh process: loading the model, reading the
  PNG, scoring it cold (the first image of the process, as on the command line) and warm,
  writing the heatmap TIFF and the CSV row;
* the network alone: FLOPs per pixel (``Autoencoder.flops_per_pixel``) and forward time over
  the tiles of a 2048 x 2048 image for the ``default`` preset (version 2, in float32 and in
  bfloat16 autocast; the same with the
  narrower widths (16, 32, 64) tried as a cheaper default, see docs/benchmarks.md; and
  version 1 as in older model files), and ``seed``; peak fp32 matmul and oneDNN GEMM
  throughput as references;
* the share of time per stage of ``AnomalyDetector.score`` on the 2048 x 2048 field (patch
  mode): network forward, error maps, windows (foreground masks, reductions), latent density
  (and the latent density computed the exact way at every position, as before its float32
  screen);
* training throughput (64 x 64 crops, batch 32) for ``default`` version 2 (in float32 and
  with its forward in bfloat16 autocast; and with the widths (16, 32, 64)) and version 1;
* optionally (unless ``--skip-train-2500``) the time to train with the default settings on
  2,500 crops: the real NIH malaria ``Uninfected`` crops from
  ``../shared/data/malaria/train/Uninfected`` when present, else synthetic crops.

This is a script that prints numbers, never a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cell_anomaly.core import detector as detector_mod
from napari_cell_anomaly.core import errormaps, mappass
from napari_cell_anomaly.core.device import autocast, resolve_precision
from napari_cell_anomaly.core.images import find_images, load_images, read_image
from napari_cell_anomaly.core.model import Autoencoder, ModelConfig, build_model
from napari_cell_anomaly.core.sample import make_cells, make_field
from napari_cell_anomaly.core.tiling import predict_tiled
from napari_cell_anomaly.core.training import TrainConfig, run_training

ROOT = Path(__file__).resolve().parent.parent
MALARIA = ROOT.parent / "shared" / "data" / "malaria" / "train" / "Uninfected"

TARGET_CLI_MAP_S = 1.0
TARGET_SEED_RATIO = 5.0
TARGET_STARTUP_S = 1.5
TARGET_TRAIN_S = 300.0
V1 = ModelConfig(widths=(16, 32, 64), version=1)
#: The default design with a third of its FLOPs, tried as the default (not adopted).
NARROW = ModelConfig(widths=(16, 32, 64))


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
    """fp32 GEMM throughput through oneDNN (a 1 x 1 convolution 256 -> 256 channels on a
    channels_last ``(8, 256, 128, 128)`` input: a 131072 x 256 by 256 x 256 product)."""
    conv = torch.nn.Conv2d(256, 256, 1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(8, 256, 128, 128).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = best_of(lambda: conv(x), repeats, warmup=2)
    return 2.0 * 256 * 256 * x.numel() / 256 / seconds / 1e9


def train_images_per_s(config: ModelConfig, steps: int = 6, repeats: int = 3,
                       precision: str = "fp32") -> float:
    """Training throughput: 64 x 64 RGB crops, batch 32, forward (in ``precision``, as
    ``core.training`` runs it) + backward + Adam step.

    Best of ``repeats`` blocks of ``steps`` optimisation steps, after 3 warm-up steps.
    """
    torch.manual_seed(0)
    net = build_model(config).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    crops = np.stack(make_cells(32, size=64, seed=0).images).astype(np.float32) / 255.0
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            y = net(x)
        loss = errormaps.reconstruction_loss(x, y.float(), "mse")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def block() -> None:
        for _ in range(steps):
            step()

    for _ in range(3):
        step()
    return steps * 32 / best_of(block, repeats, warmup=0)


def tile_pixels(h: int, w: int, align: int) -> int:
    """Pixels the network processes for an ``h x w`` image with the detector's tiling."""
    count = 0

    def fn(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += t.shape[0] * t.shape[2] * t.shape[3]
        return t[:, :1]

    predict_tiled(fn, np.zeros((1, h, w), np.float32), tile=mappass.TILE,
                  margin=mappass.TILE_MARGIN, align=align)
    return count


def forward_seconds(net: Autoencoder, image_chw: np.ndarray, *, channels_last: bool,
                    repeats: int = 3, precision: str = "fp32") -> float:
    """Best time of the bare network forward over the detector's tiles of one image, in
    ``precision`` (a resolved one, as :func:`.device.autocast` takes; outputs cast to
    float32 as the detector does)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).eval()

    def fn(t: torch.Tensor) -> torch.Tensor:
        with autocast(torch.device("cpu"), precision):
            return net(t.contiguous(memory_format=fmt)).float()

    return best_of(lambda: predict_tiled(fn, image_chw, tile=mappass.TILE,
                                         margin=mappass.TILE_MARGIN, align=net.align),
                   repeats)


def stage_shares(det: detector_mod.AnomalyDetector, big: np.ndarray,
                 score_s: float) -> dict[str, float]:
    """Split ``score()`` of a patch-mode detector into stages (each timed on its own, best of
    3): preprocessing, network forward (in the detector's precision), error maps (the tiled
    pass minus the forward), latent density of every window's code, and the rest (windows:
    foreground masks, reductions)."""
    net = det.network
    x = det.preprocessing(big)
    chw = np.ascontiguousarray(x.transpose(2, 0, 1))
    a = net.align

    def tiled(t: torch.Tensor) -> torch.Tensor:
        with det.autocast():
            z = net.encode(t)
            y = net.decode(z)
        z, y = z.float(), y.float()
        se, _ = det._maps(t, y, with_ssim=det.uses_ssim)
        return torch.cat([y, se, mappass.pack_codes(z, a)], dim=1)

    prep = best_of(lambda: det.preprocessing(big), 3)
    forward = forward_seconds(net, chw, channels_last=True, precision=det.run_precision)
    pass_s = best_of(lambda: predict_tiled(tiled, chw, tile=mappass.TILE,
                                           margin=mappass.TILE_MARGIN, align=a), 3)
    out = predict_tiled(tiled, chw, tile=mappass.TILE, margin=mappass.TILE_MARGIN,
                        align=a)
    codes = mappass.unpack_codes(out[-1], a, net.config.latent_channels)
    k = det.size // a
    windows = mappass.window_origins(*x.shape[:2], det.size)
    win_codes = np.stack([codes[:, r // a:r // a + k, q // a:q // a + k].reshape(-1)
                          for r, q in windows])
    density = best_of(lambda: det.density.log_density(win_codes), 3)
    # The same numbers from every position's exact float64 log-density (the path before the
    # float32 screen of the KDE).
    density_exact = best_of(lambda: det.density.position_log_density(win_codes).min(axis=1), 3)
    # What the previous map pass also did: the 1-SSIM map, and encoding every window again.
    ssim_extra = best_of(lambda: predict_tiled(
        lambda t: errormaps.gaussian_blur(1.0 - errormaps.ssim_map(t, t.flip(-1)), 1.0), chw,
        tile=mappass.TILE, margin=mappass.TILE_MARGIN, align=a), 2)
    crops = np.stack([x[r:r + det.size, q:q + det.size] for r, q in windows])
    encode_again = best_of(lambda: mappass.encode_units(net, crops,
                                                        precision=det.run_precision), 2)
    stages = {"preprocess_s": prep, "forward_s": forward,
              "error_maps_s": max(pass_s - forward, 0.0), "density_s": density}
    stages["windows_rest_s"] = max(score_s - sum(stages.values()), 0.0)
    stages["removed_ssim_map_s"] = ssim_extra
    stages["removed_window_encoding_s"] = encode_again
    stages["density_all_positions_exact_s"] = density_exact
    stages["n_windows"] = len(windows)
    return stages


#: CPU seconds (user + system) of the command-line runs, under ``"cpu"`` by ``name:kind``: on a
#: shared machine they vary far less with the load than wall times.
CLI_CPU: dict[str, dict[str, list[float]]] = {}


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(src: Path, args: list[str], cwd: Path, kind: str | None = None) -> float:
    """Wall seconds of one ``cell-anomaly`` run with the package sources in ``src`` (its CPU
    seconds go to ``CLI_CPU[str(src)][kind]`` when ``kind`` is given)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "napari_cell_anomaly.cli", *args], env=env,
                          cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if kind is not None:
        CLI_CPU.setdefault("cpu", {}).setdefault(kind, []).append(_children_cpu() - cpu0)
    if proc.returncode != 0:
        raise RuntimeError(f"cell-anomaly {' '.join(args)} failed ({src}): "
                           f"{proc.stderr.strip().splitlines()[-1:]}")
    return seconds


def cli_stages_child(model: Path, png: Path, out_dir: Path, precision: str = "") -> None:
    """In a fresh process (run by :func:`cli_stages`), with the command line's memory setting
    (:func:`~napari_cell_anomaly._cli.common.keep_freed_memory`, where the sources have it):
    time each step ``cell-anomaly score`` takes for one PNG, cold (the first image of the
    process, as on the command line), then the score once more, warm; prints one JSON
    object."""
    t0 = time.perf_counter()
    try:  # as `cell-anomaly score` does (sources before it lack it)
        from napari_cell_anomaly._cli.common import keep_freed_memory
    except ImportError:
        pass
    else:
        keep_freed_memory()
    from napari_cell_anomaly.core.batch import write_tiff_atomic
    from napari_cell_anomaly.core.detector import AnomalyDetector
    from napari_cell_anomaly.core.images import read_image as read

    det = (AnomalyDetector.load(model, device="cpu", precision=precision) if precision
           else AnomalyDetector.load(model, device="cpu"))
    r: dict[str, float] = {"load_model_s": time.perf_counter() - t0}

    def timed(key: str, fn: Callable[[], Any]) -> Any:
        t, c = time.perf_counter(), time.process_time()
        value = fn()
        r[key] = time.perf_counter() - t
        r[key.replace("_s", "_cpu_s")] = time.process_time() - c
        return value

    image = timed("read_png_s", lambda: read(png))
    result = timed("score_cold_s", lambda: det.score(image))
    timed("write_heatmap_tiff_s",
          lambda: write_tiff_atomic(out_dir / "big_anomaly_map.tif", result.error_map))
    row = result.as_row()
    timed("write_csv_s", lambda: (out_dir / "big.csv").write_text(
        ",".join(row) + "\n" + ",".join(f"{v:.6g}" for v in row.values()) + "\n"))
    timed("score_warm_s", lambda: det.score(image))
    print(json.dumps(r))


def cli_stages(srcs: dict[str, Path], model_of: Callable[[str], Path], png: Path,
               repeats: int, precisions: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per-step times of the command line's path for each source tree (fresh processes,
    interleaved, best of ``repeats`` per step), with each one's ``--precision`` ("" for the
    default of sources without the option)."""
    out: dict[str, dict[str, list[float]]] = {name: {} for name in srcs}
    for _ in range(repeats):
        for name, src in srcs.items():
            with tempfile.TemporaryDirectory() as tmp:
                proc = subprocess.run(
                    [sys.executable, __file__, "--cli-stages-child", str(model_of(name)),
                     str(png), tmp, precisions[name]],
                    env={**os.environ, "PYTHONPATH": str(src)},
                    capture_output=True, text=True, check=True)
            for key, value in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                out[name].setdefault(key, []).append(value)
    return {name: {k: min(v) for k, v in r.items()} for name, r in out.items()}


def cli_timings(srcs: dict[str, Path], repeats: int, precisions: dict[str, str]
                ) -> dict[str, dict[str, float]]:
    """Start-up and the 2048 x 2048 map through ``cell-anomaly score``, for each source tree
    (several names may share one, with another ``--precision``, from ``precisions``; "" for
    none), interleaved (so that load changes hit each alike); best of ``repeats``. Each name
    trains its own model, in fp32 where it has a precision."""
    import imageio.v3 as iio

    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "fields").mkdir()
        for s in range(2):
            iio.imwrite(tmp / "fields" / f"f{s}.png",
                        make_field((512, 512), anomaly_fraction=0.0, seed=s)[0])
        big, _ = make_field((2048, 2048), n_cells=900, anomaly_fraction=0.05, seed=7)
        iio.imwrite(tmp / "big.png", big)
        iio.imwrite(tmp / "tiny.png", big[:64, :64])
        for name, src in srcs.items():
            t0 = time.perf_counter()
            prec = ["--precision", "fp32"] if precisions[name] else []
            _cli(src, ["train", "fields", "--out", f"{name}.safetensors", "--epochs", "1",
                       "--mode", "patch", "--device", "cpu", "--quiet", *prec], tmp)
            out[name] = {"train_cli_s": time.perf_counter() - t0, "help_s": [], "startup_s": [],
                         "map_2048_s": []}
        for _ in range(repeats):
            for name, src in srcs.items():
                r = out[name]
                prec = ["--precision", precisions[name]] if precisions[name] else []
                r["help_s"].append(_cli(src, ["--help"], tmp))
                r["startup_s"].append(_cli(src, ["score", f"{name}.safetensors", "tiny.png",
                                                 "--csv", "tiny.csv", "--device", "cpu",
                                                 "--quiet", *prec], tmp, f"{name}:startup"))
                r["map_2048_s"].append(_cli(src, ["score", f"{name}.safetensors", "big.png",
                                                  "--csv", "big.csv", "--heatmaps", "maps",
                                                  "--device", "cpu", "--quiet", *prec], tmp,
                                            f"{name}:map_2048"))
        stages = cli_stages(srcs, lambda name: tmp / f"{name}.safetensors", tmp / "big.png",
                            repeats, precisions)
    for name, r in out.items():
        for key in ("help_s", "startup_s", "map_2048_s"):
            r[key] = min(r[key])
        r["beyond_startup_s"] = max(r["map_2048_s"] - r["startup_s"], 0.0)
        for key in ("startup", "map_2048"):
            r[f"{key}_cpu_s"] = min(CLI_CPU["cpu"][f"{name}:{key}"])
        r["beyond_startup_cpu_s"] = max(r["map_2048_cpu_s"] - r["startup_cpu_s"], 0.0)
        r["steps"] = stages[name]
    return out


def train_2500(quick: bool) -> dict[str, Any]:
    """Train with default settings on 2,500 crops; returns time and data source."""
    if MALARIA.is_dir():
        images = load_images(find_images(MALARIA)).images[:2500]
        source = f"NIH malaria train/Uninfected ({len(images)} real crops, resized to 64x64)"
    else:
        images = make_cells(2500, size=64, seed=0).images
        source = "2,500 synthetic 64x64 crops (core.sample.make_cells)"
    config = TrainConfig(max_steps=20) if quick else TrainConfig()
    t0 = time.perf_counter()
    det = run_training(images, config, device="cpu")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "source": source, "steps": det.provenance["steps"],
            "epochs": det.provenance["epochs_run"], "quick": quick,
            "images_per_s": det.provenance["steps"] * config.batch_size / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="cap the 2,500-crop training at 20 steps, one CLI repeat "
                             "(smoke test only)")
    parser.add_argument("--baseline-src", type=Path, metavar="DIR",
                        help="also time the command line with the package sources in DIR "
                             "(e.g. ../main/src before a change)")
    parser.add_argument("--skip-train-2500", action="store_true",
                        help="leave out the 2,500-crop training (minutes)")
    parser.add_argument("--cli-repeats", type=int, default=3,
                        help="command-line runs of each kind per source tree (best of)")
    parser.add_argument("--cli-stages-child", nargs=4, metavar=("MODEL", "PNG", "DIR", "PREC"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cli_stages_child:
        model, png, out_dir = (Path(p) for p in args.cli_stages_child[:3])
        cli_stages_child(model, png, out_dir, args.cli_stages_child[3])
        return 0

    load = [round(v, 2) for v in os.getloadavg()]
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
           "load_average_start": load}
    print(f"# napari-cell-anomaly speed benchmark ({platform.processor() or platform.machine()}, "
          f"{env['cpus']} CPUs, torch {env['torch']}, {env['threads']} threads, "
          f"load average {load})", file=sys.stderr)
    res: dict[str, Any] = {"env": env}
    res["matmul_gflops"] = peak = matmul_gflops()
    res["onednn_gemm_gflops"] = gemm = onednn_gemm_gflops()

    print("command line (train, start-up, 2048 x 2048 map) ...", file=sys.stderr)
    # This tree twice: --precision fp32, and the default auto (what it resolves to here is
    # printed); a baseline tree without the option.
    auto = resolve_precision("auto", "cpu")
    res["env"]["auto_precision"] = auto
    srcs = {"fp32": ROOT / "src", "auto": ROOT / "src"}
    precisions = {"fp32": "fp32", "auto": "auto", "baseline": ""}
    if args.baseline_src:
        srcs = {"baseline": args.baseline_src.resolve(), **srcs}
    res["cli"] = cli_timings(srcs, repeats=1 if args.quick else args.cli_repeats,
                             precisions=precisions)

    print("network forward, 2048 x 2048 tiles ...", file=sys.stderr)
    big, _ = make_field((2048, 2048), n_cells=900, anomaly_fraction=0.05, seed=7)
    chw = np.ascontiguousarray((big.astype(np.float32) / 255.0).transpose(2, 0, 1))
    rows = []
    for label, config, channels_last, prec in (
            ("default v2", ModelConfig(), True, "fp32"),
            ("default v2, bf16 autocast", ModelConfig(), True, "bf16"),
            ("default v2, widths (16, 32, 64)", NARROW, True, "fp32"),
            ("default v1", V1, True, "fp32"),
            ("seed", ModelConfig.from_preset("seed"), False, "fp32")):
        torch.manual_seed(0)
        net = Autoencoder(config)
        fpp = net.flops_per_pixel()
        pixels = tile_pixels(2048, 2048, net.align)
        seconds = forward_seconds(net, chw, channels_last=channels_last, precision=prec)
        gflops = fpp * pixels / seconds / 1e9
        rows.append({"network": label, "channels_last": channels_last, "flops_per_pixel": fpp,
                     "tile_pixels": pixels, "forward_s": seconds, "gflops": gflops,
                     "peak_fraction": gflops / peak, "onednn_gemm_fraction": gflops / gemm})
    res["forward"] = rows
    seed_s = rows[-1]["forward_s"]

    print("AnomalyDetector.score stages ...", file=sys.stderr)
    fields = [make_field((512, 512), anomaly_fraction=0.0, seed=s)[0] for s in range(2)]
    det = run_training(fields, TrainConfig(max_steps=10, seed=0), device="cpu",
                       precision="fp32")
    assert det.mode == "patch"
    res["score_2048_fp32_s"] = best_of(lambda: det.to("cpu", "fp32").score(big), 3)
    det.to("cpu", "auto")
    score_s = best_of(lambda: det.score(big), repeats=3, warmup=1)
    res["score_2048_s"] = score_s
    res["stages"] = stage_shares(det, big, score_s)
    import imageio.v3 as iio

    with tempfile.TemporaryDirectory() as tmp_name:
        png = Path(tmp_name) / "big.png"
        iio.imwrite(png, big)
        res["read_png_s"] = best_of(lambda: read_image(png), 3)

    print("training throughput ...", file=sys.stderr)
    ips: dict[str, list[float]] = {"default v2": [], "default v2 bf16": [],
                                   "default v2 narrow": [], "default v1": []}
    for _ in range(2):  # interleaved
        for label, config, prec in zip(ips, (ModelConfig(), ModelConfig(), NARROW, V1),
                                       ("fp32", "bf16", "fp32", "fp32"), strict=True):
            ips[label].append(train_images_per_s(config, precision=prec))
    res["train_images_per_s"] = {label: max(v) for label, v in ips.items()}
    if not args.skip_train_2500:
        print("training on 2,500 crops with default settings ...", file=sys.stderr)
        res["train_2500"] = train_2500(args.quick)
    res["env"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]

    this = res["cli"]["auto"]
    beyond = this["beyond_startup_s"]
    ratio = seed_s / beyond if beyond > 0 else float("inf")

    def ok(good: bool) -> str:
        return "OK" if good else "MISSED"

    table = ["| measure | value | target |", "| --- | --- | --- |"]
    for name, r in res["cli"].items():
        tag = {"auto": f" (--precision auto = {auto} here, the default)",
               "fp32": " (--precision fp32)"}.get(name, f" ({name}: {srcs[name]})")
        table += [
            f"| `cell-anomaly score` 2048x2048 PNG -> CSV + heatmap TIFF, beyond start-up"
            f"{tag} | {r['beyond_startup_s']:.2f} s (whole run {r['map_2048_s']:.2f} s) | "
            + (f"<= {TARGET_CLI_MAP_S:.1f} s {ok(beyond <= TARGET_CLI_MAP_S)}"
               if name == "auto" else "") + " |",
            f"| ... the same vs the `seed` forward over the same tiles ({seed_s:.2f} s){tag} | "
            f"{seed_s / max(r['beyond_startup_s'], 1e-9):.1f}x faster | "
            + (f">= {TARGET_SEED_RATIO:.0f}x {ok(ratio >= TARGET_SEED_RATIO)}"
               if name == "auto" else "") + " |",
            f"| start-up: `cell-anomaly score` of a 64x64 PNG{tag} | {r['startup_s']:.2f} s | "
            + (f"<= {TARGET_STARTUP_S:.1f} s {ok(r['startup_s'] <= TARGET_STARTUP_S)}"
               if name == "auto" else "") + " |",
            f"| `cell-anomaly --help`{tag} | {r['help_s']:.2f} s | |",
            f"| CPU seconds (user + system, all threads) of the 2048x2048 run beyond the 64x64 "
            f"one / of the 64x64 one{tag} | {r['beyond_startup_cpu_s']:.2f} / "
            f"{r['startup_cpu_s']:.2f} s | |",
        ]
        steps = r["steps"]
        table.append(
            f"| steps of the command line's path in a fresh process{tag}: load the model"
            f" / read PNG / score (cold: first image) / write heatmap TIFF / write CSV; "
            f"the same score again (warm) | {steps['load_model_s']:.2f} / "
            f"{steps['read_png_s']:.2f} / {steps['score_cold_s']:.2f} / "
            f"{steps['write_heatmap_tiff_s']:.3f} / {steps['write_csv_s']:.3f} s; "
            f"{steps['score_warm_s']:.2f} s (CPU seconds of the scores, all threads: "
            f"{steps['score_cold_cpu_s']:.2f} cold, {steps['score_warm_cpu_s']:.2f} warm) | |")
    st = res["stages"]
    parts = [("preprocess", "preprocess_s"), ("network forward", "forward_s"),
             ("error maps", "error_maps_s"), ("latent density", "density_s"),
             ("windows + rest", "windows_rest_s")]
    shares = ", ".join(f"{label} {st[key]:.2f} s ({st[key] / score_s:.0%})"
                       for label, key in parts)
    table += [
        f"| `AnomalyDetector.score` 2048x2048, patch mode (in process, best of 3), precision "
        f"auto = {auto} / fp32 | {score_s:.2f} s: {shares} / {res['score_2048_fp32_s']:.2f} s"
        " | |",
        f"| ... removed from it: the 1-SSIM map / encoding the {st['n_windows']} windows again "
        f"| {st['removed_ssim_map_s']:.2f} s / {st['removed_window_encoding_s']:.2f} s | |",
        f"| ... latent density of the {st['n_windows']} windows (KDE, float32 screen + exact "
        f"rescoring) / the exact float64 sum at every position | {st['density_s']:.2f} s / "
        f"{st['density_all_positions_exact_s']:.2f} s | |",
        f"| reading the 2048x2048 PNG | {res['read_png_s']:.2f} s | |",
    ]
    for row in rows:
        layout = "channels_last" if row["channels_last"] else "plain NCHW"
        table.append(
            f"| forward `{row['network']}` ({layout}), {row['flops_per_pixel']:.0f} FLOP/px, "
            f"{row['tile_pixels'] / 1e6:.1f} Mpx of tiles | {row['forward_s']:.2f} s, "
            f"{row['gflops']:.1f} GFLOP/s ({row['peak_fraction']:.0%} of the {peak:.0f} GFLOP/s "
            f"matmul, {row['onednn_gemm_fraction']:.0%} of oneDNN GEMM) | |")
    tips = res["train_images_per_s"]
    table.append(f"| training throughput, 64x64 crops, batch 32: default v2 / its forward in "
                 f"bf16 / v2 with widths (16, 32, 64) / v1 | {tips['default v2']:.0f} / "
                 f"{tips['default v2 bf16']:.0f} / {tips['default v2 narrow']:.0f} / "
                 f"{tips['default v1']:.0f} images/s | |")
    if "train_2500" in res:
        tr = res["train_2500"]
        table.append(
            f"| train with defaults on {tr['source']}: {tr['epochs']} epochs, {tr['steps']} "
            f"steps{' (QUICK, capped)' if tr['quick'] else ''} | {tr['seconds']:.0f} s "
            f"({tr['images_per_s']:.0f} images/s overall) | < {TARGET_TRAIN_S / 60:.0f} min "
            f"{ok(tr['seconds'] < TARGET_TRAIN_S)} |")
    print("\n".join(table))
    print(f"\nload average start {env['load_average_start']}, end "
          f"{res['env']['load_average_end']}; torch threads {env['threads']}; "
          f"OMP_WAIT_POLICY {env['OMP_WAIT_POLICY']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
