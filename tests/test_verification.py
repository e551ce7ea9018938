import numpy as np
import pytest
import torch

import pocketnas
from pocketnas.metrics.biometric import auc, eer, roc_curve, tar_at_far
from pocketnas.metrics.verification import THRESHOLDS, VAL_THRESHOLDS, evaluate_pairs, kfold_indices


def _pairs_from_distances(dist):
    """Unit embeddings whose pair i has squared L2 distance dist[i] (angle from the law of cosines)."""
    theta = np.arccos(1 - np.asarray(dist, dtype=np.float64) / 2)
    emb = np.zeros((2 * len(dist), 2))
    emb[0::2, 0] = 1.0
    emb[1::2, 0], emb[1::2, 1] = np.cos(theta), np.sin(theta)
    return emb


def _reference(dist, same, folds=10, far_target=1e-3):
    """insightface's calculate_roc / calculate_val, written as plain loops (robust FAR interpolation)."""
    n = len(same)
    accs, thrs, vals = [], [], []
    for test in kfold_indices(n, folds):
        train = np.setdiff1d(np.arange(n), test)
        acc_train = [np.mean((dist[train] < t) == same[train]) for t in THRESHOLDS]
        best = THRESHOLDS[int(np.argmax(acc_train))]
        thrs.append(best)
        accs.append(np.mean((dist[test] < best) == same[test]))
        far_train = np.array([np.sum((dist[train] < t) & ~same[train]) / np.sum(~same[train])
                              for t in VAL_THRESHOLDS])
        if far_train.max() >= far_target:
            i = np.searchsorted(far_train, far_target, side="right")
            if far_train[i - 1] == far_target:
                thr = VAL_THRESHOLDS[i - 1]
            else:
                w = (far_target - far_train[i - 1]) / (far_train[i] - far_train[i - 1])
                thr = VAL_THRESHOLDS[i - 1] + w * (VAL_THRESHOLDS[i] - VAL_THRESHOLDS[i - 1])
        else:
            thr = 0.0
        vals.append(np.sum((dist[test] < thr) & same[test]) / np.sum(same[test]))
    return accs, thrs, np.mean(vals)


def test_folds_are_sklearn_kfold_sizes():
    assert [len(f) for f in kfold_indices(6000, 10)] == [600] * 10
    sizes = [len(f) for f in kfold_indices(603, 10)]
    assert sizes == [61, 61, 61] + [60] * 7
    assert np.array_equal(np.concatenate(kfold_indices(603, 10)), np.arange(603))


def test_perfectly_separable():
    same = np.tile([True] * 30 + [False] * 30, 10)
    r = evaluate_pairs(_pairs_from_distances(np.where(same, 0.0, 2.0)), same)
    assert r["fold_accuracy"] == [1.0] * 10 and r["accuracy_std"] == 0
    assert r["fold_threshold"] == [pytest.approx(0.01)] * 10  # the first threshold that accepts distance 0
    assert r["auc"] == 1.0 and r["eer"] == 0.0 and r["val_at_far_1e-3"] == 1.0


def test_random_embeddings_are_at_chance():
    rng = np.random.default_rng(0)
    same = np.tile([True] * 300 + [False] * 300, 10)
    r = evaluate_pairs(rng.normal(size=(12000, 64)), same)
    assert 0.46 < r["accuracy_mean"] < 0.56 and abs(r["auc"] - 0.5) < 0.02 and abs(r["eer"] - 0.5) < 0.03


def test_collapsed_embeddings_score_the_floor_but_are_flagged(caplog):
    """A collapsed model (every pair closer than the grid's 0.01) gets 50 % however well it ranks; it is flagged."""
    same = np.tile([True] * 300 + [False] * 300, 10)
    rng = np.random.default_rng(0)
    dist = np.where(same, rng.uniform(0, 0.004, same.size), rng.uniform(0.003, 0.008, same.size))
    with caplog.at_level("WARNING", logger="pocketnas.metrics.verification"):
        r = evaluate_pairs(_pairs_from_distances(dist), same)
    assert r["accuracy_mean"] == 0.5 and r["auc"] > 0.9 and r["collapsed_pairs"] == 1.0
    assert "collapsed: 100% of the 6000 pairs" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pocketnas.metrics.verification"):
        r = evaluate_pairs(_pairs_from_distances(dist * 100), same)  # the same ranking, spread over the grid
    assert r["accuracy_mean"] > 0.8 and r["collapsed_pairs"] < 0.05 and "collapsed" not in caplog.text


def _exact(genuine_at_one, same):
    """Pairs at squared distance exactly 1.0 ((1,0,0,0) vs (.5,.5,.5,.5)) or exactly 2.0 (orthogonal)."""
    emb = np.zeros((2 * len(same), 4))
    emb[0::2, 0] = 1.0
    emb[1::2][genuine_at_one] = 0.5
    emb[1::2][~genuine_at_one, 1] = 1.0
    return emb


