"""Grades learned from expert-re-annotated images: truth from expert boxes, fitting, fallback, regrading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_detections

from selection import Action, Grade, LSMConfig, correct_labels, score_image
from selection.calibration import (
    DEFAULT_PRIORITY,
    FEATURES,
    PRIORITIES,
    Calibration,
    CalibrationConfig,
    LabelledFindings,
    TypeRule,
    calibrated_verdict,
    error_probability,
    expert_truth,
    finding_targets,
    fit_calibration,
    fitted_label,
    image_priority,
    instance_features,
    label_findings,
    precision_recall_curve,
    regrade,
    residual_errors,
    weigh,
)


def test_expert_truth_names_every_kind_of_crowd_box():
    expert = make_detections(
        [
            [0, 0, 10, 10],  # boxed well
            [20, 0, 30, 10],  # boxed badly (IoU 0.68 with the crowd box)
            [50, 0, 60, 10],  # boxed far off (IoU ~0.2): a badly placed box, not background
            [0, 40, 10, 50],  # two deposits under one box
            [12, 40, 22, 50],
            [80, 80, 90, 90],  # missed
        ]
    )
    crowd = make_detections(
        [
            [0, 0, 10, 10],
            [21, 1, 31, 11],
            [56, 4, 66, 14],
            [-1, 39, 23, 51],
            [100, 0, 110, 10],  # nothing there
        ]
    )
    truth = expert_truth(crowd, expert)
    assert truth.crowd_type.tolist() == ["clean", "localization", "localization", "box_in_box", "background"]
    assert truth.crowd_expert.tolist() == [0, 1, 2, -1, -1]
    # Deposits inside the box-in-box box are not missed; the lone unboxed one is.
    assert truth.missed.tolist() == [False, False, False, False, False, True]


def test_expert_truth_empty_sides():
    none = make_detections([])
    one = make_detections([[0, 0, 10, 10]])
    assert expert_truth(one, none).crowd_type.tolist() == ["background"]
    assert expert_truth(none, one).missed.tolist() == [True]
    assert expert_truth(none, none).crowd_type.shape == (0,)


def test_finding_targets_follow_the_expert_boxes():
    expert = make_detections([[0, 0, 20, 20], [50, 50, 70, 70]])
    crowd = make_detections([[0, 0, 20, 20], [100, 100, 120, 120]])  # clean, background
    pred = make_detections(
        [[0, 0, 20, 20], [51, 51, 71, 71], [130, 0, 150, 20]], scores=[0.9, 0.9, 0.9]
    )  # agrees, a true missed deposit, a false "missed"
    score = score_image(crowd, pred)
    targets = finding_targets(crowd, pred, score.instances, expert)
    named = score.instances.noise_type.tolist()
    by_name = dict(zip([f"{t}{k}" for k, t in enumerate(named)], targets.tolist(), strict=True))
    assert named[:2] == ["clean", "background"]
    assert targets[1]  # the background box is on nothing
    assert not targets[0]  # clean findings are never "errors"
    missed = [k for k, t in enumerate(named) if t == "missed"]
    proposals = score.instances.index[missed]
    assert dict(zip(proposals.tolist(), targets[missed].tolist(), strict=True)) == {1: True, 2: False}, (
        by_name
    )


def test_class_aware_truth_calls_a_correct_class_fix_an_error():
    """With ``LSMConfig.class_aware`` a crowd box of the wrong class is reported as background plus a missed
    box of the right class; the expert's box of that class makes both findings true errors. Read without
    classes (the default), the expert box stands for the crowd box, and both would be labelled "not an
    error": the calibration would learn to keep wrongly classed boxes."""
    crowd = make_detections([[0, 0, 10, 10], [40, 40, 50, 50]], classes=[0, 1])
    pred = make_detections([[0, 0, 10, 10], [40, 40, 50, 50]], classes=[1, 1], scores=[0.95, 0.9])
    expert = make_detections([[0, 0, 10, 10], [40, 40, 50, 50]], classes=[1, 1])
    score = score_image(crowd, pred, config=LSMConfig(class_aware=True))
    named = score.instances.noise_type.tolist()
    assert sorted(named) == ["background", "clean", "missed"]
    found = label_findings(crowd, pred, score, expert, class_aware=True)
    assert dict(zip(found.noise_type.tolist(), found.target.tolist(), strict=True)) == {
        "background": True,
        "missed": True,
    }
    blind = label_findings(crowd, pred, score, expert)  # what it learned before: both "not an error"
    assert blind.target.tolist() == [False, False]
    truth = expert_truth(crowd, expert, class_aware=True)
    assert truth.crowd_type.tolist() == ["background", "clean"] and truth.missed.tolist() == [True, False]
    assert expert_truth(crowd, expert).crowd_type.tolist() == ["clean", "clean"]
    # Class-aware box-in-box: the enclosed boxes must be of the crowd box's class.
    big = make_detections([[-1, -1, 23, 11]], classes=[0])
    two = make_detections([[0, 0, 10, 10], [12, 0, 22, 10]], classes=[0, 0])
    assert expert_truth(big, two, class_aware=True).crowd_type.tolist() == ["box_in_box"]
    other = make_detections([[0, 0, 10, 10], [12, 0, 22, 10]], classes=[1, 1])
    assert expert_truth(big, other, class_aware=True).crowd_type.tolist() == ["background"]
    assert expert_truth(big, other).crowd_type.tolist() == ["box_in_box"]


