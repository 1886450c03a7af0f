"""`python -m watchdog` is `watchdogctl`."""

from watchdog.cli import main

main()
