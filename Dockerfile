# GPU image: docker build -t emanet . && docker run --gpus all --shm-size=16g \
#   -v /path/to/datasets:/datasets:ro -e EMANET_DATA_ROOT=/datasets \
#   -v $PWD/runs:/workspace/emanet/runs emanet python train.py experiment=voc_emanet512
# Tests: docker run --rm emanet pytest
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# No EMANET_DATA_ROOT by default: the data root is then data/ in the working directory,
# the container's own, so the default command (the demo, which generates its dataset)
# never writes into a mounted datasets folder; real datasets are mounted read-only and
# named with -e EMANET_DATA_ROOT.
ENV NO_ALBUMENTATIONS_UPDATE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /workspace/emanet
COPY pyproject.toml README.md LICENSE ./
COPY emanet ./emanet
COPY hydra_plugins ./hydra_plugins
# With the dev extras (pytest, ruff) the tests run in the image.
RUN pip install --no-cache-dir -e ".[dev]"
# The configs are part of the package (emanet/configs); configs/ is a link to them in the
# checkout, which COPY follows, so the paths configs/experiment/... hold in the image too.
COPY configs ./configs
COPY scripts ./scripts
# The benchmark scripts append their results to docs/benchmarks.{jsonl,md}.
COPY docs ./docs
COPY train.py evaluate.py hubconf.py ./
# The tests, and the files some of them check.
COPY tests ./tests
COPY Dockerfile .dockerignore ./

CMD ["python", "train.py"]
