"""fathom.runtime: executors, sampling, chat, benchmarking, profiling and the `fathom` CLI."""


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as _version

    try:
        return _version("fathom-engine")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0+source"
