"""Import torchvision beside the CPU build of torch.

The torchvision wheels on PyPI carry C++ operators (``torchvision::nms`` and friends) built
against the CUDA build of torch. Beside ``torch==2.13.0+cpu`` that library cannot be loaded
(it links ``libtorch_cuda.so``), which torchvision tolerates -- except that its
``_meta_registrations`` module registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally, so ``import torchvision`` fails with
"operator torchvision::nms does not exist".

cmhash uses only torchvision's model classes (pure Python on torch's own operators), never its
detection operators, so :func:`import_torchvision` declares the two missing operator schemas
when, and only when, torchvision's own library did not provide them, and imports torchvision
again. Where the C++ library loads (a matching CUDA build), nothing is declared.
"""
from __future__ import annotations

import sys

__all__ = ["import_torchvision"]

_FRAGMENT = None     # keeps the torch.library fragment (and its definitions) alive


def _declare_missing_operators() -> None:
    global _FRAGMENT
    import torch
    if _FRAGMENT is not None:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        if not hasattr(torch.ops.torchvision, name):
            if name == "nms":
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            else:
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _FRAGMENT = lib


def import_torchvision():
    """``torchvision``, importable beside the CPU build of torch (see the module doc).

    Raises ImportError naming the ``[deep]`` extra when torchvision is not installed.
    """
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "models"):
        return sys.modules["torchvision"]
    try:
        import torchvision
        return torchvision
    except ModuleNotFoundError as exc:
        raise ImportError("torchvision is not installed: pip install 'cmhash[deep]'") from exc
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
            raise
    # A half-imported torchvision stays in sys.modules: drop it, declare, import again.
    for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[key]
    _declare_missing_operators()
    import torchvision
    return torchvision
