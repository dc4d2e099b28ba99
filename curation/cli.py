"""``python -m curation.cli``: the older spelling of ``python -m cli`` (the ``curate`` command),
kept for job scripts and cluster manifests that name it. The command line lives in ``cli/``."""

if __name__ == "__main__":
    from cli.main import main

    main()
