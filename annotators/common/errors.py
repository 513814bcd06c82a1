"""Errors every annotator raises, so callers (CLI, nodes, tests) can catch one family."""
from __future__ import annotations

from pathlib import Path


class AnnotatorInputError(ValueError):
    """An input image, parameter or keypoint file that an annotator cannot work with.

    The message names the thing, what was expected and what was found.
    """


class MissingWeightsError(FileNotFoundError):
    """A neural annotator's weight file is not on disk.

    Nothing is ever downloaded at run time; the message says which file is missing and the
    folder it has to be put in (and, when known, where to get it).
    """

    def __init__(
        self,
        file_name: str,
        folder: str | Path,
        *,
        annotator: str | None = None,
        source: str | None = None,
    ) -> None:
        self.file_name = str(file_name)
        self.folder = str(folder)
        self.annotator = annotator
        self.source = source
        who = f"{annotator}: " if annotator else ""
        message = (
            f"{who}weight file {self.file_name!r} was not found in {self.folder!r}. "
            f"Put {self.file_name} in that folder (nothing is downloaded automatically)."
        )
        if source:
            message += f" It is published at {source}."
        super().__init__(message)
        # FileNotFoundError keeps `filename` for tools that read it.
        self.filename = str(Path(self.folder) / self.file_name)

    def __str__(self) -> str:  # OSError.__str__ would print errno-style text otherwise
        return str(self.args[0])

    def __reduce__(self):  # keep it picklable (multiprocessing, pytest-xdist)
        return (
            self.__class__,
            (self.file_name, self.folder),
            {"annotator": self.annotator, "source": self.source, "args": self.args},
        )


class MissingDependencyError(ImportError):
    """An optional package that one neural annotator needs is not installed.

    Only that annotator needs it (nothing else in the pack imports it); the message names the
    package and how to install it.
    """

    def __init__(self, package: str, *, annotator: str, install: str | None = None) -> None:
        self.package = package
        self.annotator = annotator
        how = install or f"pip install {package}"
        super().__init__(
            f"{annotator}: needs the Python package {package!r}, which is not installed. "
            f"Install it with `{how}` (only this annotator needs it).",
            name=package,
        )
