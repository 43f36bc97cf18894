"""GPU check: the deep methods end to end from JPEG files, timed -- one command, < 8 minutes.

    PYTHONPATH=src python benchmarks/gpu_check.py --json gpu_check.json

1. Writes a generated image-text set to ``--out-dir`` (default: a folder in the system's
   temporary directory, reused when it already holds the same set): ``--n`` JPEG files
   (default 20,000, ``--size`` 224 x 224) whose colours, shapes and places depend on the
   labels (8 classes, about 10 % of items with several labels), captions of label words and
   filler words, and a manifest in the format of docs/data.md (``image,text,labels,split``;
   10 % ``query``, the rest ``train`` = retrieval). The images are drawn and encoded by
   ``--gen-workers`` processes (default: one per CPU;
   :func:`cmhash.data.image_folder.write_synthetic_image_folder`).
2. For each of ``--methods`` (default TA-ADCMH with CNN-F, SDCH with AlexNet, DCMH with
   CNN-F; the papers' hyper-parameters, ``--epochs`` epochs) runs the file pipeline: manifest
   -> lazy image files -> DataLoader with ``--workers`` worker processes (pinned memory on
   CUDA) -> ``fit`` -> ``encode`` -> ``evaluate_hasher`` (query split against the training
   set, as hashed codes and as learned codes), with ``device`` auto, bf16 autocast and
   channels_last on CUDA (``amp="auto"``; float32 on the CPU). Images: the papers' geometry
   (shorter side 256, centre / random crop 224 for CNN-F, 227 for AlexNet) when ``--size`` is
   at least 224, else a ``--size`` crop (small CPU runs). Without ``--weights-cnnf`` /
   ``--weights-alexnet`` (local files: MatConvNet ``imagenet-vgg-f.mat``, a Caffe or
   torchvision state_dict, ...) the networks start from random weights, which the output says;
   the inputs are then normalised with ImageNet's mean / std, with weights as the weights ask.
   SDCH runs with ``feature_bound="tanh"`` (stable from random weights; not in the paper).
3. Prints per method: training images per second (image-network passes over the training
   set, forward + backward or forward only, divided by the epochs' seconds), seconds per
   epoch, peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak resident set
   of this process, reset per method where Linux allows it), mAP of both tasks and chance:
   the label prior (the share of relevant query / database pairs, the mAP of a random
   ranking) and the mAP of random codes of the same length. ``--json OUT`` writes the records
   with the date, the GPU's name and the torch version.

A global time guard (``--budget`` seconds from the start, default 450) gives each method a
share of the time left (weighted by its image passes) as the estimator's ``time_limit``: no
epoch starts that would end past it, and the output says when a method stopped early.

Estimate behind the default ``--epochs 10`` (n = 20,000: 18,000 training items; H200):
forward FLOPs per image are about 1.45 G for CNN-F at 224 and 2.3 G for AlexNet at 227
(multiply-adds x 2), a training step about 3x that. One epoch is TA-ADCMH: 2 training passes
of CNN-F (f1, f2) = 36,000 x 4.3 GFLOP = 155 TFLOP; DCMH: 1 pass = 78 TFLOP; SDCH: 1 training
pass of AlexNet (18,000 x 6.9 GFLOP = 124 TFLOP) + the B-step's forward pass (41 TFLOP);
about 400 TFLOP for an epoch of all three, ~4 s at a sustained 100 TFLOP/s of bf16 (an
eighth of the H200's dense peak; these small convolutions and fc layers reach no more). The
input pipeline bounds it instead: 90,000 JPEG decodes + resize + crop per epoch of all
three, ~1.5-2 ms each on one core, 12 workers -> 6,000-8,000 images/s -> 11-15 s per epoch,
so 10 epochs ~ 2.5 min; fixed costs ~ 1 min: generation (~4 ms per image on one core ->
~5 s on 16), the initial output passes of TA-ADCMH (2 x 18,000 images) and DCMH (18,000),
evaluation (~22,000 image reads per method: the queries and the hashed database) -- 120,000
reads, ~20 s --, start-up. About 3.5 min in all, under half the budget; the guard covers a
pipeline twice as slow.

Small CPU run (the test's settings):
    PYTHONPATH=src python benchmarks/gpu_check.py --n 64 --size 32 --epochs 1 --bits 8 \\
        --fc-dim 64 --workers 0 --device cpu --json /tmp/gc.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

METHODS = ("ta-adcmh", "sdch", "dcmh")
#: image backbone, weights option, image-network passes over the training set per epoch
#: (training passes, forward-only passes), relative cost for the time guard
PLAN = {"ta-adcmh": ("cnnf", "weights_cnnf", 2, 0),     # f1 (I2T) and f2 (T2I)
        "sdch": ("alexnet", "weights_alexnet", 1, 1),    # training + the B-step's sign(Z)
        "dcmh": ("cnnf", "weights_cnnf", 1, 0)}
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1.0)
DATA_VERSION = 1


def _args(argv):
    cpus = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="generated image-text pairs")
    ap.add_argument("--size", type=int, default=224, help="generated image side (pixels)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--workers", type=int, default=max(0, min(12, cpus - 2)),
                    help="DataLoader worker processes")
    ap.add_argument("--gen-workers", type=int, default=cpus,
                    help="processes writing the generated images")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights-cnnf", help="local weights file for CNN-F (TA-ADCMH, DCMH)")
    ap.add_argument("--weights-alexnet", help="local weights file for AlexNet (SDCH)")
    ap.add_argument("--fc-dim", type=int, default=4096,
                    help="width of fc6 / fc7 (4096 in the papers; smaller for quick checks)")
    ap.add_argument("--out-dir", default=str(Path(tempfile.gettempdir()) / "cmhash_gpu_check"))
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds for the whole run (time guard)")
    ap.add_argument("--json", help="write the records here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        ap.error(f"--methods: unknown {bad}; choose from {list(METHODS)}")
    for name in ("n", "size", "epochs", "bits", "fc_dim"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if args.n < 20:
        ap.error("--n must be at least 20 (a query split of 10 % and a training set)")
    if args.size < 16:
        ap.error("--size must be at least 16 (CNN-F / AlexNet conv1 is 11 x 11, stride 4)")
    for name in ("weights_cnnf", "weights_alexnet"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            ap.error(f"--{name.replace('_', '-')}: no such file: {path}")
    return args


# ------------------------------------------------------------------------------- data
def prepare_data(out_dir: Path, n: int, size: int, jobs: int, seed: int) -> tuple[Path, float]:
    """The manifest of the generated set under ``out_dir`` (written unless the folder already
    holds this set, recorded in ``gpu_check_data.json``) and the seconds spent writing it."""
    from cmhash._io import atomic_write
    from cmhash.data.image_folder import write_synthetic_image_folder

    root = Path(out_dir) / f"set_{n}x{size}_s{seed}"
    meta_path = root / "gpu_check_data.json"
    meta = {"version": DATA_VERSION, "n": n, "size": size, "seed": seed, "n_classes": 8,
            "multilabel_rate": 0.1}
    manifest = root / "manifest.csv"
    if meta_path.is_file() and manifest.is_file():
        try:
            if json.loads(meta_path.read_text()) == meta:
                return manifest, 0.0
        except ValueError:
            pass
    start = time.perf_counter()
    write_synthetic_image_folder(root, n, image_size=size, n_classes=8, multilabel_rate=0.1,
                                 n_query=max(1, n // 10), n_jobs=max(1, jobs),
                                 random_state=seed)
    with atomic_write(meta_path, "w") as fh:
        fh.write(json.dumps(meta))
    return manifest, time.perf_counter() - start


def image_transform(backbone: str, size: int):
    """The papers' geometry at 224 and above; a ``size`` crop for small quick runs."""
    from cmhash.data import ImageTransform

    if size >= 224:
        return ImageTransform.for_backbone(backbone, **IMAGENET)
    return ImageTransform(size=size, resize=int(round(size * 256 / 224)), **IMAGENET)


