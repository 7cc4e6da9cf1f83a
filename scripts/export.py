"""Export a trained model to ONNX, checked against PyTorch with onnxruntime.

    python scripts/export.py checkpoint=RUN [eval_stages=T] [output=PATH]

Writes RUN/export/model.onnx and RUN/export/export.json (emanet.export says more; the
same program as ``emanet-export``).
"""

from emanet.export import main

if __name__ == "__main__":
    main()
