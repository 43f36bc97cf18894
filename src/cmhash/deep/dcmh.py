"""DCMH: deep cross-modal hashing (Jiang & Li, CVPR 2017), the deep baseline of TA-ADCMH's,
SDCH's and ASFOH's tables.

Row-sample convention (the paper writes F, G, B as r x n; here they are n x r). See
docs/methods/dcmh.md for the derivation, the cost and every deviation.

Networks: ``F = f(X)`` (CNN-F for images (n, C, H, W), fc8 -> r; an MLP for feature vectors)
and ``G = g(Y)`` (BoW -> 8,192 -> r, two fully-connected layers as in the official code), both
with an identity output layer. Objective::

    Theta_ij = 1/2 F_i^T G_j,   S_ij = 1 iff items i and j share a label
    J = -sum_ij (S_ij Theta_ij - log(1 + e^Theta_ij)) + gamma (||B - F||^2 + ||B - G||^2)
        + eta (||F^T 1||^2 + ||G^T 1||^2),                 B in {-1, +1}^{n x r}

Algorithm 1, per epoch (official hyper-parameters: gamma = eta = 1, batches of 128, plain SGD
with the learning rate 10^-1.5 -> 10^-3 geometric over the epochs, weight decay 5e-4)::

    for each mini-batch I of a random permutation: step of f on the part of J depending on F_I
    for each mini-batch I of a random permutation: step of g on the part of J depending on G_I
    B = sign(gamma (F + G))

J is TA-ADCMH's J_t with lambda = beta = gamma, nu = eta and no label regression (TA-ADCMH is
built on DCMH), so the formulas (:func:`cmhash.deep.ta_adcmh.batch_loss`, ``objective_terms``)
and the epoch loop of one network (``TAADCMH._train_side``) are shared. The likelihood of a
mini-batch is evaluated against all n items of the other modality (an |I| x n block of S built
from the labels, the other modality's outputs and the rest of the own ones from buffers
refreshed batch by batch, as the official code); no n x n matrix is formed.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .._validation import check_bool, check_choice, check_int, check_positive
from ..solvers import sign
from ._torch_base import TorchHasher, _seed_from_rng, resolve_device, seed_everything
from .backbones import IMAGE_BACKBONE_KINDS
from .ta_adcmh import TAADCMH, network_step, objective_block_rows, objective_terms

__all__ = ["DCMH", "codes_step", "learning_rates"]

#: the official hyper-parameters (the authors' MatConvNet release, DCMH_demo.m / update_net.m)
OFFICIAL = {"gamma": 1.0, "eta": 1.0, "batch_size": 128, "n_epochs": 500, "lr": 10 ** -1.5,
            "lr_end": 1e-3, "lr_schedule": "log", "optimizer": "sgd", "weight_decay": 5e-4}


def codes_step(F, G, *, gamma: float = 1.0) -> np.ndarray:
    """B-step: ``argmin_{B in {-1,+1}^{n x r}} gamma (||B - F||^2 + ||B - G||^2)``.

    ``||B||^2 = n r`` is constant, so only ``-2 gamma tr(B^T (F + G))`` varies and the exact
    minimiser is ``sign(gamma (F + G)) = sign(F + G)`` entry by entry (gamma > 0; zeros map to
    -1, which is also optimal). With gamma = 0, B does not enter J; ``sign(F + G)`` is kept
    (the limit gamma -> 0+).
    """
    del gamma  # positive scale: the same signs
    return sign(np.asarray(F, dtype=np.float64) + np.asarray(G, dtype=np.float64))


def learning_rates(lr: float, lr_end: float, n_epochs: int, schedule: str = "log") -> np.ndarray:
    """Learning rate of each epoch, from ``lr`` (epoch 1) to ``lr_end`` (the last epoch).

    "log": geometric, MATLAB's ``logspace(log10(lr), log10(lr_end), n_epochs)`` (the official
    MatConvNet release: ``logspace(-1.5, -3, 500)``); "linear": ``linspace(lr, lr_end,
    n_epochs)`` (the TensorFlow / PyTorch ports: ``linspace(10^-1.5, 1e-6, 500)``).
    """
    if schedule == "log":
        return np.logspace(np.log10(lr), np.log10(lr_end), int(n_epochs))
    return np.linspace(lr, lr_end, int(n_epochs))


class DCMH(TorchHasher):
    """DCMH (Jiang & Li, CVPR 2017): deep cross-modal hashing.

    Parameters
    ----------
    n_bits : int
        Code length r (the width of both networks' last layer).
    gamma : float
        Weight of the quantization terms ``||B - F||^2 + ||B - G||^2`` (official: 1).
    eta : float
        Weight of the balance terms ``||F^T 1||^2 + ||G^T 1||^2`` (official: 1).
    image_backbone : {"auto", "mlp", "cnnf", "alexnet", "tv_alexnet", "tv_vgg16", "tv_resnet50"}
    text_backbone : {"auto", "mlp", "text-ta"}
        "auto": CNN-F for arrays of images (n, C, H, W) (either modality), else an MLP (image)
        / the official two-layer text network BoW -> ``text_hidden`` -> r ("text-ta", the
        network TA-ADCMH re-uses; text). Images must be at least 11 x 11 (conv1).
    image_hidden, text_hidden : int or tuple of int
        Hidden widths of the MLP / text networks (official text network: 8,192).
    fc_dim : int
        Width of CNN-F's fc6/fc7 (4,096; smaller only for fast tests).
    dropout : float
        Dropout after hidden layers (0: none, as the official code).
    image_weights : str or None
        Pretrained weights for the image network from this local file (a MatConvNet
        ``imagenet-vgg-f.mat`` into CNN-F, as the official code, or any file
        :mod:`cmhash.deep.weights` reads; every layer but the output layer must fit). Never
        loaded into the text network. Image arrays are then normalised as the weights expect
        (0-255 RGB pixels in, ``input_normalization_``; vgg-f: its average image subtracted,
        as the official code) instead of z-scored.
    image_weights_format : {"auto", "matconvnet", "torchvision", "caffe", "state_dict"}
        The layout of ``image_weights`` ("auto": from the file).
    standardize : bool
        z-score dense inputs with training means / standard deviations (stored): per feature
        for vectors, per channel for images (unless ``image_weights`` define the images'
        normalisation). CSR input is left as is.
    n_epochs : int
        Epochs (official: 500); each is one pass of the image network, one of the text
        network, then the B-step.
    batch_size : int
        Mini-batch size (official: 128).
    lr, lr_end : float
        Learning rate of the first and of the last epoch (official: 10^-1.5 and 10^-3).
    lr_schedule : {"log", "linear"}
        "log": geometric from ``lr`` to ``lr_end`` (the official MatConvNet release);
        "linear": linear (the TensorFlow / PyTorch ports, with ``lr_end=1e-6``).
    optimizer : {"sgd", "adam"}
        "sgd": plain SGD without momentum (the official code); "adam": Adam.
    weight_decay : float
        L2 penalty on the network weights (official: 5e-4; not part of J).
    refresh_buffers : bool
        After each network's epoch, recompute that network's n outputs exactly (eval mode), so
        that the B-step sees the current F and G instead of the per-batch buffers (off: the
        official code).
    track_objective : bool
        Evaluate J after each epoch (O(n^2 r) time in float64, in row blocks; off by default).
    amp, checkpoint, resume : mixed precision ("auto": off on the CPU), a checkpoint file
        rewritten after every epoch, a checkpoint to continue from; see
        :class:`cmhash.deep._torch_base.TorchHasher` and docs/deep.md.
    time_limit : float or None
        Seconds: no further epoch is started when it would end past this time since the fit
        began (estimated from the longest epoch so far); None: all ``n_epochs``.
    device : "auto", "cpu", "cuda" or "cuda:N"
    num_workers : worker processes decoding image batches of an image source (0: in-process)
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8   the learned codes B, shared by both modalities
    objective_ : list of float   J after each epoch (empty unless ``track_objective``)
    loss_terms_ : dict of (n_epochs,) arrays   "nll", "quant_f", "quant_g", "balance" (weighted)
    learning_rates_ : (n_epochs,) float64   the learning rate of each epoch
    network_states_, architectures_ : the networks "f" (image) and "g" (text)
    input_means_, input_scales_ : per-modality standardisation (None where not applied)
    input_normalization_ : InputNormalization or None   the image normalisation of the loaded
        weights (applied through input_means_ / input_scales_; saved with the model)
    """

    name = "dcmh"
    state_shapes = {"learning_rates_": ("n_epochs",)}
    standardized_ndims = (2, 4)   # vectors per feature, images per channel

    #: the official hyper-parameters on the three data sets of the paper (the released scripts
    #: use the same values for each); no Wiki preset has been selected
    PRESETS = {"mirflickr25k": dict(OFFICIAL), "nuswide": dict(OFFICIAL),
               "iapr-tc12": dict(OFFICIAL)}
    #: ``cmhash tune`` search space (cmhash.tune module doc): the objective's weights gamma and
    #: eta (official 1) over the range the others' spaces span, the learning rate over
    #: [1e-5, 1e-1] (TA-ADCMH, built on DCMH's networks, states [1e-6, 1e-1]; below 1e-5
    #: nothing moves within a capped number of epochs) and the optimiser (the official plain SGD, or Adam: no Wiki
    #: preset fixes it, while TA-ADCMH's and SDCH's Wiki presets fix theirs). Epochs and the
    #: schedule come from the start point (e.g. ``--variant DCMH-linear-lr``).
    SEARCH_SPACE = {"gamma": ("log", 1e-3, 1e2), "eta": ("log", 1e-3, 1e2),
                    "lr": ("log", 1e-5, 1e-1), "optimizer": ("cat", ["sgd", "adam"])}
    #: the released ports' schedule: linear from 10^-1.5 to 1e-6
    VARIANTS = {"DCMH": {"lr_schedule": "log", "lr_end": 1e-3},
                "DCMH-linear-lr": {"lr_schedule": "linear", "lr_end": 1e-6}}

    def __init__(self, n_bits: int = 32, *, gamma: float = 1.0, eta: float = 1.0,
                 image_backbone: str = "auto", text_backbone: str = "auto",
                 image_hidden=(512,), text_hidden=8192, fc_dim: int = 4096,
                 dropout: float = 0.0, image_weights=None, image_weights_format: str = "auto",
                 standardize: bool = True,
                 n_epochs: int = 500, batch_size: int = 128, lr: float = 10 ** -1.5,
                 lr_end: float = 1e-3, lr_schedule: str = "log", optimizer: str = "sgd",
                 weight_decay: float = 5e-4, refresh_buffers: bool = False,
                 track_objective: bool = False, amp="auto", checkpoint=None, resume=None,
                 time_limit=None, device: str = "auto", num_workers: int = 0, random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, amp=amp, checkpoint=checkpoint, resume=resume,
                         time_limit=time_limit, device=device,
                         num_workers=num_workers, random_state=random_state, verbose=verbose)
        self.gamma = gamma
        self.eta = eta
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
        self.batch_size = batch_size
        self.lr = lr
        self.lr_end = lr_end
        self.lr_schedule = lr_schedule
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.refresh_buffers = refresh_buffers
        self.track_objective = track_objective

    # ------------------------------------------------------------ validation
    def _validate_params(self):
        for p in ("gamma", "eta", "weight_decay"):
            check_positive(getattr(self, p), p, allow_zero=True)
        check_positive(self.lr, "lr")
        check_positive(self.lr_end, "lr_end")
        check_choice(self.lr_schedule, "lr_schedule", {"log", "linear"})
        check_choice(self.optimizer, "optimizer", {"sgd", "adam"})
        check_choice(self.image_backbone, "image_backbone", {"auto", "mlp", *IMAGE_BACKBONE_KINDS})
        check_choice(self.text_backbone, "text_backbone", {"auto", "mlp", "text-ta"})
        check_int(self.n_epochs, "n_epochs")
        check_int(self.batch_size, "batch_size")
        check_int(self.fc_dim, "fc_dim")
        for p in ("refresh_buffers", "track_objective", "standardize"):
            check_bool(getattr(self, p), p, error=ValueError)
        if not (isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
                and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self._check_weights_file(self.image_weights, source=self.image_weights_format)
        resolve_device(self.device)

    # ---------------------------------------------- shared with TA-ADCMH (built on DCMH)
    #: backbone specs ("auto": CNN-F for images, an MLP for image vectors, BoW -> hidden -> r
    #: for texts) and network construction with ``image_weights`` in the image network only
    #: (:meth:`TorchHasher._load_image_weights`)
    _spec = TAADCMH._spec
    _new_network = TAADCMH._new_network
    #: one epoch of one network: a :meth:`_train_step` per mini-batch of a random permutation,
    #: then (``refresh_buffers``) the exact outputs of the updated network in its buffer
    _train_side = TAADCMH._train_side

    def _make_optimizer(self, net):
        if self.optimizer == "adam":
            return torch.optim.Adam(net.parameters(), lr=float(self.lr),
                                    weight_decay=float(self.weight_decay))
        return torch.optim.SGD(net.parameters(), lr=float(self.lr),
                               weight_decay=float(self.weight_decay))

    # ------------------------------------------------------------------ fit
    def _fit(self, views, labels, rng):
        device = resolve_device(self.device)
        seed_everything(_seed_from_rng(rng))
        self._fit_standardization(views)
        X, Y = (self._prepare(V, m) for m, V in enumerate(views))
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"DCMH needs at least 2 training samples, got {n}")
        L = torch.from_numpy(np.asarray(labels, dtype=np.float32)).to(device)
        # dense inputs live on the device once; CSR stays on the host, densified per batch
        Xd = self._to_tensor(X, device) if not sp.issparse(X) and X.ndim == 2 else X
        Yd = self._to_tensor(Y, device) if not sp.issparse(Y) and Y.ndim == 2 else Y

        f = self._new_network(self._spec(X, "image"), device, "image")    # theta_x
        g = self._new_network(self._spec(Y, "text"), device, "text")      # theta_y
        # the buffers F, G are the initial networks' outputs; B = sign(gamma (F + G))
        workers = self._workers()
        F = torch.from_numpy(self._predict(f, Xd, self.batch_size, device, workers)).to(device)
        G = torch.from_numpy(self._predict(g, Yd, self.batch_size, device, workers)).to(device)
        s = {"f": f, "g": g, "opt_f": self._make_optimizer(f), "opt_g": self._make_optimizer(g),
             "F": F, "G": G, "B": self._b_step(F, G, device)}
        self.learning_rates_ = learning_rates(float(self.lr), float(self.lr_end),
                                              self.n_epochs, self.lr_schedule)

        self.objective_ = []
        terms_log: dict[str, list] = {}

        def get_state():
            return {k: s[k] for k in ("F", "G", "B")} | {"objective": self.objective_,
                                                          "terms": terms_log}

        def set_state(state):
            s.update({k: state[k].to(device) for k in ("F", "G", "B")})
            self.objective_[:] = state["objective"]
            terms_log.update(state["terms"])

        for epoch, bar in self._epochs("DCMH", {"f": f, "g": g},
                                       {"f": s["opt_f"], "g": s["opt_g"]}, rng,
                                       get_state, set_state):
            for side in ("f", "g"):   # Algorithm 1: an epoch of the image net, then the text net
                for group in s["opt_" + side].param_groups:
                    group["lr"] = float(self.learning_rates_[epoch])
                self._train_side(side, s, Xd, Yd, L, rng, device)
                self._check_diverged(
                    s["F" if side == "f" else "G"],
                    f"the outputs of the {'image' if side == 'f' else 'text'} network", epoch,
                    f"lower the learning rate (lr={self.lr!r}) or gamma / eta")
            s["B"] = self._b_step(s["F"], s["G"], device)
            if self.track_objective:
                terms = self._objective(s, L)
                for k, v in terms.items():
                    terms_log.setdefault(k, []).append(v)
                self.objective_.append(terms["total"])
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix({"J": f"{terms['total']:.4g}"}, refresh=False)
        self.loss_terms_ = {k: np.asarray(v) for k, v in terms_log.items()}
        self.n_iter_ = self._epochs_done       # < n_epochs when time_limit stopped it
        self.codes_ = s["B"].cpu().numpy().astype(np.int8)
        self._store_networks(f=f, g=g)
        for net in self._nets.values():
            net.eval()

    def _b_step(self, F, G, device) -> torch.Tensor:
        """B = sign(gamma (F + G)) of the buffers (:func:`codes_step`) as a float32 tensor."""
        B = codes_step(F.cpu().numpy(), G.cpu().numpy(), gamma=float(self.gamma))
        return torch.from_numpy(B.astype(np.float32)).to(device)

    def _train_step(self, side, s, xb, it, L):
        """One step of the image (``side="f"``) or text (``"g"``) network on the batch rows
        ``it`` (inputs ``xb``): the part of J that depends on the batch outputs,
        ``sum_{i in I, j} [log(1 + e^Theta_ij) - S_ij Theta_ij] + gamma ||B_I - out||^2
        + eta ||out^T 1 + sum_{i not in I} own_i||^2``, divided by |I| n as the official code
        (:func:`cmhash.deep.ta_adcmh.network_step`); its gradient with respect to the batch
        outputs is rows I of dJ/dF (image) or dJ/dG (text), the gradients the official code
        back-propagates (docs/methods/dcmh.md)."""
        own, other = (s["F"], s["G"]) if side == "f" else (s["G"], s["F"])
        network_step(s[side], s["opt_" + side], xb, it, own, other, s["B"], L, None,
                     w_quant=float(self.gamma), mu=0.0, nu=float(self.eta),
                     precision=self._precision(xb.device), dist=self._distributed(xb.device))

    def _objective(self, s, L) -> dict:
        """Every term of J (weighted) and their sum "total", in float64 row blocks."""
        gamma = float(self.gamma)
        with torch.no_grad():
            terms = objective_terms(s["F"].double(), s["G"].double(), s["B"].double(),
                                    L.double(), None, lam=gamma, beta=gamma, mu=0.0,
                                    nu=float(self.eta), query=None,
                                    block=objective_block_rows(L.shape[0]))
        return {k: float(v) for k, v in terms.items()}

    # -------------------------------------------------------------- encoding
    def _encode(self, X, m, task):
        return self._encode_with("f" if m == 0 else "g", self._prepare(X, m))

    def network_outputs(self, X, modality) -> np.ndarray:
        """Real-valued network outputs F = f(X) (image) or G = g(Y) (text), before sign."""
        m = self.modality_index(modality)
        X = self._check_query(X, m)
        return self._predict(self._network("f" if m == 0 else "g"), self._prepare(X, m),
                             num_workers=self._workers())
