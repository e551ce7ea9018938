"""Scores from embeddings, with numpy alone: pair verification (10-fold accuracy, ROC, AUC, EER) and the
biometric operating points (TAR at FAR). The training loop, evaluation runs and reports all use these."""
from .biometric import auc, eer, roc_curve, summarize_scores, tar_at_far
from .verification import check_finite, evaluate_pairs, pair_distances

__all__ = ["auc", "check_finite", "eer", "evaluate_pairs", "pair_distances", "roc_curve", "summarize_scores",
           "tar_at_far"]
