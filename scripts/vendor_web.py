"""Re-fetch the page's two JavaScript libraries at their pinned versions and check them.

    python scripts/vendor_web.py            # download from the npm registry, check, write into the package
    python scripts/vendor_web.py --check    # offline: the vendored files still hash as recorded (a test runs this)

The web page loads nothing from a CDN (it must work offline, under a Content-Security-Policy of 'self'), so the
libraries live in the package: src/tunesmith/serve/web/static/vendor/, each file's sha256 in VENDOR.json and the
licences beside them. A download is checked twice: the tarball against the integrity hash npm publishes for that
version (pinned here), and each extracted file against VENDOR.json, so a changed upstream file is an error,
never a silent update. To move to a new version, change PINS (tarball and integrity from `npm view PKG@VER
dist`), run with --update, read the diff of VENDOR.json and test the page.

htmx 2.0.x rather than 4.0: 4.0 (2026) rewrote the request engine and renamed events; 2.0 is what the
templates are written and tested against.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "src/tunesmith/serve/web/static/vendor"
MANIFEST = VENDOR / "VENDOR.json"
# package -> (version, tarball, npm's sha512 integrity, {file in the tarball: name in vendor/})
PINS = {
    "htmx.org": (
        "2.0.11",
        "https://registry.npmjs.org/htmx.org/-/htmx.org-2.0.11.tgz",
        "sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA==",
        {"package/dist/htmx.min.js": "htmx.min.js", "package/LICENSE": "htmx.LICENSE"},
    ),
    "uplot": (
        "1.6.32",
        "https://registry.npmjs.org/uplot/-/uplot-1.6.32.tgz",
        "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        {
            "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
            "package/dist/uPlot.min.css": "uPlot.min.css",
            "package/LICENSE": "uPlot.LICENSE",
        },
    ),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(package: str) -> dict[str, bytes]:
    """The pinned files of ``package``, from a tarball whose integrity matches the pin."""
    version, url, integrity, files = PINS[package]
    with urllib.request.urlopen(url, timeout=60) as response:
        tarball = response.read()
    algorithm, _, expected = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode()
    if got != expected:
        sys.exit(f"{package} {version}: the tarball's {algorithm} is {got}, not the pinned {expected}")
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        for member, name in files.items():
            handle = archive.extractfile(member)
            if handle is None:
                sys.exit(f"{package} {version}: {member} is missing from {url}")
            out[name] = handle.read()
    return out


def check() -> list[str]:
    """Problems with the vendored files against VENDOR.json (empty: all as recorded)."""
    manifest = json.loads(MANIFEST.read_text())
    problems = []
    for package, entry in manifest.items():
        for name, digest in entry["files"].items():
            path = VENDOR / name
            if not path.is_file():
                problems.append(f"{name} ({package}) is missing")
            elif sha256(path.read_bytes()) != digest:
                problems.append(f"{name} ({package} {entry['version']}) does not match its recorded sha256")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the vendored files (offline)")
    parser.add_argument("--update", action="store_true", help="record new hashes (after changing PINS)")
    args = parser.parse_args()
    if args.check:
        problems = check()
        print("\n".join(problems) or f"vendored files match {MANIFEST.name}")
        sys.exit(1 if problems else 0)
    recorded = json.loads(MANIFEST.read_text()) if MANIFEST.exists() and not args.update else {}
    manifest = {}
    for package, (version, url, _integrity, _files) in PINS.items():
        files = fetch(package)
        digests = {name: sha256(data) for name, data in files.items()}
        old = recorded.get(package, {}).get("files")
        if old is not None and old != digests:
            sys.exit(f"{package} {version}: the files differ from VENDOR.json; if that is meant, run with --update")
        for name, data in files.items():
            (VENDOR / name).write_bytes(data)
        manifest[package] = {"version": version, "tarball": url, "files": digests}
        print(f"{package} {version}: {', '.join(files)}")
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
