# covseg on CPU: built from this repository's own files.
#   docker build -t covseg .
#   docker run --rm -v "$PWD/data:/data" covseg predict -m /data/run -i /data/scans -o /data/pred
# CUDA: see "Deploy" in README.md (same file with a CUDA base image and PyPI's CUDA build of torch).
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# TORCH_INDEX: the CPU wheel index keeps the image small; set it empty for PyPI's CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /opt/covseg
COPY pyproject.toml README.md ./
COPY src ./src
RUN if [ -n "$TORCH_INDEX" ]; then pip install torch==2.13.0 --index-url "$TORCH_INDEX"; fi \
 && pip install . \
 && covseg --version

RUN useradd --create-home covseg
USER covseg
WORKDIR /data
ENTRYPOINT ["covseg"]
CMD ["--help"]
