"""The ``cmhash`` command line.

    cmhash demo
    cmhash evaluate --method batch --data PATH --bits 16 32 64 128 --seeds 5 --json out.json --quiet
    cmhash bench --methods batch asfoh amsh --data PATH --out-dir results/
    cmhash fit --method batch --data PATH --bits 64 --out model.npz
    cmhash fit --method batch --image img.npy --text txt.npy --labels y.npy --n-query 0 --out m.npz
    cmhash encode --model model.npz --data PATH --split query --modality image --out q.npz
    cmhash encode --model model.npz --text db.npy --out db.npz          # no labels needed
    cmhash search --database db.npz --queries q.npz -k 10
    cmhash sweep --method ascmh --data PATH --param-name omega --values 0 0.001 0.01 0.1 1
    cmhash scale --method batch --data synthetic:nuswide-like --ns 25000 50000 100000 184577
    cmhash plot --json out.json --kind map --out map.png

``--data`` is a file path (layout and preset auto-detected; .npy arrays are named by their
file stem), a list of files joined by ``+``, an image-text manifest (``images.csv`` /
``.jsonl``: image files + captions + labels, docs/data.md), or
``synthetic:<preset or key=value,...>``; ``--image`` / ``--text`` / ``--labels`` give one file
per role and ``--image-key`` / ``--text-key`` / ``--label-key`` name arrays
(:mod:`cmhash.cli_inputs`). Results (tables, search hits) go to stdout; status messages,
warnings and errors go through ``logging`` to stderr (``--quiet``: warnings and errors only;
``--verbose``: debug; ``--log-file``: also to a file; :mod:`cmhash.cli_output`). Options a
command would ignore are refused.

Exit status:

* 0 -- success;
* 2 -- usage error: argparse's own (unknown option, missing or badly typed argument: usage
  line plus ``cmhash <command>: error: ...``) and bad input found once the arguments are
  parsed -- a ValueError, TypeError or FileNotFoundError from checking options, parameters,
  dataset specs and files (e.g. ``--n-train`` above the data's size, an unknown method or
  parameter, a missing or unreadable data / model file, an ``--out`` that is a directory or
  in a directory that does not exist: all checked before any fit);
* 1 -- runtime failure of a well-formed command: RuntimeError (e.g. a crashed scale
  worker), ImportError (an optional dependency missing), another OSError (e.g. permission
  denied or a full disk while writing an output), ArithmeticError (e.g. a diverged fit's
  FloatingPointError), MemoryError;
* 141 -- stdout was closed by its reader (``cmhash search ... | head``): the command stops
  quietly, as a program killed by SIGPIPE (no "Broken pipe" traceback).

Errors with status 1 or 2 print ``cmhash <command>: error: <message>`` on stderr, without a
traceback; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from ._io import atomic_write
from .cli_inputs import (add_data_options, as_query_matrix, check_output_dir, check_output_file,
                         encode_input, load_data, require_queries)
from .cli_cluster import (add_cluster_options, cluster_client, cluster_settings, dask_fit,
                          encode_to_store, is_zarr_path, store_index, uses_cluster)
from .cli_output import BROKEN_PIPE_STATUS, configured_logging, silence_closed_stdout

log = logging.getLogger("cmhash")


# ----------------------------------------------------------------------------- helpers
def _parse_value(text: str):
    """``"0.01"`` -> 0.01, ``"500,1000"`` -> (500, 1000), ``"true"`` -> True, else the string."""
    if "," in text:
        return tuple(_parse_value(t) for t in text.split(",") if t != "")
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse_params(items) -> dict:
    params = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--param expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = _parse_value(value.strip())
    return params


def _named_params(method: str, attr: str, name: str) -> dict:
    """A method's ``PRESETS[name]`` or ``VARIANTS[name]``, or a ValueError naming the choices."""
    from .base import get_method

    if attr == "PRESETS" and (name.endswith(".json") or Path(name).is_file()):
        from .tune import load_hparams     # a file written by `cmhash tune`
        return load_hparams(name, method)
    table = getattr(get_method(method), attr, {})
    if name not in table:
        what = "hyper-parameter preset" if attr == "PRESETS" else "variant"
        raise ValueError(f"{method} has no {what} {name!r}; available: {sorted(table)}")
    return dict(table[name])


