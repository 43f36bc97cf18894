"""TA-ADCMH: task-adaptive asymmetric deep cross-modal hashing (Li et al.; paper ta-adcmh.md).

Row-sample convention (the paper writes r x n matrices; here F, G, B are n x r and the
projections P, W are c x r, so the paper's ``P L`` is ``L P`` here). See
docs/methods/ta-adcmh.md for the derivation and every deviation.

Two couples of networks, one per retrieval task t (I2T: t = 1, T2I: t = 2)::

    F_t = f_t(X) (n x r, image network), G_t = g_t(Y) (n x r, text network),
    Phi = F_t G_t^T / 2,  S_ij = 1 if l_i and l_j share a label else 0

    J_1 = sum_ij [log(1 + e^Phi_ij) - S_ij Phi_ij] + lambda1 ||B1 - F1||^2 + beta1 ||B1 - G1||^2
          + mu1 ||F1 - L P||^2 + nu1 (||F1^T 1||^2 + ||G1^T 1||^2 + ||P||^2)        (Eq. 1, 3)
    J_2 = the same with (lambda2, beta2, nu2) and the label regression on the TEXT (query)
          side: mu2 ||G2 - L W||^2 + nu2 ||W||^2                                   (Eq. 4, 5)

Algorithm 1, per outer iteration (epoch) and task::

    I2T: one epoch of f1 (mini-batches of 128, gradient Eq. 6), one epoch of g1 (Eq. 7),
         B1 = sign(lambda1 F1 + beta1 G1)                                          (Eq. 9)
         P  = (L^T L + nu1/mu1 I)^{-1} L^T F1                                      (Eq. 11)
    T2I: one epoch of g2 (Eq. 13), one epoch of f2 (Eq. 14),
         B2 = sign(lambda2 F2 + beta2 G2)                                          (Eq. 16)
         W  = (L^T L + nu2/mu2 I)^{-1} L^T G2                                      (Eq. 18)

The likelihood of a mini-batch I is evaluated against all n samples of the other modality
(a |I| x n block of S built from the labels); the other modality's outputs and the rest of
F (for the balance term) come from buffers refreshed as each batch is processed, exactly as
DCMH does (``refresh_buffers=True`` recomputes a network's n outputs after its epoch, so the
closed-form steps see the exact F and G). No n x n matrix is ever formed.
``normalize_likelihood=True`` reads lambda, beta, mu per likelihood row (J uses n lambda,
n beta, n mu): the n^2-pair likelihood otherwise dwarfs the per-sample terms by a factor n. Encoding: an image query of I2T is
``sign(f1(x))`` and a text query of T2I is ``sign(g2(y))`` (Section 3.4).

Variants (Sections 5.2-5.3, ``VARIANTS``): TA-ADCMH-I regresses the labels from the shared
codes (``regression="codes"``: B = sign(lambda F + beta G + mu L V)), TA-ADCMH-II has no label
regression (``regression="none"``); both use one couple of networks for both tasks.
TA-ADCMH-III drops the discrete constraint (``discrete=False``: B = (lambda F + beta G) /
(lambda + beta), binarised by sign at the end).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn import functional as Fnn

from .._validation import check_bool, check_choice, check_int, check_n_anchors, check_positive
from ..kernel import RBFAnchorFeatures
from ..solvers import sign
from ._torch_base import (TorchHasher, _seed_from_rng, hidden_widths, resolve_device,
                          seed_everything)
from .backbones import IMAGE_BACKBONE_KINDS, build_backbone
from .training import Precision

__all__ = ["TAADCMH", "similarity_block", "nll_block", "batch_loss", "network_step",
           "objective_terms", "objective_block_rows", "analytic_gradients", "codes_step",
           "projection_step", "class_codes"]

OBJECTIVE_BLOCK = 1024  # rows of the S / Phi blocks when evaluating the whole objective
#: at most this many entries in one block x n piece of S / Phi of the objective trace (32 MB in
#: float64), so the trace of a large n uses blocks of fewer rows instead of 1,024 x n
OBJECTIVE_BLOCK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------- the paper's formulas
def similarity_block(L_rows: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Rows of the pairwise similarity S (|I| x n): S_ij = 1 iff l_i^T l_j > 0."""
    return (L_rows @ L.T > 0).to(L.dtype)


def nll_block(Fb: torch.Tensor, G: torch.Tensor, Sb: torch.Tensor) -> torch.Tensor:
    """``sum_ij log(1 + e^Phi_ij) - S_ij Phi_ij`` for Phi = Fb G^T / 2 (a block of rows)."""
    Phi = 0.5 * (Fb @ G.T)
    return (Fnn.softplus(Phi) - Sb * Phi).sum()


def batch_loss(out, idx, own, other, B, L, Q, *, w_quant, mu, nu):
    """The part of J that depends on the mini-batch outputs ``out`` = F_I (or G_I).

    ``sum_{i in I, j} [log(1 + e^Phi_ij) - S_ij Phi_ij] + w ||B_I - out||^2
    + mu ||out - L_I Q||^2 + nu ||out^T 1 + (rest of own)^T 1||^2``, where ``own`` is the
    n x r buffer of this network's outputs (its rows ``idx`` are replaced by ``out``) and
    ``other`` the buffer of the other modality. Its gradient w.r.t. ``out`` equals the rows
    ``idx`` of Eq. 6 (f1), 7 (g1), 13 (g2, with mu) or 14 (f2). For the text side the
    likelihood is symmetric: ``sum_{i, j in I}`` with Phi = F G^T / 2 equals
    ``nll_block(G_I, F, S_I)`` because S is symmetric.
    """
    Lb = L[idx]
    loss = nll_block(out, other, similarity_block(Lb, L))
    loss = loss + w_quant * ((B[idx] - out) ** 2).sum()
    if mu > 0:
        loss = loss + mu * ((out - Lb @ Q) ** 2).sum()
    rest = own.sum(0) - own[idx].sum(0)                               # other rows of F^T 1
    return loss + nu * ((rest + out.sum(0)) ** 2).sum()


