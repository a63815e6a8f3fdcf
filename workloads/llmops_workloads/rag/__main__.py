import sys

if len(sys.argv) > 1 and sys.argv[1] == "ingest":
    from .cli import main as ingest_main

    sys.exit(ingest_main(sys.argv[2:]))

from .server import main

main()
