"""The consent import as the registry had it at the baseline commit, timed on a CSV file.

Run by ``registry.py`` as a script (not a module), with ``PYTHONPATH`` naming only that
commit's packages, so that ``psi`` and ``psi_server`` are the old ones; it imports
nothing that commit lacked. Prints JSON.
"""

import json
import sys
import time


def main() -> None:
    from psi.parallel import get_executor
    from psi_server import consent, store

    csv_path, db = sys.argv[1:3]
    get_executor().submit(len, ()).result()  # the pool starts before the clock
    store.init(db)
    conn = store.connect(db)
    start = time.perf_counter()
    with open(csv_path, "rb") as f:
        report = consent.import_file(conn, f, "csv", "bench")
    seconds = time.perf_counter() - start
    conn.close()
    json.dump({"rows": report.imported_rows, "import_s": seconds, "store_s": report.apply_seconds}, sys.stdout)


if __name__ == "__main__":  # the old pool runs the main script again in its workers
    main()
