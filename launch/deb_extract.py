#!/usr/bin/env python3
"""Unpacks Debian packages' files into a folder, as `dpkg-deb -x` does, for machines without dpkg
(the GPU check's machine is a CUDA image; launch/gpu_check.sh uses dpkg-deb where it exists).

    launch/deb_extract.py DEST PACKAGE.deb [PACKAGE.deb ...]

A .deb is an ar archive whose member data.tar.{xz,gz,bz2} holds the files (zstd, which Python's
tarfile cannot read before 3.14, is refused with a message).
"""
import io
import sys
import tarfile


def ar_members(path):
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            sys.exit(f"{path}: not a Debian package (no ar header)")
        while header := f.read(60):
            if len(header) < 60:
                sys.exit(f"{path}: truncated ar header")
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58])
            data = f.read(size)
            if size % 2:
                f.read(1)  # members are 2-byte aligned
            yield name, data


def extract(deb, dest):
    for name, data in ar_members(deb):
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".zst"):
            sys.exit(f"{deb}: {name} is zstd-compressed; install dpkg-deb")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            # The packages are ours (launch/gpu_bundle.sh fetched them); their symbolic links
            # may be absolute (/usr/lib/... inside the package), as dpkg-deb -x keeps them.
            kwargs = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            tar.extractall(dest, **kwargs)
        return
    sys.exit(f"{deb}: no data.tar member")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    for deb in sys.argv[2:]:
        extract(deb, sys.argv[1])
