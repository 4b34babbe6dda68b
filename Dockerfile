# The image the TorchX components run by default (torchx_components.umec.IMAGE): torch,
# FBGEMM, TorchRec 1.8.0 and this package, on CPU by default. Build from the repository root:
#
#   docker build -t umec-torchrec:latest .
#
# CUDA (nccl ranks): a CUDA base image, torch from the matching PyTorch index and the CUDA
# FBGEMM build (FBGEMM and TorchRec share version numbers; FBGEMM 1.8 pairs with torch 2.13):
#
#   docker build -t umec-torchrec:cuda --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 --build-arg FBGEMM=fbgemm-gpu .
#
# (the CUDA base image must provide python3.11 and pip). Not built in CI.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG FBGEMM=fbgemm-gpu-cpu

ENV PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch from the PyTorch index of the build (cpu or cuXXX); then FBGEMM of the same release
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} torch==2.13.0 \
 && pip install --no-cache-dir ${FBGEMM}==1.8.0
# torchrec without its declared dependency on the CUDA fbgemm-gpu (it would replace fbgemm-gpu-cpu),
# then its other requirements, the TorchX launcher and the plots
RUN pip install --no-cache-dir --no-deps torchrec==1.8.0 \
 && pip install --no-cache-dir tensordict "torchmetrics==1.0.3" tqdm pyre-extensions iopath torchx==0.7.0 matplotlib

WORKDIR /workspace
COPY setup.cfg pyproject.toml README.md LICENSE ./
COPY umec_torchrec umec_torchrec
COPY torchx_components torchx_components
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import torchrec, fbgemm_gpu, umec_torchrec, torchx_components.umec" \
 && umec --version

CMD ["umec", "--help"]
