"""The features that are analysed: which pairs (an other-class negative per anchor), their
adversarial examples, the penultimate features of all three, and 2-D embeddings (t-SNE/UMAP)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import UserError

EMBEDDINGS = ("auto", "umap", "tsne")


def sample_other_class(y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each anchor ``i`` the index ``j`` of a uniformly random example with ``y[j] != y[i]``.

    Vectorised in O(N): with the examples sorted by class, the other-class examples of anchor
    ``i`` are the sorted positions outside its class's block ``[start, start + count)``; draw a
    rank ``r`` among the ``N - count`` of them and skip the block."""
    y = y.cpu()
    n = y.numel()
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    own = counts[y]
    others = n - own
    if bool((others == 0).any()):
        raise UserError(
            "the analysed examples hold a single class: negative pairs need at least two classes (raise --n-examples)"
        )
    r = (torch.rand(n, generator=generator, dtype=torch.float64) * others).long().clamp_(max=others - 1)
    pos = torch.where(r < starts[y], r, r + own)
    return order[pos]


@dataclass
class PairFeatures:
    """Penultimate features (``(N, D)``, CPU) and predictions of one checkpoint."""

    natural: torch.Tensor  # f(x_i)
    adversarial: torch.Tensor  # f(x_i^adv), untargeted
    negative: torch.Tensor  # f(x_j^adv), j = neg_idx[i], targeted towards y_i
    pred_natural: torch.Tensor
    pred_adversarial: torch.Tensor
    pred_negative: torch.Tensor


@torch.no_grad()
def _features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model.forward_with_aux(x)  # no labels: predicted-label RA, the inference path
    if out.features is None:
        raise UserError("the model returns no penultimate features (forward_with_aux().features is None)")
    return out.features.float(), out.logits.argmax(1)


def extract_pair_features(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    neg_idx: torch.Tensor,
    *,
    eps: float,
    steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    desc: str = "",
) -> PairFeatures:
    """Attack and embed the ``N`` examples ``x`` (float [0,1], CPU) batch by batch.

    Each batch attacks its anchors (untargeted, label ``y_i``) and their negatives ``x[neg_idx]``
    (targeted to ``y_i``) as one PGD call with a per-example ``targeted`` mask, then takes
    features of natural anchors, adversarial anchors and adversarial negatives in one forward."""
    from ..attacks import pgd
    from ..progress import Progress

    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    n = x.shape[0]
    feats_out: dict[str, list[torch.Tensor]] = {k: [] for k in ("natural", "adversarial", "negative")}
    preds_out: dict[str, list[torch.Tensor]] = {k: [] for k in feats_out}
    n_batches = math.ceil(n / batch_size)
    bar = Progress(n_batches, desc=desc)
    for b, start in enumerate(range(0, n, batch_size)):
        sl = slice(start, min(start + batch_size, n))
        xa, ya = x[sl].to(device), y[sl].to(device)
        xn = x[neg_idx[sl]].to(device)
        m = xa.shape[0]
        inputs = torch.cat([xa, xn])
        targets = torch.cat([ya, ya])
        targeted = torch.cat([torch.zeros(m, dtype=torch.bool), torch.ones(m, dtype=torch.bool)]).to(device)
        x_adv = pgd(
            model,
            inputs,
            targets,
            eps=eps,
            step_size=eps / 4,
            steps=steps,
            loss="ce",
            targeted=targeted,
            random_start="uniform",
            generator=gen,
        )
        feats, preds = _features(model, torch.cat([xa, x_adv]))
        for i, key in enumerate(feats_out):  # rows: natural anchors, adversarial anchors, adv. negatives
            feats_out[key].append(feats[i * m : (i + 1) * m].cpu())
            preds_out[key].append(preds[i * m : (i + 1) * m].cpu())
        bar.update(b + 1)
    bar.close()
    f = {k: torch.cat(v) for k, v in feats_out.items()}
    p = {k: torch.cat(v) for k, v in preds_out.items()}
    return PairFeatures(f["natural"], f["adversarial"], f["negative"], p["natural"], p["adversarial"], p["negative"])


def _umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except Exception:  # umap-learn pulls numba; any import failure means "not usable"
        return False
    return True


def resolve_embedding(choice: str) -> str:
    """``umap`` or ``tsne`` for ``--embedding auto|umap|tsne`` (``UserError`` if not installed)."""
    if choice in ("auto", "umap") and _umap_available():
        return "umap"
    if choice == "umap":
        raise UserError("--embedding umap needs umap-learn: pip install 'ancra[umap]' (or use --embedding tsne)")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UserError("the t-SNE embedding needs scikit-learn: pip install 'ancra[analyze]'") from None
    return "tsne"


def embed_2d(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """2-D embedding of ``(N, D)`` features with UMAP or t-SNE (PCA init, perplexity <= 30)."""
    features = np.asarray(features, dtype=np.float32)
    n = features.shape[0]
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed).fit_transform(features)
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    # One OpenMP thread: torch's OpenMP workers keep spinning after the attacks, and scikit-learn's
    # own OpenMP runtime competing with them makes Barnes-Hut t-SNE ~100x slower on a small CPU.
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(features)