def test_ties_at_a_threshold_are_rejected():
    # genuine pairs exactly at 1.0: "same" is distance < threshold, so the threshold 1.0 itself rejects them
    same = np.tile([True] * 5 + [False] * 5, 10)
    r = evaluate_pairs(_exact(same, same), same)
    assert r["accuracy_mean"] == 1.0
    assert r["fold_threshold"][0] == THRESHOLDS[101] and THRESHOLDS[100] == 1.0
    everything_tied = evaluate_pairs(_exact(np.ones(100, bool), same), same)
    assert everything_tied["accuracy_mean"] == 0.5 and everything_tied["auc"] == 0.5


@pytest.mark.parametrize("n,seed", [(600, 0), (603, 1), (1000, 2)])
def test_matches_the_reference_loops(n, seed):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    dist = np.clip(np.where(same, rng.normal(0.9, 0.35, n), rng.normal(1.7, 0.3, n)), 0, 4)
    dist = np.round(dist, 2)  # many ties, and many on the threshold grid itself
    r = evaluate_pairs(_pairs_from_distances(dist), same)
    accs, thrs, val = _reference(np.sum((_pairs_from_distances(dist)[0::2] - _pairs_from_distances(dist)[1::2]) ** 2,
                                        1), same)
    assert r["fold_accuracy"] == pytest.approx(accs, abs=1e-12)
    assert r["fold_threshold"] == pytest.approx(thrs)
    assert r["val_at_far_1e-3"] == pytest.approx(val)


def test_scale_of_embeddings_does_not_matter():
    # (its time on LFW's 6,000 pairs is printed by bench/eval.py beside the embedding's: a test asserts no time)
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(12000, 128))
    same = np.tile([True] * 300 + [False] * 300, 10)
    emb[1::2][same] = emb[0::2][same] + rng.normal(size=(3000, 128))
    a = evaluate_pairs(emb, same)
    b = evaluate_pairs(emb * rng.uniform(0.1, 10, size=(12000, 1)), same)
    assert a["fold_accuracy"] == b["fold_accuracy"]


def test_eer_on_known_distributions():
    rng = np.random.default_rng(0)
    genuine = rng.uniform(0.5, 1.5, 200_000)
    impostor = rng.uniform(0.0, 1.0, 200_000)
    scores = np.r_[genuine, impostor]
    labels = np.r_[np.ones(200_000, bool), np.zeros(200_000, bool)]
    fpr, tpr, _ = roc_curve(scores, labels)
    assert eer(fpr, tpr) == pytest.approx(0.25, abs=0.003)
    g, i = rng.normal(1, 1, 200_000), rng.normal(-1, 1, 200_000)
    fpr, tpr, _ = roc_curve(np.r_[g, i], labels)
    assert eer(fpr, tpr) == pytest.approx(0.158655, abs=0.003)  # Phi(-1)
    # AUC is the probability a genuine score beats an impostor one: Phi(2/sqrt(2))
    assert auc(fpr, tpr) == pytest.approx(0.921350, abs=0.002)


def test_roc_and_tar_at_far_small_case():
    scores = np.array([0.9, 0.8, 0.8, 0.4, 0.3, 0.1])
    labels = np.array([1, 1, 0, 1, 0, 0], bool)
    fpr, tpr, thr = roc_curve(scores, labels)
    assert fpr.tolist() == [0, 0, 1 / 3, 1 / 3, 2 / 3, 1]
    assert tpr.tolist() == [0, 1 / 3, 2 / 3, 1, 1, 1]
    assert auc(fpr, tpr) == pytest.approx(7.5 / 9)  # genuine-beats-impostor count, the 0.8-0.8 tie a half
    assert tar_at_far(fpr, tpr, [0.3])["3e-01"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_sface_on_orl_pairs(shared):
    """A real, trained face embedder on real faces: the data README's figure (99.8 %)."""
    from pocketnas.evaluation.run import verify_bins
    from pocketnas.models.embedders import load_embedder

    sface = load_embedder(f"{shared}/weights/sface_fp32.onnx", input_norm="raw255", threads=2)
    r = verify_bins(sface, [f"{shared}/data/orl/orl.bin"], flip=False, progress=False)["orl"]
    assert r["accuracy_mean"] >= 0.995 and r["auc"] > 0.999


@pytest.mark.slow
def test_verification_report_matches_the_two_protocol_runs(orl_bin):
    from pocketnas.evaluation.run import verification_report, verify_bins
    from pocketnas.models.calibrate import calibrate_batchnorm
    from pocketnas.models.embedders import TorchEmbedder

    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=16)
    from pocketnas.data import FolderDataset, normalize, orl_root

    calibrate_batchnorm(model, [normalize(FolderDataset(orl_root(), train=False).batch_uint8(range(0, 400, 5)))])
    student = TorchEmbedder(model.eval(), name="s")
    orl = orl_bin
    report = verification_report(student, orl, teacher=student, progress=False)
    plain, flip = verify_bins(student, [orl], flip=False, progress=False), verify_bins(student, [orl], flip=True,
                                                                                       progress=False)
    assert report["no_flip"]["accuracy_mean"] == plain["orl"]["accuracy_mean"]
    assert abs(report["flip"]["accuracy_mean"] - flip["orl"]["accuracy_mean"]) < 1e-9
    assert abs(report["teacher_cosine_mean"] - 1.0) < 1e-5