def test_instance_features_shape_and_values():
    crowd = make_detections([[0, 0, 10, 10], [0, 0, 10, 10]])  # a duplicate pair
    pred = make_detections([[0, 0, 10, 10]], scores=[0.8])
    score = score_image(crowd, pred)
    feats = instance_features(crowd, pred, score.instances, agreement=np.array([1.0, 0.5]))
    assert feats.shape == (len(score.instances), len(FEATURES))
    col = dict(zip(FEATURES, feats[0], strict=True))
    assert col["crowd_overlap"] == pytest.approx(1.0)
    assert col["log_size"] == pytest.approx(np.log1p(10.0))
    assert col["support"] == pytest.approx(0.8)
    assert col["agreement"] == 1.0
    assert np.isnan(instance_features(crowd, pred, score.instances)[:, FEATURES.index("agreement")]).all()
    with pytest.raises(ValueError, match="agreement"):
        instance_features(crowd, pred, score.instances, agreement=np.ones(3))


def _synthetic(n: int, rng: np.random.Generator, noise_type: str = "background") -> LabelledFindings:
    """Findings whose true-error odds grow with severity (and nothing else)."""
    feats = rng.random((n, len(FEATURES)))
    feats[:, FEATURES.index("agreement")] = np.nan
    target = rng.random(n) < feats[:, 0] ** 3
    return LabelledFindings(np.full(n, noise_type), feats, target)


def test_fit_learns_the_informative_feature_and_sets_cutoffs(rng):
    cal = fit_calibration(_synthetic(400, rng))
    rule = cal.rules["background"]
    assert rule.fitted and rule.reason == "fitted"
    assert not rule.used[FEATURES.index("agreement")]  # never given: not used
    weights = np.abs(rule.coef[:-1])
    assert np.argmax(weights) == FEATURES.index("severity")
    assert rule.coef[FEATURES.index("severity")] > 0
    assert 0 < rule.review_threshold <= rule.fix_threshold < 1
    # Held-out findings: those auto-fixed are mostly errors.
    test = _synthetic(2000, np.random.default_rng(7))
    p = rule.probability(test.features)
    fixed = p >= rule.fix_threshold
    assert fixed.sum() > 20
    assert test.target[fixed].mean() >= 0.7
    assert test.target[p < rule.review_threshold].mean() < 0.4


RATES = CalibrationConfig(min_rate_examples=5)
"""Rate rules on (they are off by default)."""


def _examples(noise_type: str, target, action) -> LabelledFindings:
    target = np.asarray(target, bool)
    return LabelledFindings(
        np.full(len(target), noise_type), np.zeros((len(target), len(FEATURES))), target, np.asarray(action)
    )


@pytest.mark.parametrize(
    ("n", "positives", "reason"),
    [(10, 5, "fewer than 20"), (100, 2, "fewer than 4 of one kind"), (100, 99, "fewer than 4 of one kind")],
)
def test_too_few_examples_for_a_model_give_a_rate_rule(n, positives, reason):
    target = np.arange(n) < positives
    rule = fit_calibration(_examples("missed", target, np.full(n, "auto_fix")), config=RATES).rules["missed"]
    assert rule.fitted
    assert rule.reason.startswith("rate of true errors per LSM action: auto_fix") and reason in rule.reason
    rate = (positives + 1) / (n + 2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, len(FEATURES)))
    np.testing.assert_allclose(rule.probability(x, np.full(3, "auto_fix")), rate)
    assert np.isnan(rule.probability(x, np.full(3, "review"))).all()  # no rate: the LSM's grade stays
    assert np.isnan(rule.probability(x)).all()
    assert (rule.fix_threshold, rule.review_threshold) == (0.8, 0.4)
    assert fitted_label(rule.fitted, rule.reason) == rule.reason
    back = TypeRule.from_dict(json.loads(json.dumps(rule.to_dict())))
    np.testing.assert_allclose(back.probability(x[:1], np.array(["auto_fix"])), rate)