def _method_params(method: str, args) -> dict:
    """Constructor parameters from --hparams (class PRESETS), --variant (VARIANTS), --param."""
    params = {}
    if getattr(args, "hparams", None):
        params.update(_named_params(method, "PRESETS", args.hparams))
    if getattr(args, "variant", None):
        params.update(_named_params(method, "VARIANTS", args.variant))
    explicit = _parse_params(getattr(args, "param", None))
    params.update(explicit)
    _check_param_names(method, params)
    # a deep option (--epochs ...) overrides a preset's value; with --param too it is an error
    params.update(_deep_params(method, args, explicit))
    return params


#: the deep-training options (:func:`_add_deep_options`) -> the estimators' parameters
DEEP_OPTIONS = {"backbone": "image_backbone", "weights": "image_weights", "device": "device",
                "amp": "amp", "epochs": "n_epochs", "checkpoint": "checkpoint",
                "resume": "resume"}


def _add_deep_options(p):
    """Options of the deep methods (ta-adcmh, sdch, dcmh); refused for the other methods."""
    g = p.add_argument_group("deep methods (ta-adcmh, sdch, dcmh)")
    g.add_argument("--backbone", choices=("auto", "mlp", "cnnf", "alexnet", "tv_alexnet",
                                          "tv_vgg16", "tv_resnet50"), help="image network")
    g.add_argument("--weights", metavar="PATH", help="pretrained image-network weights file")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), help="mixed precision (auto: on CUDA only)")
    g.add_argument("--epochs", type=int, help="training epochs (n_epochs)")
    g.add_argument("--checkpoint", metavar="FILE", help="rewrite this checkpoint every epoch")
    g.add_argument("--resume", metavar="CKPT", help="continue the fit of this checkpoint")


def _deep_params(method: str, args, given: dict) -> dict:
    """The estimator parameters of the deep-training options set in ``args``; a ValueError for
    a method without such a parameter or one also given through --param."""
    from .base import get_method

    names = set(get_method(method)._param_names())
    params = {}
    for option, param in DEEP_OPTIONS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if param not in names:
            raise ValueError(f"--{option} is an option of the deep methods (ta-adcmh, sdch, "
                             f"dcmh): {method} has no parameter {param!r}")
        if param in given:
            raise ValueError(f"--{option} and --param {param}=... both given; use one")
        params[param] = value
    return params


def _check_param_names(method: str, params: dict) -> None:
    """Unknown constructor parameters are an error before any data is loaded."""
    from .protocol import check_param_names

    check_param_names(method, params)


def _method_prefixed(item: str, option: str, what: str) -> tuple[str, str]:
    """``"METHOD:REST"`` of --method-param / --method-hparams, or a ValueError."""
    method, sep, rest = item.partition(":")
    if not sep or not method or not rest:
        raise ValueError(f"{option} expects METHOD:{what}, got {item!r}")
    return method, rest


def _load_data(args, command: str = "", **extra):
    """The dataset of a command's data options (:func:`cmhash.cli_inputs.load_data`)."""
    return load_data(args, command, **extra)


def _write_json(doc, path):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(doc, indent=2)
        with atomic_write(path, "w") as fh:   # a failed write keeps the previous results file
            fh.write(text)


def _add_data(p, required=True):
    """The data options (``--data`` or ``--image`` / ``--text`` / ``--labels``, keys, split;
    ``--image-size`` for image-text manifests)."""
    add_data_options(p)
    p.add_argument("--image-size", type=int,
                   help="image-text manifests: the images' crop size (default 224; the shorter "
                        "side is first resized to size * 256 / 224)")


def _add_method_params(p):
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="constructor parameter (repeatable), e.g. --param omega=0.01")
    p.add_argument("--variant", help="paper variant / ablation (see `cmhash methods`)")
    p.add_argument("--hparams", help="per-dataset hyper-parameters from the paper "
                                     "(see `cmhash methods`), or a file written by "
                                     "`cmhash tune`")


