# GPU path: NVIDIA's Merlin HugeCTR 23.08 image plus what the notebooks need (README: "Real
# MovieLens on a GPU"; container/README.md for the reasons and for what is checked without a GPU).
#   docker build -t mmlens-gpu .
#   docker run --gpus all --rm -it -p 8888:8888 -v $PWD/data:/data -e MMLENS_DATA_DIR=/data \
#       -e MMLENS_DATASET=ml-25m mmlens-gpu
#
# The base image (NVIDIA-Merlin/Merlin v23.08.00, docker/dockerfile.merlin + dockerfile.ctr):
# Ubuntu 22.04, Python 3.10, CUDA 12.1, HugeCTR 23.08, NVTabular 23.08, cuDF, dask 2023.1.1,
# pandas 1.5.2, numpy 1.22.4, transformers 4.27.1, Jupyter. No TensorFlow and no PyTorch: the
# merlin-tensorflow image has TF 2.12 (Keras 2) but not HugeCTR's training API, merlin-pytorch
# has torch but not HugeCTR, so no 23.08 image runs all the notebooks as it is.
#
# What this file adds, and why:
# - ONE CUDA framework, torch 2.5.1 built for CUDA 12.1: the image's CUDA, so torch's CUDA
#   runtime and cuBLAS wheels are the very versions of the image's own libraries (whichever of
#   the two a process loads first serves both), and it needs no newer driver than the image.
#   2.5.1 is the last torch with CUDA 12.1 builds; they live on PyTorch's CUDA 12.1 wheel index
#   (PyPI's torch 2.5.1 is the CUDA 12.4 build). torch runs the encoders of 03/04 and Keras.
# - Keras 3 on the torch backend (KERAS_BACKEND=torch below), not TensorFlow: the Keras code of
#   08/09 is Keras 3 (keras.ops), which TF 2.12 does not have, and a TensorFlow wheel would bring
#   a second CUDA/cuDNN stack beside torch's into the same site-packages.
# - requirements/gpu.txt, a lock: keras, transformers 4.33.3 (the newest that keeps the image's
#   tokenizers and huggingface-hub), the packaged all-MiniLM-L6-v2, matplotlib, nbmake and what
#   they pull in. The image's pins (numpy, pandas, pyarrow, dask, distributed, NVTabular,
#   merlin-core, ...: every package of requirements/container-image.txt that gpu.txt does not
#   replace) are held at the versions this image really has (container/image_pins.py), and the
#   build fails if any of them moved.
FROM nvcr.io/nvidia/merlin/merlin-hugectr:23.08

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu121
ARG TORCH_VERSION=2.5.1+cu121

WORKDIR /workspace/mmlens
COPY requirements/container-image.txt requirements/gpu.txt requirements/
COPY container/image_pins.py container/
RUN python container/image_pins.py requirements/container-image.txt requirements/gpu.txt \
        > /tmp/image-pins.txt \
 && echo "image pins held:" && cat /tmp/image-pins.txt \
 && pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" \
        -c /tmp/image-pins.txt "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir -r requirements/gpu.txt -c /tmp/image-pins.txt \
 && python container/image_pins.py requirements/container-image.txt requirements/gpu.txt \
        | diff /tmp/image-pins.txt - \
 && KERAS_BACKEND=torch python -c "import torch, keras, transformers; print('torch', \
        torch.__version__, 'CUDA', torch.version.cuda, '| keras', keras.__version__, \
        keras.backend.backend(), '| transformers', transformers.__version__)"

COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-cache-dir --no-deps -e .
COPY *.ipynb ./

ENV KERAS_BACKEND=torch \
    MMLENS_DATA_DIR=/data \
    MMLENS_DATASET=ml-25m \
    MMLENS_DEVICE=cuda
VOLUME ["/data"]
EXPOSE 8888
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--allow-root", "--no-browser", \
     "--notebook-dir=/workspace/mmlens"]
