"""Peak memory of fitting SDCH (AlexNet) on image files: images stay on disk / uint8.

Writes ``--n`` generated JPEG images (``--size`` x ``--size``, content depending on the labels)
with captions and a manifest into ``--dir`` (in a child process, so that this process's peak
resident memory is the fit's), loads the manifest (lazy image files, bag-of-words text) and
fits SDCH with the paper's AlexNet (fc 4096-4096-256, 227 x 227 crops of images resized to
256) for ``--epochs`` epochs. Prints and writes (``--json``) the peak RSS of this process
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), and that of the same fit on the first
``--batch-size`` items only (one batch, in a child process: the memory of the model, its
gradients, Adam's moments, one batch's activations and the interpreter -- everything that does
not grow with the number of images). Two bounds are reported:

    bound_bytes          = 1.5 x the images' uint8 bytes (n x 3 x size x size)
                           + the measured footprint of training the model (the one-batch fit)
    analytic_bound_bytes = 1.5 x the images' uint8 bytes + 16 bytes per parameter
                           (parameters, gradients, Adam's two moments; no activations, no
                           interpreter)

    PYTHONPATH=src python benchmarks/image_memory.py --n 2000 --dir /tmp/img2000 --json mem.json

``--phases`` (after a run has written the images): the one-batch fit with the peak RSS of each
phase (ITQ forward pass, training forward + backward, Adam step, B-step forward pass).
``--breakdown``: one synthetic training step of the networks alone, phase by phase
(``--plain-order``: as before the memory changes). docs/deep.md, "Memory of fitting SDCH on
image files", has the numbers.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux


def _status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident set (Linux >= 4.0: clear_refs = 5)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def breakdown(batch_size: int = 64, fc_dim: int = 4096, text_dim: int = 40,
              lean: bool = True, recompute: bool = True) -> dict:
    """The resident memory of SDCH's training step, phase by phase, in this fresh process:
    the interpreter with torch imported, the networks' parameters (AlexNet at 227 x 227 with
    fc 4096-4096-256, a 512-unit text MLP, fc4), one batch's forward pass (activations kept
    for the backward pass), the backward pass (gradients), the first Adam step (its two
    moments), and a second forward + backward pass with everything in place -- each as the
    growth of the resident set and the peak above what was resident before the phase
    (``VmRSS`` / ``VmHWM``, the peak reset before each phase). ``lean=False``: the gradients
    are cleared after the forward pass (as before the change), ``recompute=False``: the
    ReLU -> LRN -> pool maps are kept (``AlexNet.recompute_activations``)."""
    mib = 2 ** 20
    out = {"python_numpy_bytes": _status_bytes("VmRSS")}
    import torch

    import cmhash.deep.sdch  # noqa: F401  (what a fit imports)
    from cmhash.deep.backbones import build_backbone

    torch.manual_seed(0)
    out["after_import_torch_bytes"] = _status_bytes("VmRSS")

    def phase(name, fn):
        before = _status_bytes("VmRSS")
        _reset_peak()
        result = fn()
        out[name] = {"growth_bytes": _status_bytes("VmRSS") - before,
                     "peak_above_start_bytes": _status_bytes("VmHWM") - before}
        return result

    def build():
        f = build_backbone({"kind": "alexnet", "in_shape": [3, 227, 227], "out_dim": 256,
                            "fc_dim": fc_dim})
        g = build_backbone({"kind": "mlp", "in_shape": [text_dim], "out_dim": 256,
                            "hidden": [512]})
        h = build_backbone({"kind": "mlp", "in_shape": [256], "out_dim": 64, "hidden": []})
        return f, g, h

    f, g, h = phase("parameters", build)
    f.recompute_activations = recompute
    params = [p for net in (f, g, h) for p in net.parameters()]
    out["parameters_count"] = int(sum(p.numel() for p in params))
    opt = torch.optim.Adam(params, lr=1e-4)
    x = torch.randint(0, 256, (batch_size, 3, 227, 227), dtype=torch.uint8)
    y = (torch.rand(batch_size, text_dim) < 0.1).float()

    def forward():
        xb = (x.float() / 255.0 - 0.45) / 0.225
        return h(torch.cat([f(xb), g(y)]))

    def backward(z):
        z.backward(torch.randn_like(z))

    def train_step():
        if lean:
            opt.zero_grad(set_to_none=True)
        z = forward()
        if not lean:
            opt.zero_grad(set_to_none=True)
        backward(z)
        opt.step()

    z = phase("forward_activations", forward)
    phase("backward_gradients", lambda: backward(z))
    del z
    phase("first_adam_step", opt.step)
    phase("second_training_step", train_step)
    out["peak_rss_bytes"] = _status_bytes("VmHWM")
    out["summary_mib"] = {
        k.replace("_bytes", ""): (f"+{v['growth_bytes'] / mib:.0f} resident after, peak "
                                  f"+{v['peak_above_start_bytes'] / mib:.0f}"
                                  if isinstance(v, dict) else round(v / mib))
        for k, v in out.items() if k != "parameters_count"}
    return out


def phase_peaks(manifest: Path, batch_size: int, fc_dim: int) -> dict:
    """The one-batch SDCH fit (as ``--reference``) with the peak RSS of each phase: the ITQ
    initialisation's forward pass, the training step's forward + backward pass (up to the
    feature networks' optimiser step), that Adam step, and the B-step's forward pass. Each
    phase's peak (``VmHWM`` with the peak reset at its start) in MiB."""
    import warnings

    import torch

    from cmhash.data import ImageTransform, load_image_text_dataset
    from cmhash.deep import sdch

    mib = 2 ** 20
    peaks: dict = {}

    def timed(name, fn):
        def run(*a, **k):
            _reset_peak()
            out = fn(*a, **k)
            peaks[name] = max(peaks.get(name, 0), round(_status_bytes("VmHWM") / mib))
            return out
        return run

    est = sdch.SDCH
    orig = {n: getattr(est, n) for n in ("_itq_codes", "_sign_codes", "_train_step")}
    est._itq_codes = timed("itq_forward", orig["_itq_codes"])
    est._sign_codes = timed("b_step_forward", orig["_sign_codes"])
    adam_step = torch.optim.Adam.step

    def step(self, *a, **k):               # the feature networks' step (the larger one)
        if sum(p.numel() for g in self.param_groups for p in g["params"]) > 1e6:
            peaks["forward_backward"] = max(peaks.get("forward_backward", 0),
                                            round(_status_bytes("VmHWM") / mib))
            _reset_peak()
            out = adam_step(self, *a, **k)
            peaks["adam_step"] = max(peaks.get("adam_step", 0),
                                     round(_status_bytes("VmHWM") / mib))
            return out
        return adam_step(self, *a, **k)

    def train_step(self, *a, **k):
        _reset_peak()
        return orig["_train_step"](self, *a, **k)

    torch.optim.Adam.step, est._train_step = step, train_step
    try:
        tf = ImageTransform.for_backbone("alexnet", mean=(0.485, 0.456, 0.406),
                                         std=(0.229, 0.224, 0.225), scale=1.0)
        ds = load_image_text_dataset(manifest, transform=tf)
        keep = np.arange(batch_size)
        h = est(64, image_backbone="alexnet", fc_dim=fc_dim, n_epochs=1, batch_size=batch_size,
                feature_bound="tanh", device="cpu", warmup=False, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h.fit(ds.get("train", "image")[keep], ds.get("train", "text")[keep],
                  ds.labels_of("train")[keep])
    finally:
        torch.optim.Adam.step = adam_step
        for n, f in orig.items():
            setattr(est, n, f)
    return peaks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dir")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--fc-dim", type=int, default=4096)
    ap.add_argument("--json")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--reference", help="(internal) fit on one batch, write the peak here")
    ap.add_argument("--breakdown", action="store_true",
                    help="only the phase-by-phase memory of one training step (no images)")
    ap.add_argument("--phases", action="store_true",
                    help="the one-batch fit with the peak RSS of each phase (MiB)")
    ap.add_argument("--plain-order", action="store_true",
                    help="(--breakdown) as before the memory changes: gradients cleared "
                         "after the forward pass, the ReLU -> LRN -> pool maps kept")
    args = ap.parse_args(argv)
    if args.breakdown:
        doc = breakdown(args.batch_size, args.fc_dim, lean=not args.plain_order,
                        recompute=not args.plain_order)
        print(json.dumps(doc["summary_mib"], indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2))
        return 0
    if not args.dir:
        ap.error("--dir is needed (where the generated images go)")
    if args.phases:
        manifest = Path(args.dir) / f"images{args.n}x{args.size}" / "manifest.csv"
        if not manifest.exists():
            ap.error(f"--phases reads an existing set: run without --phases first ({manifest})")
        print(json.dumps(phase_peaks(manifest, args.batch_size, args.fc_dim)))
        return 0
    root = Path(args.dir) / f"images{args.n}x{args.size}"
    manifest = root / "manifest.csv"
    if args.generate_only:
        from cmhash.data.image_folder import write_synthetic_image_folder

        write_synthetic_image_folder(root, args.n, image_size=args.size, n_classes=6,
                                     n_query=0, random_state=0)   # all 2,000 are trained on
        return 0
    start = time.perf_counter()
    if not manifest.exists():
        subprocess.run([sys.executable, __file__, "--generate-only", "--n", str(args.n),
                        "--size", str(args.size), "--dir", args.dir], check=True)
    gen_seconds = time.perf_counter() - start

    import torch

    from cmhash import DegenerateCodesWarning
    from cmhash.data import ImageTransform, load_image_text_dataset
    from cmhash.deep.sdch import SDCH

    tf = ImageTransform.for_backbone("alexnet", mean=(0.485, 0.456, 0.406),
                                     std=(0.229, 0.224, 0.225), scale=1.0)
    ds = load_image_text_dataset(manifest, transform=tf)
    X, T, Y = ds.get("train", "image"), ds.get("train", "text"), ds.labels_of("train")
    if args.reference:
        keep = np.arange(min(args.batch_size, len(X)))
        X, T, Y = X[keep], T[keep], Y[keep]
    rss_before = _rss_bytes()
    h = SDCH(64, image_backbone="alexnet", fc_dim=args.fc_dim, n_epochs=args.epochs,
             batch_size=args.batch_size, feature_bound="tanh", device="cpu", warmup=False,
             num_workers=args.workers, random_state=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateCodesWarning)   # 1 epoch: not a quality run
        h.fit(X, T, Y)
    fit_seconds = time.perf_counter() - start
    peak = _rss_bytes()
    if args.reference:
        Path(args.reference).write_text(json.dumps({"peak_rss_bytes": peak}))
        return 0
    ref_json = Path(args.dir) / "reference_peak.json"
    subprocess.run([sys.executable, __file__, "--n", str(args.n), "--size", str(args.size),
                    "--dir", args.dir, "--epochs", str(args.epochs), "--batch-size",
                    str(args.batch_size), "--workers", str(args.workers), "--fc-dim",
                    str(args.fc_dim), "--reference", str(ref_json)], check=True)
    ref_peak = json.loads(ref_json.read_text())["peak_rss_bytes"]
    n_params = sum(int(v.size) for v in h.network_states_.values())
    image_bytes = args.n * 3 * args.size * args.size
    model_bytes = 16 * n_params
    doc = {"n_images": args.n, "image_size": args.size, "n_train": int(len(X)),
           "epochs": args.epochs, "batch_size": args.batch_size, "workers": args.workers,
           "torch_threads": torch.get_num_threads(),
           "image_uint8_bytes": image_bytes, "model_parameters": n_params,
           "model_training_bytes": model_bytes,
           "one_batch_fit_peak_rss_bytes": ref_peak,
           "bound_bytes": int(1.5 * image_bytes + ref_peak),
           "analytic_bound_bytes": int(1.5 * image_bytes + model_bytes),
           "rss_before_fit_bytes": rss_before, "peak_rss_bytes": peak,
           "peak_minus_one_batch_fit_bytes": peak - ref_peak,
           "float32_copy_of_images_bytes": 4 * image_bytes,
           "generate_seconds": gen_seconds, "fit_seconds": fit_seconds}
    mib = 2 ** 20
    print(f"{args.n} images {args.size}x{args.size}: uint8 {image_bytes / mib:.0f} MiB "
          f"(float32 {4 * image_bytes / mib:.0f} MiB); model {n_params / 1e6:.1f} M parameters "
          f"({model_bytes / mib:.0f} MiB with gradients and Adam moments)")
    print(f"peak RSS {peak / mib:.0f} MiB (before the fit {rss_before / mib:.0f} MiB; the same "
          f"fit on one batch of {args.batch_size} images {ref_peak / mib:.0f} MiB: the images add "
          f"{(peak - ref_peak) / mib:.0f} MiB); fit {fit_seconds:.0f} s for {args.epochs} "
          f"epoch(s)")
    print(f"bound 1.5 x uint8 + measured model footprint: {doc['bound_bytes'] / mib:.0f} MiB; "
          f"1.5 x uint8 + 16 B/parameter: {doc['analytic_bound_bytes'] / mib:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
