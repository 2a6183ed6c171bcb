# The OpenAI-compatible gateway: a small CPU image, no torch, no Triton.
# Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t tritonchat-gateway:0.1.0 .
# Configure with TRITONCHAT_GATEWAY_* variables (gateway/settings.py), for example
#   TRITONCHAT_GATEWAY_TRITON_URLS='["triton-a:8001","triton-b:8001"]'
#   TRITONCHAT_GATEWAY_TRITON_URLS='["dns:///triton-headless:8001"]'   (Kubernetes)
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRITONCHAT_GATEWAY_HOST=0.0.0.0 \
    TRITONCHAT_GATEWAY_PORT=9000

WORKDIR /app
COPY docker/gateway-requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir -r /app/requirements.txt
COPY chatllm_wire/ /app/chatllm_wire/
COPY gateway/ /app/gateway/

USER 10001:10001
EXPOSE 9000
# /health is 200 while at least one Triton endpoint is ready.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/health', timeout=2)"]
CMD ["python", "-m", "gateway"]
