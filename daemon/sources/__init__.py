"""Frame sources. ``create_source(settings)`` picks the implementation by ``source.type``."""

from daemon.sources.base import Frame, FrameSource, SourceError  # noqa: F401


def create_source(settings):
    """Return an unopened source for the ``source`` config section (call ``start()``)."""
    if settings.type == "images":
        from daemon.sources.images import ImageFolderSource

        return ImageFolderSource(settings)
    from daemon.sources.capture import CaptureSource

    return CaptureSource(settings)
