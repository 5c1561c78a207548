# GPU path: NVIDIA's Merlin HugeCTR container (HugeCTR, NVTabular, cuDF, Python 3.10) plus mmlens.
#   docker build -t mmlens-gpu .
#   docker run --gpus all --rm -it -p 8888:8888 -v $PWD/data:/data -e MMLENS_DATA_DIR=/data \
#       -e MMLENS_DATASET=ml-25m mmlens-gpu
FROM nvcr.io/nvidia/merlin/merlin-hugectr:23.08

WORKDIR /workspace/mmlens
COPY requirements/gpu.txt requirements/gpu.txt
RUN pip install --no-cache-dir -r requirements/gpu.txt
COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-cache-dir --no-deps -e .
COPY *.ipynb ./

ENV MMLENS_DATA_DIR=/data \
    MMLENS_DATASET=ml-25m \
    MMLENS_DEVICE=cuda
VOLUME ["/data"]
EXPOSE 8888
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--allow-root", "--no-browser", \
     "--notebook-dir=/workspace/mmlens"]