def _add_protocol(p):
    p.add_argument("--database", choices=["learned", "hashed"], default="learned",
                   help="database codes: learned training codes (papers) or hashed features")
    p.add_argument("--ties", choices=["stable", "random", "expected"], default="stable")
    p.add_argument("--zero-relevant", choices=["zero", "skip"], default="zero")
    p.add_argument("--top-r", type=int,
                   help="also compute mAP@R (hits-within-top-R denominator); stored per run in "
                        "the JSON, not shown in the printed table")
    p.add_argument("--unpaired", action="store_true",
                   help="shuffle each modality's training set independently (AMSH Sec. IV-E)")
    p.add_argument("--curves", action="store_true",
                   help="also store PR curves and precision@K in the JSON")


def _protocol_kwargs(args) -> dict:
    return dict(database=args.database, ties=args.ties, zero_relevant=args.zero_relevant,
                top_r=args.top_r, unpaired=args.unpaired, curves=args.curves)


def _add_published(p, default="comparable"):
    from .bench import PUBLISHED_CHOICES

    p.add_argument("--published", choices=PUBLISHED_CHOICES, default=default,
                   help="papers' numbers in the table: none, comparable (default: same "
                        "protocol, split and features as this run, each labelled) or all "
                        "(every row with its differences)")


# ---------------------------------------------------------------------------- commands
def cmd_demo(args):
    from .bench import markdown_table, run_bench
    from .data import load_dataset
    from .protocol import relevant_fraction

    check_output_file(args.json, "--json", make_parents=True)
    start = time.perf_counter()
    # --synthetic small and --synthetic synthetic:small alike
    spec = (args.synthetic if args.synthetic.strip().lower().startswith("synthetic")
            else f"synthetic:{args.synthetic}")
    ds = load_dataset(spec, random_state=0)
    log.info(f"cmhash {__version__} demo: fit + evaluate on synthetic data "
             f"'{args.synthetic}' ({ds.indices('train').size} train / "
             f"{ds.indices('query').size} query, {ds.n_classes} classes)")
    doc = run_bench(args.methods, ds, bits=args.bits, seeds=args.seeds, verbose=not args.quiet,
                    dataset_source=spec)
    print(markdown_table(doc["results"], published="none"))
    chance = relevant_fraction(ds.labels_of("query"), ds.labels_of("train"))
    for res in doc["results"]:
        print(f"{res['method']}: chance-level mAP ≈ {chance:.3f} (fraction of relevant pairs)")
    print(f"total {time.perf_counter() - start:.1f} s")
    _write_json(doc, args.json)


def cmd_evaluate(args):
    from .bench import markdown_table
    from .protocol import run_evaluation

    check_output_file(args.json, "--json", make_parents=True)
    check_output_file(args.markdown, "--markdown")
    params = _method_params(args.method, args)
    if (args.checkpoint or args.resume) and len(args.bits) * args.seeds > 1:
        raise ValueError("--checkpoint / --resume belong to one fit: give one --bits value and "
                         "--seeds 1 (or use `cmhash fit`)")
    ds = _load_data(args, "evaluate")
    require_queries(ds, "evaluate")
    try:
        with cluster_client(args) as client:    # --cluster / --scheduler: fits on Dask
            doc = run_evaluation(args.method, ds, bits=args.bits, seeds=args.seeds,
                                 params=params, verbose=not args.quiet,
                                 dataset_source=_data_source(args),
                                 fit=(dask_fit(client, args.kernel_features)
                                      if client is not None else None),
                                 **_protocol_kwargs(args))
    except (Exception, KeyboardInterrupt) as exc:
        partial = getattr(exc, "partial_result", None)
        if partial is not None and args.json:  # keep the runs completed before the failure
            try:
                _write_json(partial, args.json)
            except Exception as write_exc:  # the original error is the one to report
                log.error(f"cmhash evaluate: could not write the {len(partial['runs'])} runs "
                          f"completed before the failure: {write_exc}")
            else:
                log.error(f"cmhash evaluate: the {len(partial['runs'])} runs completed before "
                          f"the failure are in {args.json} (its 'incomplete' field says what "
                          f"failed)")
        raise
    _write_json(doc, args.json)
    table = markdown_table([doc], published=args.published)
    if args.markdown:
        with atomic_write(args.markdown, "w") as fh:
            fh.write(table + "\n")
    print(table)


