"""File backends: a directory-of-files job queue and a JSON-lines result store.

Both need nothing but a local filesystem and are safe with several processes on one
directory; see :mod:`nuvom_plugins.file.queue` and :mod:`nuvom_plugins.file.results`.
"""

from nuvom_plugins.file.errors import FileStorePathError, FileStoreUnavailableError
from nuvom_plugins.file.queue import FileJobQueue
from nuvom_plugins.file.results import FileResultBackend

__all__ = ["FileJobQueue", "FileResultBackend", "FileStorePathError",
           "FileStoreUnavailableError"]
