# The ML backend (python -m backend) as a CUDA-capable image.
# torch==2.14.1 from PyPI is the CUDA 13.0 build (it pulls the nvidia-* runtime wheels), so a slim Python base
# is enough: the host only needs the NVIDIA driver (>= 580 for CUDA 13) and the NVIDIA Container Toolkit.
# Without a GPU the same image runs on CPU (DEVICE=auto falls back to cpu).
FROM python:3.11-slim-bookworm

# libGL/glib for opencv (ultralytics), curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    YOLO_CONFIG_DIR=/app/.config/ultralytics \
    YOLO_OFFLINE=1 \
    MPLCONFIGDIR=/app/.config/matplotlib \
    MODEL_DIR=/models \
    DEVICE=auto \
    LOG_LEVEL=INFO

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

# Only the runtime packages (tests/test_e2e_docker.py checks that every package the backend imports is here).
COPY backend/ backend/
COPY model/ model/
COPY selection/ selection/
COPY formats/ formats/
COPY metrics/ metrics/

RUN useradd --create-home --uid 1000 app \
    && mkdir -p /models /data "$YOLO_CONFIG_DIR" "$MPLCONFIGDIR" \
    && chown -R app:app /app /models /data
USER app

EXPOSE 9090
# With BASIC_AUTH_USER set, /health needs the credentials too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS ${BASIC_AUTH_USER:+-u "$BASIC_AUTH_USER:$BASIC_AUTH_PASS"} http://127.0.0.1:9090/health || exit 1
CMD ["python", "-m", "backend", "--host", "0.0.0.0", "--port", "9090"]