def _data_source(args) -> str:
    """The data options as recorded in result documents (``dataset.source``)."""
    if getattr(args, "data", None) and not any(getattr(args, r, None)
                                               for r in ("image", "text", "labels")):
        return args.data
    parts = [f"--{r} {getattr(args, r)}" for r in ("data", "image", "text", "labels")
             if getattr(args, r, None)]
    return " ".join(parts)


def cmd_bench(args):
    from .bench import run_bench

    if getattr(args, "param", None) and len(args.methods) > 1:
        raise ValueError("--param is for a single method (it was ignored with several); "
                         "use --method-param METHOD:KEY=VALUE")
    check_output_dir(args.out_dir, "--out-dir")
    check_output_file(args.json, "--json", make_parents=True)
    params = {m: _parse_params(getattr(args, "param", None)) if len(args.methods) == 1 else {}
              for m in args.methods}
    for item in args.method_hparams or []:
        method, preset = _method_prefixed(item, "--method-hparams", "PRESET")
        params.setdefault(method, {}).update(_named_params(method, "PRESETS", preset))
    for item in args.method_param or []:
        method, kv = _method_prefixed(item, "--method-param", "KEY=VALUE")
        params.setdefault(method, {}).update(_parse_params([kv]))
    for method, p in params.items():
        _check_param_names(method, p)
    ds = _load_data(args, "bench")
    require_queries(ds, "bench")
    out = Path(args.out_dir)
    try:
        doc = run_bench(args.methods, ds, bits=args.bits, seeds=args.seeds, params=params,
                        verbose=not args.quiet, dataset_source=_data_source(args),
                        **_protocol_kwargs(args))
    except (Exception, KeyboardInterrupt) as exc:
        partial = getattr(exc, "partial_result", None)
        if partial is not None and partial["results"]:
            # keep what was computed: the methods completed before the failure
            done = ", ".join(r["method"] for r in partial["results"])
            try:
                _write_bench(partial, out, args, quiet=True)
            except Exception as write_exc:  # the original error is the one to report
                log.error(f"cmhash bench: could not write the results of {done} (completed "
                          f"before the failure): {write_exc}")
            else:
                log.error(f"cmhash bench: the results of {done} (completed before the failure) "
                          f"are in {out / 'bench.json'} (its 'incomplete' field says what "
                          f"failed) and {out / 'bench.md'}")
        raise
    _write_bench(doc, out, args, quiet=args.quiet)


