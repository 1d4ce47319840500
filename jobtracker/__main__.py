"""``python -m jobtracker`` runs the command line."""

from jobtracker.cli import main

main()
