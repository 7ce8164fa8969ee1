"""Results storage: a local folder, or a prefix on S3-compatible object storage.

Why a local mirror for S3: Ray Tune writes trials straight to the bucket (through pyarrow's S3
filesystem, so every node of a cluster reaches the same place), but FERBench's own files and the
report are plain files read by pandas and matplotlib. The driver therefore keeps a mirror of the
experiment under ``$FERBENCH_CACHE_DIR/s3/<bucket>/<prefix>/<name>``: it writes the study's inputs
there and uploads them before any trial starts, downloads what the trials wrote (results and
checkpoint histories, not the weights) to render the report, and uploads the report next to
the trials. The bucket is the record; the mirror can be deleted at any time.

The endpoint of a non-AWS server (MinIO, Ceph, a local test server) comes from
``run.s3_endpoint`` or the standard ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` variables;
credentials from the usual AWS variables, profiles or instance roles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ferbench.cache_dirs import cache_dir

SKIPPED_DOWNLOADS = (".pt", ".pth", ".pkl", ".safetensors")  # model weights: the report never reads them


@dataclass(frozen=True)
class RemoteStorage:
    """``s3://bucket/prefix`` with the endpoint to reach it."""

    bucket: str
    prefix: str
    endpoint: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def tune_path(self) -> str:
        """The storage path Tune gets along with ``filesystem()`` (bucket/prefix, no scheme)."""
        return f"{self.bucket}/{self.prefix}".rstrip("/")

    def filesystem(self):
        import pyarrow.fs as pafs

        options = {}
        if self.endpoint:
            parsed = urlparse(self.endpoint)
            options = {"endpoint_override": parsed.netloc or parsed.path, "scheme": parsed.scheme or "https"}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return pafs.S3FileSystem(region=region, **options) if region else pafs.S3FileSystem(**options)

    def mirror(self, name: str) -> Path:
        return cache_dir("s3", self.bucket, self.prefix, name).resolve()

    def key(self, name: str, relative: str = "") -> str:
        return "/".join(part for part in (self.tune_path, name, relative) if part)


def is_remote(storage: str) -> bool:
    return "://" in str(storage)


def parse_remote(storage: str, endpoint: str | None = None) -> RemoteStorage:
    """``s3://bucket[/prefix]`` → RemoteStorage; any other scheme is refused with the fix."""
    parsed = urlparse(storage)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"run.storage: {storage!r} is not supported; use a folder or s3://BUCKET/PREFIX "
                         "(any S3-compatible server: set run.s3_endpoint=URL)")
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return RemoteStorage(parsed.netloc, parsed.path.strip("/"), endpoint)


def split_experiment_uri(uri: str, endpoint: str | None = None) -> tuple[RemoteStorage, str]:
    """``s3://bucket/prefix/<experiment>`` → (storage of its parent, experiment name)."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name or parent in ("s3:", "s3:/"):
        raise ValueError(f"{uri}: name an experiment folder, e.g. s3://BUCKET/PREFIX/quick-20261122-041500")
    return parse_remote(parent, endpoint), name


def upload(storage: RemoteStorage, local: Path, name: str, relative: str) -> None:
    """Copy ``local/relative`` (a file or folder) to ``<storage>/<name>/relative``."""
    import pyarrow.fs as pafs

    fs = storage.filesystem()
    source = local / relative
    if source.is_dir():
        pafs.copy_files(str(source), storage.key(name, relative), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    else:
        fs.create_dir(storage.key(name, str(Path(relative).parent)).rstrip("/."), recursive=True)
        with open(source, "rb") as handle, fs.open_output_stream(storage.key(name, relative)) as out:
            out.write(handle.read())


def download(storage: RemoteStorage, name: str, local: Path) -> Path:
    """Mirror ``<storage>/<name>`` into ``local`` (model weights skipped); files are replaced
    atomically, so a report read during a download never sees half a file."""
    import pyarrow.fs as pafs

    from ferbench.harness.study.atomic import atomic_write_bytes

    fs = storage.filesystem()
    root = storage.key(name)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    if not infos:
        raise FileNotFoundError(f"{storage.uri}/{name}: no such experiment (nothing stored under it)")
    for info in infos:
        if info.type != pafs.FileType.File or info.path.endswith(SKIPPED_DOWNLOADS):
            continue
        with fs.open_input_stream(info.path) as handle:
            atomic_write_bytes(local / info.path[len(root) + 1:], handle.read())
    return local


def holds_experiment(storage: RemoteStorage, name: str) -> bool:
    import pyarrow.fs as pafs

    return storage.filesystem().get_file_info(storage.key(name, "ferbench/grid.json")).type == pafs.FileType.File


def latest_remote_experiment(storage: RemoteStorage, study: str) -> str | None:
    """Name of the most recently started experiment of ``study`` under ``storage`` (``--resume``)."""
    import pyarrow.fs as pafs

    fs = storage.filesystem()
    folders = fs.get_file_info(pafs.FileSelector(storage.tune_path, allow_not_found=True))
    grids = [fs.get_file_info(f"{folder.path}/ferbench/grid.json") for folder in folders
             if folder.type == pafs.FileType.Directory and folder.base_name.startswith(f"{study}-")]
    grids = [grid for grid in grids if grid.type == pafs.FileType.File]
    newest = max(grids, key=lambda grid: grid.mtime_ns or 0, default=None)
    return newest.path.rsplit("/", 3)[-3] if newest else None


def fetch_experiment(uri: str, endpoint: str | None = None) -> tuple[RemoteStorage, str, Path]:
    """Download ``s3://…/<experiment>`` into its local mirror: (storage, name, mirror folder)."""
    storage, name = split_experiment_uri(uri, endpoint)
    return storage, name, download(storage, name, storage.mirror(name))
