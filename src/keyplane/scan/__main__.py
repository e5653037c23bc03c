"""``python -m keyplane.scan [OPTIONS] [PATH]...``: the scan command without the rest of the CLI."""

from keyplane.scan.cli import main

main()
