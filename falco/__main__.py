"""``python -m falco`` (also what ``torchrun -m falco`` runs)."""

from falco.cli import main

main()