def test_rate_rule_keeps_one_rate_per_lsm_action():
    # 19 examples, too few for a model. Box-in-box the LSM fixed: 10 of 10 true errors (11/12 >= 0.8: still
    # fixed); the ones it sent to review: 2 of 6 (3/8 < 0.4: now kept); the ones it kept: 3 examples only (no
    # rate: its grade stays).
    target = [True] * 10 + [True, True, False, False, False, False] + [False] * 3
    action = ["auto_fix"] * 10 + ["review"] * 6 + ["keep"] * 3
    rule = fit_calibration(_examples("box_in_box", target, action), config=RATES).rules["box_in_box"]
    assert rule.fitted and rule.rates == pytest.approx({"auto_fix": 11 / 12, "review": 3 / 8})
    assert "auto_fix 10/10, review 2/6" in rule.reason
    prob = rule.probability(np.zeros((3, len(FEATURES))), np.array(["auto_fix", "review", "keep"]))
    np.testing.assert_allclose(prob[:2], [11 / 12, 3 / 8])
    assert np.isnan(prob[2])


def test_rate_rules_regrade_each_action_by_its_own_rate():
    """In an image with a background box the LSM fixes and a missed object it sends to review, a calibration
    that learnt "fixed backgrounds are errors, reviewed misses are not" keeps the fix and drops the review."""
    crowd = make_detections([[10, 10, 30, 30]])
    pred = make_detections([[100, 100, 130, 130]], scores=[0.3])
    score = score_image(crowd, pred)
    named = dict(zip(score.instances.noise_type.astype(str), score.instances.action.astype(str), strict=True))
    assert named == {"background": "auto_fix", "missed": "review"}
    examples = LabelledFindings.concat(
        [
            _examples("background", np.ones(8, bool), ["auto_fix"] * 8),
            _examples("missed", np.zeros(8, bool), ["review"] * 8),
        ]
    )
    cal = fit_calibration(examples, config=RATES)
    assert set(cal.fitted_types) == {"background", "missed"}
    after = regrade(crowd, pred, score, cal)
    actions = dict(
        zip(after.instances.noise_type.astype(str), after.instances.action.astype(str), strict=True)
    )
    assert actions == {"background": "auto_fix", "missed": "keep"}
    np.testing.assert_allclose(error_probability(crowd, pred, score, cal)[:2], [9 / 10, 1 / 10])


@pytest.mark.parametrize(("n", "min_rate"), [(4, 5), (50, 0), (50, None)])
def test_no_rule_below_the_rate_minimum(n, min_rate):
    target = np.arange(n) < 2
    examples = _examples("missed", target, np.full(n, "review"))
    config = None if min_rate is None else CalibrationConfig(min_rate_examples=min_rate)  # None: default, off
    rule = fit_calibration(examples, config=config).rules["missed"]
    assert not rule.fitted
    assert fitted_label(rule.fitted, rule.reason).startswith("no (")
    assert np.isnan(rule.probability(np.zeros((3, len(FEATURES))), np.full(3, "review"))).all()


def test_examples_without_actions_get_no_rate_rule():
    """Examples without the LSM's actions (``action`` None) cannot say which grade a rate belongs to."""
    examples = LabelledFindings(np.full(12, "box_in_box"), np.zeros((12, len(FEATURES))), np.ones(12, bool))
    assert (examples.action == "").all()
    rule = fit_calibration(examples, config=RATES).rules["box_in_box"]
    assert not rule.fitted and "no LSM action has 5 examples" in rule.reason


def test_empty_examples_fit_nothing():
    cal = fit_calibration(LabelledFindings.empty())
    assert cal.fitted_types == []
    assert set(cal.rules) == {"background", "localization", "box_in_box", "missed"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fix_precision": 0.3, "review_precision": 0.5}, "review_precision"),
        ({"near_iou": 0.6}, "near_iou"),
        ({"min_examples": 5, "min_class": 4}, "min_examples"),
        ({"l2": 0.0}, "l2"),
        ({"min_rate_examples": -1}, "min_rate_examples"),
        ({"folds": 1}, "folds"),
        ({"clean_iou": 1.5}, "clean_iou"),
        ({"weight_prior": 0.0}, "weight_prior"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CalibrationConfig(**kwargs)


def test_labelled_findings_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        LabelledFindings(np.array(["missed"]), np.zeros((2, len(FEATURES))), np.zeros(2, bool))


def test_to_dict_round_trip(rng):
    cal = fit_calibration(LabelledFindings.concat([_synthetic(200, rng), _synthetic(4, rng, "missed")]))
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again.fitted_types == cal.fitted_types == ["background"]
    x = _synthetic(50, rng).features
    np.testing.assert_allclose(
        again.rules["background"].probability(x), cal.rules["background"].probability(x)
    )
    assert again.rules["missed"].fix_threshold == float("inf")


def _broken(stored: dict, change) -> dict:
    stored = json.loads(json.dumps(stored))
    change(stored)
    return stored


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["rules"]["background"].update(coef=[0.0] * len(FEATURES)), "coef: expected 9 values"),
        (lambda d: d["rules"]["background"].update(mean=[0.0] * 3), "mean: expected 8 values"),
        (lambda d: d["rules"]["background"].update(errors=[True]), "one outcome each"),
        (
            lambda d: d["rules"]["background"].update(
                severities=d["rules"]["background"]["severities"][::-1],
                errors=d["rules"]["background"]["errors"][::-1],
            ),
            "expected them sorted",
        ),
        (lambda d: d["rules"]["background"].update(fitted="false"), "fitted: expected true or false"),
        (
            lambda d: d["rules"].update(missed=d["rules"]["background"]),
            "'missed' holds a rule for 'background'",
        ),
    ],
)
def test_a_stored_calibration_that_could_not_score_fails_when_read(rng, change, message):
    # Read through backend.service.read_calibration, a ValueError leaves the LSM's grades with a warning.
    # Accepted, such a file failed every prediction after (a broadcast error, an index error in the weights).
    cal = fit_calibration(LabelledFindings.concat([_synthetic(200, rng), _synthetic(4, rng, "missed")]))
    with pytest.raises(ValueError, match=message):
        Calibration.from_dict(_broken(cal.to_dict(), change))


