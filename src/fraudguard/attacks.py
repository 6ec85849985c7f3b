"""Evasion attacks (ART) restricted to the threat model.

Every attack passes the threat mask to ART's generate(), so gradients and random starts only touch
attacker-controlled features, and then re-projects with ThreatModel.project, so uncontrolled features
equal the original exactly and controlled ones stay within eps and their valid range, whatever ART did.
Inputs and outputs are standardized float32 arrays (ModelBundle.standardizer.transform).

Derived features (customer averages that include the current amount) follow the amount. So that ART's
gradients see that coupling, attacks run in a reparametrized space z where each derived feature is
replaced by its part not explained by the amount (z_d = x_d - x_amount * k, k = amount_std / (count *
avg_std)); the attacked model maps z back to x first. Moving the amount in z moves the averages exactly
as in the real world, and ART's gradient w.r.t. the amount includes the path through the averages.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Iterator, Literal

import numpy as np
import torch
from art.attacks.evasion import FastGradientMethod, HopSkipJump
from art.estimators.classification import PyTorchClassifier
from tqdm.auto import tqdm

from fraudguard.threat import DerivedFeature, ThreatModel

logger = logging.getLogger(__name__)

# ART logs at INFO on every call: FGM a "success rate" that is a 0% placeholder without random restarts,
# the classifier its inferred layer count. In a training loop that is one line per batch.
_NOISY_ART_LOGGERS = ("art.attacks.evasion.fast_gradient", "art.estimators.classification.pytorch")


@contextlib.contextmanager
def _quiet_art() -> Iterator[None]:
    # `disabled` rather than setLevel: setLevel clears every logger's cache, a millisecond per call here.
    saved = [(logging.getLogger(name), logging.getLogger(name).disabled) for name in _NOISY_ART_LOGGERS]
    for art_logger, _ in saved:
        art_logger.disabled = True
    try:
        yield
    finally:
        for art_logger, disabled in saved:
            art_logger.disabled = disabled


class _Float32Input(torch.nn.Module):
    """Casts inputs to float32: HopSkipJump's binary search hands ART float64 arrays, which ART passes
    to the module unconverted. Holds the wrapped module, so parameters stay shared with it."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float())