def _write_bench(doc, out: Path, args, *, quiet: bool) -> None:
    """bench.md and bench.json in ``out`` (and ``--json``); the table to stdout."""
    from .bench import markdown_table

    table = markdown_table(doc["results"], published=args.published)
    inc = doc.get("incomplete")
    if inc:
        table += (f"\n\n**Incomplete:** {inc['method']} failed ({inc['error']}); not run: "
                  f"{', '.join(inc['not_run']) or 'none'}.")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "bench.md", "w") as fh:
        fh.write(table + "\n")
    _write_json(doc, out / "bench.json")
    _write_json(doc, args.json)
    print(table)
    if not quiet:
        log.info(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")


def cmd_fit(args):
    from .base import make_hasher

    check_output_file(args.out, "--out")
    params = _method_params(args.method, args)
    ds = _load_data(args, "fit")
    hasher = make_hasher(args.method, n_bits=args.bits, random_state=args.seed,
                         verbose=not args.quiet, **params)
    if uses_cluster(args):                                 # fitted on a Dask cluster
        with cluster_client(args) as client:
            fit = dask_fit(client, args.kernel_features)
            if args.unpaired:
                views, labels = ds.unpaired(random_state=args.seed)
                fit(hasher, views, labels, ds.modality_names, False)
            else:
                fit(hasher, ds.views("train"), ds.labels_of("train"), ds.modality_names, True)
    elif args.unpaired:
        views, labels = ds.unpaired(random_state=args.seed)
        hasher.fit_unpaired(views, labels, names=ds.modality_names)
    else:
        hasher.fit_views(ds.views("train"), ds.labels_of("train"), names=ds.modality_names)
    if getattr(ds, "text_vocabulary", None) is not None:   # raw text: the model keeps it
        hasher.set_text_vocabulary(ds.text_vocabulary)
    if os.environ.get("RANK", "0") != "0":   # torchrun: every rank fits, rank 0 writes
        _end_process_group()
        return
    hasher.save(args.out)
    _end_process_group()
    log.info(f"fitted {args.method} ({args.bits} bits) on {ds.indices('train').size} items in "
             f"{hasher.train_seconds_:.2f} s; wrote {args.out}")


def _end_process_group() -> None:
    """Under torchrun: wait for every rank (rank 0 has written the model), then end the
    process group, so no rank exits with the group's threads running."""
    if "torch" in sys.modules:
        from .deep.training import end_process_group
        end_process_group()


def cmd_encode(args):
    from .base import load
    from .codes import pack_codes

    check_output_file(args.out, "--out")
    hasher = load(args.model)
    task = _encode_task(args, hasher)
    X, ids, labels, modality, what = encode_input(args, hasher)
    X = as_query_matrix(X, hasher, modality)
    if is_zarr_path(args.out):                        # a chunked store, on a cluster if asked
        return encode_to_store(args, hasher, X, ids, modality, task)
    if args.cluster or args.scheduler:
        raise ValueError("--cluster / --scheduler encode into a chunked store: give --out "
                         "DB.zarr")
    codes = hasher.encode(X, modality, task=task)
    arrays = dict(packed=pack_codes(codes), n_bits=np.array(codes.shape[1]), ids=ids,
                  modality=np.array(modality), model_fingerprint=np.str_(hasher.fingerprint))
    if labels is not None:
        arrays["labels"] = labels
    # a file object: np.savez_compressed(path) would append ".npz" to a path without it,
    # and the file written would not be the one named here and by `cmhash search`
    with atomic_write(args.out) as out:
        np.savez_compressed(out, **arrays)
    log.info(f"encoded {codes.shape[0]} {modality} items ({what}) to {codes.shape[1]} bits; "
             f"wrote {args.out}")


def _encode_task(args, hasher):
    """``--task query,database`` for task-specific models; refused for the others (it was
    accepted and ignored)."""
    if not args.task:
        return None
    if not getattr(hasher, "task_specific", False):
        raise ValueError(f"--task selects the hash functions of one retrieval task of a "
                         f"task-specific model (ta-adcmh); this {hasher.name} model has one "
                         f"hash function per modality: leave --task out")
    task = tuple(t.strip() for t in args.task.split(","))
    if len(task) != 2:
        raise ValueError(f"--task expects QUERY,DATABASE modalities, got {args.task!r}")
    return task


def _codes_file_arrays(path, f):
    """``(packed, n_bits, ids)`` of an open `cmhash encode` file, checked against each other."""
    def bad(why):
        return ValueError(f"{path} is not a valid codes file from `cmhash encode`: {why}")

    if "n_bits" not in f.files:
        raise bad("it has no 'n_bits' array")
    packed, n_bits, ids = f["packed"], f["n_bits"], f["ids"]
    if n_bits.ndim != 0 or not np.issubdtype(n_bits.dtype, np.integer):
        raise bad(f"'n_bits' must be an integer scalar, got an array of dtype {n_bits.dtype} "
                  f"and shape {n_bits.shape}")
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise bad(f"'packed' must be a 2-D uint8 array, got an array of dtype {packed.dtype} "
                  f"and shape {packed.shape}")
    if ids.ndim != 1:
        raise bad(f"'ids' must be a 1-D array, got shape {ids.shape}")
    if ids.shape[0] != packed.shape[0]:
        raise bad(f"{ids.shape[0]} ids for {packed.shape[0]} codes")
    return packed, int(n_bits), ids


def _read_codes(path, *, allow_index: bool = True, backend=None):
    """``(packed, n_bits, ids, None)`` of a codes file, or ``(None, n_bits, None, index)`` of a
    saved HammingIndex (loaded with ``backend``, None: the saved one)."""
    from ._validation import open_npz
    from .index import HammingIndex

    what = ("a codes file from `cmhash encode` or a saved HammingIndex" if allow_index
            else "a codes file from `cmhash encode`")
    with open_npz(path, what) as f:
        if "packed" in f.files and "ids" in f.files:
            return (*_codes_file_arrays(path, f), None)
    if not allow_index:
        raise ValueError(f"{path} is not {what} (no 'packed' and 'ids' arrays)")
    index = HammingIndex.load(path, backend=backend)
    return None, index.n_bits, None, index


def cmd_search(args):
    from .index import HammingIndex

    if args.show < 0:
        raise ValueError(f"--show must be >= 0 (queries to print), got {args.show}")
    check_output_file(args.out, "--out", make_parents=True)
    with contextlib.ExitStack() as stack:
        _search(args, stack)


def _search(args, stack):
    from .index import HammingIndex

    if is_zarr_path(args.database):      # a chunked store: sharded over a cluster if asked
        index, n_bits, db_ids = store_index(args, stack)
        db_packed = None
    else:
        if args.cluster or args.scheduler:
            raise ValueError("--cluster / --scheduler search a chunked store: give "
                             "--database DB.zarr (written by cmhash encode --out DB.zarr)")
        db_packed, n_bits, db_ids, index = _read_codes(args.database, backend=args.backend)
    if index is None:
        index = HammingIndex(n_bits, backend=args.backend or "auto")
        index.add(db_packed, packed=True)
    q_packed, q_bits, q_ids, _ = _read_codes(args.queries, allow_index=False)
    if q_bits != n_bits:
        raise ValueError(f"queries have {q_bits} bits but the database has {n_bits}")
    from .cli_service import check_search_models   # codes of one model only
    check_search_models(args.database, index if db_packed is None else None, args.queries)
    start = time.perf_counter()
    if args.radius is not None:
        lims, dist, ids = index.range_search(q_packed, args.radius, packed=True)
        results = [ids[lims[i]:lims[i + 1]] for i in range(len(lims) - 1)]
        dists = [dist[lims[i]:lims[i + 1]] for i in range(len(lims) - 1)]
    else:
        d, i = index.search(q_packed, args.k, packed=True)
        results, dists = list(i), list(d)
    seconds = time.perf_counter() - start
    if db_ids is not None:  # map index positions to the dataset's item ids
        results = [db_ids[r] for r in results]
    if args.out:
        doc = {"queries": [int(q) for q in (q_ids if q_ids is not None else range(len(results)))],
               "results": [[x.item() for x in r] for r in results],
               "distances": [[int(x) for x in d] for d in dists]}
        _write_json(doc, args.out)
    for qi, (r, d) in enumerate(zip(results[:args.show], dists[:args.show])):
        qid = q_ids[qi] if q_ids is not None else qi
        pairs = " ".join(f"{a}:{int(b)}" for a, b in zip(r[:10], d[:10]))
        print(f"query {qid}: {pairs}{' ...' if len(r) > 10 else ''}")
    log.info(f"{len(results)} queries in {seconds:.3f} s "
             f"({len(results) / max(seconds, 1e-9):.0f} queries/s, "
             f"backend {getattr(index, 'backend', 'sharded')})")


def cmd_sweep(args):
    from .bench import param_sweep, sweep_markdown

    if args.param_name in _parse_params(getattr(args, "param", None)):
        raise ValueError(f"--param sets {args.param_name!r}, the swept parameter: its values "
                         f"come from --values (a preset's value, --hparams, is overridden)")
    check_output_file(args.json, "--json", make_parents=True)
    params = _method_params(args.method, args)
    ds = _load_data(args, "sweep")
    require_queries(ds, "sweep")
    doc = param_sweep(args.method, ds, args.param_name, [_parse_value(v) for v in args.values],
                      bits=args.bits, seeds=args.seeds, params=params,
                      verbose=not args.quiet, database=args.database, ties=args.ties)
    _write_json(doc, args.json)
    print(sweep_markdown(doc))


def cmd_scale(args):
    from .bench import scale_markdown, scale_table

    check_output_file(args.json, "--json", make_parents=True)
    doc = scale_table(args.method, args.data, args.ns, bits=args.bits,
                      params=_method_params(args.method, args), verbose=not args.quiet,
                      dask=cluster_settings(args) if uses_cluster(args) else None)
    _write_json(doc, args.json)
    print(scale_markdown(doc))


def cmd_plot(args):
    from . import plots

    check_output_file(args.out, "--out")
    if args.published is not None and args.kind != "map":
        raise ValueError(f"--published marks the papers' numbers on mAP-vs-bits plots "
                         f"(--kind map); --kind {args.kind} has none")
    docs = [plots.read_plot_file(path) for path in args.json]
    out = plots.plot_documents(docs, args.out, kind=args.kind, bits=args.bits,
                               labels=args.label, published=args.published or "comparable")
    log.info(f"wrote {out}")


def cmd_methods(args):
    from .base import _REGISTRY, get_method

    for name in _REGISTRY:
        try:
            cls = get_method(name)
        except ImportError as exc:
            print(f"{name}: not available ({exc})")
            continue
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name}: {doc}")
        for attr in ("PRESETS", "VARIANTS"):
            values = getattr(cls, attr, None)
            if values:
                print(f"    {attr.lower()}: {', '.join(sorted(values))}")