def network_step(net, opt, xb, it, own, other, B, L, Q, *, w_quant, mu, nu,
                 precision=None, dist=None) -> None:
    """One optimiser step of ``net`` on the mini-batch rows ``it`` (inputs ``xb``).

    The loss is :func:`batch_loss` of the batch outputs ``net(xb)`` divided by |I| n (a
    constant rescaling that keeps the step size independent of n, as in DCMH's released code);
    afterwards the rows ``it`` of the buffer ``own`` hold the batch outputs (computed before
    the step, as the released code does). ``precision``
    (:class:`cmhash.deep.training.Precision`): the forward pass under its autocast, the loss
    in float32, its backward pass loss-scaled and the step through its gradient scaler.
    ``dist`` (:class:`cmhash.deep.training.Distributed`, under torchrun): each rank passes its
    share of the batch through the DDP-wrapped network, the batch outputs are gathered, every
    rank computes the gradient of the whole batch loss and back-propagates its own rows
    (times the world size: DDP averages), which is the single-process step.
    """
    precision = precision or Precision("off", xb.device)
    opt.zero_grad(set_to_none=True)     # the last step's gradients go before the activations
    if dist is not None and dist.active:
        _network_step_distributed(net, opt, xb, it, own, other, B, L, Q, w_quant=w_quant,
                                  mu=mu, nu=nu, precision=precision, dist=dist)
        return
    with precision.autocast():
        out = net(precision.inputs(xb))
    out = out.float()
    loss = batch_loss(out, it, own, other, B, L, Q, w_quant=w_quant, mu=mu, nu=nu)
    loss = loss / (len(it) * own.shape[0])
    precision.backward(loss, torch.ones_like(loss))
    precision.step(opt)
    own[it] = out.detach()


def _network_step_distributed(net, opt, xb, it, own, other, B, L, Q, *, w_quant, mu, nu,
                              precision, dist) -> None:
    """:func:`network_step` with the batch split across the torchrun ranks."""
    _, part = dist.shard(np.arange(len(it)))
    with precision.autocast():
        local = dist.wrapped(net)(precision.inputs(xb[part]))
    out = dist.gather_rows(local.float()).requires_grad_()
    loss = batch_loss(out, it, own, other, B, L, Q, w_quant=w_quant, mu=mu, nu=nu)
    (grad,) = torch.autograd.grad(loss / (len(it) * own.shape[0]), out)
    precision.backward(local, grad[part] * dist.grad_scale)
    precision.step(opt)
    own[it] = out.detach()


