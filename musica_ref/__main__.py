"""`python -m musica_ref ...` is the `musica-ref` command."""
import sys

from .cli import main

sys.exit(main())
