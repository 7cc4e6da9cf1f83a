"""Checks the figure tests share: what a written figure is, and that nothing is cut off."""

from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image


def texts_inside(figure: Figure) -> bool:
    """Whether everything the drawn figure shows (titles, labels, tick labels, values) lies
    on its canvas."""
    figure.canvas.draw()
    shown = figure.get_tightbbox(figure.canvas.get_renderer())  # in inches
    width, height = figure.get_size_inches()
    tolerance = 0.01
    return shown.x0 >= -tolerance and shown.y0 >= -tolerance and shown.x1 <= width + tolerance \
        and shown.y1 <= height + tolerance


def written_png_and_pdf(stem: Path, paths: list[Path] | None = None) -> tuple[int, int]:
    """Check that STEM.png and STEM.pdf (the ``paths`` a writer returned, if given) are a
    decodable PNG and a PDF, with no temporary left beside them; returns the PNG's size."""
    if paths is not None:
        assert paths == [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    assert stem.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    with Image.open(stem.with_suffix(".png")) as image:
        image.load()
        assert image.format == "PNG"
        size = image.size
    assert not [path.name for path in stem.parent.iterdir() if path.name.startswith(".")]
    return size
