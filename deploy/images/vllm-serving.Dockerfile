# syntax=docker/dockerfile:1
# vLLM serving: the official vLLM OpenAI-server image, unchanged, plus the model verification
# step its pods run as an init container before vLLM may load a model:
#   aiplat-verify-model DIR --public-key PEM --model-name M --version V
#   (= python -m aiplat.security.verify_folder, the platform's signature and promotion-attestation
#   check that the serving pods' verify-model init container runs)
# The verifier lives in /opt/aiplat-verify with its own few dependencies (verify-requirements.txt)
# on PYTHONPATH of that one command, so vLLM's own torch/transformers pins are never touched.
#   docker build -f deploy/images/vllm-serving.Dockerfile -t REGISTRY/aiplat-vllm-serving:TAG .
# Built on the vLLM image itself so the installed files match its python3 exactly.
FROM vllm/vllm-openai:v0.32.0 AS verify-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY deploy/images/verify-requirements.txt /src/verify-requirements.txt
RUN python3 -m pip install --no-cache-dir --target /opt/aiplat-verify --requirement /src/verify-requirements.txt
COPY pyproject.toml README.md /src/
COPY aiplat /src/aiplat
COPY platform_defs /src/platform_defs
COPY assets /src/assets
COPY resources /src/resources
COPY sensors /src/sensors
RUN python3 -m pip install --no-cache-dir --no-deps --target /opt/aiplat-verify /src

FROM vllm/vllm-openai:v0.32.0
LABEL org.opencontainers.image.title="aiplat-vllm-serving" \
      org.opencontainers.image.description="vLLM OpenAI server with the ai-platform model verification step" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=verify-build /opt/aiplat-verify /opt/aiplat-verify
COPY --chmod=0755 deploy/images/aiplat-verify-model /usr/local/bin/aiplat-verify-model
RUN groupadd --system --gid 10001 vllm \
 && useradd --system --uid 10001 --gid vllm --create-home --home-dir /home/vllm --shell /usr/sbin/nologin vllm
ENV HF_HOME=/home/vllm/.cache/huggingface VLLM_NO_USAGE_STATS=1
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=3s --start-period=600s CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
EXPOSE 8000
# The upstream image's entry point: `vllm serve`-compatible arguments follow in the manifest.
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