def chance_levels(ds, n_bits: int, seed: int) -> dict:
    """Per task: the label prior (mean share of relevant database items per query, the mAP
    a random ranking approaches) and the mAP of random +-1 codes of ``n_bits`` bits."""
    from cmhash.metrics import mean_average_precision
    from cmhash.protocol import relevant_fraction

    lq, ldb = ds.labels_of("query"), ds.labels_of("retrieval")
    prior = float(relevant_fraction(lq, ldb))
    rng = np.random.default_rng(seed)
    out = {"label_prior": {}, "random_codes_map": {}}
    for task in ("i2t", "t2i"):
        q = rng.choice(np.array([-1, 1], dtype=np.int8), size=(lq.shape[0], n_bits))
        db = rng.choice(np.array([-1, 1], dtype=np.int8), size=(ldb.shape[0], n_bits))
        out["label_prior"][task] = prior
        out["random_codes_map"][task] = float(mean_average_precision(q, db, lq, ldb))
    return out


# ----------------------------------------------------------------------------- memory
def _rss_peak_reset() -> bool:
    """Reset this process's peak resident set (Linux: ``/proc/self/clear_refs`` = 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_peak_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ---------------------------------------------------------------------------- methods
def make_estimator(method: str, args, device: str, weights, time_limit: float):
    """The method with its papers' hyper-parameters on image files."""
    from cmhash import make_hasher

    common = dict(n_bits=args.bits, n_epochs=args.epochs, device=device, amp="auto",
                  num_workers=args.workers, random_state=args.seed, time_limit=time_limit,
                  fc_dim=args.fc_dim, image_weights=weights)
    if method == "sdch":
        # SDCH's image-data presets (batch 64, Table 1's 4096-4096-256 text network)
        return make_hasher("sdch", image_backbone="alexnet", text_backbone="text-sdch",
                           batch_size=64, feature_bound="tanh", **common)
    if method == "ta-adcmh":
        return make_hasher("ta-adcmh", image_backbone="cnnf", batch_size=128, **common)
    return make_hasher("dcmh", image_backbone="cnnf", batch_size=128, **common)


