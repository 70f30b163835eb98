#!/usr/bin/env bash
# docs/USERS.md "Your own project, in order", followed in one go with a real Label Studio 1.23.2:
# a COCO dataset with crowd labels (the simulator's) -> ingest -> bootstrap -> bulk score -> sort by
# discrepancy -> experts annotate -> retrain through the webhook -> export -> label F1 against the truth.
#
#   make setup setup-ls              # once: .venv (backend) and .venv-ls (Label Studio)
#   bash docs/walkthrough.sh         # about 3 minutes on 2 CPU cores; everything lands in .work/walkthrough
#   bash docs/walkthrough.sh 2>&1 | sed -u 's/\r$//; s/.*\r//' > docs/results/walkthrough.txt   # the recorded run
#   (sed keeps the last state of each progress bar)
#
# Each command is printed (`$ ...`, variables other than the API key expanded) and then run exactly as
# printed, followed by its output. Commands that run from the repository root, as USERS.md's do. The one
# thing a person does in the browser, annotating, is simulated: an expert user's annotations are submitted
# through Label Studio's API, the simulator's expert boxes being the answers. Label Studio and the backend
# are stopped on exit, also after an error or Ctrl-C.
#
# Settings (environment): WALKTHROUGH_DIR (.work/walkthrough, emptied at start), N_TRAIN (80 images),
# BOOTSTRAP_EPOCHS (60), N_EXPERT (10: tasks the expert annotates = TRAIN_MIN_ANNOTATIONS), N_TEST (60 test
# images, never imported: the detectors are measured on them), LS_PORT and BACKEND_PORT (default: 8080 and
# 9090, or the next free port).
set -euo pipefail

cd "$(dirname "$0")/.."
W=${WALKTHROUGH_DIR:-.work/walkthrough}
N_TRAIN=${N_TRAIN:-80}
BOOTSTRAP_EPOCHS=${BOOTSTRAP_EPOCHS:-60}
N_EXPERT=${N_EXPERT:-10}
N_TEST=${N_TEST:-60}
for exe in .venv/bin/python .venv-ls/bin/label-studio; do
    [[ -x $exe ]] || { echo "error: $exe is missing: run make setup setup-ls first" >&2; exit 2; }
done
for tool in curl jq setsid; do
    command -v "$tool" >/dev/null || { echo "error: $tool is needed" >&2; exit 2; }
