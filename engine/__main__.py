"""``python -m engine`` runs the ``tagengine`` command line."""

from engine.cli import main

main()
