"""Backend: settings, label config, LS JSON builders, and the HTTP app in-process (FastAPI TestClient)."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
from backend_helpers import LABEL_CONFIG, data_uri, disc_image, make_task, png_bytes, tiny_weights
from conftest import make_detections, random_boxes

from backend.app import create_app
from backend.labelconfig import LabelConfigError, LabelSchema, parse_label_config
from backend.protocol import (
    RegionProposal,
    build_regions,
    noise_types_text,
    proposals_from_score,
)
from backend.settings import ExpertMode, ExpertPolicy, Settings, SettingsError
from selection.lsm import score_image

SCHEMA = LabelSchema(from_name="label", to_name="image", image_key="image", labels=("deposit",))


# ------------------------------------------------------------------------------------------- settings


def test_settings_defaults_and_secrets_hidden(tmp_path):
    s = Settings.from_env(
        {
            "MODEL_DIR": str(tmp_path),
            "LABEL_STUDIO_URL": "http://127.0.0.1:8080/",
            "LABEL_STUDIO_API_KEY": "secret-key-123",
            "BASIC_AUTH_USER": "u",
            "BASIC_AUTH_PASS": "hunter2",
        }
    )
    assert s.label_studio_url == "http://127.0.0.1:8080"
    assert s.score_threshold == 0.25 and s.train_min_annotations == 5 and s.train_epochs == 20
    assert s.expert.mode is ExpertMode.ALL
    assert s.scratch_dir == tmp_path / "work"
    assert s.label_studio_enabled and s.basic_auth_enabled
    assert "secret-key-123" not in repr(s) and "hunter2" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "MODEL_DIR: required"),
        ({"DEVICE": "gpu"}, "DEVICE: expected auto"),
        ({"DEVICE": "mps"}, "DEVICE: 'mps' .Apple GPU. is not supported"),
        ({"DETECTOR_FAMILY": "rcnn"}, "DETECTOR_FAMILY: expected one of .*yolo.*, got 'rcnn'"),
        ({"PREDICT_CONF": "2"}, r"PREDICT_CONF: expected a number in \[0.0, 1.0\]"),
        ({"PREDICT_CONF": "0.2"}, "PREDICT_CONF: expected at most LSM_SCORE_FLOOR=0.1"),
        ({"LSM_MATCH_IOU": "x"}, "LSM_MATCH_IOU: expected a number, got 'x'"),
        ({"LSM_MATCH_IOU": "nan"}, "LSM_MATCH_IOU: expected a finite number"),
        ({"LSM_BIB_IOA": "1.5"}, r"LSM_BIB_IOA: expected a value in \[0, 1\], got 1.5"),
        ({"LSM_MATCH_IOU": "0.9"}, "LSM_LOC_MIN_IOU, LSM_MATCH_IOU, LSM_HIGH_IOU: expected 0 < loc_min_iou"),
        ({"LSM_CLASS_AWARE": "maybe"}, "LSM_CLASS_AWARE: expected true or false"),
        ({"LSM_AGGREGATION": "median"}, "LSM_AGGREGATION: expected one of .*sum"),
        ({"SCORE_THRESHOLD": "1.5"}, r"SCORE_THRESHOLD: expected a number in \[0.0, 1.0\], got 1.5"),
        ({"SCORE_THRESHOLD": "abc"}, "SCORE_THRESHOLD"),
        ({"TRAIN_MIN_ANNOTATIONS": "0"}, "TRAIN_MIN_ANNOTATIONS: expected an integer >= 1, got 0"),
        ({"TRAIN_EPOCHS": "x"}, "TRAIN_EPOCHS"),
        ({"TRAIN_EPOCH_IMAGES": "-1"}, "TRAIN_EPOCH_IMAGES: expected an integer >= 0"),
        ({"MAX_DET": "0"}, "MAX_DET: expected an integer >= 1, got 0"),
        ({"MAX_DET": "many"}, "MAX_DET: expected an integer >= 1, got 'many'"),
        ({"MAX_DET": "2.5"}, "MAX_DET: expected an integer >= 1, got '2.5'"),
        ({"EXPERT_MODE": "some"}, "EXPERT_MODE: expected 'all'"),
        ({"EXPERT_MODE": "emails:"}, "EXPERT_MODE: expected 'emails:'"),
        ({"EXPERT_MODE": "emails:bob"}, "EXPERT_MODE"),
        ({"LABEL_STUDIO_URL": "localhost:8080"}, "LABEL_STUDIO_URL: expected http"),
        ({"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_USER and BASIC_AUTH_PASS"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"MODEL_WEIGHTS": "/nonexistent/w.pt"}, "MODEL_WEIGHTS: no such file"),
        ({"LOCAL_FILES_DOCUMENT_ROOT": "/nonexistent/root"}, "LOCAL_FILES_DOCUMENT_ROOT: no such folder"),
        ({"TRAIN_INIT": "resnet"}, "TRAIN_INIT"),
        ({"REDIS_URL": "redis://redis:notaport/0"}, "REDIS_URL: .*Port could not be cast"),
        ({"REDIS_URL": "redis://"}, "REDIS_URL: .*no host"),
        ({"REDIS_URL": "redis://redis:6379/zero"}, "REDIS_URL: .*the database is a number"),
        ({"REDIS_URL": "unix://"}, "REDIS_URL: .*no socket path"),
    ],
)
def test_settings_errors_name_the_variable(tmp_path, env, message):
    full = {"MODEL_DIR": str(tmp_path), **env} if env else {}
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(full)


def test_startup_problems_the_variables_cannot_show(tmp_path, monkeypatch):
    from backend.settings import startup_problem

    ok = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu"})
    assert startup_problem(ok) is None and (tmp_path / "models").is_dir()
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    no_gpu = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cuda"})
    assert (startup_problem(no_gpu) or "").startswith("DEVICE: ")
    blocker = tmp_path / "file"
    blocker.write_text("")
    under_a_file = Settings.from_env({"MODEL_DIR": str(blocker / "models"), "DEVICE": "cpu"})
    assert (startup_problem(under_a_file) or "").startswith("MODEL_DIR: ")
    for url in ("redis://redis:6379/0", "redis://localhost", "rediss://h:1/2", "unix:///tmp/r.sock"):
        assert Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": url}).redis_url == url


def test_settings_lsm_every_field_from_env(tmp_path):
    import dataclasses

    from backend.settings import lsm_as_dict, lsm_variables
    from selection.lsm import Aggregation, LSMConfig

    variables = lsm_variables()
    assert set(variables) == {f.name for f in dataclasses.fields(LSMConfig)}
    assert variables["match_iou"] == "LSM_MATCH_IOU" and variables["class_aware"] == "LSM_CLASS_AWARE"
    assert Settings.from_env({"MODEL_DIR": str(tmp_path)}).lsm == LSMConfig()
    s = Settings.from_env(
        {
            "MODEL_DIR": str(tmp_path),
            "LSM_MATCH_IOU": "0.4",
            "LSM_CLASS_AWARE": "Yes",
            "LSM_AGGREGATION": "NOISY_OR",
            "LSM_SCORE_FLOOR": " 0.2 ",
            "LSM_TEMPERATURE": "",  # empty means unset
            "PREDICT_CONF": "0.15",
        }
    )
    assert s.lsm.match_iou == 0.4 and s.lsm.class_aware is True and s.lsm.score_floor == 0.2
    assert s.lsm.aggregation is Aggregation.NOISY_OR and s.lsm.temperature == LSMConfig().temperature
    assert s.predict_conf == 0.15
    record = lsm_as_dict(s.lsm)
    assert record["aggregation"] == "noisy_or" and record["match_iou"] == 0.4
    assert LSMConfig(**{**record, "aggregation": Aggregation(record["aggregation"])}) == s.lsm


def test_settings_max_det(tmp_path):
    from model.detector import MAX_DET

    assert Settings.from_env({"MODEL_DIR": str(tmp_path)}).max_det == MAX_DET == 300  # ultralytics' own
    assert Settings.from_env({"MODEL_DIR": str(tmp_path), "MAX_DET": " 1000 "}).max_det == 1000


def test_set_assignments_override_and_unknown_names_are_refused(tmp_path):
    from backend.settings import VARIABLES, settings_with_overrides

    env = {"MODEL_DIR": str(tmp_path), "TRAIN_EPOCHS": "20"}
    s = settings_with_overrides(
        env, {"TRAIN_BATCH": 4}, assignments=[" TRAIN_EPOCHS =7", "LSM_MATCH_IOU=0.4"]
    )
    assert (s.train_epochs, s.train_batch, s.lsm.match_iou) == (7, 4, 0.4)
    assert env["TRAIN_EPOCHS"] == "20"  # the caller's mapping is left as it was
    # A misspelt name used to be ignored silently, training with the default.
    with pytest.raises(
        SettingsError, match=r"--set: TRAIN_EPOHCS is not a backend setting \(did you mean TRAIN_EPOCHS\?\)"
    ):
        settings_with_overrides(env, {}, assignments=["TRAIN_EPOHCS=7"])
    with pytest.raises(SettingsError, match="--set: NOT_A_THING is not a backend setting"):
        settings_with_overrides(env, {}, assignments=["NOT_A_THING=1"])
    with pytest.raises(SettingsError, match="expected VAR=VALUE"):
        settings_with_overrides(env, {}, assignments=["TRAIN_EPOCHS"])
    with pytest.raises(LookupError, match="TRAIN_EPOHCS"):  # a tool's own flag table is held to the same set
        settings_with_overrides(env, {"TRAIN_EPOHCS": 7})
    assert {"TRAIN_EPOCHS", "BASIC_AUTH_PASS", "LSM_MATCH_IOU", "REDIS_URL"} <= VARIABLES


def test_settings_family_and_train_init(tmp_path):
    from model.detector import PREDICT_CONF

    s = Settings.from_env({"MODEL_DIR": str(tmp_path)})
    assert s.detector_family == "yolo" and s.train_init == "yolov8n.yaml" and s.predict_conf == PREDICT_CONF
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    assert Settings.from_env({"MODEL_DIR": str(tmp_path), "TRAIN_INIT": str(weights)}).train_init == str(
        weights
    )


@pytest.mark.parametrize(
    ("mode", "annotation", "email", "expected"),
    [
        ("all", {"result": []}, None, True),
        ("all", {"was_cancelled": True}, None, False),
        ("ground_truth", {"ground_truth": True}, None, True),
        ("ground_truth", {"ground_truth": False}, None, False),
        ("emails:A@x.org,b@y.org", {"completed_by": 3}, "a@X.org", True),
        ("emails:a@x.org", {"completed_by": 3}, "c@x.org", False),
        ("emails:a@x.org", {"completed_by": {"id": 1, "email": "a@x.org"}}, None, True),
        ("emails:a@x.org", {"created_username": "a@x.org, 1"}, None, True),
        ("emails:a@x.org", {"completed_by": 3}, None, False),
    ],
)
def test_expert_policy(mode, annotation, email, expected):
    assert ExpertPolicy.parse(mode).is_expert(annotation, user_email=email) is expected


# ---------------------------------------------------------------------------------------- label config


def test_parse_label_config():
    schema = parse_label_config(LABEL_CONFIG)
    assert schema == SCHEMA
    assert schema.predicted_values == ((),)


def _classes(schema: LabelSchema, names: list[str]) -> dict[int, int]:
    return schema.label_map(names).class_to_label


def test_label_map_by_name_case_insensitive_and_single_class_fallback():
    assert _classes(SCHEMA, ["deposit"]) == {0: 0}
    assert _classes(SCHEMA, ["DEPOSIT"]) == {0: 0}
    assert _classes(SCHEMA, ["edd"]) == {0: 0}  # single class on both sides: mapped despite the name
    two = LabelSchema("label", "image", "image", ("cat", "Deposit"))
    assert _classes(two, ["deposit", "dog"]) == {0: 1}
    assert two.label_map(["deposit", "dog"]).unmapped == ("dog",)
    assert _classes(two, ["dog"]) == {}
    # A deletion label does not count: one model class still maps to the one real label.
    with_bg = LabelSchema("label", "image", "image", ("Background", "EDD"))
    assert _classes(with_bg, ["deposit"]) == {0: 1}
    assert _classes(with_bg, ["deposit", "rock"]) == {}


def test_label_map_predicted_values_from_the_config():
    xml = (
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
        '<Label value="Deposit" predicted_values="deposit, EDD"/><Label value="Rock"/>'
        '<Label value="Car" predicted_values="truck"/><Label value="background"/>'
        "</RectangleLabels></View>"
    )
    schema = parse_label_config(xml)
    assert schema.predicted_values == (("deposit", "EDD"), (), ("truck",), ())
    names = ["edd", "rock", "truck", "car", "deposit", "tree"]
    label_map = schema.label_map(names)
    # predicted_values (any case), then the label's own name; an explicit predicted_values wins.
    assert label_map.class_to_label == {0: 0, 1: 1, 2: 2, 3: 2, 4: 0}
    assert label_map.unmapped == ("tree",)
    # Backwards, for training: a label trains the first model class mapped to it; "background" none.
    assert dict(label_map.label_to_class) == {"Deposit": 0, "Rock": 1, "Car": 2}
    assert label_map.label_to_class["deposit"] == 0 and "background" not in label_map.label_to_class
    pred = make_detections(
        [[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]], classes=[5, 3, 4], scores=[0.9, 0.8, 0.7]
    )
    mapped = label_map.to_labels(pred)
    assert mapped.class_id.tolist() == [2, 0] and mapped.score.tolist() == pytest.approx([0.8, 0.7])
    with pytest.raises(ValueError, match="predicted_values: expected one tuple per label"):
        LabelSchema("label", "image", "image", ("a", "b"), (("x",),))


def test_label_ids_are_case_insensitive_and_keep_the_config_spelling():
    ids = LabelSchema("label", "image", "image", ("Deposit", "Rock")).label_ids
    assert ids["DEPOSIT"] == 0 and ids["rock"] == 1 and "ROCK" in ids and "cat" not in ids and 3 not in ids
    assert list(ids) == ["Deposit", "Rock"] and len(ids) == 2
    with pytest.raises(KeyError):
        ids["cat"]


def test_merge_task_data_keeps_the_other_fields():
    from backend.lsclient import merge_task_data

    class Tasks:
        def __init__(self) -> None:
            self.data = {7: {"image": "s3://b/x.png", "crowd_labels": [], "noise_grade": "clean"}}

        def get(self, id, request_options=None):
            data = dict(self.data[id])
            query = (request_options or {}).get("additional_query_parameters", {})
            if query.get("resolve_uri") != "false":  # what Label Studio answers by default
                data["image"] = f"/tasks/{id}/resolve/?fileuri=czM6Ly9iL3gucG5n"
            return type("Task", (), {"data": data})()

        def update(self, id, data, request_options=None):
            assert request_options == {"additional_query_parameters": {"review": "1"}}  # the lean query
            self.data[id] = data

    client = type("Client", (), {"tasks": Tasks()})()
    merge_task_data(client, 7, {"noise_grade": "major", "discrepancy": 0.5})
    assert client.tasks.data[7] == {
        "image": "s3://b/x.png",
        "crowd_labels": [],
        "noise_grade": "major",
        "discrepancy": 0.5,
    }


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (None, "label_config: required"),
        ("   ", "label_config: required"),
        ("<View><Image", "not a valid labelling config"),
        (
            '<View><Text name="t" value="$text"/>'
            '<Labels name="l" toName="t"><Label value="a"/></Labels></View>',
            "expected a <RectangleLabels>",
        ),
        ('<View><Image name="i" value="$image"/></View>', "expected a <RectangleLabels>"),
    ],
)
def test_parse_label_config_errors(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


# ------------------------------------------------------------------------------------------ protocol


def test_noise_types_text():
    assert noise_types_text([]) == "clean"
    assert noise_types_text(["clean", "clean"]) == "clean"
    assert noise_types_text(["missed", "background", "missed", "clean"]) == "background:1 missed:2"


def test_build_regions_percent_and_meta():
    p = RegionProposal((10, 20, 30, 60), 0, 0.87654, "localization", "minor", "auto_fix", "crowd", 3)
    drop = RegionProposal((0, 0, 50, 100), 0, 0.02, "background", "major", "auto_fix", "crowd", 4, drop=True)
    regions = build_regions([p, drop], schema=SCHEMA, width=100, height=200)
    r = regions[0]
    assert r["value"] == {
        "x": 10.0,
        "y": 10.0,
        "width": 20.0,
        "height": 20.0,
        "rotation": 0,
        "rectanglelabels": ["deposit"],
    }
    assert (r["from_name"], r["to_name"], r["type"]) == ("label", "image", "rectanglelabels")
    assert (r["original_width"], r["original_height"], r["score"]) == (100, 200, 0.8765)
    assert r["id"] == "crowd3-localization"
    assert r["meta"] == {"text": ["localization · minor · auto_fix"]}
    assert regions[1]["id"] == "drop-crowd4"
    assert regions[1]["meta"]["text"] == ["background · major · drop — delete this box"]
    # A config with a deletion label: the dropped box carries it.
    with_bg = LabelSchema("label", "image", "image", ("deposit", "Background"))
    assert build_regions([drop], schema=with_bg, width=100, height=200)[0]["value"]["rectanglelabels"] == [
        "Background"
    ]
    with pytest.raises(ValueError, match="class_id: 2"):
        build_regions([RegionProposal((0, 0, 1, 1), 2, 1, "missed", "major", "auto_fix", "model", 0)],
                      schema=SCHEMA, width=10, height=10)  # fmt: skip


def test_proposals_from_score_hand_case():
    # crowd 0 = exact match (clean); crowd 1 = far from any prediction (background, dropped);
    # crowd 2 = shifted copy of pred 1 (localization, fixed to pred 1); pred 2 has no crowd box (missed);
    # pred 3 is below the display threshold.
    crowd = make_detections([[10, 10, 30, 30], [150, 150, 170, 170], [60, 60, 80, 80]])
    pred = make_detections(
        [[10, 10, 30, 30], [64, 64, 84, 84], [100, 10, 120, 30], [10, 150, 30, 170]],
        scores=[0.9, 0.95, 0.8, 0.15],
    )
    score = score_image(crowd, pred)
    props = proposals_from_score(crowd, pred, score, score_threshold=0.25)
    by_id = {p.region_id: p for p in props}
    assert set(by_id) == {"crowd0-clean", "drop-crowd1", "crowd2-localization", "model2-missed"}
    assert by_id["crowd0-clean"].xyxy == (10, 10, 30, 30)
    assert by_id["drop-crowd1"].xyxy == (150, 150, 170, 170)  # shown where the crowd drew it
    assert by_id["crowd2-localization"].xyxy == (64, 64, 84, 84)  # moved onto the model's box
    assert by_id["model2-missed"].score == pytest.approx(0.8)
    assert score.discrepancy > 0.5


# ----------------------------------------------------------------------------------------- the app


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu", **env})


class _BrokenSource:
    """A task source whose Label Studio is unreachable."""

    def label_config(self, project):
        raise ConnectionError("Label Studio unreachable")

    def tasks(self, project):
        raise AssertionError("not reached")

    def publish(self, scored):
        raise AssertionError("not reached")


def test_app_without_model(tmp_path):
    app = create_app(_settings(tmp_path, TRAIN_MIN_ANNOTATIONS="2"), source=_BrokenSource())
    client = TestClient(app)
    health = client.get("/health").json()
    assert health["status"] == "UP" and health["model_version"] is None
    assert health["training"]["state"] == "idle"
    assert client.post("/setup", json={"project": "1.123", "schema": LABEL_CONFIG}).json() == {
        "model_version": "untrained"
    }
    assert client.get("/versions").json()["versions"] == []
    task = make_task(1, data_uri(disc_image(64, [])))
    resp = client.post("/predict", json={"tasks": [task], "label_config": LABEL_CONFIG})
    assert resp.status_code == 503 and "no model version published yet" in resp.json()["detail"]

    # Webhooks: unknown actions ignored, annotation events counted, START_TRAINING has no annotation.
    hook = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}})
    assert hook.json() == {"status": "ignored", "action": "PROJECT_UPDATED"}
    ann = {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": 5, "task": 11}}
    assert client.post("/webhook", json=ann).json()["status"] == "not enough annotations (1/2)"
    assert client.post("/webhook", json=ann).json()["status"] == "not enough annotations (1/2)"  # same task
    cancelled = {**ann, "annotation": {"id": 6, "task": 12, "was_cancelled": True}}
    assert client.post("/webhook", json=cancelled).json()["status"] == "not an expert annotation"
    ann2 = {**ann, "annotation": {"id": 7, "task": 12}}
    # Nothing runs yet: the request starts a training now ("pending" would mean it waits behind another).
    assert client.post("/webhook", json=ann2).json()["status"] == "training queued"
    app.state.trainer.wait(30)
    training = client.get("/health").json()["training"]
    assert training["state"] == "failed" and "Label Studio unreachable" in training["last_error"]
    start = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert start.json()["status"] == "training queued"  # the failed one is over: nothing to wait behind
    app.state.trainer.wait(30)
    assert client.get("/health").json()["status"] == "UP"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 422, "body: not valid JSON"),
        (b'{"tasks": []}', 422, "tasks: List should have at least 1 item"),
        (b'{"label_config": "x"}', 422, "tasks: Field required"),
        (b'{"tasks": "abc"}', 422, "tasks"),
        (b"[1, 2]", 422, ""),
    ],
)
def test_predict_malformed_bodies(tmp_path, body, status, message):
    client = TestClient(create_app(_settings(tmp_path)))
    resp = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status
    assert message in resp.json()["detail"]


def test_webhook_malformed_bodies(tmp_path):
    client = TestClient(create_app(_settings(tmp_path)))
    assert (
        client.post("/webhook", content=b"nope", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert client.post("/webhook", json={"project": {"id": 1}}).status_code == 422
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).json()["status"] == "ignored"


def test_basic_auth_guards_every_endpoint(tmp_path):
    client = TestClient(create_app(_settings(tmp_path, BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="pw:1")))
    assert client.get("/health").status_code == 401
    assert client.post("/webhook", json={"action": "X"}).status_code == 401
    assert client.get("/health", auth=("ls", "wrong")).status_code == 401
    assert client.get("/health", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert client.get("/health", auth=("ls", "pw:1")).status_code == 200


def test_validation_errors_do_not_echo_secrets(tmp_path):
    client = TestClient(create_app(_settings(tmp_path)))
    resp = client.post("/predict", json={"tasks": [], "params": {"password": "hunter2"}})
    assert resp.status_code == 422 and "hunter2" not in resp.text


# --------------------------------------------------------------------------- predict with a real model


@pytest.fixture(scope="module")
def weights() -> Path:
    return tiny_weights()


@pytest.fixture
def model_client(tmp_path, weights):
    root = tmp_path / "files"
    (root / "imgs").mkdir(parents=True)
    settings = _settings(tmp_path, MODEL_WEIGHTS=str(weights), LOCAL_FILES_DOCUMENT_ROOT=str(root))
    app = create_app(settings)
    return TestClient(app), app, root


def test_predict_with_model(model_client):
    client, app, root = model_client
    assert app.state.service.loaded_version is None  # nothing loaded at start or in /setup
    version = client.post("/setup", json={"schema": LABEL_CONFIG}).json()["model_version"]
    assert version.startswith("v0001-")
    assert app.state.service.loaded_version is None
    pixels = disc_image(96, [(30, 30, 10), (70, 60, 12)], seed=3)
    (root / "imgs" / "a.png").write_bytes(png_bytes(pixels))
    crowd = [
        {"x": 20.0, "y": 20.0, "width": 20.0, "height": 20.0, "label": "deposit"},
        {"x": 80.0, "y": 2.0, "width": 10.0, "height": 10.0, "label": "Deposit", "annotator": "crowd-1"},
    ]
    tasks = [
        make_task(7, "/data/local-files/?d=imgs/a.png", crowd),
        make_task(8, data_uri(pixels)),  # no crowd labels: an empty crowd
        make_task(None, data_uri(disc_image(64, []))),
    ]
    resp = client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG, "project": "1.2"})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == 3
    for res in results:
        assert res["model_version"] == version
        assert 0.0 <= res["score"] <= 1.0
        for region in res["result"]:
            assert region["from_name"] == "label" and region["value"]["rectanglelabels"] == ["deposit"]
            assert 0 <= region["score"] <= 1 and len(region["meta"]["text"]) == 1
            assert region["meta"]["text"][0].count(" · ") == 2
    # Every crowd box of task 7 appears (kept, moved, or marked for deletion).
    crowd_ids = [r["id"] for r in results[0]["result"] if "crowd" in r["id"]]
    assert len([i for i in crowd_ids if i.startswith(("crowd0", "drop-crowd0"))]) == 1
    assert len([i for i in crowd_ids if i.startswith(("crowd1", "drop-crowd1"))]) == 1
    assert app.state.service.loaded_version == version
    assert client.get("/health").json()["model_version"] == version


def test_predict_leaves_crowd_boxes_of_a_label_the_model_lacks_unscored(model_client):
    # The model knows "deposit" only; "rock" was added to the config later. Scored, the rock box (nothing
    # predicted there) would be a confident background finding proposed for deletion.
    client, _, _ = model_client
    config = LABEL_CONFIG.replace("</RectangleLabels>", '<Label value="rock"/></RectangleLabels>')
    pixels = disc_image(96, [(30, 30, 10)], seed=3)
    crowd = [
        {"x": 20.0, "y": 20.0, "width": 20.0, "height": 20.0, "label": "deposit"},
        {"x": 70.0, "y": 70.0, "width": 15.0, "height": 15.0, "label": "rock"},
    ]
    resp = client.post(
        "/predict", json={"tasks": [make_task(7, data_uri(pixels), crowd)], "label_config": config}
    )
    assert resp.status_code == 200, resp.text
    regions = resp.json()["results"][0]["result"]
    assert [r["id"] for r in regions if r["id"].startswith(("crowd", "drop-crowd"))]  # the deposit box
    assert not [r for r in regions if "crowd1" in r["id"]]  # the rock box: neither kept nor dropped
    assert not [r for r in regions if r["value"]["rectanglelabels"] == ["rock"]]


@pytest.mark.parametrize(
    ("task", "cause", "message"),
    [
        (make_task(3, "PIXELS", [{"x": "a"}]), "task_input", "task 3: crowd_labels[0]: needs numeric"),
        (make_task(3, "PIXELS", {"x": 1}), "task_input", "task 3: crowd_labels: expected a list"),
        (
            make_task(3, "PIXELS", [{"x": 1, "y": 1, "width": 2, "height": 2, "label": "cat"}]),
            "task_input",
            "task 3: label 'cat'",
        ),
        (
            make_task(3, "PIXELS", [{"x": 1, "y": 1, "width": 2, "height": 2, "rotation": 45}]),
            "task_input",
            "task 3: crowd_labels[0]: rotated rectangles (rotation 45) are not supported",
        ),
        (
            make_task(3, "PIXELS", [{"x": 150, "y": 1, "width": 2, "height": 2}]),
            "task_input",
            "task 3: crowd_labels[0]: box x=150, y=1, width=2, height=2 (percent of the image) lies outside",
        ),
        (make_task(4, "data:image/png;base64,AAAA"), "image_undecodable", "task 4: image 'data:image/png"),
        (make_task(4, "data:image/png;base64,@@"), "image_undecodable", "invalid base64"),
        (make_task(5, "/data/local-files/?d=imgs/missing.png"), "image_missing", "task 5: image"),
        (make_task(5, "/data/local-files/?d=../../etc/passwd"), "image_reference", "outside"),
        (make_task(6, "/data/upload/1/x.png"), "image_reference", "LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY"),
        (make_task(6, "ftp://host/x.png"), "image_reference", "expected an http(s) URL"),
        (make_task(6, "http://127.0.0.1:9/x.png"), "image_unreachable", "cannot be fetched"),
        ({"id": 9, "data": {"img": "x"}}, "task_input", "task 9: data.image is missing"),
    ],
)
def test_predict_bad_task_fails_alone(model_client, task, cause, message):
    """A bad task between two good ones: HTTP 200, three entries in order, only the bad one an error."""
    client, _, _ = model_client
    if task["data"].get("image") == "PIXELS":
        task["data"]["image"] = data_uri(disc_image(32, []))
    good = [make_task(i, data_uri(disc_image(48, [(20, 20, 8)], seed=i))) for i in (1, 2)]
    resp = client.post("/predict", json={"tasks": [good[0], task, good[1]], "label_config": LABEL_CONFIG})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == 3
    assert "result" in results[0] and "result" in results[2] and "error" not in results[0]
    # No "result" key: Label Studio stores no prediction, so the task is retried by the next retrieval.
    assert "result" not in results[1] and message in results[1]["error"]
    assert results[1]["model_version"] == results[0]["model_version"]
    text = client.get("/metrics").text
    assert f'alc_task_failures_total{{cause="{cause}"}} 1.0' in text
    assert 'alc_tasks_scored_total{outcome="ok"} 2.0' in text
    if cause.startswith("image_"):
        assert f'alc_image_load_failures_total{{cause="{cause[6:]}"}} 1.0' in text


@pytest.mark.parametrize(
    ("label_config", "message"),
    [
        (None, "label_config: required"),
        ('<View><Image name="i" value="$image"/></View>', "RectangleLabels"),
    ],
)
def test_predict_bad_label_config_fails_the_request(model_client, label_config, message):
    client, _, _ = model_client
    task = make_task(3, data_uri(disc_image(32, [])))
    resp = client.post("/predict", json={"tasks": [task], "label_config": label_config})
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["detail"]
    assert client.get("/health").status_code == 200  # still serving


def test_predict_corrupt_file_names_task_and_url(model_client):
    client, _, root = model_client
    (root / "imgs" / "bad.png").write_bytes(b"\x89PNG not really")
    task = make_task(12, "/data/local-files/?d=imgs/bad.png")
    resp = client.post("/predict", json={"tasks": [task], "label_config": LABEL_CONFIG})
    assert resp.status_code == 200
    assert resp.json()["results"][0]["error"].startswith(
        "task 12: image '/data/local-files/?d=imgs/bad.png': not a readable"
    )


def test_predict_mixed_batch_streams_in_chunks(tmp_path, weights):
    """PREDICT_BATCH=4, 11 tasks, 3 bad: 8 predictions, 3 errors, in order; never more than 4 images held."""
    root = tmp_path / "files"
    (root / "imgs").mkdir(parents=True)
    settings = _settings(
        tmp_path, MODEL_WEIGHTS=str(weights), LOCAL_FILES_DOCUMENT_ROOT=str(root), PREDICT_BATCH="4"
    )
    app = create_app(settings)
    service = app.state.service
    held, peak = [0], [0]
    # Images per detector call, checked after the request: an assert in the fake would be swallowed (the
    # service retries a failed batch image by image).
    sizes: list[int] = []
    real_load, real_current = service.loader.load, service.current

    def counting_load(url, **kwargs):
        image = real_load(url, **kwargs)
        held[0] += 1
        peak[0] = max(peak[0], held[0])
        return image

    class CountingDetector:
        def __init__(self, inner):
            self.inner, self.names = inner, inner.names

        def predict(self, arrays, **kw):
            sizes.append(len(arrays))
            out = self.inner.predict(arrays, **kw)
            held[0] -= len(arrays)  # the service drops the chunk before loading the next one
            return out

    service.loader.load = counting_load
    service.current = lambda version=None: (CountingDetector(real_current()[0]), real_current()[1])
    bad = {2, 5, 9}
    tasks = []
    for i in range(11):
        if i in bad:
            tasks.append(make_task(i, f"/data/local-files/?d=imgs/missing{i}.png"))
        else:
            (root / "imgs" / f"{i}.png").write_bytes(png_bytes(disc_image(48, [(24, 24, 9)], seed=i)))
            tasks.append(make_task(i, f"/data/local-files/?d=imgs/{i}.png"))
    resp = TestClient(app).post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [("error" in r) for r in results] == [i in bad for i in range(11)]
    assert all(f"task {i}: image" in results[i]["error"] for i in bad)
    # Tasks 0-3, 4-7 and 8-10, less the bad ones: one batched call per chunk, none retried image by image.
    assert sizes == [3, 3, 2]
    assert 1 <= peak[0] <= 4


def test_inference_failure_of_one_image_fails_only_its_task(model_client):
    """The batched pass fails; image by image, only the image the detector chokes on fails."""
    client, app, _ = model_client
    service = app.state.service
    real, _ = service.current()

    class Choking:
        names = real.names

        def predict(self, arrays, **kw):
            if any(a.shape[0] == 40 for a in arrays):
                raise RuntimeError("cannot run on a 40 px image")
            return real.predict(arrays, **kw)

    service.current = lambda version=None: (Choking(), version or service.latest_version())
    tasks = [
        make_task(i, data_uri(disc_image(size, [(16, 16, 6)], seed=i))) for i, size in enumerate([48, 40, 56])
    ]
    resp = client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert ["error" in r for r in results] == [False, True, False]
    assert results[1]["error"] == "task 1: inference failed (RuntimeError: cannot run on a 40 px image)"
    assert 'alc_task_failures_total{cause="inference"} 1.0' in client.get("/metrics").text


def test_version_activation_rollback_and_pinning(model_client, weights, tmp_path):
    client, app, _ = model_client
    task = make_task(1, data_uri(disc_image(64, [(20, 20, 9)])))
    body = {"tasks": [task], "label_config": LABEL_CONFIG}
    first = client.post("/predict", json=body).json()["results"][0]["model_version"]
    second = app.state.service.registry.publish(weights, {"source": "test"}).version
    assert client.post("/predict", json=body).json()["results"][0]["model_version"] == second
    # A caller naming an existing older version gets it; an unknown name gets the active one.
    assert (
        client.post("/predict", json={**body, "model_version": first}).json()["results"][0]["model_version"]
        == first
    )
    assert (
        client.post("/predict", json={**body, "model_version": "v9999-x"}).json()["results"][0][
            "model_version"
        ]
        == second
    )
    # Rollback: the older version serves by default, /setup and /health say so (Label Studio follows /setup).
    resp = client.post(f"/versions/{first}/activate")
    assert resp.status_code == 200 and resp.json() == {"model_version": first, "previous": second}
    assert client.post("/predict", json=body).json()["results"][0]["model_version"] == first
    health = client.get("/health").json()
    assert health["serving_version"] == health["loaded_version"] == first
    assert client.post("/setup", json={"schema": LABEL_CONFIG}).json()["model_version"] == first
    assert client.get("/versions").json()["active"] == first
    assert f'alc_serving_version_info{{version="{first}"}} 1.0' in client.get("/metrics").text
    missing = client.post("/versions/v0042-20260101T000000/activate")
    assert missing.status_code == 404 and "no complete model version" in missing.json()["detail"]
    assert client.post("/versions/nonsense/activate").status_code == 404
    # A version whose weights do not load is never made the active one.
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    broken = app.state.service.registry.publish(garbage, {"source": "test"}).version
    app.state.service.registry.activate(first)  # publishing made it the latest; put the rollback back
    failed = client.post(f"/versions/{broken}/activate")
    assert failed.status_code == 500 and f"version {broken} could not be loaded" in failed.json()["detail"]
    assert client.get("/versions").json()["active"] == first


def test_metrics_exposition(model_client):
    client, _, _ = model_client
    client.get("/health")
    client.get("/nowhere")
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert 'alc_request_seconds_count{method="GET",route="/health"} 1.0' in text
    assert 'alc_requests_total{method="GET",route="other",status="404"} 1.0' in text
    for name in (
        "alc_training_runs_total 0.0",
        "alc_training_failures_total 0.0",
        "alc_training_seconds_total 0.0",
        'alc_queue_depth{queue="training"} 0.0',
        "alc_writeback_failures_total 0.0",
        "alc_serving_version_number 0.0",
    ):
        assert name in text, name


def test_model_version_switch_is_picked_up(model_client, weights):
    client, app, _ = model_client
    task = make_task(1, data_uri(disc_image(64, [(20, 20, 9)])))
    first = client.post("/predict", json={"tasks": [task], "label_config": LABEL_CONFIG}).json()
    newer = app.state.service.registry.publish(weights, {"source": "test"})
    second = client.post("/predict", json={"tasks": [task], "label_config": LABEL_CONFIG}).json()
    assert first["results"][0]["model_version"] != newer.version
    assert second["results"][0]["model_version"] == newer.version
    assert client.get("/versions").json()["versions"][-1] == newer.version


def test_data_uri_roundtrip_decodes_same_pixels():
    from PIL import Image

    from backend.images import ImageLoader

    pixels = disc_image(40, [(20, 20, 5)])
    loaded = ImageLoader().load(data_uri(pixels), task="1")
    assert loaded.pixels.shape == (40, 40, 3) and np.array_equal(loaded.pixels[..., 0], pixels)
    # An RGB JPEG (what a browser upload usually is): decoded as PIL decodes it, channels in RGB order, and
    # the fetched bytes kept for the export.
    rgb = np.dstack([pixels, 255 - pixels, np.full_like(pixels, 40)])
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    jpeg = buf.getvalue()
    colour = ImageLoader().load("data:image/jpeg;base64," + base64.b64encode(jpeg).decode(), task="2")
    reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert colour.pixels.shape == (40, 40, 3) and colour.pixels.dtype == np.uint8
    np.testing.assert_allclose(colour.pixels, reference, atol=2)
    assert colour.data == jpeg


def test_proposals_show_what_correction_applies(rng):
    # What annotators see is the plan correct_labels applies: boxes not marked for deletion, minus the
    # predictions only under review, are exactly the corrected labels, in the same order.
    from selection import correct_labels

    seen: set[str] = set()
    for _ in range(40):
        crowd = make_detections(random_boxes(int(rng.integers(0, 8)), rng, size=100))
        n = int(rng.integers(0, 8))
        k = min(n // 2, len(crowd))  # some predictions near crowd boxes, the rest anywhere
        near = crowd.xyxy[:k] + rng.uniform(-4, 4, (k, 1)).astype(np.float32)
        pred = make_detections(
            np.concatenate([near, random_boxes(n - k, rng, size=100)]), scores=rng.uniform(0, 1, n)
        )
        score = score_image(crowd, pred)
        props = proposals_from_score(crowd, pred, score)
        applied = [p for p in props if not p.drop and not (p.source == "model" and p.action == "review")]
        labels = correct_labels(crowd, pred, score).labels
        np.testing.assert_array_equal(np.array([p.xyxy for p in applied]).reshape(-1, 4), labels.xyxy)
        assert [p.class_id for p in applied] == labels.class_id.tolist()
        seen.update(p.region_id.split("-")[0 if p.drop else 1] for p in props)
    assert {"drop", "localization", "missed", "clean"} <= seen  # the case mix covered every kind of edit


def test_a_new_image_source_is_one_resolver(monkeypatch):
    from backend import images

    pixels = disc_image(24, [(12, 12, 4)])
    store = {"mem://a": pixels}

    def from_memory(loader, url, where, task):
        if url not in store:
            raise images.ImageLoadError(f"{where}: not in memory")
        return images.LoadedImage(np.repeat(store[url][:, :, None], 3, axis=2))

    loader = images.ImageLoader()
    with pytest.raises(images.ImageLoadError, match="task 1: image 'mem://a': expected an http"):
        loader.load("mem://a", task="1")
    monkeypatch.setitem(images.RESOLVERS, "mem", from_memory)
    assert loader.load("mem://a", task="1").width == 24
    with pytest.raises(images.ImageLoadError, match="task 2: image 'mem://b': not in memory"):
        loader.load("mem://b", task="2")


def test_training_items_use_the_label_map_backwards(tmp_path):
    from backend.images import ImageLoader
    from backend.training import training_items

    schema = LabelSchema("label", "image", "image", ("EDD", "background", "Rock"), (("deposit",), (), ()))

    def region(label: str, x: float) -> dict:
        value = {"x": x, "y": 10.0, "width": 20.0, "height": 20.0, "rectanglelabels": [label]}
        return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": value}

    annotation = {"id": 1, "result": [region("EDD", 0), region("background", 30), region("Rock", 60)]}
    tasks = [
        {"id": 4, "data": {"image": data_uri(disc_image(50, []))}, "annotations": [annotation]},
        {"id": 5, "data": {"image": data_uri(disc_image(50, []))}, "annotations": []},  # not expert-annotated
    ]
    common = {"schema": schema, "policy": ExpertPolicy(), "loader": ImageLoader(), "image_dir": tmp_path}
    expert_set = training_items(tasks, names=["rock", "deposit"], **common)
    items = expert_set.items
    assert expert_set.task_ids == [4] and expert_set.skipped == {}
    assert len(items) == 1 and items[0].path == tmp_path / "task4.png" and items[0].path.is_file()
    # EDD -> "deposit" (predicted_values) = class 1; Rock -> "rock" = class 0; background is no class.
    assert items[0].class_id.tolist() == [1, 0]
    assert items[0].xyxy.tolist() == [[0, 5, 10, 15], [30, 5, 40, 15]]
    with pytest.raises(
        ValueError, match=r"no label of the labelling config .* maps to a model class \['cat'"
    ):
        training_items(tasks, names=["cat", "dog"], **common)
