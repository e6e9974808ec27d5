"""``ancra analyze``: does a checkpoint meet ANCRA's two criteria in its feature space?

docs/METHOD.md, "Overview": **Alignment** (a natural example and its adversarial example have close
features) and **Exclusion** (features of an example stay away from those of other classes, even
when an other-class example is attacked towards the anchor's class). On the first ``N`` test
examples this package measures, with the penultimate feature ``f`` (the pooled input of the final
``fc``, from ``model.forward_with_aux(x).features`` in eval mode with predicted-label RA, i.e. the
inference path):

- **positive pairs** ``(f(x_i), f(x_i^adv))``: ``x_i^adv`` is an untargeted CE-PGD example of
  ``x_i`` (L-inf ``eps``, step ``eps/4``, ``steps`` steps, uniform start in the eps-ball);
- **negative pairs** ``(f(x_i), f(x_j^adv))``: ``j`` is a random test example of another class and
  ``x_j^adv`` a targeted CE-PGD example of ``x_j`` towards ``y_i`` (same eps, step, steps) - the
  adversarial negatives of ANC (docs/METHOD.md, "Asymmetric negative contrast", ``random_adv``);

with the cosine distance ``1 - cos`` and the L2 distance, summarised per class (the anchor's class)
and overall. Alignment wants small positive distances; Exclusion wants negative distances well
above them (``separation.auc`` = P(negative distance > positive distance)).

The attack uses plain CE on the final logits (``cr_beta = 0``), the same for every checkpoint, so
models with and without RA are attacked alike; the negatives and the attacks' random starts are
drawn once from ``--seed`` and shared by all checkpoints (paired comparison).

Outputs in ``--out``: ``analysis.json`` and four PNGs (``distances``, ``embedding``,
``training_curves``, ``acc_vs_eps``); a plot without input is skipped with a note in the JSON.

Modules: :mod:`.metrics` (distances and statistics: the numbers of ``analysis.json``),
:mod:`.features` (negatives, adversarial examples, penultimate features, 2-D embeddings),
:mod:`.inputs` (checkpoint configs, ``metrics.jsonl``, ``ancra eval`` reports), :mod:`.plots`
(every figure) and :mod:`.pipeline` (:func:`analyze`, what ``ancra analyze`` runs; its command
line is in :mod:`ancra.cli`).
"""

from .features import (
    EMBEDDINGS,
    PairFeatures,
    embed_2d,
    extract_pair_features,
    resolve_embedding,
    sample_other_class,
)
from .inputs import checkpoint_label, read_acc_vs_eps, read_metrics
from .metrics import (
    DISTANCES,
    class_name,
    cosine_distance,
    l2_distance,
    per_class_stats,
    separation_auc,
    summarize_pairs,
    summary_stats,
)
from .pipeline import analyze
from .plots import PLOTS

__all__ = [
    "DISTANCES",
    "EMBEDDINGS",
    "PLOTS",
    "PairFeatures",
    "analyze",
    "checkpoint_label",
    "class_name",
    "cosine_distance",
    "embed_2d",
    "extract_pair_features",
    "l2_distance",
    "per_class_stats",
    "read_acc_vs_eps",
    "read_metrics",
    "resolve_embedding",
    "sample_other_class",
    "separation_auc",
    "summarize_pairs",
    "summary_stats",
]