class _CoupledInput(torch.nn.Module):
    """Maps the attack space z back to features x (derived = z_d + z_source * k(count)), then scores."""

    # Buffers set by register_buffer (declared for the type checker: nn.Module's __getattr__ is untyped).
    index: torch.Tensor
    source: torch.Tensor
    count_index: torch.Tensor
    count_std: torch.Tensor
    count_mean: torch.Tensor
    ratio: torch.Tensor

    def __init__(self, module: torch.nn.Module, threat: ThreatModel):
        super().__init__()
        self.module = module
        derived = threat.derived
        self.register_buffer("index", torch.tensor([d.index for d in derived], dtype=torch.long))
        self.register_buffer("source", torch.tensor([d.source for d in derived], dtype=torch.long))
        self.register_buffer("count_index", torch.tensor([d.count_index for d in derived], dtype=torch.long))
        self.register_buffer("count_std", torch.tensor([d.count_std for d in derived], dtype=torch.float32))
        self.register_buffer("count_mean", torch.tensor([d.count_mean for d in derived], dtype=torch.float32))
        self.register_buffer("ratio", torch.tensor([d.source_std / d.std for d in derived], dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        count = torch.clamp(torch.round(z[:, self.count_index] * self.count_std + self.count_mean), min=1.0)
        x = z.clone()
        x[:, self.index] = z[:, self.index] + z[:, self.source] * (self.ratio / count)
        return self.module(x)


def _slope(x: np.ndarray, d: DerivedFeature) -> np.ndarray:
    count = np.maximum(np.rint(x[:, d.count_index].astype(np.float64) * d.count_std + d.count_mean), 1.0)
    return (d.source_std / d.std) / count


def _to_attack_space(x: np.ndarray, threat: ThreatModel) -> np.ndarray:
    z = x.astype(np.float64)
    for d in threat.derived:
        z[:, d.index] = z[:, d.index] - z[:, d.source] * _slope(x, d)
    return z.astype(np.float32)


def _from_attack_space(z: np.ndarray, threat: ThreatModel) -> np.ndarray:
    x = z.astype(np.float64)
    for d in threat.derived:
        x[:, d.index] = x[:, d.index] + x[:, d.source] * _slope(z, d)
    return x.astype(np.float32)


_COUPLED: "weakref.WeakKeyDictionary[PyTorchClassifier, tuple[ThreatModel, PyTorchClassifier]]" = (
    weakref.WeakKeyDictionary()
)


def _attack_classifier(classifier: PyTorchClassifier, threat: ThreatModel) -> PyTorchClassifier:
    """The classifier ART attacks: the given one, or one on the coupled space when features are derived
    (memoized per classifier and threat model: training attacks every batch)."""
    if not threat.derived:
        return classifier
    cached = _COUPLED.get(classifier)
    if cached is not None and cached[0] is threat:
        return cached[1]
    with _quiet_art():
        coupled = PyTorchClassifier(
            model=_CoupledInput(classifier.model, threat),
            loss=classifier.loss,  # the wrapped classifier's (margin or cross-entropy)
            input_shape=(threat.n_features,),
            nb_classes=2,
            device_type="cpu",
        )
    _COUPLED[classifier] = (threat, coupled)
    return coupled


class MarginLoss(torch.nn.Module):
    """The other logit minus the true one, averaged over the rows: what the gradient attacks raise.

    Cross-entropy's input gradient is (softmax - one-hot) through the logits, and softmax rounds to exactly 0 and 1
    in float32 once the logit margin passes ~17: the true logit's term vanishes there, and past ~100 the whole
    gradient does. Scaling a model's last layer (same decisions, saturated scores) so masked every gradient attack:
    PGD robust recall 0.45 -> 0.98, and the robustness gate passed. The margin's gradient never vanishes; where
    cross-entropy's does not either, the two have the same sign, so FGSM and PGD steps are the same."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() == 2:  # ART hands a loss it does not know one-hot labels
            labels = labels.argmax(dim=1)
        labels = labels.long().view(-1, 1)
        true = logits.gather(1, labels).squeeze(1)
        other = logits.gather(1, 1 - labels).squeeze(1)
        return (other - true).mean()


def make_art_classifier(
    module: torch.nn.Module,
    n_features: int,
    clip_values: tuple[np.ndarray, np.ndarray] | None = None,
    loss: Literal["margin", "cross_entropy"] = "margin",
) -> PyTorchClassifier:
    """Wrap a 2-logit module (shared, not copied) as an ART classifier on CPU. The gradient attacks raise `loss`:
    the logit margin (MarginLoss) by default; cross-entropy is the adversarial-training recipe's crafting loss
    (train.adversarial; measured with it, docs/model.md)."""
    with _quiet_art():
        return PyTorchClassifier(
            model=_Float32Input(module),
            loss=MarginLoss() if loss == "margin" else torch.nn.CrossEntropyLoss(),
            input_shape=(n_features,),
            nb_classes=2,
            clip_values=clip_values,
            device_type="cpu",
        )


def _check_inputs(x: np.ndarray, threat: ThreatModel, y: np.ndarray | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != threat.n_features:
        raise ValueError(f"attack inputs must have shape (N, {threat.n_features}), got {x.shape}")
    if y is not None and len(y) != len(x):
        raise ValueError(f"attack labels: {len(y)} labels for {len(x)} rows")
    return x


def _labels(y: np.ndarray) -> np.ndarray:
    return np.asarray(y).astype(np.int64).reshape(-1)


def masked_fgsm(
    classifier: PyTorchClassifier,
    x: np.ndarray,
    y: np.ndarray,
    threat: ThreatModel,
    eps: float,
    random_start: bool = False,
    batch_size: int = 1024,
) -> np.ndarray:
    """One signed-gradient step of size eps on controlled features (optionally from a random point in the
    eps-ball), raising the loss of the true labels `y`; the result satisfies the threat model."""
    x = _check_inputs(x, threat, y)
    if len(x) == 0 or eps == 0:
        return x.copy()
    attack = FastGradientMethod(
        _attack_classifier(classifier, threat),
        norm=np.inf,
        eps=eps,
        eps_step=eps,
        num_random_init=1 if random_start else 0,
        batch_size=batch_size,
    )
    with _quiet_art():
        z_adv = attack.generate(_to_attack_space(x, threat), y=_labels(y), mask=threat.mask)
    return threat.project(_from_attack_space(z_adv, threat), x, eps)


def masked_pgd(
    classifier: PyTorchClassifier,
    x: np.ndarray,
    y: np.ndarray,
    threat: ThreatModel,
    eps: float,
    eps_step: float,
    max_iter: int,
    batch_size: int = 1024,
    verbose: bool = False,
) -> np.ndarray:
    """L-inf PGD on controlled features raising the loss of the true labels `y`: max_iter masked
    signed-gradient steps of eps_step (ART), each followed by exact projection onto the threat model."""
    x = _check_inputs(x, threat, y)
    if len(x) == 0 or eps == 0:
        return x.copy()
    labels = _labels(y)
    # ART's ProjectedGradientDescent projects onto the eps-ball only, so iterates could leave the feature
    # bounds and be clipped once at the end; stepping with ART's FGM and projecting onto ball and bounds
    # (a box, so clipping is the exact projection) after each step keeps every iterate valid.
    step = FastGradientMethod(
        _attack_classifier(classifier, threat), norm=np.inf, eps=eps_step, eps_step=eps_step,
        batch_size=batch_size,
    )
    x_adv = x.copy()
    for _ in tqdm(range(max_iter), desc="PGD", disable=not verbose, leave=False):
        with _quiet_art():
            z_adv = step.generate(_to_attack_space(x_adv, threat), y=labels, mask=threat.mask)
        x_adv = threat.project(_from_attack_space(z_adv, threat), x, eps)
    return x_adv


# numpy's and torch's global generators, which parts of ART draw from: one seeded block at a time per process.
_GLOBAL_GENERATORS = threading.RLock()


@contextlib.contextmanager
def seeded_global_generators(seed: int) -> Iterator[None]:
    """numpy's and torch's global generators seeded with `seed` for the block and put back as they were after,
    under a process-wide lock the other seeded blocks respect. Code that draws from them (ART's HopSkipJump and
    BoundaryAttack, its membership-inference attack models) repeats in any process, and a gate in one thread no
    longer reseeds the generators its caller or another gate draws from."""
    with _GLOBAL_GENERATORS:
        numpy_state = np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            np.random.seed(seed)
            torch.manual_seed(seed)
            try:
                yield
            finally:
                np.random.set_state(numpy_state)


class _SeededHopSkipJump(HopSkipJump):
    """ART's HopSkipJump with its random draws seeded, so a call repeats in any process. ART draws each row's
    starting point from an unseeded `np.random.RandomState()` (OS entropy) and its gradient-estimation noise
    from numpy's global generator: here the starting points come from RandomState(seed), row after row, and
    the global generator is seeded (and put back after) under a lock that other seeded blocks of this process
    respect (seeded_global_generators; code drawing from it without the lock, in another thread, would still
    disturb a run)."""

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._seed = seed
        self._start_rng = np.random.RandomState(seed)

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
        with seeded_global_generators(self._seed):
            self._start_rng = np.random.RandomState(self._seed)
            return super().generate(x, y, **kwargs)

    def _init_sample(self, x, y, y_p, init_pred, adv_init, mask, clip_min, clip_max):
        if self.targeted or (adv_init is not None and init_pred != y_p):
            return super()._init_sample(x, y, y_p, init_pred, adv_init, mask, clip_min, clip_max)
        # ART's untargeted search for a misclassified starting point, drawing from the seeded generator.
        for _ in range(self.init_size):
            start = self._start_rng.uniform(clip_min, clip_max, size=x.shape).astype(x.dtype)
            if mask is not None:
                start = start * mask + x * (1 - mask)
            predicted = np.argmax(self.estimator.predict(np.array([start]), batch_size=self.batch_size), axis=1)[0]
            if predicted != y_p:
                start = self._binary_search(current_sample=start, original_sample=x, target=y_p, norm=2,
                                            clip_min=clip_min, clip_max=clip_max, threshold=0.001)
                return start, y_p
        logger.debug("HopSkipJump found no misclassified starting point in %d draws", self.init_size)
        return None


def hop_skip_jump(
    classifier: PyTorchClassifier,
    x: np.ndarray,
    threat: ThreatModel,
    max_iter: int,
    max_eval: int = 1000,
    init_eval: int = 100,
    batch_size: int = 1024,
    eps: float | None = None,
    verbose: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """Decision-based (black-box) L-inf HopSkipJump on controlled features, projected onto the threat
    model with radius `eps` (default threat.epsilon). HSJ minimizes distance to the decision boundary,
    so a row stays adversarial after projection only if HSJ found a crossing within eps. Seeded: the same
    arguments give the same points, in this process or another."""
    x = _check_inputs(x, threat)
    eps = threat.epsilon if eps is None else eps
    if len(x) == 0 or eps == 0:
        return x.copy()
    attack = _SeededHopSkipJump(
        _attack_classifier(classifier, threat),
        seed=seed,
        batch_size=batch_size,
        targeted=False,
        norm=np.inf,
        max_iter=max_iter,
        max_eval=max_eval,
        init_eval=init_eval,
        verbose=verbose,
    )
    z_adv = attack.generate(_to_attack_space(x, threat), mask=threat.mask)
    x_adv = _from_attack_space(z_adv.astype(np.float32), threat)
    # A row HSJ could not attack comes back unchanged; guard against non-finite values all the same.
    x_adv = np.where(np.isfinite(x_adv), x_adv, x)
    return threat.project(x_adv, x, eps)