done
[[ $W == /* ]] && { echo "error: WALKTHROUGH_DIR: expected a path relative to the repository" >&2; exit 2; }

START=$SECONDS
STEP_NAMES=()
STEP_SECONDS=()
STEP_START=$SECONDS
CURRENT_STEP=""

cmd() {  # print a command line, then run exactly it
    printf '$ %s\n' "$1"
    eval "$1"
}

note() { printf '# %s\n' "$*"; }

step() {
    end_step
    CURRENT_STEP=$1
    STEP_START=$SECONDS
    printf '\n=== %s  (%s UTC)\n' "$1" "$(date -u +%H:%M:%S)"
}

end_step() {
    if [[ -n $CURRENT_STEP ]]; then
        STEP_NAMES+=("$CURRENT_STEP")
        STEP_SECONDS+=($((SECONDS - STEP_START)))
        printf -- '--- %d s\n' $((SECONDS - STEP_START))
    fi
    CURRENT_STEP=""
}

free_port() {  # $1: the preferred port; prints it or the next free one
    .venv/bin/python - "$1" <<'EOF'
import socket, sys
for port in [*range(int(sys.argv[1]), int(sys.argv[1]) + 50), 0]:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
EOF
}

wait_up() {  # $1 name, $2 health URL, $3 pid, $4 timeout in s, $5 log: until /health says UP
    local deadline=$((SECONDS + $4)) start=$SECONDS
    until curl -sf "$2" 2>/dev/null | grep -q '"status" *: *"UP"'; do
        if ! kill -0 "$3" 2>/dev/null; then
            echo "error: $1 exited; the end of $5:" >&2
            tail -30 "$5" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "error: $1 not up after $4 s; the end of $5:" >&2
            tail -30 "$5" >&2
            exit 1
        fi
        sleep 1
    done
    note "$1 up after $((SECONDS - start)) s"
}

LS_PID=""
BACKEND_PID=""
stop_group() {  # $1: pid of a session leader started with setsid; TERM its group, KILL it after 15 s
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $BACKEND_PID ]]; then stop_group "$BACKEND_PID"; fi
    if [[ -n $LS_PID ]]; then stop_group "$LS_PID"; fi
    if [[ -n $BACKEND_PID$LS_PID ]]; then echo "(Label Studio and the backend stopped)"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck disable=SC2016
AUTH='-H "Authorization: Token $LABEL_STUDIO_API_KEY"'  # expanded when a command runs, never printed
JSON="-H 'Content-Type: application/json'"

# -------------------------------------------------------------------------------------------------- data
step "0. the lab's data: images with crowd labels in COCO, expert labels for 5 of them (here: the simulator's)"
rm -rf "$W"
mkdir -p "$W"
export YOLO_CONFIG_DIR=$PWD/$W/yolo-config MPLCONFIGDIR=$PWD/$W/mpl  # as the Makefile does: nothing writes to ~
cmd "source .venv/bin/activate"
cmd "python -m synth --preset tiny --seed 7 --n-train $N_TRAIN --n-test $N_TEST --out $W/data/tem --no-contact-sheet"
note "the simulator's COCO files hold every image's crowd (crowd_train.json) and expert (expert_train.json) boxes;"
note "the expert boxes of the first 5 images stand for a lab's already reviewed images:"
cmd "jq '(.images |= .[:5]) | [.images[].id] as \$ids | .annotations |= map(select(.image_id as \$i | \$ids | index(\$i)))' $W/data/tem/coco/expert_train.json > $W/data/tem/coco/expert_seed.json"
cmd "ls $W/data/tem/images/train | wc -l; ls $W/data/tem/coco"

# ----------------------------------------------------------------------------------------- Label Studio
step "1. start Label Studio 1.23.2, serving local files under $W/data"
LS_PORT=${LS_PORT:-$(free_port 8080)}
TOKEN=$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(20))')
PASSWORD=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(12))')
note "the first start creates this user and its API token (here generated; pick your own)"
printf '$ %s\n' "export LABEL_STUDIO_USERNAME=admin@lab.org LABEL_STUDIO_PASSWORD=<a password> LABEL_STUDIO_USER_TOKEN=<40 hex digits> LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true"
export LABEL_STUDIO_USERNAME=admin@lab.org LABEL_STUDIO_PASSWORD=$PASSWORD LABEL_STUDIO_USER_TOKEN=$TOKEN
export LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true
cmd "export LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT=$PWD/$W/data SSRF_PROTECTION_ENABLED=false ML_BLOCK_LOCAL_IP=false LABEL_STUDIO_BASE_DATA_DIR=$PWD/$W/labelstudio"
# setsid: its own process group, so that stopping it stops its workers too; XDG folders not in ~.
cmd "XDG_CONFIG_HOME=$PWD/$W/labelstudio/xdg XDG_CACHE_HOME=$PWD/$W/labelstudio/xdg setsid .venv-ls/bin/label-studio start --no-browser --port $LS_PORT > $W/label-studio.log 2>&1 &"
LS_PID=$!
wait_up "Label Studio" "http://127.0.0.1:$LS_PORT/health" "$LS_PID" 300 "$W/label-studio.log"
cmd "curl -s http://127.0.0.1:$LS_PORT/api/version | jq -c '{release}'"
note "the backend and the commands below read these:"
printf '$ %s\n' "export LABEL_STUDIO_URL=http://127.0.0.1:$LS_PORT LABEL_STUDIO_API_KEY=\$LABEL_STUDIO_USER_TOKEN"
export LABEL_STUDIO_URL=http://127.0.0.1:$LS_PORT LABEL_STUDIO_API_KEY=$TOKEN

# ----------------------------------------------------------------------------------------------- ingest
step "2. import the images, the crowd labels and the expert labels (python -m backend.ingest)"
cmd "python -m backend.ingest --title 'TEM deposits' --images $W/data/tem/images/train --crowd $W/data/tem/coco/crowd_train.json --crowd-format coco --expert $W/data/tem/coco/expert_seed.json | tee $W/ingest.out"
PROJECT=$(sed -n 's/^project \([0-9][0-9]*\) .*/\1/p' "$W/ingest.out" | head -1)
[[ -n $PROJECT ]] || { echo "error: no project id in the importer's output" >&2; exit 1; }

# -------------------------------------------------------------------------------------------- bootstrap
step "3. train a first model on the crowd labels (python -m backend.bootstrap)"
cmd "export MODEL_DIR=$PWD/$W/models"
cmd "python -m backend.bootstrap --project $PROJECT --epochs $BOOTSTRAP_EPOCHS"
FIRST_VERSION=$(cat "$W/models/LATEST")

# ------------------------------------------------------------------------------------ backend + connect
step "4. start the backend and connect it to the project (Settings -> Model -> Connect Model)"
BACKEND_PORT=${BACKEND_PORT:-$(free_port 9090)}
BACKEND=http://127.0.0.1:$BACKEND_PORT
note "train after $N_EXPERT expert annotations (the default is 5)"
cmd "export TRAIN_MIN_ANNOTATIONS=$N_EXPERT"
note "the benchmark's retraining recipe: the expert images repeated to the first model's $N_TRAIN images per epoch"
cmd "export TRAIN_EPOCH_IMAGES=$N_TRAIN"
cmd "setsid python -m backend --host 127.0.0.1 --port $BACKEND_PORT > $W/backend.log 2>&1 &"
BACKEND_PID=$!
wait_up "the backend" "$BACKEND/health" "$BACKEND_PID" 180 "$W/backend.log"
cmd "curl -s $BACKEND/health | jq -c '{status, serving_version, training: .training.state}'"
note "Connect Model, as an API call; Label Studio registers the backend's /webhook with it:"
cmd "curl -s -X POST \$LABEL_STUDIO_URL/api/ml $AUTH $JSON -d '{\"project\": $PROJECT, \"url\": \"$BACKEND\", \"title\": \"active label cleaning\", \"is_interactive\": false}' | jq -c '{id, url, state}'"
cmd "curl -s \"\$LABEL_STUDIO_URL/api/webhooks?project=$PROJECT\" $AUTH | jq -c '.[] | {url, send_for_all_actions, is_active}'"

# ------------------------------------------------------------------------------------------------ score
step "5. score every task (python -m backend.score)"
cmd "python -m backend.score --project $PROJECT --backend $BACKEND"

# ------------------------------------------------------------------------------------ sort, top 5 tasks
QUERY='{"filters": {"conjunction": "and", "items": [{"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]}, "ordering": ["-tasks:data.discrepancy"]}'
TOP5="curl -s -G \"\$LABEL_STUDIO_URL/api/tasks?project=$PROJECT&page_size=5\" $AUTH --data-urlencode 'query=$QUERY' | jq -r '.tasks[] | [.id, .data.image_id, .data.discrepancy, .data.noise_grade, .data.noise_types, .data.model_version] | @tsv'"
step "6. the most suspicious tasks first (Data Manager: Order by discrepancy, descending; here its API)"
note "the tasks without an annotation (filter Annotations = 0), most suspicious first:"
note "task, image, discrepancy, grade, noise types, model version"
cmd "$TOP5"

# ------------------------------------------------------------------------------------- experts annotate
step "7. an expert annotates the $N_EXPERT most suspicious tasks (simulated: the simulator's expert boxes)"
note "an expert user (Organization -> invite in the UI; here the users API):"
# shellcheck disable=SC2034  # used by the command below, through cmd's eval
EXPERT_PASSWORD=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(12))')
cmd "curl -s -X POST \$LABEL_STUDIO_URL/api/users/ $AUTH $JSON -d '{\"username\": \"expert\", \"email\": \"expert@lab.org\", \"password\": \"'\$EXPERT_PASSWORD'\"}' | tee $W/expert-user.json | jq -c '{id, email}'"
EXPERT_ID=$(jq -r .id "$W/expert-user.json")
cat >"$W/expert.py" <<'EOF'
"""The expert, simulated: opens the tasks in the sorted order and submits the simulator's expert boxes."""

import json
import os
import sys
from pathlib import Path

import requests

from formats.coco import from_coco
from formats.labelstudio import detections_to_regions

url, key = os.environ["LABEL_STUDIO_URL"], os.environ["LABEL_STUDIO_API_KEY"]
project, n, expert_id, truth_path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
headers = {"Authorization": f"Token {key}"}
truth = {Path(im.file_name).stem: im for im in from_coco(json.loads(Path(truth_path).read_text())).values()}
query = sys.argv[5]  # the Data Manager query above: no annotation yet, most suspicious first
resp = requests.get(
    f"{url}/api/tasks",
    params={"project": project, "fields": "all", "page_size": 1000, "query": query},
    headers=headers,
    timeout=60,
)
resp.raise_for_status()
todo = [t for t in resp.json()["tasks"] if not (t.get("annotations") or t.get("total_annotations"))][:n]
for task in todo:
    image = truth[Path(task["data"]["image_id"]).name]
    result = detections_to_regions(
        image.detections, width=image.width, height=image.height,
        labels=["deposit"], from_name="label", to_name="image", id_prefix="e",
    )
    # completed_by: the annotation is the expert's, as when the expert submits it in the browser.
    resp = requests.post(
        f"{url}/api/tasks/{task['id']}/annotations/",
        json={"result": result, "completed_by": expert_id},
        headers=headers,
        timeout=300,
    )
    resp.raise_for_status()
    print(
        f"task {task['id']} ({task['data']['image_id']}, discrepancy {task['data']['discrepancy']}): "
        f"{len(task['data']['crowd_labels'])} crowd boxes -> {len(result)} expert boxes, "
        f"annotation {resp.json()['id']} by user {expert_id}"
    )
EOF
note "$W/expert.py is written by docs/walkthrough.sh: it submits, in the order above, the true boxes"
cmd "PYTHONPATH=. python $W/expert.py $PROJECT $N_EXPERT $EXPERT_ID $W/data/tem/coco/expert_train.json '$QUERY'"

# ---------------------------------------------------------------------------------- retrain via webhook
step "8. the webhooks start a training: wait for the new version and its re-scoring (GET /health)"
cmd "curl -s $BACKEND/health | jq -c '.training'"
note "polling every 5 s until training.last_version is a new version and the training is idle:"
deadline=$((SECONDS + 1500))
last=""
while :; do
    health=$(curl -sf "$BACKEND/health")
    line=$(jq -c '.training | {state, kind, progress, pending, last_version, last_error}' <<<"$health")
    [[ $line != "$last" ]] && printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$line"
    last=$line
    version=$(jq -r '.training.last_version // empty' <<<"$health")
    state=$(jq -r '.training.state' <<<"$health")
    pending=$(jq -r '.training.pending' <<<"$health")
    [[ -n $version && $version != "$FIRST_VERSION" && $state == idle && $pending == false ]] && break
    if [[ $state == failed ]]; then echo "error: the training failed (see $W/backend.log)" >&2; exit 1; fi
    if ((SECONDS > deadline)); then echo "error: no new version after 25 min" >&2; exit 1; fi
    sleep 5
done
cmd "curl -s $BACKEND/versions | jq -c ."
cmd "grep -E 'training a|calibrat|now serving|re-scored|bulk scor' $W/backend.log | cut -c 12-"
note "the order after the re-scoring by the new version (the same query: tasks without an annotation)"
cmd "$TOP5"

# ----------------------------------------------------------------------------------------------- export
step "9. export the cleaned dataset and train the final detector on it (python -m backend.export --train-final)"
cmd "python -m backend.export --project $PROJECT --format coco --out $W/export-coco --train-final"
cmd "head -4 $W/export-coco/review.csv"
cmd "jq -c '.model, .counts' $W/export-coco/manifest.json"

# ---------------------------------------------------------------------------------------------- quality
step "10. crowd labels and the export against the simulator's true boxes (python -m metrics.f1)"
cmd "python -m metrics.f1 --truth $W/data/tem/coco/expert_train.json --manifest $W/export-coco/manifest.json $W/data/tem/coco/crowd_train.json $W/export-coco/annotations.json"

# ------------------------------------------------------------------------------------------- detectors
step "11. the three detectors on $N_TEST test images no one labelled in Label Studio (python -m metrics.ap)"
note "the first model (crowd labels), the webhook's retrained one (expert tasks), the final one (the export)"
cmd "python -m metrics.ap --truth $W/data/tem/coco/expert_test.json --images $W/data/tem $W/models/versions/$FIRST_VERSION/weights.pt $W/models/versions/\$(cat $W/models/LATEST)/weights.pt $W/export-coco/model/versions/*/weights.pt"

end_step
printf '\n=== wall time per step\n'
for i in "${!STEP_NAMES[@]}"; do printf '%5d s  %s\n' "${STEP_SECONDS[$i]}" "${STEP_NAMES[$i]}"; done
printf '%5d s  in all (%s UTC, %s CPU cores)\n' $((SECONDS - START)) "$(date -u '+%Y-%m-%d %H:%M')" "$(nproc)"
