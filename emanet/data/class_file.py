"""``classes.txt``: the classes of a dataset of one's own (``dataset=folder``), one per line.

Line k names class k. A line may end with the class's colour, three integers 0-255::

    background 0 0 0
    traffic light 250 170 30
    person

Names may hold spaces (the colour is the last three numbers). A class without a colour is
drawn in the PASCAL VOC colour of its index. The colours are those of the RGB masks a
dataset may come with (:mod:`emanet.data.folder` converts them to index PNGs), and those
predictions, confusion matrices and per-class figures are drawn in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from emanet.errors import DatasetError
from emanet.io import atomic_write

CLASSES_FILE = "classes.txt"
MAX_CLASSES = 255  # label PNGs are 8-bit and 255 is the ignore index


@dataclass(frozen=True)
class ClassList:
    """Names in label order, and the colour each line gave (None where it gave none)."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int] | None, ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_colors(self) -> bool:
        return any(color is not None for color in self.colors)

    def display_colors(self) -> list[list[int]]:
        """Every class's colour: its own, or the VOC colour of its index."""
        from emanet.data.palette import color_map

        voc = color_map()
        return [list(color) if color is not None else voc[index].tolist() for index, color in enumerate(self.colors)]


def parse_line(line: str) -> tuple[str, tuple[int, int, int] | None]:
    """``name`` or ``name r g b`` -> (name, colour or None); ValueError saying what is wrong."""
    words = line.split()
    numbers = words[-3:]
    if len(words) >= 4 and all(word.lstrip("-").isdigit() for word in numbers):
        color = tuple(int(word) for word in numbers)
        if not all(0 <= value <= 255 for value in color):
            raise ValueError(f"colour {' '.join(numbers)} is not three values 0-255")
        return " ".join(words[:-3]), color  # type: ignore[return-value]
    return " ".join(words), None


def read_class_file(path: str | Path) -> ClassList:
    """The classes listed in ``path``; DatasetError naming the file and line for a bad one."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: no class list; write one class name a line (line k is class k, optionally "
            "followed by its colour r g b), or let `python scripts/prepare_dataset.py coco_json|cvat_mask` write it "
            "(see data/README.md)"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the class list ({error})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names, colors = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DatasetError(f"{path}:{number}: empty line; line k names class k, so every line must name one")
        try:
            name, color = parse_line(line)
        except ValueError as error:
            raise DatasetError(f"{path}:{number}: {error}") from None
        if not name:
            raise DatasetError(f"{path}:{number}: a colour without a class name")
        if name in names:
            raise DatasetError(f"{path}:{number}: class {name!r} is already line {names.index(name) + 1}")
        if color is not None and color in colors:
            other = names[colors.index(color)]
            raise DatasetError(f"{path}:{number}: colour {' '.join(map(str, color))} is already that of {other!r}")
        names.append(name)
        colors.append(color)
    if not names:
        raise DatasetError(f"{path}: the class list is empty; write one class name a line")
    if len(names) > MAX_CLASSES:
        raise DatasetError(f"{path}: {len(names)} classes; label PNGs hold at most {MAX_CLASSES} (255 is ignored)")
    return ClassList(tuple(names), tuple(colors))


def write_class_file(
    path: str | Path, names: Sequence[str], colors: Sequence[Sequence[int] | None] | None = None
) -> None:
    """Write ``classes.txt`` atomically: one ``name`` (``name r g b`` with a colour) a line."""
    colors = colors or [None] * len(names)
    lines = []
    for name, color in zip(names, colors, strict=True):
        name = " ".join(str(name).split())  # a line holds one class: no newlines, single spaces
        lines.append(name if color is None else f"{name} {' '.join(str(int(value)) for value in color)}")
    text = "".join(f"{line}\n" for line in lines)
    atomic_write(Path(path), lambda temp: Path(temp).write_text(text, encoding="utf-8"))

