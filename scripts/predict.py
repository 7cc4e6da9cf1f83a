"""Segment image files with a trained checkpoint.

    python scripts/predict.py checkpoint=PATH input=photos/ [experiment=...] [eval=ss] [eval.amp=bf16]

``input`` is an image, a folder (searched recursively) or a list ``input=[a.jpg,b/]``.
The images are segmented with the ``eval`` protocol of the experiment (multi-scale +
flip by default; ``eval=ss`` for one pass) and written into the run directory
(``runs/<experiment>/predict_<date>``, or ``hydra.run.dir=...``): ``predictions/<id>.png``
(class indices as VOC palette PNGs), ``overlays/<id>.jpg`` (prediction colours over the
image), ``predictions.json`` (the settings, the class names, the file each id came from
and the size it was segmented at) and ``config.yaml``. A file named ``photo.jpg`` gets
the id ``photo``; inside a folder, the id keeps the sub-folders. A photo whose long side
is over ``max_side`` (2048; ``max_side=null`` for no limit) is segmented at a working
size with that long side and its classes resized back to its full resolution, in
bounded memory; 16-bit images are scaled to 8 bits. ``backend=onnxruntime`` runs the
network with onnxruntime (the run's ``export/model.onnx``, or an export made at the start).

Someone's folder of photos holds the odd file that is not one: hidden files and folders
(macOS's ``._IMG_0001.JPG`` sidecars, ``.thumbs/``) are left out, and a file that cannot
be decoded is named in a warning and skipped (listed under ``skipped`` in
predictions.json; ``stop_on_bad_file=true`` stops at it instead, status 2). A long run
must survive being stopped: predictions.json is rewritten as the run goes, Ctrl-C or
SIGTERM ends it with one line and status 130, and re-running with the same
``hydra.run.dir`` resumes it (with another checkpoint or protocol, replaces it).

The same program as ``emanet-predict`` (:func:`emanet.entry_points.predict_main`).
"""

from emanet.entry_points import predict_main

if __name__ == "__main__":
    predict_main()
