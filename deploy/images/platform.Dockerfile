# syntax=docker/dockerfile:1
# The platform image: the `ai-platform` package with its pinned dependencies. Dagster's user-code
# deployment serves the Definitions from it and K8sRunLauncher starts every run pod (fine-tunes on
# GPU nodes included) from the same image. Built from the repository root:
#   docker build -f deploy/images/platform.Dockerfile -t REGISTRY/aiplat-platform:TAG .
# --- build: a virtual environment with every pinned dependency; pip and wheels stay here --------
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/aiplat
ENV PATH=/opt/aiplat/bin:$PATH
# The lock (deploy/images/constraints.txt, written by scripts/image_constraints.py from the tested
# environment) first, so a code change does not reinstall the dependencies. torch is PyPI's
# default Linux wheel of the pinned version, which carries CUDA for the GPU run pods.
COPY deploy/images/constraints.txt /src/deploy/images/constraints.txt
COPY pyproject.toml README.md /src/
COPY aiplat /src/aiplat
COPY platform_defs /src/platform_defs
COPY assets /src/assets
COPY resources /src/resources
COPY sensors /src/sensors
RUN pip install --no-cache-dir --constraint deploy/images/constraints.txt /src \
 && pip uninstall --yes pip setuptools wheel

# --- final: the environment and the Dagster project files, no compiler, no pip, not root -------
FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="aiplat-platform" \
      org.opencontainers.image.description="ai-platform Dagster user code and run pods" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 aiplat \
 && useradd --system --uid 10001 --gid aiplat --home-dir /app --shell /usr/sbin/nologin aiplat
COPY --from=build /opt/aiplat /opt/aiplat
WORKDIR /app
COPY --chown=root:root workspace.yaml pyproject.toml /app/
COPY --chown=root:root feature_repo /app/feature_repo
ENV PATH=/opt/aiplat/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    AIPLAT_STATE_DIR=/var/lib/aiplat
RUN mkdir -p /opt/dagster/dagster_home /var/lib/aiplat \
 && chown aiplat:aiplat /opt/dagster/dagster_home /var/lib/aiplat
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s CMD ["dagster", "api", "grpc-health-check", "--port", "3030"]
EXPOSE 3030
# What the Helm chart's user-code deployment runs; run pods override the command.
CMD ["dagster", "api", "grpc", "--host", "0.0.0.0", "--port", "3030", "--module-name", "platform_defs.definitions"]
