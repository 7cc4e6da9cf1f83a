# GPU image: docker build -t emanet . && docker run --gpus all --shm-size=16g \
#   -v /path/to/datasets:/data -v $PWD/runs:/workspace/emanet/runs emanet \
#   python train.py experiment=voc_emanet512
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV NO_ALBUMENTATIONS_UPDATE=1 \
    EMANET_DATA_ROOT=/data \
    PYTHONUNBUFFERED=1

WORKDIR /workspace/emanet
COPY pyproject.toml README.md LICENSE ./
COPY emanet ./emanet
RUN pip install --no-cache-dir -e .
COPY configs ./configs
COPY scripts ./scripts
# The benchmark scripts append their results to docs/benchmarks.{jsonl,md}.
COPY docs ./docs
COPY train.py evaluate.py ./

CMD ["python", "train.py"]
