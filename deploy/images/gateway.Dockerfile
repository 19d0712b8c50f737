# syntax=docker/dockerfile:1
# The metering gateway (`aiplat gateway serve`, deploy/serving/gateway.yaml): the platform package
# without its dependencies plus the few the gateway imports (gateway-requirements.txt, checked by
# tests/test_delivery_images.py against what the gateway really imports). No torch, no Dagster.
#   docker build -f deploy/images/gateway.Dockerfile -t REGISTRY/aiplat-gateway:TAG .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/aiplat
ENV PATH=/opt/aiplat/bin:$PATH
COPY deploy/images/gateway-requirements.txt /src/gateway-requirements.txt
RUN pip install --no-cache-dir --requirement /src/gateway-requirements.txt
COPY pyproject.toml README.md /src/
COPY aiplat /src/aiplat
COPY platform_defs /src/platform_defs
COPY assets /src/assets
COPY resources /src/resources
COPY sensors /src/sensors
RUN pip install --no-cache-dir --no-deps /src \
 && pip uninstall --yes pip setuptools wheel

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="aiplat-gateway" \
      org.opencontainers.image.description="ai-platform metering gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 aiplat \
 && useradd --system --uid 10001 --gid aiplat --no-create-home --shell /usr/sbin/nologin aiplat
COPY --from=build /opt/aiplat /opt/aiplat
ENV PATH=/opt/aiplat/bin:$PATH PYTHONUNBUFFERED=1 AIPLAT_STATE_DIR=/var/lib/aiplat
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/health', timeout=2)"]
EXPOSE 4000
ENTRYPOINT ["aiplat", "gateway", "serve"]
CMD ["--host", "0.0.0.0", "--port", "4000"]
