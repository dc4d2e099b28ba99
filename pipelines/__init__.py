"""Jobs: run the engines over the dataset on Ray and commit results (one module per job).

Every job module registers its stages and steps with ``curation.registry`` on import;
``load_jobs`` imports them all, for the entry points (CLI, pipeline files) that look steps up by name.
"""

__all__ = ["load_jobs"]


def load_jobs() -> None:
    """Import every job module so that its stages and steps are registered."""
    from pipelines import (  # noqa: F401
        basic_stages,
        dedup,
        descriptors,
        download,
        export,
        graph,
        index,
        ingest,
        knn,
        profile,
        report,
        review,
        train,
    )
    from pipelines.pairs import steps  # noqa: F401
