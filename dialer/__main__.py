"""`python -m dialer` is the same as the `dialer` command."""

from dialer.cli import main

raise SystemExit(main())
