"""Crowd users vs experts: settings validation, author e-mails, crowd labels from annotations or the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from backend_helpers import LABEL_CONFIG

from backend.crowd import CrowdReader
from backend.labelconfig import parse_label_config
from backend.roles import CrowdSource, CrowdUsers, annotation_email
from backend.settings import Settings, SettingsError
from formats.labelstudio import detections_to_regions

SCHEMA = parse_label_config(LABEL_CONFIG)
W, H = 100, 50


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({}, None),
        ({"CROWD_SOURCE": "field"}, None),
        ({"CROWD_SOURCE": "annotations", "EXPERT_MODE": "emails:e@lab.org"}, None),
        ({"CROWD_SOURCE": "annotations", "EXPERT_MODE": "ground_truth"}, None),
        (
            {
                "CROWD_SOURCE": "annotations",
                "EXPERT_MODE": "emails:e@lab.org",
                "CROWD_USERS": "emails:c@lab.org",
            },
            None,
        ),
        (
            {"CROWD_SOURCE": "Annotations", "EXPERT_MODE": "ground_truth", "CROWD_USERS": "ALL_BUT_EXPERTS"},
            None,
        ),
        ({"CROWD_SOURCE": "annotations"}, "CROWD_SOURCE=annotations with EXPERT_MODE=all"),
        ({"CROWD_SOURCE": "annotations", "EXPERT_MODE": "all"}, "EXPERT_MODE=all"),
        (
            {
                "CROWD_SOURCE": "annotations",
                "EXPERT_MODE": "emails:E@lab.org",
                "CROWD_USERS": "emails:e@lab.org,c@x.io",
            },
            "CROWD_USERS and EXPERT_MODE: e@lab.org named in both",
        ),
        ({"CROWD_SOURCE": "tasks"}, "CROWD_SOURCE: expected 'field' or 'annotations'"),
        ({"CROWD_USERS": "emails:c@lab.org"}, "CROWD_USERS: only used with CROWD_SOURCE=annotations"),
        (
            {"CROWD_SOURCE": "annotations", "EXPERT_MODE": "ground_truth", "CROWD_USERS": "crowd"},
            "CROWD_USERS",
        ),
        (
            {"CROWD_SOURCE": "annotations", "EXPERT_MODE": "ground_truth", "CROWD_USERS": "emails:"},
            "CROWD_USERS",
        ),
        ({"CROWD_MERGE_IOU": "0"}, "CROWD_MERGE_IOU"),
        ({"CROWD_MIN_VOTES": "0"}, "CROWD_MIN_VOTES"),
    ],
)
def test_settings_refuse_ambiguous_roles(env: dict[str, str], error: str | None, tmp_path: Any) -> None:
    environ = {"MODEL_DIR": str(tmp_path), **env}
    if error is None:
        Settings.from_env(environ)
        return
    with pytest.raises(SettingsError, match=error.replace("(", r"\(")):
        Settings.from_env(environ)


def test_the_start_exits_2_naming_the_variables(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from backend.__main__ import main

    env = {"MODEL_DIR": str(tmp_path), "CROWD_SOURCE": "annotations", "EXPERT_MODE": "all"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("CROWD_USERS", raising=False)
        assert main([]) == 2
    err = capsys.readouterr().err
    assert "CROWD_SOURCE=annotations" in err and "EXPERT_MODE=all" in err


@pytest.mark.parametrize(
    ("annotation", "email"),
    [
        ({"completed_by": 3, "created_username": " c1@lab.org, 3"}, "c1@lab.org"),
        ({"completed_by": 3, "created_username": "Ann Lee Ann.Lee@Lab.org, 3"}, "ann.lee@lab.org"),
        ({"completed_by": {"id": 3, "email": "X@lab.org"}}, "x@lab.org"),
        ({"completed_by": 3, "completed_by_email": "y@lab.org"}, "y@lab.org"),
        ({"completed_by": 3}, None),
        ({"completed_by": 3, "created_username": "no email, 3"}, None),
    ],
)
def test_annotation_email(annotation: dict[str, Any], email: str | None) -> None:
    assert annotation_email(annotation) == email


def _settings(tmp_path: Any, **env: str) -> Settings:
    return Settings.from_env({"MODEL_DIR": str(tmp_path), **env})


def test_roles_under_each_policy(tmp_path: Any) -> None:
    crowd_ann = {"completed_by": 2, "created_username": " c@lab.org, 2"}
    expert_ann = {"completed_by": 9, "created_username": " e@lab.org, 9"}
    gt_by_crowd = {**crowd_ann, "ground_truth": True}
    s = _settings(tmp_path, CROWD_SOURCE="annotations", EXPERT_MODE="emails:e@lab.org")
    assert s.crowd.users is CrowdUsers.ALL_BUT_EXPERTS and s.crowd.source is CrowdSource.ANNOTATIONS
    assert s.crowd.is_crowd(crowd_ann, expert=s.expert, user_email=None)
    assert not s.crowd.is_crowd(expert_ann, expert=s.expert, user_email=None)
    assert s.expert.is_expert(expert_ann) and not s.expert.is_expert(crowd_ann)
    s = _settings(
        tmp_path, CROWD_SOURCE="annotations", EXPERT_MODE="ground_truth", CROWD_USERS="emails:c@lab.org"
    )
    assert not s.expert.is_expert(gt_by_crowd)  # a crowd user's ground truth never trains
    assert s.crowd.is_crowd(gt_by_crowd, expert=s.expert, user_email=None)
    assert not s.crowd.is_crowd(expert_ann, expert=s.expert, user_email=None)  # named crowd only
    assert not s.crowd.is_crowd({**crowd_ann, "was_cancelled": True}, expert=s.expert, user_email=None)
    s = _settings(tmp_path)  # field: nobody in Label Studio is crowd
    assert not s.crowd.is_crowd(crowd_ann, expert=s.expert, user_email=None)


def _annotation(ann_id: int, email: str, boxes: list[list[float]], **extra: Any) -> dict[str, Any]:
    from selection.detections import Detections

    dets = Detections(np.array(boxes, np.float32).reshape(-1, 4), np.zeros(len(boxes), np.int64))
    result = detections_to_regions(
        dets, width=W, height=H, labels=SCHEMA.labels, from_name="label", to_name="image"
    )
    return {
        "id": ann_id,
        "completed_by": ann_id,
        "created_username": f" {email}, {ann_id}",
        "result": result,
        **extra,
    }


def test_reader_fuses_the_crowd_annotations_and_ignores_the_expert(tmp_path: Any) -> None:
    s = _settings(tmp_path, CROWD_SOURCE="annotations", EXPERT_MODE="emails:e@lab.org")
    reader = CrowdReader(s.crowd, s.expert, users=None)
    task = {
        "id": 1,
        "data": {"image": "x", "crowd_labels": [{"x": 0, "y": 0, "width": 5, "height": 5}]},  # ignored
        "annotations": [
            _annotation(1, "c1@lab.org", [[10, 10, 30, 30], [60, 10, 80, 40]]),
            _annotation(2, "c2@lab.org", [[12, 10, 32, 30]]),
            _annotation(3, "c3@lab.org", [[11, 10, 31, 30]]),
            _annotation(4, "c3@lab.org", [[0, 0, 1, 1]], was_cancelled=True),
            _annotation(5, "e@lab.org", [[0, 0, 50, 50]]),
        ],
    }
    labels = reader.read(task, width=W, height=H, schema=SCHEMA)
    np.testing.assert_allclose(labels.detections.xyxy, [[11, 10, 31, 30], [60, 10, 80, 40]], atol=1e-3)
    assert labels.votes.tolist() == [3, 1] and labels.annotators == 3
    np.testing.assert_allclose(labels.agreement, [1.0, 1 / 3])
    # A user's newer annotation replaces their older one.
    task["annotations"].append(_annotation(6, "c1@lab.org", [[60, 10, 80, 40]]))
    labels = reader.read(task, width=W, height=H, schema=SCHEMA)
    assert labels.votes.tolist() == [1, 2] and labels.annotators == 3
    nobody = reader.read({"id": 2, "data": {}, "annotations": []}, width=W, height=H, schema=SCHEMA)
    assert len(nobody.detections) == 0 and nobody.annotators == 0 and not nobody.labelled
    # A crowd user who saw nothing on the image: labelled, no box.
    saw_nothing = {"id": 3, "data": {}, "annotations": [_annotation(7, "c1@lab.org", [])]}
    empty = reader.read(saw_nothing, width=W, height=H, schema=SCHEMA)
    assert len(empty.detections) == 0 and empty.annotators == 1 and empty.labelled
    assert labels.labelled


def test_reader_field_source_fuses_only_when_every_record_names_its_annotator(tmp_path: Any) -> None:
    s = _settings(tmp_path)
    reader = CrowdReader(s.crowd, s.expert, users=None)
    rec = {"x": 10.0, "y": 20.0, "width": 20.0, "height": 40.0, "label": "deposit"}
    both = [{**rec, "annotator": "u1"}, {**rec, "x": 11.0, "annotator": "u2"}]
    labels = reader.read({"data": {"crowd_labels": both}}, width=W, height=H, schema=SCHEMA)
    assert len(labels.detections) == 1 and labels.votes.tolist() == [2] and labels.annotators == 2
    mixed = [rec, {**rec, "x": 11.0, "annotator": "u2"}]
    labels = reader.read({"data": {"crowd_labels": mixed}}, width=W, height=H, schema=SCHEMA)
    assert len(labels.detections) == 2 and labels.votes is None and labels.agreement is None
    # An empty list is the crowd's answer (nothing there); no field at all, no answer.
    empty = reader.read({"data": {"crowd_labels": []}}, width=W, height=H, schema=SCHEMA)
    assert len(empty.detections) == 0 and empty.labelled
    absent = reader.read({"data": {}}, width=W, height=H, schema=SCHEMA)
    assert len(absent.detections) == 0 and not absent.labelled


class _Users:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def list(self) -> list[Any]:
        self.calls.append("list")
        return [type("U", (), {"id": 7, "email": "C7@lab.org"})()]

    def get(self, id: int) -> Any:
        self.calls.append(f"get {id}")
        raise KeyError(id)


def test_user_directory_lists_once_and_caches_misses() -> None:
    from backend.roles import UserDirectory

    users = _Users()
    directory = UserDirectory(lambda: type("Client", (), {"users": users})())
    assert directory.author_email({"completed_by": 7}) == "c7@lab.org"
    assert directory.author_email({"completed_by": 8}) is None
    assert directory.author_email({"completed_by": 8}) is None
    assert directory.author_email({"completed_by": 7}) == "c7@lab.org"
    assert users.calls == ["list", "get 8"]


def test_webhook_counts_only_expert_authors_resolved_by_id(tmp_path: Any) -> None:
    from backend.roles import UserDirectory
    from backend.training import TrainingManager

    s = _settings(
        tmp_path, CROWD_SOURCE="annotations", EXPERT_MODE="emails:e@lab.org", TRAIN_MIN_ANNOTATIONS="5"
    )
    people = [
        type("U", (), {"id": 2, "email": "c@lab.org"})(),
        type("U", (), {"id": 9, "email": "E@lab.org"})(),
    ]
    users = type("Users", (), {"list": lambda self: people, "get": lambda self, id: None})()
    trainer = TrainingManager(s, service=None, source=None)  # type: ignore[arg-type]
    trainer._users = UserDirectory(lambda: type("Client", (), {"users": users})())
    # Label Studio's webhook names the author by id only.
    assert trainer.on_event(
        "ANNOTATION_CREATED", project=1, annotation={"id": 1, "completed_by": 2, "task": 4}
    ) == ("not an expert annotation")
    status = trainer.on_event(
        "ANNOTATION_CREATED", project=1, annotation={"id": 2, "completed_by": 9, "task": 4}
    )
    assert status == "not enough annotations (1/5)"


def test_region_meta_shows_agreement_only_with_several_annotators() -> None:
    from backend.protocol import RegionProposal

    base = {"xyxy": (0.0, 0.0, 1.0, 1.0), "class_id": 0, "score": 0.9, "grade": "clean", "action": "keep"}
    shown = RegionProposal(**base, noise_type="clean", source="crowd", index=0, votes=2, annotators=3)
    assert shown.meta_text == "clean · clean · keep · 2/3 annotators"
    single = RegionProposal(**base, noise_type="clean", source="crowd", index=0, votes=1, annotators=1)
    assert single.meta_text == "clean · clean · keep"
    unknown = RegionProposal(**base, noise_type="clean", source="crowd", index=0)
    assert unknown.meta_text == "clean · clean · keep"