def test_config_keys_of_a_newer_version_are_ignored(rng):
    cal = fit_calibration(_synthetic(200, rng))
    stored = _broken(cal.to_dict(), lambda d: d["config"].update(a_later_setting=3))
    assert Calibration.from_dict(stored).config == cal.config


def _image():
    """One image: a clean box, a box on nothing, a badly placed box, and a deposit nobody boxed."""
    crowd = make_detections([[0, 0, 20, 20], [100, 100, 120, 120], [40, 40, 60, 60]])
    pred = make_detections([[0, 0, 20, 20], [44, 44, 64, 64], [150, 150, 170, 170]], scores=[0.9, 0.7, 0.6])
    expert = make_detections([[0, 0, 20, 20], [44, 44, 64, 64], [150, 150, 170, 170]])
    return crowd, pred, expert


def _rule_always(noise_type: str, verdict: str) -> dict:
    """A hand-made rule whose probability is 0.9 everywhere, with cut-offs that give ``verdict``."""
    coef = [0.0] * len(FEATURES) + [float(np.log(9.0))]
    cut = {"fix": (0.5, 0.2), "review": (0.95, 0.5), "keep": (0.99, 0.95)}[verdict]
    return {
        "noise_type": noise_type,
        "fitted": True,
        "reason": "fitted",
        "n_examples": 100,
        "n_errors": 50,
        "used": [True] * (len(FEATURES) - 1) + [False],
        "mean": [0.0] * len(FEATURES),
        "scale": [1.0] * len(FEATURES),
        "coef": coef,
        "fix_threshold": cut[0],
        "review_threshold": cut[1],
    }


@pytest.mark.parametrize(
    ("verdict", "grade", "action"),
    [("fix", "major", "auto_fix"), ("review", "uncertain", "review"), ("keep", "clean", "keep")],
)
def test_regrade_applies_the_rule_and_leaves_other_types(verdict, grade, action):
    crowd, pred, _ = _image()
    score = score_image(crowd, pred)
    cal = Calibration.from_dict(
        {
            "rules": {
                "background": _rule_always("background", verdict),
                **{
                    t: {**_rule_always(t, "keep"), "fitted": False}
                    for t in ("localization", "box_in_box", "missed")
                },
            }
        }
    )
    out = regrade(crowd, pred, score, cal)
    f, g = score.instances, out.instances
    bg = f.noise_type == "background"
    assert bg.sum() == 1
    assert g.grade[bg].tolist() == [grade] and g.action[bg].tolist() == [action]
    np.testing.assert_array_equal(g.grade[~bg], f.grade[~bg])  # unfitted types keep the LSM's grade
    np.testing.assert_array_equal(g.action[~bg], f.action[~bg])
    assert out.discrepancy == score.discrepancy
    order = {x.value: k for k, x in enumerate(Grade)}
    assert out.grade == max(g.grade.tolist(), key=order.__getitem__)
    fixed = correct_labels(crowd, pred, out)
    assert fixed.counts["dropped"] == (1 if verdict == "fix" else 0)
    probs = error_probability(crowd, pred, score, cal)
    assert probs[bg] == pytest.approx([0.9])
    assert np.isnan(probs[~bg]).all()


def test_regrade_box_in_box_parts_follow_their_parent():
    crowd = make_detections([[0, 0, 50, 30]])
    pred = make_detections([[2, 2, 20, 25], [28, 3, 48, 27]], scores=[0.9, 0.9])
    score = score_image(crowd, pred)
    f = score.instances
    assert f.noise_type[0] == "box_in_box" and (f.parent[1:] == 0).all()
    rules = {
        t: {**_rule_always(t, "keep"), "fitted": t == "box_in_box"}
        for t in ("background", "localization", "box_in_box", "missed")
    }
    out = regrade(crowd, pred, score, Calibration.from_dict({"rules": rules}))
    assert set(out.instances.action.tolist()) == {Action.KEEP.value}
    assert set(out.instances.grade.tolist()) == {Grade.CLEAN.value}