# ------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmhash", description="Supervised cross-modal hashing.")
    parser.add_argument("--version", action="version", version=f"cmhash {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, json=True):
        """Output options of every command: logging, and --json where a command writes a
        result document (``json=False``: the option is refused instead of ignored)."""
        g = p.add_argument_group("output")
        g.add_argument("--quiet", action="store_true",
                       help="no progress or status messages on stderr, only warnings and errors "
                            "(results still go to stdout)")
        g.add_argument("--verbose", action="store_true", help="debug messages too")
        g.add_argument("--log-file", metavar="PATH",
                       help="also write the status messages, warnings and errors to this file")
        if json:
            g.add_argument("--json", help="write the result document to this path")

    p = sub.add_parser("demo", help="fit + evaluate on built-in synthetic data (< 1 minute)")
    p.add_argument("--methods", nargs="+", default=["batch"])
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--synthetic", default="small", help="synthetic preset or key=value list")
    common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="one method on one dataset, several bits and seeds")
    p.add_argument("--method", required=True)
    _add_data(p)
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    _add_method_params(p)
    _add_deep_options(p)
    _add_protocol(p)
    _add_published(p)
    p.add_argument("--markdown", help="also write the Markdown table here")
    add_cluster_options(p)
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="several methods; Markdown table + JSON with papers' numbers")
    p.add_argument("--methods", nargs="+", required=True)
    _add_data(p)
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="parameter for a single method")
    p.add_argument("--method-param", action="append", metavar="METHOD:KEY=VALUE",
                   help="parameter for one of several methods, e.g. ascmh:omega=0.01")
    p.add_argument("--method-hparams", action="append", metavar="METHOD:PRESET",
                   help="a method's per-dataset hyper-parameters, e.g. asfoh:wiki")
    p.add_argument("--out-dir", default="results")
    _add_protocol(p)
    _add_published(p)
    common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("fit", help="fit a method and write a model file")
    p.add_argument("--method", required=True)
    _add_data(p)
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unpaired", action="store_true")
    p.add_argument("--out", required=True)
    _add_method_params(p)
    _add_deep_options(p)
    add_cluster_options(p)
    common(p, json=False)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("encode", help="encode features (a file, or a split of a dataset) with a "
                                      "fitted model; labels are not needed")
    p.add_argument("--model", required=True)
    add_data_options(p, encode=True)
    p.add_argument("--split", help="split of --data to encode (default: query; a file without "
                                   "labels: its only array of the modality)")
    p.add_argument("--modality", help="modality to encode (implied by --image / --text)")
    p.add_argument("--task", help="query,database modalities, for task-specific models "
                                  "(ta-adcmh) only")
    p.add_argument("--out", required=True, help="codes file (.npz), or a chunked store "
                                                "(.zarr directory) for large databases")
    p.add_argument("--chunk-rows", type=int, default=65536,
                   help="rows per block of a .zarr store (default 65536)")
    add_cluster_options(p)
    common(p, json=False)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("search", help="Hamming search: database codes + query codes -> top-k ids")
    p.add_argument("--database", required=True, help="codes file from `encode` or a saved index")
    p.add_argument("--queries", required=True, help="codes file from `encode`")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--radius", type=int, help="radius search instead of top-k")
    p.add_argument("--backend", choices=["auto", "numpy", "faiss"], default=None,
                   help="search backend (default: a saved index's own backend, else auto)")
    p.add_argument("--show", type=int, default=5, help="queries to print")
    p.add_argument("--out", help="write ids and distances as JSON")
    add_cluster_options(p)
    common(p, json=False)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("sweep", help="mAP as one hyper-parameter varies (e.g. ASCMH omega)")
    p.add_argument("--method", required=True)
    _add_data(p)
    p.add_argument("--param-name", "--sweep", dest="param_name", required=True)
    p.add_argument("--values", nargs="+", required=True)
    p.add_argument("--bits", type=int, nargs="+", default=[32])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--database", choices=["learned", "hashed"], default="learned")
    p.add_argument("--ties", choices=["stable", "random", "expected"], default="stable")
    _add_method_params(p)
    common(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("scale", help="training time and peak memory versus n")
    p.add_argument("--method", required=True)
    p.add_argument("--data", default="synthetic:nuswide-like")
    p.add_argument("--ns", type=int, nargs="+", default=[25000, 50000, 100000, 184577])
    p.add_argument("--bits", type=int, nargs="+", default=[32])
    _add_method_params(p)
    add_cluster_options(p)
    common(p)
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("plot", help="plot result files: mAP vs bits, PR/P@K curves, convergence, "
                                    "a sweep, a scale table")
    p.add_argument("--json", nargs="+", required=True, dest="json",
                   help="files of `evaluate`, `bench`, `sweep` or `scale`")
    p.add_argument("--kind", choices=["map", "curves", "convergence", "sweep", "scale"],
                   default="map")
    p.add_argument("--bits", type=int, nargs="+",
                   help="bit lengths to draw (curves: one; default: all, curves the largest)")
    p.add_argument("--label", action="append",
                   help="legend label of each result, in order (repeat once per result)")
    _add_published(p, default=None)
    p.add_argument("--out", required=True)
    common(p, json=False)
    p.set_defaults(func=cmd_plot)

    from .cli_research import add_research_parsers
    add_research_parsers(sub, _add_data, _add_method_params)

    p = sub.add_parser("methods", help="list methods, their presets and variants")
    p.set_defaults(func=cmd_methods)

    from .cli_service import add_service_commands   # index build, query, serve
    add_service_commands(sub)
    return parser


#: exceptions that mean bad input (exit status 2) and runtime failures (exit status 1); see
#: the module docstring. FileNotFoundError is an OSError: it is matched first.
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError)
RUNTIME_ERRORS = (RuntimeError, ImportError, OSError, ArithmeticError, MemoryError)


def _error_status(args, exc) -> int:
    log.error(f"cmhash {args.command}: error: {str(exc) or type(exc).__name__}")
    return 2 if isinstance(exc, USAGE_ERRORS) else 1


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse's usage errors exit with status 2 here
    log_file = getattr(args, "log_file", None)
    try:
        if getattr(args, "quiet", False) and getattr(args, "verbose", False):
            raise ValueError("--quiet and --verbose exclude each other")
        check_output_file(log_file, "--log-file")
    except USAGE_ERRORS + RUNTIME_ERRORS as exc:
        with configured_logging():
            return _error_status(args, exc)
    with configured_logging(quiet=getattr(args, "quiet", False),
                            verbose=getattr(args, "verbose", False), log_file=log_file):
        try:
            args.func(args)
            sys.stdout.flush()   # a closed pipe is met here, not at the interpreter's exit
        except BrokenPipeError:
            silence_closed_stdout()
            return BROKEN_PIPE_STATUS
        except USAGE_ERRORS + RUNTIME_ERRORS as exc:
            return _error_status(args, exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
