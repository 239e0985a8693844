"""The image's HEALTHCHECK: exit 0 when the local server answers /readyz with 200 (no curl needed).

`python -m edgeopt.serve.healthcheck` reads EDGEOPT_PORT; it imports nothing but the standard library."""
import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("EDGEOPT_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=4) as r:
            return 0 if r.status == 200 else 1
    except Exception:
        return 1


if __name__ == "__main__":
    sys.exit(main())