def test_label_findings_from_one_image():
    crowd, pred, expert = _image()
    score = score_image(crowd, pred)
    examples = label_findings(crowd, pred, score, expert)
    named = dict(zip(examples.noise_type.tolist(), examples.target.tolist(), strict=True))
    assert named == {"background": True, "localization": True, "missed": True}
    assert examples.features.shape == (3, len(FEATURES))


def test_precision_recall_curve_hand_case():
    precision, recall, threshold = precision_recall_curve(
        np.array([0.9, 0.8, 0.8, 0.1, np.nan]), np.array([True, False, True, False, True]), n_true=4
    )
    # Cut at 0.9: 1/1; at 0.8 (tie, both in): 2/3; at 0.1: 2/4. Recall over the 4 true errors.
    np.testing.assert_allclose(precision, [1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0.25, 0.5, 0.5])
    np.testing.assert_allclose(threshold, [0.9, 0.8, 0.1])
    assert [a.size for a in precision_recall_curve(np.zeros(0), np.zeros(0, bool))] == [0, 0, 0]


def _counts_rule(noise_type: str, n: int, errors: int) -> TypeRule:
    return TypeRule(noise_type, False, "thin", n_examples=n, n_errors=errors)


def test_type_weight_is_the_share_of_true_errors_shrunk_towards_one():
    cal = Calibration(
        rules={"missed": _counts_rule("missed", 38, 8), "background": _counts_rule("background", 0, 0)},
        config=CalibrationConfig(weight_prior=2.0),
    )
    assert cal.type_weight("missed") == pytest.approx(10 / 40)
    assert cal.type_weight("background") == 1.0  # no examples: the LSM's own weight
    assert cal.type_weight("localization") == 1.0  # no rule at all
    assert cal.type_weight("clean") == 1.0
    assert cal.type_weights()["missed"] == pytest.approx(0.25)
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again.type_weight("missed") == pytest.approx(0.25)
    # More evidence, less shrinkage: the weight approaches the observed share.
    many = Calibration(rules={"missed": _counts_rule("missed", 4000, 800)})
    assert many.type_weight("missed") == pytest.approx(0.2, abs=1e-3)


def _two_images():
    """A: two unlabelled predictions (missed, 0.8 and 0.7). B: a crowd box on nothing (background)."""
    a = (
        make_detections(np.zeros((0, 4))),
        make_detections([[10, 10, 30, 30], [60, 60, 80, 80]], scores=[0.8, 0.7]),
    )
    b = (make_detections([[50, 50, 70, 70]]), make_detections(np.zeros((0, 4)), scores=np.zeros(0)))
    return a, b


def test_weigh_ranks_the_types_experts_confirmed_first():
    (ca, pa), (cb, pb) = _two_images()
    sa, sb = score_image(ca, pa), score_image(cb, pb)
    assert sa.instances.noise_type.tolist() == ["missed", "missed"]
    assert sb.instances.noise_type.tolist() == ["background"]
    assert sa.discrepancy > sb.discrepancy  # the LSM's own order: the missed object first
    # The experts confirmed 2 of 40 missed findings and 36 of 40 boxes on background.
    cal = Calibration(
        rules={"missed": _counts_rule("missed", 40, 2), "background": _counts_rule("background", 40, 36)}
    )
    wa, wb = weigh(sa, cal), weigh(sb, cal)
    assert wb.discrepancy > wa.discrepancy
    # Only the image discrepancy changes.
    for field in ("noise_type", "severity", "grade", "action"):
        np.testing.assert_array_equal(getattr(wa.instances, field), getattr(sa.instances, field))
    assert wa.grade == sa.grade


def test_weigh_without_examples_keeps_the_discrepancy_and_commutes_with_regrade():
    crowd, pred, _ = _image()
    score = score_image(crowd, pred)
    assert weigh(score, Calibration(rules={})).discrepancy == pytest.approx(score.discrepancy)
    # A calibration that does both: it keeps the box on background the LSM would drop (the rule's
    # probability 0.9 is below its fix and review cut-offs) and weighs background and localization findings
    # down (20 and 10 of their 100 examples were true errors).
    rules = {
        "background": {**_rule_always("background", "keep"), "n_examples": 100, "n_errors": 20},
        "localization": {**_rule_always("localization", "keep"), "fitted": False, "n_errors": 10},
    }
    cal = Calibration.from_dict({"rules": rules})
    assert cal.type_weight("background") < 1.0 and cal.type_weight("localization") < 1.0
    weighed, regraded = weigh(score, cal), regrade(crowd, pred, score, cal)
    assert weighed.discrepancy < score.discrepancy - 0.05  # weigh changes the discrepancy
    bg = score.instances.noise_type == "background"
    assert score.instances.action[bg].tolist() == ["auto_fix"]
    assert regraded.instances.action[bg].tolist() == ["keep"]  # regrade changes an action
    a = weigh(regraded, cal)
    b = regrade(crowd, pred, weighed, cal)
    assert a.discrepancy == pytest.approx(b.discrepancy) == pytest.approx(weighed.discrepancy)
    np.testing.assert_array_equal(a.instances.action, b.instances.action)
    np.testing.assert_array_equal(a.instances.action, regraded.instances.action)
    np.testing.assert_array_equal(a.instances.grade, b.instances.grade)
    assert a.grade == b.grade == regraded.grade