def run_method(method: str, args, device, manifest: Path, datasets: dict, time_limit: float):
    import torch

    from cmhash import evaluate_hasher
    from cmhash.data import load_image_text_dataset
    from cmhash.deep.training import Precision

    backbone, weights_opt, train_passes, eval_passes = PLAN[method]
    weights = getattr(args, weights_opt)
    if backbone not in datasets:
        datasets[backbone] = load_image_text_dataset(
            manifest, transform=image_transform(backbone, args.size))
    ds = datasets[backbone]
    n_train = int(ds.indices("train").size)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_reset = _rss_peak_reset() if not cuda else None
    h = make_estimator(method, args, str(device), weights, time_limit)
    caught = []
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h.fit(*ds.views("train"), ds.labels_of("train"))
        if cuda:
            torch.cuda.synchronize(device)
        fit_seconds = time.perf_counter() - start
        t_eval = time.perf_counter()
        res = {db: evaluate_hasher(h, ds, database=db) for db in ("hashed", "learned")}
        eval_seconds = time.perf_counter() - t_eval
    epoch_seconds = [float(s) for s in h.timings_["epoch_seconds"]]
    epochs = int(h.n_iter_)
    passes = train_passes + eval_passes
    if cuda:
        peak, peak_kind = int(torch.cuda.max_memory_allocated(device)), \
            "cuda max_memory_allocated"
    else:
        peak = _rss_peak_bytes()
        peak_kind = "peak RSS of this process" + ("" if rss_reset else " (since its start)")
    record = {
        "method": method, "backbone": backbone, "n_bits": args.bits,
        "weights": str(weights) if weights else None,
        "init": "pretrained: " + str(weights) if weights else "random (no weights file)",
        "input_size": int(ds.get("train", "image").shape[-1]),
        "n_train": n_train, "n_query": int(ds.indices("query").size),
        "device": str(device), "amp": Precision(h.amp, device).mode,
        "channels_last": cuda, "workers": args.workers,
        "epochs_requested": args.epochs, "epochs_trained": epochs,
        "stopped_by_time_guard": bool(h.timings_["stopped_by_time_limit"]),
        "time_limit_seconds": time_limit,
        "fit_seconds": fit_seconds, "epoch_seconds": epoch_seconds,
        "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else None,
        "image_passes_per_epoch": {"training": train_passes, "forward_only": eval_passes},
        "images_per_second": (passes * n_train * epochs / sum(epoch_seconds)
                              if epoch_seconds and sum(epoch_seconds) > 0 else None),
        "eval_seconds": eval_seconds,
        "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
        "map": {db: {t: float(r["tasks"][t]["map"]) for t in ("i2t", "t2i")}
                for db, r in res.items()},
        "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:160]}"
                            for w in caught}),
    }
    return record


