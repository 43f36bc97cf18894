"""SDCH: semantic deep cross-modal hashing (Yan et al., Neurocomputing 2019; paper sdch.md).

Row-sample convention (the paper writes Z, B as r x (m + n); here they are (N, r)). See
docs/methods/sdch.md for the derivation, the gradients and every deviation from the paper.

Networks (Fig. 2, Table 1)::

    f_x = f(x; psi_x) in R^k,  f_y = f(y; psi_y) in R^k     (k = 256; AlexNet / text net / MLP)
    z   = fc4(f)  in R^r                                      (ONE hash layer for both modalities)
    encode(x) = sign(fc4(f(x; psi_x))),  encode(y) = sign(fc4(f(y; psi_y)))

Losses on a mini-batch of b pairs (Fx, Fy: (b, k); Z = [fc4(Fx); fc4(Fy)]: (2b, r))::

    S^f_ij = 1 if image i and text j share a label else 0                          (b x b)
    L_f = sum_ij log(1 + exp(Theta_ij)) - S^f_ij Theta_ij,  Theta = Fx Fy^T         (Eq. 4)
    S^h_ij = +1 if items i, j (either modality) share a label else -1             (2b x 2b)
    L_h = ||Z Z^T / r - S^h||^2 + beta1 ||Z - B||^2
          + beta2 ||Z^T Z / N - I_r||^2 + beta3 / r ||Z^T 1||^2                    (Eq. 7)
    L   = L_f + gamma L_h                                                          (Eq. 8)

(N = 2b, the number of items in the batch; the paper's decorrelation ``Z Z^T / r`` and balance
``||Z||^2 / r`` are kept available with ``paper_literal=True``.)

Algorithm 1 with the warm-up of Section 4.2::

    epoch 1: update psi_x, psi_y on L_f (lr of Theta_h = 0)
             B = ITQ(Z of all m + n training items)                     (cmhash.itq.ITQ)
    epoch 2: update fc4 on gamma L_h (lr of Theta_f = 0);  B = sign(Z)   (Eq. 10)
    epoch 3..: per batch, first fc4 on gamma L_h (features fixed), then psi on L_f + gamma L_h
             through the updated fc4; after each epoch B = sign(Z)      (Eq. 9-10)

The gradients of L_f and L_h with respect to the network outputs are the closed forms of
:func:`feature_loss_grad` and :func:`hash_loss_grad` (checked against autograd in the tests);
training back-propagates exactly these through the networks. One code matrix per modality:
``B`` has m + n rows, ``codes_ = [B_x, B_y]`` (the paper's B = {b_1, ..., b_{m+n}}).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn import functional as Fnn

from .._validation import check_bool, check_choice, check_int, check_positive
from ..itq import ITQ
from ..solvers import sign
from ._torch_base import (TorchHasher, _seed_from_rng, hidden_widths, resolve_device,
                          seed_everything)
from .backbones import IMAGE_BACKBONE_KINDS, build_backbone

__all__ = ["SDCH", "label_similarity", "feature_loss", "feature_loss_grad", "hash_loss_terms",
           "hash_loss", "hash_loss_grad", "codes_step"]

TERMS = ("feature", "similarity", "quantization", "decorrelation", "balance")


# ---------------------------------------------------------------- the paper's formulas
def label_similarity(La: torch.Tensor, Lb: torch.Tensor) -> torch.Tensor:
    """``S_ij = 1`` if rows ``La[i]`` and ``Lb[j]`` share at least one label, else 0."""
    return (La @ Lb.T > 0).to(La.dtype)


def feature_loss(Fx: torch.Tensor, Fy: torch.Tensor, Sf: torch.Tensor) -> torch.Tensor:
    """Eq. 4: ``L_f = sum_ij log(1 + e^Theta_ij) - S^f_ij Theta_ij`` with ``Theta = Fx Fy^T``.

    ``softplus`` evaluates ``log(1 + e^t)`` without overflow for large inner products.
    """
    theta = Fx @ Fy.T
    return (Fnn.softplus(theta) - Sf * theta).sum()


def feature_loss_grad(Fx, Fy, Sf):
    """``dL_f/dFx = (sigma(Theta) - S^f) Fy`` and ``dL_f/dFy = (sigma(Theta) - S^f)^T Fx``."""
    A = torch.sigmoid(Fx @ Fy.T) - Sf
    return A @ Fy, A.T @ Fx


def hash_loss_terms(Z, B, Sh, *, paper_literal: bool = False) -> dict:
    """The four terms of Eq. 7 (unweighted) for a batch ``Z`` (N, r), ``B`` (N, r), ``S^h`` (N, N).

    similarity    ``||Z Z^T / r - S^h||^2``
    quantization  ``||Z - B||^2``
    decorrelation ``||Z^T Z / N - I_r||^2``  (``paper_literal``: ``||Z^T Z / r - I_r||^2``)
    balance       ``||Z^T 1||^2 / r``         (``paper_literal``: ``||Z||^2 / r``)
    """
    N, r = Z.shape
    eye = torch.eye(r, dtype=Z.dtype, device=Z.device)
    scale = r if paper_literal else N
    bal = (Z ** 2).sum() / r if paper_literal else (Z.sum(0) ** 2).sum() / r
    return {"similarity": ((Z @ Z.T / r - Sh) ** 2).sum(),
            "quantization": ((Z - B) ** 2).sum(),
            "decorrelation": ((Z.T @ Z / scale - eye) ** 2).sum(),
            "balance": bal}


def hash_loss(Z, B, Sh, *, beta1, beta2, beta3, paper_literal: bool = False):
    """Eq. 7: ``L_h = sim + beta1 quant + beta2 decor + beta3 balance``."""
    t = hash_loss_terms(Z, B, Sh, paper_literal=paper_literal)
    return t["similarity"] + beta1 * t["quantization"] + beta2 * t["decorrelation"] \
        + beta3 * t["balance"]


def hash_loss_grad(Z, B, Sh, *, beta1, beta2, beta3, paper_literal: bool = False):
    """``dL_h/dZ`` in closed form (S^h symmetric; A = Z Z^T / r - S^h, C = Z^T Z / s - I)::

        4/r A Z + 2 beta1 (Z - B) + 4 beta2 / s Z C + 2 beta3 / r 1 (1^T Z)

    with ``s = N`` (``paper_literal``: ``s = r`` and the balance gradient ``2 beta3 / r Z``).
    """
    N, r = Z.shape
    s = r if paper_literal else N
    A = Z @ Z.T / r - Sh
    C = Z.T @ Z / s - torch.eye(r, dtype=Z.dtype, device=Z.device)
    bal = Z if paper_literal else Z.sum(0, keepdim=True).expand_as(Z)
    return 4.0 / r * (A @ Z) + 2.0 * beta1 * (Z - B) + 4.0 * beta2 / s * (Z @ C) \
        + 2.0 * beta3 / r * bal


def codes_step(Z) -> np.ndarray:
    """Eq. 9-10: ``argmin_{B in {-1,1}} beta1 ||Z - B||^2 = argmax tr(Z^T B) = sign(Z)``."""
    return sign(np.asarray(Z))


def _he_init(net) -> None:
    """He-normal weights, zero biases for an AlexNet trained from scratch (no image_weights).

    The paper starts conv1-fc7 from ImageNet weights; PyTorch's default initialisation of an
    8-layer ReLU/LRN stack without them shrinks the outputs ~100x, and the features collapse
    to a constant in the first epochs. The last layer gets N(0, 1/fan_in) ("random values
    with a normal distribution", Section 4.2).
    """
    layers = [mod for mod in net.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        for i, mod in enumerate(layers):
            if i < len(layers) - 1:
                torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            else:
                torch.nn.init.normal_(mod.weight, std=float(mod.weight.shape[1]) ** -0.5)
            torch.nn.init.zeros_(mod.bias)


# ------------------------------------------------------------------------ estimator
class SDCH(TorchHasher):
    """SDCH (Yan et al., Neurocomputing 2019).

    Parameters
    ----------
    n_bits : int
        Code length r (the width of the shared hash layer fc4).
    gamma : float
        Weight of the hash loss L_h in L = L_f + gamma L_h (0.01).
    beta1, beta2, beta3 : float
        Weights of quantization, decorrelation and balance in L_h (1, 1, 0.1).
    paper_literal : bool
        Use the paper's printed decorrelation ``||Z^T Z / r - I||^2`` and "balance"
        ``||Z||^2 / r`` instead of the consistent ``/N`` and ``||Z^T 1||^2 / r`` forms.
    feature_dim : int
        k, the width of img-fc3 / txt-fc3 (256).
    image_backbone : {"auto", "mlp", "alexnet", "cnnf", "tv_alexnet", "tv_vgg16", "tv_resnet50"}
        "auto": AlexNet for image arrays (n, C, H, W), an MLP for feature vectors. The tv_*
        kinds are torchvision's networks (:mod:`cmhash.deep.backbones`).
    text_backbone : {"auto", "mlp", "text-sdch"}
        "auto": the MLP for feature vectors; "text-sdch" is Table 1's 4096-4096-256 network.
    image_hidden, text_hidden : tuple of int or None
        Hidden widths (None: (512,) for "mlp", (4096, 4096) for "text-sdch").
    fc_dim : int
        Width of AlexNet's fc6/fc7 (4096 in the paper; smaller only for fast tests).
    dropout : float
        Dropout after hidden layers (0: none).
    image_weights : str or None
        A local weights file for the image network (never downloaded; the loaded layers train
        at ``pretrained_lr_scale`` x ``lr_feature``, Section 4.2): a MatConvNet .mat (SimpleNN
        or DagNN; AlexNet or CNN-F), a Caffe AlexNet state_dict (grouped conv2/4/5 made dense
        exactly), a torchvision AlexNet / VGG-16 / ResNet-50 state_dict (tv_* backbones) or a
        plain state_dict (:mod:`cmhash.deep.weights`). Every layer but the output layer must
        fit. Image arrays are then normalised as the weights expect (0-255 RGB pixels in,
        ``input_normalization_``), not standardised.
    image_weights_format : {"auto", "matconvnet", "torchvision", "caffe", "state_dict"}
        The layout of ``image_weights`` ("auto": from the file, see
        :func:`cmhash.deep.weights.read_weights`).
    standardize : bool
        z-score dense vector inputs with training means / standard deviations (stored).
    n_epochs : int
        Epochs including the two warm-up epochs (the paper: 50).
    warmup : bool
        Section 4.2's warm-up (epoch 1: features on L_f; ITQ; epoch 2: fc4 only). False:
        B = ITQ(Z) of the initial networks and full training from epoch 1.
    batch_size : int
        Pairs per mini-batch (64; the hash loss sees 2 x batch_size items).
    lr_feature, lr_hash, pretrained_lr_scale : float
        Learning rates of Theta_f (1e-3) and Theta_h (1e-2); factor for pretrained layers (0.1).
    optimizer : {"adam", "sgd"}
        The paper (TensorFlow) does not name its optimizer; "sgd" has momentum 0.9.
    weight_decay : float
        L2 penalty on the network weights (not in the paper's objective; 0 by default).
    itq_iter : int
        ITQ iterations for the initial B (50).
    feature_bound : {None, "tanh", "l2"}
        Bound on img-fc3 / txt-fc3 (not in the paper; None: the paper's linear output).
        "tanh": ``feature_scale * tanh(f)``; "l2": ``feature_scale * f / ||f||``. Either keeps
        ``Theta = Fx Fy^T`` bounded, so L_f cannot drive the feature scale up (the divergence of
        wide networks on Wiki). Applied in training and in every encoding.
    feature_scale : float
        s of ``feature_bound`` (1.0).
    grad_clip : float or None
        Clip the total gradient norm of each update (Theta_h, Theta_f) to this value (None: off).
        ``grad_norm_max_`` records the largest norm applied.
    lr_text : float or None
        Learning rate of the text network psi_y (None: ``lr_feature``).
    lr_decay : float in (0, 1]
        Every learning rate is multiplied by this after each epoch (1: constant, the paper).
    text_steps : int
        Updates of the text network per mini-batch (1: the paper); the extra ones take the same
        closed-form gradient of ``L_f + gamma L_h`` with the image network and fc4 fixed.
    amp, checkpoint, resume : mixed precision ("auto": off on the CPU), a checkpoint file
        rewritten after every epoch, a checkpoint to continue from; see
        :class:`cmhash.deep._torch_base.TorchHasher` and docs/deep.md.
    time_limit : float or None
        Seconds: no further epoch is started when it would end past this time since the fit
        began (estimated from the longest epoch so far); None: all ``n_epochs``.
    device : "auto", "cpu", "cuda" or "cuda:N"
    num_workers : int
        Worker processes decoding image batches of image sources (0: in this process); with
        a GPU, 4-8 keep it busy. Codes do not depend on it.
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : [B_x, B_y] int8 (n, r)   learned codes of the image and of the text items
    objective_ : list of float        L summed over the mini-batches of each epoch
    loss_terms_ : dict of (n_epochs,) arrays   each (unweighted) term summed over the epoch
    itq_loss_ : list of float         quantization loss of the ITQ initialisation
    grad_norm_max_ : float            largest total gradient norm applied (after clipping)
    network_states_, architectures_ : networks "f" (image), "g" (text), "h" (fc4)
    input_means_, input_scales_ : per-modality standardisation (None where not applied)
    input_normalization_ : InputNormalization or None   the image normalisation of the loaded
        weights (applied through input_means_ / input_scales_; saved with the model)
    """

    name = "sdch"

    #: the paper's Section 4.2 values with Table 1's text network txt-fc1 4096 - txt-fc2 4096 -
    #: txt-fc3 256 ("text-sdch"; the image network is AlexNet for image arrays); "wiki" (MLP
    #: backbones for Wiki's feature vectors) keeps every loss weight and adds
    #: the stabilising options chosen on validation_split(0.2, random_state=0) at 32 and 128
    #: bits, seeds 0 and 1 (docs/methods/sdch.md, "Validation search"): tanh-bounded features,
    #: gradient-norm clipping at 10, 100 epochs with the learning rates decayed by 0.97 per epoch
    PRESETS = {
        "nuswide": {"gamma": 0.01, "beta1": 1.0, "beta2": 1.0, "beta3": 0.1,
                    "batch_size": 64, "n_epochs": 50, "text_backbone": "text-sdch"},
        "mirflickr25k": {"gamma": 0.01, "beta1": 1.0, "beta2": 1.0, "beta3": 0.1,
                         "batch_size": 64, "n_epochs": 50, "text_backbone": "text-sdch"},
        "iapr-tc12": {"gamma": 0.01, "beta1": 1.0, "beta2": 1.0, "beta3": 0.1,
                      "batch_size": 64, "n_epochs": 50, "text_backbone": "text-sdch"},
        "wiki": {"gamma": 0.01, "beta1": 1.0, "beta2": 1.0, "beta3": 0.1,
                 "batch_size": 64, "n_epochs": 100, "feature_bound": "tanh",
                 "feature_scale": 1.0, "grad_clip": 10.0, "lr_decay": 0.97},
    }
    #: ``cmhash tune`` search space (cmhash.tune module doc): the loss weights over the ranges
    #: of the paper's sensitivity study (Fig. 6: gamma in [0.001, 2], beta_i in [0.01, 20]) and
    #: the two learning rates of Section 4.2 (1e-3, 1e-2) over [1e-5, 1e-1]. Epochs and the
    #: rest come from the start point (a preset).
    SEARCH_SPACE = {"gamma": ("log", 1e-3, 2.0), "beta1": ("log", 1e-2, 20.0),
                    "beta2": ("log", 1e-2, 20.0), "beta3": ("log", 1e-2, 20.0),
                    "lr_feature": ("log", 1e-5, 1e-1), "lr_hash": ("log", 1e-5, 1e-1)}
    #: the paper has no named ablation variants; "SDCH-literal" is its printed Eq. 7
    VARIANTS = {"SDCH": {"paper_literal": False}, "SDCH-literal": {"paper_literal": True}}

    def __init__(self, n_bits: int = 32, *, gamma: float = 0.01, beta1: float = 1.0,
                 beta2: float = 1.0, beta3: float = 0.1, paper_literal: bool = False,
                 feature_dim: int = 256, image_backbone: str = "auto",
                 text_backbone: str = "auto", image_hidden=None, text_hidden=None,
                 fc_dim: int = 4096, dropout: float = 0.0, image_weights=None,
                 image_weights_format: str = "auto",
                 standardize: bool = True, n_epochs: int = 50, warmup: bool = True,
                 batch_size: int = 64, lr_feature: float = 1e-3, lr_hash: float = 1e-2,
                 pretrained_lr_scale: float = 0.1, optimizer: str = "adam",
                 weight_decay: float = 0.0, itq_iter: int = 50, feature_bound=None,
                 feature_scale: float = 1.0, grad_clip=None, lr_text=None,
                 lr_decay: float = 1.0, text_steps: int = 1, amp="auto", checkpoint=None,
                 resume=None, time_limit=None,
                 device: str = "auto", num_workers: int = 0, random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, amp=amp, checkpoint=checkpoint, resume=resume,
                         time_limit=time_limit, device=device,
                         num_workers=num_workers,
                         random_state=random_state, verbose=verbose)
        self.gamma = gamma
        self.beta1 = beta1
        self.beta2 = beta2
        self.beta3 = beta3
        self.paper_literal = paper_literal
        self.feature_dim = feature_dim
        self.image_backbone = image_backbone
        self.text_backbone = text_backbone
        self.image_hidden = image_hidden
        self.text_hidden = text_hidden
        self.fc_dim = fc_dim
        self.dropout = dropout
        self.image_weights = image_weights
        self.image_weights_format = image_weights_format
        self.standardize = standardize
        self.n_epochs = n_epochs
        self.warmup = warmup
        self.batch_size = batch_size
        self.lr_feature = lr_feature
        self.lr_hash = lr_hash
        self.pretrained_lr_scale = pretrained_lr_scale
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.itq_iter = itq_iter
        self.feature_bound = feature_bound
        self.feature_scale = feature_scale
        self.grad_clip = grad_clip
        self.lr_text = lr_text
        self.lr_decay = lr_decay
        self.text_steps = text_steps

    # ------------------------------------------------------------ validation
    def _validate_params(self):
        for p in ("gamma", "beta1", "beta2", "beta3", "weight_decay", "pretrained_lr_scale"):
            check_positive(getattr(self, p), p, allow_zero=True)
        check_positive(self.lr_feature, "lr_feature")
        check_positive(self.lr_hash, "lr_hash")
        check_choice(self.image_backbone, "image_backbone", {"auto", "mlp", *IMAGE_BACKBONE_KINDS})
        check_choice(self.text_backbone, "text_backbone", {"auto", "mlp", "text-sdch"})
        check_choice(self.optimizer, "optimizer", {"adam", "sgd"})
        check_int(self.n_epochs, "n_epochs")
        check_int(self.batch_size, "batch_size", minimum=2)
        check_int(self.feature_dim, "feature_dim")
        check_int(self.fc_dim, "fc_dim")
        check_int(self.itq_iter, "itq_iter", minimum=0)
        check_int(self.text_steps, "text_steps", minimum=1)
        if self.feature_bound is not None:
            check_choice(self.feature_bound, "feature_bound", {"tanh", "l2"})
        check_positive(self.feature_scale, "feature_scale")
        if self.grad_clip is not None:
            check_positive(self.grad_clip, "grad_clip")
        if self.lr_text is not None:
            check_positive(self.lr_text, "lr_text")
        if not (isinstance(self.lr_decay, (int, float)) and not isinstance(self.lr_decay, bool)
                and 0 < self.lr_decay <= 1):
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        for p in ("paper_literal", "warmup", "standardize"):
            check_bool(getattr(self, p), p)
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self._check_weights_file(self.image_weights, source=self.image_weights_format)
        self._check_num_workers()
        resolve_device(self.device)

    # ----------------------------------------------------------- networks
    def _spec(self, X, which):
        shape = list(X.shape[1:])
        kind = self.image_backbone if which == "image" else self.text_backbone
        if kind == "auto":
            kind = "alexnet" if len(shape) == 3 else "mlp"
        spec = {"kind": kind, "in_shape": shape, "out_dim": int(self.feature_dim),
                "dropout": float(self.dropout)}
        if kind in IMAGE_BACKBONE_KINDS:
            if len(shape) != 3:
                raise ValueError(f"the {kind} backbone takes images (n, C, H, W); the {which} "
                                 f"modality has samples of shape {tuple(shape)}")
            if kind in ("alexnet", "cnnf"):
                spec["fc_dim"] = int(self.fc_dim)
            return spec
        pname = "image_hidden" if which == "image" else "text_hidden"
        hidden = getattr(self, pname)
        if hidden is None:
            hidden = (4096, 4096) if kind == "text-sdch" else (512,)
        hidden = hidden_widths(hidden, pname)
        if kind == "text-sdch" and len(hidden) != 2:
            raise ValueError(f"text_backbone='text-sdch' has two hidden layers (txt-fc1, "
                             f"txt-fc2); got text_hidden={self.text_hidden!r}")
        spec["hidden"] = hidden
        return spec

    def _optimizer(self, groups):
        if self.optimizer == "adam":
            return torch.optim.Adam(groups, weight_decay=self.weight_decay)
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=self.weight_decay)

    def _feature_groups(self, f, g, pretrained):
        """Parameter groups of Theta_f: pretrained image layers at 0.1 x lr (Section 4.2)."""
        lr = float(self.lr_feature)
        lr_text = lr if self.lr_text is None else float(self.lr_text)
        pre = [p for k, p in f.named_parameters() if k in pretrained]
        rest = [p for k, p in f.named_parameters() if k not in pretrained]
        groups = [{"params": rest, "lr": lr}, {"params": list(g.parameters()), "lr": lr_text}]
        if pre:
            groups.append({"params": pre, "lr": lr * float(self.pretrained_lr_scale)})
        return groups

    # -------------------------------------------------------- bounded features
    def _bound(self, F: torch.Tensor) -> torch.Tensor:
        """The optional bound on img-fc3 / txt-fc3 (``feature_bound``; None: identity).

        "tanh": ``s tanh(F)`` (every entry in (-s, s)); "l2": ``s F / ||F||`` (every feature
        vector on the sphere of radius s), with ``s = feature_scale``; then
        ``|Theta_ij| <= k s^2`` ("tanh") or ``<= s^2`` ("l2").
        """
        bound = getattr(self, "feature_bound", None)
        s = float(getattr(self, "feature_scale", 1.0))
        if bound is None:
            return F
        if bound == "tanh":
            return s * torch.tanh(F)
        return s * Fnn.normalize(F, dim=1, eps=1e-12)

    def _feature_outputs(self, net, X) -> np.ndarray:
        """Bounded features of every row of X (float32 ndarray)."""
        F = self._predict(net, X, 1024, num_workers=self._workers())
        return self._bound(torch.from_numpy(F)).numpy()

    def _clip(self, params) -> None:
        """Gradient-norm clipping (``grad_clip``); logs the total norm after clipping."""
        params = [p for p in params if p.grad is not None]
        if not params:
            return
        if self.grad_clip is None:
            norm = float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
        else:
            raw = float(torch.nn.utils.clip_grad_norm_(params, float(self.grad_clip)))
            norm = min(raw, float(self.grad_clip))
        self._grad_norm_max = max(self._grad_norm_max, norm)

    # ------------------------------------------------------------------ fit
    def _fit(self, views, labels, rng):
        device = resolve_device(self.device)
        seed_everything(_seed_from_rng(rng))
        self._fit_standardization(views)
        X, Y = (self._prepare(V, m) for m, V in enumerate(views))
        n, r = X.shape[0], self.n_bits
        if n < 2:
            raise ValueError(f"SDCH needs at least 2 training samples, got {n}")
        L = torch.from_numpy(np.asarray(labels, dtype=np.float32)).to(device)
        Xd = self._to_tensor(X, device) if not sp.issparse(X) and X.ndim == 2 else X
        Yd = self._to_tensor(Y, device) if not sp.issparse(Y) and Y.ndim == 2 else Y

        f = build_backbone(self._spec(X, "image")).to(device)          # psi_x
        g = build_backbone(self._spec(Y, "text")).to(device)           # psi_y
        h = build_backbone({"kind": "mlp", "in_shape": [int(self.feature_dim)],
                            "out_dim": int(r), "hidden": []}).to(device)   # fc4 (Theta_h)
        if f.spec["kind"] in ("alexnet", "cnnf") and self.image_weights is None:
            _he_init(f)
        pretrained = set(self._load_image_weights(f))
        opt_f = self._optimizer(self._feature_groups(f, g, pretrained))
        opt_h = self._optimizer([{"params": list(h.parameters()), "lr": float(self.lr_hash)}])
        hp = {"beta1": float(self.beta1), "beta2": float(self.beta2), "beta3": float(self.beta3),
              "paper_literal": bool(self.paper_literal)}
        gamma = float(self.gamma)

        self._grad_norm_max = 0.0
        B = None                      # (2, n, r) float32 tensor: [B_x, B_y]
        self.itq_loss_ = []
        if not self.warmup:
            B = self._itq_codes(f, g, h, Xd, Yd, rng, device)
        self.objective_ = []
        terms_log = {k: [] for k in TERMS}

        def get_state():
            return {"B": B, "itq_loss": self.itq_loss_, "objective": self.objective_,
                    "terms": terms_log, "grad_norm_max": self._grad_norm_max}

        def set_state(saved):
            nonlocal B
            B = None if saved["B"] is None else saved["B"].to(device)
            self.itq_loss_ = list(saved["itq_loss"])
            self.objective_[:] = saved["objective"]
            terms_log.update(saved["terms"])
            self._grad_norm_max = saved["grad_norm_max"]

        for epoch, bar in self._epochs("SDCH", {"f": f, "g": g, "h": h},
                                       {"f": opt_f, "h": opt_h}, rng, get_state, set_state):
            phase = "all"
            if self.warmup and epoch == 0:
                phase = "feature"     # lr of Theta_h = 0, B not yet initialised: L_f only
            elif self.warmup and epoch == 1:
                phase = "hash"        # lr of Theta_f = 0
            sums = self._train_epoch(phase, f, g, h, opt_f, opt_h, Xd, Yd, L, B, gamma, hp,
                                     rng, device)
            for opt in (opt_f, opt_h):     # no gradients held through the B-step's passes
                opt.zero_grad(set_to_none=True)
            self._check_diverged(sums["total"], "the loss L", epoch, self._divergence_hint())
            for k in TERMS:
                terms_log[k].append(sums[k])
            self.objective_.append(sums["total"])
            if float(self.lr_decay) != 1.0:
                for opt in (opt_f, opt_h):
                    for grp in opt.param_groups:
                        grp["lr"] *= float(self.lr_decay)
            # B-step: ITQ after the first warm-up epoch, sign(Z) (Eq. 10) after every other
            if B is None:
                B = self._itq_codes(f, g, h, Xd, Yd, rng, device, epoch)
            else:
                B = self._sign_codes(f, g, h, Xd, Yd, epoch, device)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix({"L": f"{sums['total']:.4g}",
                                 **{k[:5]: f"{sums[k]:.3g}" for k in TERMS}}, refresh=False)
        if self.warmup and self._epochs_done == 1:
            # the only B step so far is ITQ's rotated codes, sign((Z - mean) R), a code space the
            # hash functions sign(fc4(f(x))) do not share: end with Eq. 10 like every other run,
            # so that the learned codes are the network encoding of the training set
            B = self._sign_codes(f, g, h, Xd, Yd, 0, device)
        self.loss_terms_ = {k: np.asarray(v, dtype=np.float64) for k, v in terms_log.items()}
        self.n_iter_ = self._epochs_done       # < n_epochs when time_limit stopped it
        #: largest total gradient norm applied in any step (after clipping when grad_clip set)
        self.grad_norm_max_ = float(self._grad_norm_max)
        Bn = B.cpu().numpy()
        self.codes_ = [Bn[0].astype(np.int8), Bn[1].astype(np.int8)]
        self._store_networks(f=f, g=g, h=h)
        for net in self._nets.values():
            net.eval()

    def _divergence_hint(self) -> str:
        return (f"lower the learning rates (lr_feature={self.lr_feature!r}, "
                f"lr_hash={self.lr_hash!r}) or set grad_clip / feature_bound")

    def _sign_codes(self, f, g, h, Xd, Yd, epoch, device):
        """B-step (Eq. 10): B = sign(Z) of every training image and text, (2, n, r) tensor."""
        Zx, Zy = self._all_z(f, g, h, Xd, Yd)
        for Z, what in ((Zx, "the image codes Z"), (Zy, "the text codes Z")):
            self._check_diverged(float(np.abs(Z).max()) if Z.size else 0.0, what, epoch,
                                 self._divergence_hint())
        B = torch.from_numpy(np.stack([codes_step(Zx), codes_step(Zy)]).astype(np.float32))
        return self._distributed(device).broadcast_(B.to(device))   # one B on every rank

    def _all_z(self, f, g, h, Xd, Yd):
        """fc4 outputs of every training image and text (float32 ndarrays)."""
        Fx = self._feature_outputs(f, Xd)
        Fy = self._feature_outputs(g, Yd)
        return self._predict(h, Fx, 4096), self._predict(h, Fy, 4096)

    def _itq_codes(self, f, g, h, Xd, Yd, rng, device, epoch=0):
        """B initialised by ITQ on the stacked z_i, i = 1..m+n (Section 4.2)."""
        Zx, Zy = self._all_z(f, g, h, Xd, Yd)
        self._check_diverged(float(np.abs(Zx).max() + np.abs(Zy).max()), "the codes Z", epoch,
                             self._divergence_hint())
        itq = ITQ(n_iter=int(self.itq_iter), random_state=rng).fit(np.vstack([Zx, Zy]))
        self.itq_loss_ = list(itq.quantization_loss_)
        n = Zx.shape[0]
        Bz = itq.transform(np.vstack([Zx, Zy]))
        B = torch.from_numpy(np.stack([Bz[:n], Bz[n:]]).astype(np.float32)).to(device)
        return self._distributed(device).broadcast_(B)               # one B on every rank

    def _train_epoch(self, phase, f, g, h, opt_f, opt_h, Xd, Yd, L, B, gamma, hp, rng, device):
        """One epoch of Algorithm 1 (one :meth:`_train_step` per mini-batch of a random
        permutation); returns the per-term sums over the mini-batches."""
        n = L.shape[0]
        f.train(), g.train(), h.train()
        perm = rng.permutation(n)
        sums = {k: 0.0 for k in TERMS + ("total",)}
        batches = self._batch_indices(perm, self.batch_size, min_size=2)
        for (idx, xb), (_, yb) in zip(self._batches(Xd, batches, device, train=True, rng=rng),
                                      self._batches(Yd, batches, device, train=True, rng=rng)):
            it = torch.as_tensor(idx, device=device)
            Bb = torch.cat([B[0][it], B[1][it]]) if B is not None else None
            lf, th = self._train_step(phase, f, g, h, opt_f, opt_h, xb, yb, L[it], Bb, gamma,
                                      hp)
            sums["feature"] += lf
            for k in TERMS[1:]:
                sums[k] += th[k]
            lh = (th["similarity"] + hp["beta1"] * th["quantization"]
                  + hp["beta2"] * th["decorrelation"] + hp["beta3"] * th["balance"])
            sums["total"] += lf + gamma * lh
        return sums

    def _train_step(self, phase, f, g, h, opt_f, opt_h, xb, yb, Lb, Bb, gamma, hp):
        """One mini-batch of Algorithm 1: images ``xb``, texts ``yb`` (b pairs), labels ``Lb``,
        codes ``Bb`` of the 2b items (None before B exists); returns (L_f, the L_h terms) of
        the batch before the Theta_f step.

        (i) Theta_h takes a step on gamma L_h with the features fixed (the gradient of
        ``hash_loss_grad`` through fc4; phases "hash" and "all"); (ii) Theta_f takes a step on
        ``L_f + gamma L_h`` evaluated through the UPDATED fc4: the closed-form gradient with
        respect to the batch features (:meth:`_feature_grads`: ``feature_loss_grad`` plus
        ``hash_loss_grad`` back-propagated through fc4) is back-propagated through the
        feature networks (phases "feature" and "all"; L_f alone while B does not exist).

        Under torchrun (:class:`cmhash.deep.training.Distributed`) each rank passes its share
        of the batch through the DDP-wrapped feature networks, the features are gathered so
        every rank computes the whole batch's fc4 step and feature gradients, and each rank
        back-propagates its own rows (times the world size: DDP averages), which is the
        single-process step; fc4's gradient, computed from the whole batch on every rank, is
        averaged by DDP over identical values. Without torchrun the shard is the whole batch.
        """
        Sf = label_similarity(Lb, Lb)                                       # b x b
        L2 = torch.cat([Lb, Lb])
        Sh = 2.0 * label_similarity(L2, L2) - 1.0                          # 2b x 2b, +-1
        amp = self._precision(xb.device)        # forward passes under autocast, float32 math
        dist = self._distributed(xb.device)
        train_features = phase in ("feature", "all")
        if train_features:      # last step's gradients go before this step's activations come
            opt_f.zero_grad(set_to_none=True)
        Fx_local, Fx = self._batch_features(f, xb, amp, dist, train_features, image=True)
        Fy_local, Fy = self._batch_features(g, yb, amp, dist, train_features, image=False)
        Fxy = torch.cat([Fx, Fy])                                          # detached, 2b x k
        if phase in ("hash", "all"):                                        # (i) Theta_h
            hd = dist.wrapped(h)
            with amp.autocast():
                Z1 = hd(Fxy).float()
            gZ = gamma * hash_loss_grad(Z1.detach(), Bb, Sh, **hp)
            opt_h.zero_grad(set_to_none=True)
            amp.backward(Z1, gZ)
            amp.unscale(opt_h)
            self._clip(h.parameters())
            amp.step(opt_h)
        with torch.no_grad():
            Z = h(Fxy)
            lf = float(feature_loss(Fx, Fy, Sf))
            th = ({k: float(v) for k, v in hash_loss_terms(Z, Bb, Sh,
                                                           paper_literal=hp["paper_literal"]).items()}
                  if Bb is not None else {k: 0.0 for k in TERMS[1:]})
        if train_features:                                                  # (ii) Theta_f
            gFx, gFy = self._feature_grads(h, Fx, Fy, Sf, Sh, Bb, gamma, hp)
            _, part = dist.shard(np.arange(xb.shape[0]))
            w = dist.grad_scale
            amp.backward([Fx_local, Fy_local], [gFx[part] * w, gFy[part] * w])
            amp.unscale(opt_f)
            self._clip(list(f.parameters()) + list(g.parameters()))
            amp.step(opt_f)
            for _ in range(int(self.text_steps) - 1):   # extra steps of psi_y, psi_x fixed
                self._text_step(f, g, h, opt_f, xb, yb, Sf, Sh, Bb, gamma, hp)
        return lf, th

    def _batch_features(self, net, xb, amp, dist, train: bool, image: bool):
        """``(local, full)``: the bounded features of this rank's share of the batch ``xb``
        (through the DDP-wrapped ``net``, with autograd when ``train``) and those of the whole
        batch gathered from every rank (detached, float32)."""
        _, part = dist.shard(np.arange(xb.shape[0]))
        model = dist.wrapped(net) if train else net
        x = xb[part]
        with torch.set_grad_enabled(train), amp.autocast():
            local = self._bound(model(amp.inputs(x) if image else x).float())
        return local, dist.gather_rows(local).detach()

    def _feature_grads(self, h, Fx, Fy, Sf, Sh, Bb, gamma, hp):
        """Gradients of ``L_f + gamma L_h`` with respect to the batch features ``Fx``, ``Fy``
        (b x k each, fc4 fixed): ``feature_loss_grad`` plus, once B exists, ``gamma
        hash_loss_grad`` at ``Z = fc4([Fx; Fy])`` back-propagated through fc4 (float32)."""
        gFx, gFy = feature_loss_grad(Fx, Fy, Sf)
        if Bb is None:
            return gFx, gFy
        Fxy = torch.cat([Fx, Fy]).requires_grad_(True)
        with torch.enable_grad():
            Z2 = h(Fxy)
            (gF,) = torch.autograd.grad(Z2, Fxy, gamma * hash_loss_grad(Z2.detach(), Bb, Sh,
                                                                         **hp))
        b = Fx.shape[0]
        return gFx + gF[:b], gFy + gF[b:]

    def _text_step(self, f, g, h, opt_f, xb, yb, Sf, Sh, Bb, gamma, hp):
        """One more step of the text network on the same batch's ``L_f + gamma L_h``.

        The image features and fc4 are fixed; the gradient is the same closed form as in
        step (ii), restricted to the text outputs (``text_steps`` > 1; data-parallel as
        :meth:`_train_step`).
        """
        amp = self._precision(xb.device)
        dist = self._distributed(xb.device)
        opt_f.zero_grad(set_to_none=True)
        _, Fx = self._batch_features(f, xb, amp, dist, False, image=True)
        Fy_local, Fy = self._batch_features(g, yb, amp, dist, True, image=False)
        _, gFy = self._feature_grads(h, Fx, Fy, Sf, Sh, Bb, gamma, hp)
        _, part = dist.shard(np.arange(xb.shape[0]))
        amp.backward(Fy_local, gFy[part] * dist.grad_scale)
        amp.unscale(opt_f)
        self._clip(g.parameters())
        amp.step(opt_f)

    # -------------------------------------------------------------- encoding
    def network_outputs(self, X, modality) -> np.ndarray:
        """Real-valued fc4 outputs ``z = fc4(f(x))`` (before sign) for samples of ``modality``."""
        m = self.modality_index(modality)
        X = self._check_query(X, m)
        F = self._feature_outputs(self._network("f" if m == 0 else "g"), self._prepare(X, m))
        return self._predict(self._network("h"), F)

    def features(self, X, modality) -> np.ndarray:
        """The k-dimensional features f(x; psi) (img-fc3 / txt-fc3) of ``modality``."""
        m = self.modality_index(modality)
        X = self._check_query(X, m)
        return self._feature_outputs(self._network("f" if m == 0 else "g"), self._prepare(X, m))

    def _encode(self, X, m, task):
        F = self._feature_outputs(self._network("f" if m == 0 else "g"), self._prepare(X, m))
        return sign(self._finite_outputs(self._predict(self._network("h"), F)))