def _severity_rule(noise_type: str, severities, errors) -> TypeRule:
    sev = np.asarray(severities, np.float64)
    err = np.asarray(errors, bool)
    return TypeRule(noise_type, False, "thin", len(sev), int(err.sum()), severities=sev, errors=err)


def test_severity_weight_is_the_share_of_true_errors_among_the_examples_at_least_as_severe():
    # Ten localization examples; only the two most severe were true errors (as on the simulator, where a
    # displaced box is far from the model's box and the model's own imprecision is not).
    sev = np.linspace(0.05, 0.95, 10)
    rule = _severity_rule("localization", sev, sev > 0.8)
    cal = Calibration(rules={"localization": rule}, config=CalibrationConfig(weight_prior=2.0))
    got = cal.severity_weight("localization", np.array([0.0, 0.05, 0.5, 0.85, 0.95, 0.99]))
    # >= 0.0 and >= 0.05: all ten (2 errors); >= 0.5: five (2); >= 0.85: 0.85, 0.95 (2); >= 0.99: none.
    np.testing.assert_allclose(got, [4 / 12, 4 / 12, 4 / 7, 4 / 4, 3 / 3, 1.0])
    assert got[0] == pytest.approx(cal.type_weight("localization"))  # at severity 0: the type's one share
    # Without the tables (a calibration stored before they were kept), or switched off: the type's share.
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again.severity_weight("localization", np.array([0.5, 0.9])), got[[2, 4]])
    stored = cal.to_dict()
    del stored["rules"]["localization"]["severities"], stored["rules"]["localization"]["errors"]
    old = Calibration.from_dict(stored)
    np.testing.assert_allclose(old.severity_weight("localization", np.array([0.5, 0.9])), 4 / 12)
    flat = Calibration(rules=cal.rules, config=CalibrationConfig(weight_by_severity=False))
    np.testing.assert_allclose(flat.severity_weight("localization", np.array([0.5, 0.9])), 4 / 12)
    # Types without a rule weigh 1 at any severity.
    np.testing.assert_allclose(cal.severity_weight("missed", np.array([0.2, 0.9])), 1.0)


def test_fit_calibration_keeps_each_types_example_severities_in_order():
    # Two types' examples interleaved, neither in severity order; each severity keeps its own outcome.
    noise_type = ["localization", "background", "localization", "background", "localization"]
    features = np.zeros((5, len(FEATURES)))
    features[:, FEATURES.index("severity")] = [0.7, 0.5, 0.2, 0.3, 0.9]
    target = [True, True, False, False, True]
    cal = fit_calibration(LabelledFindings(np.array(noise_type), features, np.array(target)))
    loc, bg = cal.rules["localization"], cal.rules["background"]
    assert loc.severities.tolist() == [0.2, 0.7, 0.9] and loc.errors.tolist() == [False, True, True]
    assert bg.severities.tolist() == [0.3, 0.5] and bg.errors.tolist() == [False, True]
    assert (loc.n_examples, loc.n_errors, bg.n_examples, bg.n_errors) == (3, 2, 2, 1)
    for t in ("box_in_box", "missed"):  # no examples: nothing kept, and the type weighs 1
        assert cal.rules[t].severities.size == cal.rules[t].errors.size == 0
        assert cal.type_weight(t) == 1.0
    # The kept tables are what the weights read: at severity 0.5 or more, localization's examples (0.7 and
    # 0.9) were all real errors; from 0.1, two of three.
    prior = cal.config.weight_prior
    np.testing.assert_allclose(
        cal.severity_weight("localization", np.array([0.5, 0.1])), [1.0, (2 + prior) / (3 + prior)]
    )