def _fmt_record(r, chance) -> str:
    mib = 2 ** 20
    lines = [f"== {r['method']} ({r['backbone']} {r['input_size']}x{r['input_size']}, "
             f"{r['n_bits']} bits, {r['init']}, {r['device']}, amp {r['amp']}"
             f"{', channels_last' if r['channels_last'] else ''}, {r['workers']} workers)"]
    stop = " -- stopped by the time guard" if r["stopped_by_time_guard"] else ""
    ips = r["images_per_second"]
    spe = r["seconds_per_epoch"]
    lines.append(f"   epochs {r['epochs_trained']}/{r['epochs_requested']}{stop}; "
                 f"{spe:.2f} s/epoch; {ips:,.0f} images/s "
                 f"({r['image_passes_per_epoch']['training']} training + "
                 f"{r['image_passes_per_epoch']['forward_only']} forward-only passes of "
                 f"{r['n_train']} images per epoch); fit {r['fit_seconds']:.1f} s, "
                 f"evaluation {r['eval_seconds']:.1f} s")
    lines.append(f"   peak memory {r['peak_memory_bytes'] / mib:,.0f} MiB "
                 f"({r['peak_memory_kind']})")
    for db in ("hashed", "learned"):
        m = r["map"][db]
        lines.append(f"   mAP ({db} database)  I->T {m['i2t']:.4f}  T->I {m['t2i']:.4f}   "
                     f"chance: label prior {chance['label_prior']['i2t']:.4f}, random codes "
                     f"I->T {chance['random_codes_map']['i2t']:.4f} "
                     f"T->I {chance['random_codes_map']['t2i']:.4f}")
    for w in r["warnings"]:
        lines.append(f"   warning: {w}")
    return "\n".join(lines)


def main(argv=None) -> int:
    t0 = time.perf_counter()
    args = _args(argv)
    out_dir = Path(args.out_dir)
    # the images first, before torch starts threads (the writers are forked processes)
    manifest, gen_seconds = prepare_data(out_dir, args.n, args.size, args.gen_workers,
                                         args.seed)
    print(f"data: {args.n} JPEG files {args.size}x{args.size} + manifest at {manifest} "
          f"({'written in %.1f s' % gen_seconds if gen_seconds else 'reused'})", flush=True)

    import torch

    from cmhash.deep._torch_base import resolve_device

    device = resolve_device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"device {device}{' (' + gpu + ')' if gpu else ''}; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs; {args.workers} loader workers; budget {args.budget:.0f} s",
          flush=True)
    for opt, kind in (("weights_cnnf", "CNN-F"), ("weights_alexnet", "AlexNet")):
        if getattr(args, opt) is None and any(PLAN[m][1] == opt for m in args.methods):
            print(f"no --{opt.replace('_', '-')}: {kind} starts from random weights", flush=True)
    datasets: dict = {}
    records = []
    chance = None
    for i, method in enumerate(args.methods):
        left = args.budget - (time.perf_counter() - t0)
        cost = {m: PLAN[m][2] + PLAN[m][3] for m in args.methods[i:]}
        share = left * cost[method] / sum(cost.values())
        time_limit = max(1e-3, 0.8 * share)      # the rest of the share: setup + evaluation
        if left <= 0:
            print(f"{method}: the budget is spent; 1 epoch only", flush=True)
        print(f"{method}: training {args.epochs} epochs (time guard {time_limit:.0f} s) ...",
              flush=True)
        try:
            rec = run_method(method, args, device, manifest, datasets, time_limit)
        except Exception as exc:          # report it and go on with the other methods
            import traceback
            rec = {"method": method, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()}
            records.append(rec)
            print(f"== {method}: FAILED -- {rec['error']}\n{rec['traceback']}", flush=True)
            continue
        if chance is None:
            chance = chance_levels(next(iter(datasets.values())), args.bits, args.seed)
        rec["chance"] = chance
        records.append(rec)
        print(_fmt_record(rec, chance), flush=True)
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s (budget {args.budget:.0f} s)", flush=True)
    doc = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "gpu": gpu, "torch": torch.__version__, "device": str(device),
           "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "n": args.n, "size": args.size, "epochs": args.epochs, "bits": args.bits,
           "fc_dim": args.fc_dim, "workers": args.workers, "budget_seconds": args.budget,
           "generate_seconds": gen_seconds, "total_seconds": total, "manifest": str(manifest),
           "records": records}
    if args.json:
        from cmhash._io import atomic_write
        with atomic_write(Path(args.json), "w") as fh:
            fh.write(json.dumps(doc, indent=2))
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