def objective_block_rows(n: int) -> int:
    """Rows of the blocks in which the objective trace evaluates the likelihood: at most n,
    ``OBJECTIVE_BLOCK`` and ``OBJECTIVE_BLOCK_ELEMENTS / n`` (entries per block x n piece)."""
    n = max(int(n), 1)
    return int(max(1, min(n, OBJECTIVE_BLOCK, OBJECTIVE_BLOCK_ELEMENTS // n)))


def objective_terms(F, G, B, L, Q, *, lam, beta, mu, nu, query="image",
                    block: int = OBJECTIVE_BLOCK) -> dict:
    """Every term of J_1 (``query="image"``, Eq. 1/3) or J_2 (``query="text"``, Eq. 4/5).

    ``Q`` is P (regression of F on L) for I2T or W (regression of G on L) for T2I;
    ``query="codes"`` gives TA-ADCMH-I (mu ||B - L V||^2) and ``query=None`` TA-ADCMH-II.
    Tensors are n x r (F, G, B), n x c (L), c x r (Q). The likelihood is summed over row
    blocks of ``block`` x n, never an n x n matrix.
    """
    n = F.shape[0]
    nll = F.new_zeros(())
    for s in range(0, n, block):
        nll = nll + nll_block(F[s:s + block], G, similarity_block(L[s:s + block], L))
    terms = {"nll": nll,
             "quant_f": lam * ((B - F) ** 2).sum(),
             "quant_g": beta * ((B - G) ** 2).sum(),
             "balance": nu * ((F.sum(0) ** 2).sum() + (G.sum(0) ** 2).sum())}
    target = {"image": F, "text": G, "codes": B, None: None}[query]
    if target is not None:
        terms["regression"] = mu * ((target - L @ Q) ** 2).sum()
        terms["ridge"] = nu * (Q ** 2).sum()
    terms["total"] = sum(terms.values())
    return terms


def analytic_gradients(F, G, B, L, Q, *, lam, beta, mu, nu, query="image",
                       block: int = OBJECTIVE_BLOCK):
    """The paper's gradients (dJ/dF, dJ/dG), n x r each, computed in row blocks.

    I2T (``query="image"``): dJ1/dF1 is Eq. 6, dJ1/dG1 is Eq. 7::

        dF = 1/2 (sigma(Phi) - S) G + 2 lambda (F - B) + 2 mu (F - L P) + 2 nu 1 1^T F
        dG = 1/2 (sigma(Phi) - S)^T F + 2 beta (G - B) + 2 nu 1 1^T G

    T2I (``query="text"``): dJ2/dG2 is Eq. 13 (with the 2 mu (G - L W) term) and dJ2/dF2 is
    Eq. 14 (without it). ``query`` "codes"/None (variants I/II): no regression term on F or G.
    """
    n = F.shape[0]
    dF = torch.zeros_like(F)
    dG = torch.zeros_like(G)
    for s in range(0, n, block):
        Sb = similarity_block(L[s:s + block], L)
        R = torch.sigmoid(0.5 * (F[s:s + block] @ G.T)) - Sb   # sigma(Phi) - S, block x n
        dF[s:s + block] = 0.5 * (R @ G)
        dG += 0.5 * (R.T @ F[s:s + block])
    dF += 2 * lam * (F - B) + 2 * nu * F.sum(0, keepdim=True)
    dG += 2 * beta * (G - B) + 2 * nu * G.sum(0, keepdim=True)
    if query == "image":
        dF += 2 * mu * (F - L @ Q)
    elif query == "text":
        dG += 2 * mu * (G - L @ Q)
    return dF, dG


def codes_step(F, G, *, lam, beta, mu=0.0, LQ=None, discrete=True) -> np.ndarray:
    """B-step. Discrete (Eq. 9/16): ``B = sign(lam F + beta G [+ mu L V])``, the exact minimiser
    of ``lam ||B - F||^2 + beta ||B - G||^2 [+ mu ||B - L V||^2]`` over B in {-1,+1}^{n x r}
    (``||B||^2 = n r`` is constant, so only ``-2 tr(B^T (lam F + beta G + mu L V))`` varies).
    Relaxed (TA-ADCMH-III): the real minimiser ``(lam F + beta G + mu L V) / (lam + beta + mu)``.
    """
    M = lam * np.asarray(F, dtype=np.float64) + beta * np.asarray(G, dtype=np.float64)
    w = lam + beta
    if LQ is not None and mu > 0:
        M = M + mu * np.asarray(LQ, dtype=np.float64)
        w = w + mu
    if discrete:
        return sign(M).astype(np.float64)
    if w <= 0:
        raise ValueError("the relaxed B-step needs lambda + beta (+ mu) > 0")
    return M / w


def projection_step(T, L, *, mu, nu) -> np.ndarray:
    """P-step (Eq. 11) / W-step (Eq. 18) / V-step (variant I), row convention:
    ``argmin_Q mu ||T - L Q||^2 + nu ||Q||^2 = (L^T L + nu/mu I)^{-1} L^T T`` (c x r).

    ``mu = 0`` leaves only ``nu ||Q||^2``, minimised by Q = 0. Solved as
    ``(mu L^T L + nu I) Q = mu L^T T`` so that nu = 0 with a full-rank L^T L also works.
    """
    L = np.asarray(L, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    c = L.shape[1]
    if mu == 0:
        return np.zeros((c, T.shape[1]))
    A = mu * (L.T @ L) + nu * np.eye(c)
    rhs = mu * (L.T @ T)
    try:
        return np.linalg.solve(A, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(A, rhs, rcond=None)[0]


def class_codes(kind: str, c: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """Initial P / W (c x r) for ``projection_init``.

    "random": a standard Gaussian matrix (Algorithm 1, "randomly initialize P").
    "gaussian": its sign, one random +-1 code per class.
    "balanced": every bit splits the classes in two halves (floor(c/2) at +1), so that with
    roughly equal class sizes each column of L P has mean ~0 (the balance term's goal); the
    draw with the largest minimum Hamming distance between classes among 64 seeded draws.
    "hadamard": rows 1..c of the r x r Sylvester Hadamard matrix (row 0, all ones, is skipped
    so that no class gets the constant code), columns multiplied by a random +-1 sign: pairwise
    orthogonal class codes at Hamming distance exactly r / 2. Needs r a power of 2 and c < r.
    """
    if kind == "random":
        return rng.standard_normal((c, r))
    if kind == "gaussian":
        return sign(rng.standard_normal((c, r))).astype(np.float64)
    if kind == "balanced":
        # every column: floor(c/2) classes +1, the rest -1 (a random split per column); the
        # best of 64 seeded draws by minimum pairwise Hamming distance between class codes
        base = np.r_[np.ones(c // 2), -np.ones(c - c // 2)]
        best, best_d = None, -1.0
        for _ in range(64):
            C = np.stack([rng.permutation(base) for _ in range(r)], axis=1)
            D = (r - C @ C.T) / 2
            np.fill_diagonal(D, np.inf)
            d = D.min() if c > 1 else float(r)
            if d > best_d:
                best, best_d = C, d
        return best
    if r & (r - 1) or c >= r:
        raise ValueError(f"projection_init='hadamard' needs n_bits a power of 2 and more bits "
                         f"than classes, got n_bits={r}, {c} classes")
    H = np.ones((1, 1))
    while H.shape[0] < r:
        H = np.block([[H, H], [H, -H]])
    flips = sign(rng.standard_normal(r)).astype(np.float64)
    return H[1:c + 1] * flips[None, :]


# ---------------------------------------------------------------------- the estimator
class TAADCMH(TorchHasher):
    """TA-ADCMH (task-adaptive asymmetric deep cross-modal hashing).

    Parameters
    ----------
    n_bits : int
        Code length r (the size of every network's last layer).
    lambda1, beta1, mu1, nu1 : float
        I2T weights: ||B1 - F1||^2, ||B1 - G1||^2, ||F1 - L P||^2, balance + ||P||^2.
    lambda2, beta2, mu2, nu2 : float
        T2I weights: ||B2 - F2||^2, ||B2 - G2||^2, ||G2 - L W||^2, balance + ||W||^2.
    regression : {"query", "codes", "none"}
        "query": the paper's task-adaptive regression of the QUERY network output on the
        labels, two couples of networks. "codes" (TA-ADCMH-I) and "none" (TA-ADCMH-II): one
        couple shared by both tasks, trained with the I2T weights.
    discrete : bool
        False gives TA-ADCMH-III (relaxed, real-valued B during training).
    image_backbone : {"auto", "mlp", "cnnf", "alexnet", "tv_alexnet", "tv_vgg16", "tv_resnet50"}
    text_backbone : {"auto", "mlp", "text-ta"}
        "auto": CNN-F for arrays of images (n, C, H, W) (either modality), else an MLP (image)
        / the paper's two-layer text network "text-ta" (text). Images must be at least
        11 x 11 (conv1).
    image_hidden, text_hidden : int or tuple of int
        Hidden widths of the MLP / text-ta networks (the paper's text network: 8,192; text-ta
        has exactly one hidden layer).
    fc_dim : int
        Width of CNN-F's fc6/fc7 (4,096 in the paper; smaller only for fast tests).
    dropout : float
        Dropout after hidden layers (0: none).
    image_weights : str or None
        Pretrained weights for the image networks, loaded into f1 and f2 (f for variants
        I/II) from this local file only: a MatConvNet ``imagenet-vgg-f.mat`` (SimpleNN or
        DagNN; cnnf / alexnet), a Caffe AlexNet state_dict (alexnet), a torchvision
        AlexNet / VGG-16 / ResNet-50 state_dict (tv_* backbones) or a plain state_dict (any
        image backbone); every layer but the output layer must fit (:mod:`cmhash.deep.weights`).
        Never loaded into text networks. Image arrays are then normalised as the weights
        expect (0-255 RGB pixels in, ``input_normalization_``) instead of z-scored.
    image_weights_format : {"auto", "matconvnet", "torchvision", "caffe", "state_dict"}
        The layout of ``image_weights`` ("auto": from the file).
    standardize : bool
        z-score dense inputs with training means / standard deviations (stored): per feature
        for vectors, per channel for images (n, C, H, W) (unless ``image_weights`` define the
        images' normalisation). CSR input is left as is.
    n_epochs : int
        Outer iterations of Algorithm 1 (the paper: 500).
    batch_size : int
        Mini-batch size N1 = N2 (128).
    lr : float
        Learning rate of every network.
    optimizer : {"adam", "adamw", "sgd"}
        "sgd" is plain SGD with momentum 0.9 (the paper's MatConvNet SGD); "adam" converges in
        far fewer epochs on feature inputs; "adamw" decouples the weight decay.
    weight_decay : float
        L2 penalty on the network weights (0: none; not part of the paper's objective).
    normalize_likelihood : bool
        False: the paper's weights as printed. True: lambda, beta and mu are per likelihood
        ROW, i.e. the objective is the paper's J with n lambda, n beta, n mu (equivalently
        J / n with the likelihood and the balance term averaged over the n pairs of a row).
        The paper's sum over n^2 pairs otherwise swamps the per-sample terms by a factor n,
        so their weights mean different things on datasets of different sizes.
    refresh_buffers : bool
        After each network's epoch, recompute that network's n outputs exactly (eval mode),
        so that the B / P / W steps and the next network's epoch see the current F and G
        instead of the per-batch stale buffer (one extra forward pass per epoch).
    track_objective : bool
        Evaluate J_1 and J_2 exactly after each epoch (off by default: O(n^2 r) time per epoch,
        in float64, the likelihood summed over row blocks of at most ``OBJECTIVE_BLOCK`` rows
        and ``OBJECTIVE_BLOCK_ELEMENTS`` entries, never an n x n matrix).
    projection_init : {"random", "gaussian", "balanced", "hadamard"}
        Initial P and W (V): "random" Gaussian (Algorithm 1), "gaussian" its sign (a random
        +-1 code per class), "balanced" +-1 class codes with every bit splitting the classes
        in halves, "hadamard" orthogonal class codes (see :func:`class_codes`).
    projection_warmup : int
        The P / W (V) closed-form step (Eq. 11 / 18) starts after this many epochs; before,
        the initial class codes are the regression targets (0: from the first epoch, as in
        Algorithm 1). Must be smaller than ``n_epochs``.
    image_lr, text_lr : float or None
        Learning rate of the image (f) / text (g) networks (None: ``lr``).
    image_weight_decay, text_weight_decay : float or None
        Weight decay of the image / text networks (None: ``weight_decay``); decoupled with
        ``optimizer="adamw"``, an L2 gradient term otherwise.
    lr_schedule : {"constant", "cosine"}
        "cosine": every network's learning rate follows lr * (1 + cos(pi e / n_epochs)) / 2
        in epoch e = 0 .. n_epochs - 1.
    input_kernel : {"none", "image", "text", "both"}
        Replace the feature-vector input of these modalities by centred RBF anchor features
        (:class:`cmhash.kernel.RBFAnchorFeatures`, random training anchors, fitted on the
        training inputs and stored in ``input_kernels_``); ``standardize`` then applies to
        the kernel features. Dense 2-D inputs only.
    n_anchors : int or (int, int)
        Anchors of the input kernel (one value or one per modality, image first).
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
    codes_ : [B2, B1] int8 (n, r)   learned codes of each modality as the DATABASE side:
        image -> B2 (T2I task), text -> B1 (I2T task)
    projection_i2t_, projection_t2i_ : (c, r) float64   P and W (V for variant I)
    objective_ : list of float   J_1 + J_2 after each epoch (J of the shared couple for
        variants I/II); objective_i2t_, objective_t2i_ the two parts
    loss_terms_ : dict of (n_epochs,) arrays   each term of J_1 / J_2 after each epoch
        (objective_* and loss_terms_ are empty with ``track_objective=False``)
    network_states_, architectures_ : the networks f1, g1, f2, g2 (f, g for variants I/II)
    input_means_, input_scales_ : per-modality standardisation (None where not applied)
    input_normalization_ : InputNormalization or None   the image normalisation of the loaded
        weights (applied through input_means_ / input_scales_; saved with the model)
    input_kernels_ : per-modality RBFAnchorFeatures (None where not applied)
    """

    name = "ta-adcmh"
    state_shapes = {"projection_i2t_": ("c", "r"), "projection_t2i_": ("c", "r"),
                    "input_kernels_[v]?": ("d{v}", "q{v}")}
    task_specific = True   # encode(..., task=...) selects the task's hash functions
    standardized_ndims = (2, 4)   # vectors per feature, images per channel

    #: the paper's Section 4.3 values (500 iterations, batches of 128); "wiki" was selected on
    #: a validation split of the Wiki training set with MLP backbones (docs/methods/ta-adcmh.md)
    PRESETS = {
        "mirflickr25k": {"lambda1": 0.1, "beta1": 0.01, "mu1": 1e-4, "nu1": 0.1,
                         "lambda2": 0.1, "beta2": 100.0, "mu2": 0.1, "nu2": 0.1,
                         "n_epochs": 500, "batch_size": 128},
        "nuswide": {"lambda1": 0.1, "beta1": 1.0, "mu1": 1.0, "nu1": 0.1,
                    "lambda2": 0.1, "beta2": 1.0, "mu2": 1.0, "nu2": 0.1,
                    "n_epochs": 500, "batch_size": 128},
        # selected on validation_split(0.2, random_state=0) of the Wiki training set, 32 and
        # 128 bits, seeds 0 and 1: I2T query regression with fixed balanced class codes for
        # 30 of 100 epochs (then Eq. 11), strong mu1, B1 led by F1, AdamW on the image networks,
        # cosine learning rate; T2I weights as the previous preset
        "wiki": {"lambda1": 1.0, "beta1": 0.1, "mu1": 10.0, "nu1": 1e-3,
                 "lambda2": 0.01, "beta2": 0.01, "mu2": 0.01, "nu2": 1e-3,
                 "normalize_likelihood": True, "refresh_buffers": True,
                 "n_epochs": 100, "batch_size": 128, "lr": 1e-2, "text_hidden": 512,
                 "projection_init": "balanced", "projection_warmup": 30,
                 "optimizer": "adamw", "image_weight_decay": 0.5, "text_weight_decay": 0.0,
                 "lr_schedule": "cosine", "track_objective": False},
    }
    #: ``cmhash tune`` search space (cmhash.tune module doc): the eight weights Section 4.3
    #: names (its sensitivity study, Sec. 4.6, scans them over 1e-6 .. 1e5) and the learning
    #: rate (the paper's range is [1e-6, 1e-1]; below 1e-5 nothing moves within a capped
    #: number of epochs). Epochs, optimiser and the rest come from the start point (a preset).
    SEARCH_SPACE = {"lambda1": ("log", 1e-5, 1e3), "beta1": ("log", 1e-6, 1e2),
                    "mu1": ("log", 1e-6, 1e2), "nu1": ("log", 1e-5, 1e1),
                    "lambda2": ("log", 1e-5, 1e3), "beta2": ("log", 1e-6, 1e2),
                    "mu2": ("log", 1e-6, 1e2), "nu2": ("log", 1e-5, 1e1),
                    "lr": ("log", 1e-5, 1e-1)}
    VARIANTS = {
        "TA-ADCMH": {"regression": "query", "discrete": True},
        "TA-ADCMH-I": {"regression": "codes", "discrete": True},
        "TA-ADCMH-II": {"regression": "none", "discrete": True},
        "TA-ADCMH-III": {"regression": "query", "discrete": False},
    }

    def __init__(self, n_bits: int = 32, *, lambda1: float = 0.1, beta1: float = 1.0,
                 mu1: float = 1.0, nu1: float = 0.1, lambda2: float = 0.1, beta2: float = 1.0,
                 mu2: float = 1.0, nu2: float = 0.1, regression: str = "query",
                 discrete: bool = True, image_backbone: str = "auto",
                 text_backbone: str = "auto", image_hidden=(512,), text_hidden=8192,
                 fc_dim: int = 4096, dropout: float = 0.0, image_weights=None,
                 image_weights_format: str = "auto",
                 standardize: bool = True, n_epochs: int = 40, batch_size: int = 128,
                 lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0,
                 normalize_likelihood: bool = False, refresh_buffers: bool = False,
                 track_objective: bool = False, projection_init: str = "random",
                 projection_warmup: int = 0, image_lr=None, text_lr=None,
                 image_weight_decay=None, text_weight_decay=None,
                 lr_schedule: str = "constant", input_kernel: str = "none", n_anchors=500,
                 amp="auto", checkpoint=None, resume=None, time_limit=None,
                 device: str = "auto",
                 num_workers: int = 0, random_state=None, verbose: bool = False):
        super().__init__(n_bits, amp=amp, checkpoint=checkpoint, resume=resume,
                         time_limit=time_limit, device=device,
                         num_workers=num_workers,
                         random_state=random_state, verbose=verbose)
        self.lambda1 = lambda1
        self.beta1 = beta1
        self.mu1 = mu1
        self.nu1 = nu1
        self.lambda2 = lambda2
        self.beta2 = beta2
        self.mu2 = mu2
        self.nu2 = nu2
        self.regression = regression
        self.discrete = discrete
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
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.normalize_likelihood = normalize_likelihood
        self.refresh_buffers = refresh_buffers
        self.track_objective = track_objective
        self.projection_init = projection_init
        self.projection_warmup = projection_warmup
        self.image_lr = image_lr
        self.text_lr = text_lr
        self.image_weight_decay = image_weight_decay
        self.text_weight_decay = text_weight_decay
        self.lr_schedule = lr_schedule
        self.input_kernel = input_kernel
        self.n_anchors = n_anchors

    # ------------------------------------------------------------ validation
    def _state_shapes(self) -> dict:
        shapes = super()._state_shapes()
        kernels = getattr(self, "input_kernels_", None)
        for v, kernel in enumerate(kernels if isinstance(kernels, list) else []):
            if kernel is not None:   # standardised after the input kernel: q{v} features
                shapes[f"input_means_[{v}]?"] = shapes[f"input_scales_[{v}]?"] = ("q{v}",)
        return shapes

    def _validate_params(self):
        for p in ("lambda1", "beta1", "mu1", "nu1", "lambda2", "beta2", "mu2", "nu2",
                  "weight_decay"):
            check_positive(getattr(self, p), p, allow_zero=True)
        check_positive(self.lr, "lr")
        for p in ("image_lr", "text_lr"):
            if getattr(self, p) is not None:
                check_positive(getattr(self, p), p)
        for p in ("image_weight_decay", "text_weight_decay"):
            if getattr(self, p) is not None:
                check_positive(getattr(self, p), p, allow_zero=True)
        check_choice(self.projection_init, "projection_init",
                     {"random", "gaussian", "balanced", "hadamard"})
        check_int(self.n_epochs, "n_epochs")
        check_int(self.projection_warmup, "projection_warmup", minimum=0)
        if self.projection_warmup > 0 and self.projection_warmup >= self.n_epochs:
            raise ValueError(f"projection_warmup ({self.projection_warmup}) must be smaller than "
                             f"n_epochs ({self.n_epochs}): the P / W step (Eq. 11 / 18) must run")
        check_choice(self.lr_schedule, "lr_schedule", {"constant", "cosine"})
        check_choice(self.input_kernel, "input_kernel", {"none", "image", "text", "both"})
        check_n_anchors(self.n_anchors, 2)
        check_choice(self.regression, "regression", {"query", "codes", "none"})
        check_choice(self.image_backbone, "image_backbone", {"auto", "mlp", *IMAGE_BACKBONE_KINDS})
        check_choice(self.text_backbone, "text_backbone", {"auto", "mlp", "text-ta"})
        check_choice(self.optimizer, "optimizer", {"adam", "adamw", "sgd"})
        check_int(self.n_epochs, "n_epochs")
        check_int(self.batch_size, "batch_size")
        check_int(self.fc_dim, "fc_dim")
        for p in ("discrete", "normalize_likelihood", "refresh_buffers", "track_objective",
                  "standardize"):
            check_bool(getattr(self, p), p, error=ValueError)
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.discrete:
            for t in ("1", "2"):
                if getattr(self, "lambda" + t) + getattr(self, "beta" + t) <= 0:
                    raise ValueError(f"the relaxed variant (discrete=False) needs lambda{t} + "
                                     f"beta{t} > 0")
        self._check_weights_file(self.image_weights, source=self.image_weights_format)
        self._check_num_workers()
        resolve_device(self.device)

    # ----------------------------------------------------------- networks
    def _spec(self, X, which):
        shape = list(X.shape[1:])
        kind = self.image_backbone if which == "image" else self.text_backbone
        if kind == "auto":
            kind = "cnnf" if len(shape) == 3 else ("mlp" if which == "image" else "text-ta")
        spec = {"kind": kind, "in_shape": shape, "out_dim": int(self.n_bits),
                "dropout": float(self.dropout)}
        if kind in IMAGE_BACKBONE_KINDS:
            if len(shape) != 3:
                raise ValueError(f"the {kind} backbone takes images (n, C, H, W); the {which} "
                                 f"modality has samples of shape {tuple(shape)}")
            if kind in ("cnnf", "alexnet"):
                spec["fc_dim"] = int(self.fc_dim)
        else:
            pname = "image_hidden" if which == "image" else "text_hidden"
            hidden = hidden_widths(getattr(self, pname), pname)
            if kind == "text-ta" and len(hidden) != 1:
                raise ValueError(f"the text-ta network has exactly one hidden layer (two fully "
                                 f"connected layers); got {pname}={getattr(self, pname)!r}")
            spec["hidden"] = hidden
        return spec

    def _new_network(self, spec, device, which):
        """A network of modality ``which``; ``image_weights`` go into the IMAGE networks only
        (:meth:`TorchHasher._load_image_weights`; every layer but the output layer must fit)."""
        net = build_backbone(spec)
        if which == "image":
            self._load_image_weights(net)
        return net.to(device)

    def _side_lr(self, side):
        v = self.image_lr if side == "f" else self.text_lr
        return float(self.lr if v is None else v)

    def _make_optimizer(self, net, side):
        lr = self._side_lr(side)
        wd = self.image_weight_decay if side == "f" else self.text_weight_decay
        wd = float(self.weight_decay if wd is None else wd)
        if self.optimizer == "adam":
            return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=wd)

    def _set_epoch_lr(self, opt, side, epoch):
        """Learning rate of epoch ``epoch`` under ``lr_schedule``."""
        lr = self._side_lr(side)
        if self.lr_schedule == "cosine":
            lr = lr * 0.5 * (1.0 + np.cos(np.pi * epoch / self.n_epochs))
        for group in opt.param_groups:
            group["lr"] = lr

    # -------------------------------------------------------- preprocessing
    def _fit_input_kernels(self, views, rng):
        """RBF anchor maps of the modalities named by ``input_kernel`` (``input_kernels_``)."""
        which = {"none": (), "image": (0,), "text": (1,), "both": (0, 1)}[self.input_kernel]
        anchors = check_n_anchors(self.n_anchors, len(views))
        self.input_kernels_ = []
        for m, V in enumerate(views):
            if m in which:
                if sp.issparse(V) or V.ndim != 2:
                    raise ValueError(f"input_kernel applies to dense feature vectors (n, d); "
                                     f"modality {m} has shape {V.shape}")
                km = RBFAnchorFeatures(int(anchors[m]), random_state=_seed_from_rng(rng))
                self.input_kernels_.append(km.fit(V))
            else:
                self.input_kernels_.append(None)

    def _kernelize(self, X, m):
        kernels = getattr(self, "input_kernels_", None)
        if not kernels or kernels[m] is None:
            return X
        return kernels[m].transform(X)

    def _prepare(self, X, m):
        """Input kernel (if any), then the training standardisation."""
        return super()._prepare(self._kernelize(X, m), m)

    # ------------------------------------------------------------------ fit
    def _fit(self, views, labels, rng):
        device = resolve_device(self.device)
        seed_everything(_seed_from_rng(rng))
        self._fit_input_kernels(views, rng)
        kviews = [self._kernelize(V, m) for m, V in enumerate(views)]
        self._fit_standardization(kviews)
        X, Y = (TorchHasher._prepare(self, V, m) for m, V in enumerate(kviews))
        n, r = X.shape[0], self.n_bits
        if n < 2:
            raise ValueError(f"TA-ADCMH needs at least 2 training samples, got {n}")
        Lnp = np.asarray(labels, dtype=np.float64)
        L = torch.from_numpy(Lnp.astype(np.float32)).to(device)
        # dense inputs live on the device once; CSR stays on the host, densified per batch
        Xd = self._to_tensor(X, device) if not sp.issparse(X) and X.ndim == 2 else X
        Yd = self._to_tensor(Y, device) if not sp.issparse(Y) and Y.ndim == 2 else Y

        shared = self.regression != "query"
        tasks = ["shared"] if shared else ["i2t", "t2i"]
        specs = {"image": self._spec(X, "image"), "text": self._spec(Y, "text")}
        state = {}
        for t in tasks:
            f = self._new_network(specs["image"], device, "image")
            g = self._new_network(specs["text"], device, "text")
            hp = self._task_params(t, n)
            F = self._predict(f, Xd, self.batch_size, device, self._workers())
            G = self._predict(g, Yd, self.batch_size, device, self._workers())
            state[t] = {
                "f": f, "g": g, "opt_f": self._make_optimizer(f, "f"),
                "opt_g": self._make_optimizer(g, "g"),
                "F": torch.from_numpy(F).to(device), "G": torch.from_numpy(G).to(device),
                # Algorithm 1: "Randomly initialize P, B1"
                "B": torch.from_numpy(sign(rng.standard_normal((n, r))).astype(np.float32)).to(device),
                "Q": torch.from_numpy(class_codes(self.projection_init, L.shape[1], r, rng)
                                      .astype(np.float32)).to(device),
                "hp": hp,
            }

        self.objective_, self.objective_i2t_, self.objective_t2i_ = [], [], []
        terms_log: dict[str, list] = {}
        traces = (self.objective_, self.objective_i2t_, self.objective_t2i_)

        def get_state():
            return {"tasks": {t: {k: state[t][k] for k in ("F", "G", "B", "Q")} for t in tasks},
                    "traces": traces, "terms": terms_log}

        def set_state(saved):
            for t in tasks:
                state[t].update({k: v.to(device) for k, v in saved["tasks"][t].items()})
            for trace, values in zip(traces, saved["traces"]):
                trace[:] = values
            terms_log.update(saved["terms"])

        nets = {f"{side}_{t}": state[t][side] for t in tasks for side in ("f", "g")}
        opts = {f"{side}_{t}": state[t]["opt_" + side] for t in tasks for side in ("f", "g")}
        for epoch, bar in self._epochs("TA-ADCMH", nets, opts, rng, get_state, set_state):
            postfix = {}
            for t in tasks:
                s = state[t]
                hp = s["hp"]
                for side in ("f", "g"):
                    self._set_epoch_lr(s["opt_" + side], side, epoch)
                # I2T trains the image (query) network first, T2I the text (query) network
                order = ("g", "f") if t == "t2i" else ("f", "g")
                for side in order:
                    self._train_side(side, s, Xd, Yd, L, rng, device)
                    self._check_diverged(
                        s["F" if side == "f" else "G"],
                        f"the outputs of the {'image' if side == 'f' else 'text'} network of "
                        f"task {t}", epoch,
                        f"lower the learning rate (lr={self.lr!r}, image_lr={self.image_lr!r}, "
                        f"text_lr={self.text_lr!r}) or the loss weights")
                # B-step (Eq. 9 / 16; variant I adds mu L V; variant III relaxed)
                LQ = (L @ s["Q"]).cpu().numpy() if hp["query"] == "codes" else None
                Bnew = codes_step(s["F"].cpu().numpy(), s["G"].cpu().numpy(), lam=hp["lam"],
                                  beta=hp["beta"], mu=hp["mu"], LQ=LQ, discrete=self.discrete)
                s["B"] = torch.from_numpy(Bnew.astype(np.float32)).to(device)
                # P / W / V step (Eq. 11 / 18)
                target = {"image": s["F"], "text": s["G"], "codes": s["B"]}.get(hp["query"])
                if target is not None and epoch >= self.projection_warmup:
                    Q = projection_step(target.cpu().numpy(), Lnp, mu=hp["mu"], nu=hp["nu"])
                    s["Q"] = torch.from_numpy(Q.astype(np.float32)).to(device)
                if self.track_objective:
                    terms = self._objective(s, L)
                    for k, v in terms.items():
                        terms_log.setdefault(f"{t}/{k}", []).append(v)
                    postfix[t] = f"{terms['total']:.4g}"
                    postfix.update({f"{t}:{k}": f"{v:.3g}" for k, v in terms.items()
                                    if k != "total"} if self.verbose else {})
            if self.track_objective:
                if shared:
                    J = terms_log["shared/total"][-1]
                    self.objective_i2t_.append(J)
                    self.objective_t2i_.append(J)
                    self.objective_.append(J)
                else:
                    J1, J2 = terms_log["i2t/total"][-1], terms_log["t2i/total"][-1]
                    self.objective_i2t_.append(J1)
                    self.objective_t2i_.append(J2)
                    self.objective_.append(J1 + J2)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(postfix, refresh=False)
        self.loss_terms_ = {k: np.asarray(v) for k, v in terms_log.items()}
        self.n_iter_ = self._epochs_done       # < n_epochs when time_limit stopped it

        # learned codes; relaxed B (variant III) is binarised by sign at the end
        codes = {t: sign(state[t]["B"].cpu().numpy()) for t in tasks}
        B1 = codes["shared" if shared else "i2t"]
        B2 = codes["shared" if shared else "t2i"]
        self.codes_ = [B2, B1]  # image as database -> T2I codes, text as database -> I2T codes
        self.projection_i2t_ = state[tasks[0]]["Q"].cpu().numpy().astype(np.float64)
        self.projection_t2i_ = state[tasks[-1]]["Q"].cpu().numpy().astype(np.float64)
        if shared:
            self._store_networks(f=state["shared"]["f"], g=state["shared"]["g"])
        else:
            self._store_networks(f1=state["i2t"]["f"], g1=state["i2t"]["g"],
                                 f2=state["t2i"]["f"], g2=state["t2i"]["g"])
        for net in self._nets.values():
            net.eval()

    def _task_params(self, t, n):
        """The weights of J_t as used in the objective. With ``normalize_likelihood`` the
        per-sample weights lambda, beta, mu are given per likelihood ROW (the likelihood sums n
        pairs per sample): the objective is the paper's J with n lambda, n beta, n mu."""
        k = "2" if t == "t2i" else "1"
        query = {"query": "text" if t == "t2i" else "image", "codes": "codes",
                 "none": None}[self.regression]
        s = float(n) if self.normalize_likelihood else 1.0
        return {"lam": s * float(getattr(self, "lambda" + k)),
                "beta": s * float(getattr(self, "beta" + k)),
                "mu": s * float(getattr(self, "mu" + k)) if query is not None else 0.0,
                "nu": float(getattr(self, "nu" + k)), "query": query}

    def _train_side(self, side, s, Xd, Yd, L, rng, device):
        """One epoch of the image (``side="f"``) or text (``"g"``) network of one task: one
        :meth:`_train_step` per mini-batch of a random permutation of the n items."""
        net = s[side]
        data = Xd if side == "f" else Yd
        own = s["F"] if side == "f" else s["G"]
        n = own.shape[0]
        net.train()
        perm = rng.permutation(n)
        batches = self._batch_indices(perm, self.batch_size)
        for idx, xb in self._batches(data, batches, device, train=True, rng=rng):
            self._train_step(side, s, xb, torch.as_tensor(idx, device=device), L)
        s["opt_" + side].zero_grad(set_to_none=True)   # none held through the next passes
        if self.refresh_buffers:  # exact outputs of the updated network (eval mode) for B / P
            own.copy_(torch.from_numpy(self._predict(net, data, self.batch_size, device,
                                                     self._workers())).to(device))

    def _train_step(self, side, s, xb, it, L):
        """One step of network ``side`` of task state ``s`` on the batch rows ``it`` (inputs
        ``xb``).

        The mini-batch loss is the part of J_t that depends on the batch outputs; its gradient
        with respect to the batch rows is exactly Eq. 6 / 7 (I2T) or Eq. 14 / 13 (T2I) for those
        rows (the other rows enter through the buffers): the image network carries lambda, the
        text network beta, and only the QUERY network of the task (f1 / g2) the label
        regression mu (:func:`network_step`).
        """
        hp = s["hp"]
        own, other = (s["F"], s["G"]) if side == "f" else (s["G"], s["F"])
        w_quant = hp["lam"] if side == "f" else hp["beta"]
        regress = (hp["query"] == "image" and side == "f") or (hp["query"] == "text" and side == "g")
        network_step(s[side], s["opt_" + side], xb, it, own, other, s["B"], L, s["Q"],
                     w_quant=w_quant, mu=hp["mu"] if regress else 0.0, nu=hp["nu"],
                     precision=self._precision(xb.device), dist=self._distributed(xb.device))

    def _objective(self, s, L) -> dict:
        hp = s["hp"]
        with torch.no_grad():
            terms = objective_terms(s["F"].double(), s["G"].double(), s["B"].double(),
                                    L.double(), s["Q"].double(), lam=hp["lam"], beta=hp["beta"],
                                    mu=hp["mu"], nu=hp["nu"], query=hp["query"],
                                    block=objective_block_rows(L.shape[0]))
        return {k: float(v) for k, v in terms.items()}

    # -------------------------------------------------------------- encoding
    def _task_index(self, task):
        """0 for I2T (image query, text database), 1 for T2I."""
        return 0 if task == (0, 1) else 1

    def _net_name(self, m, task):
        if self.regression != "query":
            return "f" if m == 0 else "g"
        if task is None:  # the task in which this modality is the QUERY: image->f1, text->g2
            t = 0 if m == 0 else 1
        else:
            t = self._task_index(task)
        return ("f" if m == 0 else "g") + str(t + 1)

    def _encode(self, X, m, task):
        return self._encode_with(self._net_name(m, task), self._prepare(X, m))

    def _learned_codes(self, m, task):
        if task is None:  # the task in which this modality is the DATABASE side
            return self.codes_[m]
        B2, B1 = self.codes_
        return B1 if self._task_index(task) == 0 else B2

    def network_outputs(self, X, modality, *, task=None) -> np.ndarray:
        """Real-valued network outputs (before sign) of the network :meth:`encode` would use."""
        m = self.modality_index(modality)
        t = self._check_task(task)
        X = self._check_query(X, m)
        return self._predict(self._network(self._net_name(m, t)), self._prepare(X, m),
                             num_workers=self._workers())