def test_weigh_ranks_a_severe_finding_of_a_rarely_confirmed_type_above_a_mild_one():
    """Two images, one localization finding each: the severe one (a confident prediction far off the crowd
    box) keeps its full weight once the examples say the severe localization findings were the true errors,
    while one weight per type shrinks both alike."""
    crowd = make_detections([[100, 100, 140, 140]])
    severe = make_detections([[112, 112, 152, 152]], scores=[0.9])  # IoU about 0.3
    mild = make_detections([[104, 104, 144, 144]], scores=[0.9])  # IoU about 0.7
    s_severe, s_mild = score_image(crowd, severe), score_image(crowd, mild)
    assert s_severe.instances.noise_type.tolist() == s_mild.instances.noise_type.tolist() == ["localization"]
    assert s_severe.instances.severity[0] > s_mild.instances.severity[0]
    sev = np.linspace(0.05, 0.95, 40)
    loc = _severity_rule("localization", sev, sev > s_severe.instances.severity[0] - 0.05)
    by_severity = Calibration(rules={"localization": loc})
    by_type = Calibration(rules={"localization": loc}, config=CalibrationConfig(weight_by_severity=False))
    w_severe, w_mild = weigh(s_severe, by_severity).discrepancy, weigh(s_mild, by_severity).discrepancy
    t_severe, t_mild = weigh(s_severe, by_type).discrepancy, weigh(s_mild, by_type).discrepancy
    assert w_severe == pytest.approx(s_severe.discrepancy)  # more severe than every example: weight 1
    assert t_severe < 0.5 * s_severe.discrepancy  # one share per type, (4 + 2) / (40 + 2)
    assert w_severe / w_mild > t_severe / t_mild  # the gap between them widens


@pytest.mark.parametrize(("verdict", "left"), [("fix", 0.1), ("review", 0.9), ("keep", 0.9)])
def test_residual_errors_counts_what_the_calibrated_correction_would_leave(verdict, left):
    """A fitted rule says the background box is an error with probability 0.9: fixing it leaves an error
    with probability 0.1, keeping or reviewing it (reviews are not counted as answered) 0.9. The other
    findings have no rule: each counts its severity weight, 1 without examples, and the LSM's action."""
    crowd, pred, _ = _image()
    score = score_image(crowd, pred)
    rules = {"background": _rule_always("background", verdict)}
    cal = Calibration.from_dict({"rules": rules})
    f = score.instances
    others = (f.parent < 0) & (f.noise_type != "background") & (f.noise_type != "clean")
    assert others.sum() == 2  # the badly placed box and the unboxed deposit
    unfixed = int(np.sum(others & (f.action != Action.AUTO_FIX.value)))  # weight 1: an error if left alone
    assert residual_errors(crowd, pred, score, cal) == pytest.approx(left + unfixed)


def test_missed_priority_counts_a_likely_missed_object_again_and_keeps_busy_images_first():
    """Experts confirmed half of the missed findings and half of the boxes on background, so both types
    weigh (20 + 2) / (40 + 2). A holds two missed findings, B one box on background, C three; D one missed
    finding. Weighted, the busy C ranks first; the ``missed`` rule counts each missed finding's error
    probability again (the correction cannot draw a deposit), which lifts A above C but not D above C."""
    (ca, pa), (cb, pb) = _two_images()
    cc = make_detections([[10, 10, 30, 30], [50, 50, 70, 70], [100, 100, 120, 120]])
    cd, pd = make_detections(np.zeros((0, 4))), make_detections([[10, 10, 30, 30]], scores=[0.8])
    none = make_detections(np.zeros((0, 4)), scores=np.zeros(0))
    images = {"A": (ca, pa), "B": (cb, pb), "C": (cc, none), "D": (cd, pd)}
    scores = {k: score_image(c, p) for k, (c, p) in images.items()}
    assert scores["C"].instances.noise_type.tolist() == ["background"] * 3
    cal = Calibration(
        rules={"missed": _counts_rule("missed", 40, 20), "background": _counts_rule("background", 40, 20)}
    )
    w, scale = 22 / 42, LSMConfig().sum_scale
    boosted = {k: image_priority(*images[k], scores[k], cal, rule="missed") for k in images}
    weighted = {k: image_priority(*images[k], scores[k], cal, rule="discrepancy") for k in images}
    for k, s in scores.items():
        f = s.instances
        missed = int(np.sum(f.noise_type == "missed"))
        summed = w * float(f.severity[f.parent < 0].sum()) + w * missed
        assert boosted[k] == pytest.approx(1 - np.exp(-summed / scale))  # the LSM's sum aggregation
        assert weighted[k] == weigh(s, cal).discrepancy
    assert sorted(weighted, key=weighted.get, reverse=True)[0] == "C"
    assert boosted["A"] > boosted["C"] > boosted["D"] > boosted["B"]
    # Another aggregation takes the missed probabilities as further values: the max is the largest of them.
    peak = image_priority(cd, pd, scores["D"], cal, rule="missed", config=LSMConfig(aggregation="max"))
    assert peak == pytest.approx(max(w * float(scores["D"].instances.severity.max()), w))
    # Nothing found, nothing to buy.
    assert image_priority(cd, none, score_image(cd, none), cal, rule="missed") == 0.0
    with pytest.raises(ValueError, match="rule: expected one of"):
        image_priority(ca, pa, scores["A"], cal, rule="busiest")


