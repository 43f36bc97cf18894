"""Helpers of the wiring tests of the deep methods.

A wiring test records one REAL training step of a network (a spy around the method's
``_train_step``: the network and the optimiser's inputs before the step, the parameters after)
and compares the update with plain SGD on the method's objective written out in the test,
differentiated by autograd in float64 on a copy of the network taken before the step.
"""
from __future__ import annotations

import copy

import torch


def snapshot(net: torch.nn.Module) -> dict:
    """The parameters of ``net`` (detached copies), by name."""
    return {k: p.detach().clone() for k, p in net.named_parameters()}


def float64_copy(net: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``net`` in training mode, without gradients."""
    clone = copy.deepcopy(net).double().train()
    for p in clone.parameters():
        p.grad = None
    return clone


def sgd_reference(nets: dict, loss_fn, lrs: dict, weight_decay: float = 0.0) -> dict:
    """Parameters after one plain SGD step on ``loss_fn(nets)`` of the networks ``nets``.

    ``nets``: name -> float64 network (:func:`float64_copy`); ``lrs``: name -> learning rate;
    the step is ``theta - lr (dloss/dtheta + weight_decay theta)`` (torch's SGD; also the first
    step of SGD with momentum, whose momentum buffer starts at the gradient). Returns
    name -> {parameter name: tensor}.
    """
    params = [(name, k, p) for name, net in nets.items() for k, p in net.named_parameters()]
    grads = torch.autograd.grad(loss_fn(nets), [p for _, _, p in params])
    out: dict = {name: {} for name in nets}
    for (name, k, p), g in zip(params, grads):
        out[name][k] = (p - lrs[name] * (g + weight_decay * p)).detach()
    return out


def with_parameters(net: torch.nn.Module, values: dict) -> torch.nn.Module:
    """A float64 copy of ``net`` holding the parameter ``values`` (name -> tensor)."""
    clone = float64_copy(net)
    with torch.no_grad():
        for k, p in clone.named_parameters():
            p.copy_(values[k])
    return clone


def update_error(before: dict, after: dict, expected: dict) -> float:
    """||real update - expected update|| / ||expected update|| over all parameters of a network
    (the real update ``after - before`` is float32, the expected one float64)."""
    num = den = 0.0
    for k in before:
        real = after[k].double() - before[k].double()
        want = expected[k] - before[k].double()
        num += float(((real - want) ** 2).sum())
        den += float((want ** 2).sum())
    assert den > 0, "the expected update is zero: the check could not fail"
    return (num / den) ** 0.5


def rows_of(batch: torch.Tensor, data) -> list[int]:
    """Indices of the rows of ``data`` (ndarray) that the float32 ``batch`` holds, in order."""
    ref = torch.as_tensor(data, dtype=torch.float32)
    idx = []
    for row in batch:
        hits = torch.nonzero((ref == row).all(dim=1)).ravel()
        assert hits.numel() == 1, "batch row not found exactly once in the training data"
        idx.append(int(hits[0]))
    return idx