def test_calibrated_verdict_is_regraded_and_weighted():
    """What ``/predict`` and the export show: ``regrade``'s grades and actions and the weighted discrepancy
    (the noise score; the backend's ``priority`` is ``image_priority`` by ``DEFAULT_PRIORITY``, see
    ``tests/test_calibrate_report.py``)."""
    (ca, pa), _ = _two_images()
    s = score_image(ca, pa)
    cal = Calibration(rules={"missed": _counts_rule("missed", 40, 2)})
    regraded = regrade(ca, pa, s, cal)
    v = calibrated_verdict(ca, pa, s, cal)
    assert v.instances.action.tolist() == regraded.instances.action.tolist()
    assert v.grade == regraded.grade
    assert v.discrepancy == weigh(regraded, cal).discrepancy != s.discrepancy
    assert v.discrepancy == image_priority(ca, pa, s, cal, rule="discrepancy")
    assert DEFAULT_PRIORITY in PRIORITIES
    for rule in PRIORITIES:
        assert np.isfinite(image_priority(ca, pa, s, cal, rule=rule))
    assert image_priority(ca, pa, s, cal, rule="residual") == residual_errors(ca, pa, s, cal)


def test_residual_errors_ranks_the_image_the_correction_cannot_clean_first():
    """Image A's unlabelled predictions are rarely real deposits (2 of 40 confirmed), image B's box on
    nothing nearly always an error (36 of 40). Weighed, B ranks first: its finding is the likelier error.
    But the correction fixes both (the LSM auto-fixes them), so A's fixes are the ones likely wrong: an
    expert's re-annotation of A corrects more than the correction would."""
    (ca, pa), (cb, pb) = _two_images()
    sa, sb = score_image(ca, pa), score_image(cb, pb)
    assert sa.instances.action.tolist() == ["auto_fix", "auto_fix"]
    assert sb.instances.action.tolist() == ["auto_fix"]
    cal = Calibration(
        rules={"missed": _counts_rule("missed", 40, 2), "background": _counts_rule("background", 40, 36)}
    )
    assert weigh(sb, cal).discrepancy > weigh(sa, cal).discrepancy
    ra, rb = residual_errors(ca, pa, sa, cal), residual_errors(cb, pb, sb, cal)
    assert ra == pytest.approx(2 * (1 - 4 / 42))
    assert rb == pytest.approx(1 - 38 / 42)
    assert ra > rb
    # No findings, nothing left.
    empty = make_detections(np.zeros((0, 4)))
    none = make_detections(np.zeros((0, 4)), scores=np.zeros(0))
    assert residual_errors(empty, none, score_image(empty, none), cal) == 0.0


def test_cutoffs_do_not_depend_on_the_order_of_the_examples():
    # 25 examples with 5 true errors (the severest): given with every error at a multiple of the fold count,
    # folds dealt in the given order put all five in one fold, whose out-of-fold model never saw an error.
    n, errors = 25, 5
    sev = np.linspace(0.05, 0.95, n)
    feats = np.zeros((n, len(FEATURES)))
    feats[:, FEATURES.index("severity")] = sev
    feats[:, FEATURES.index("agreement")] = np.nan
    target = sev >= sev[-errors]
    rest = [i for i in range(n) if not target[i]]
    bad = np.empty(n, np.int64)  # errors at 0, 5, 10, 15, 20; the others between them
    bad[np.arange(0, n, 5)] = np.flatnonzero(target)
    bad[[i for i in range(n) if i % 5]] = rest
    good = np.random.default_rng(3).permutation(n)
    rules = [
        fit_calibration(LabelledFindings(np.full(n, "background"), feats[o], target[o])).rules["background"]
        for o in (bad, good, np.arange(n))
    ]
    assert all(r.fitted for r in rules)
    assert np.isfinite(rules[0].fix_threshold)
    for r in rules[1:]:
        assert r.fix_threshold == pytest.approx(rules[0].fix_threshold)
        assert r.review_threshold == pytest.approx(rules[0].review_threshold)
        np.testing.assert_allclose(r.coef, rules[0].coef, rtol=1e-6, atol=1e-9)


def test_crowd_overlap_of_a_model_instance_beside_the_only_crowd_box():
    # A deposit the crowd missed, half under the one box it drew: the overlap with that box is a feature of
    # the missed finding with one crowd box in the image as with several.
    box = [20, 20, 60, 60]
    near = [36, 20, 76, 60]  # IoU 0.43: another object, half under the crowd box
    pred = make_detections([box, near], scores=[0.9, 0.6])
    for crowd_boxes in ([box], [box, [100, 100, 120, 120]]):
        crowd = make_detections(crowd_boxes)
        s = score_image(crowd, pred)
        feats = instance_features(crowd, pred, s.instances)
        model = np.flatnonzero(s.instances.source == 1)
        assert model.size == 1
        assert feats[model[0], FEATURES.index("crowd_overlap")] == pytest.approx(24 * 40 / (56 * 40))
        assert feats[0, FEATURES.index("crowd_overlap")] == 0.0  # a crowd box is not its own duplicate
