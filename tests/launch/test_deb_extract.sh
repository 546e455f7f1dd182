#!/usr/bin/env bash
# launch/deb_extract.py (the GPU check's dpkg-deb -x where an image has no dpkg) against dpkg-deb
# on a package built here: the same files, contents, modes and symbolic links, for xz and gzip
# packages; a file that is not a package is refused naming it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$(mktemp -d /tmp/difftrain_test_deb_extract.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
fail() {
  echo "FAILED: $*" >&2
  exit 1
}

pkg=$OUT/pkg
mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/lib/x86_64-linux-gnu" "$pkg/usr/share/doc/t"
printf 'Package: t\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n' \
  >"$pkg/DEBIAN/control"
printf '#!/bin/sh\necho hi\n' >"$pkg/usr/bin/tool"
chmod 755 "$pkg/usr/bin/tool"
head -c 100000 /dev/urandom >"$pkg/usr/lib/x86_64-linux-gnu/libt.so.1.2"
chmod 644 "$pkg/usr/lib/x86_64-linux-gnu/libt.so.1.2"
ln -s libt.so.1.2 "$pkg/usr/lib/x86_64-linux-gnu/libt.so.1"
ln -s /usr/lib/x86_64-linux-gnu/libt.so.1 "$pkg/usr/lib/x86_64-linux-gnu/libt.so"
printf 'odd length' >"$pkg/usr/share/doc/t/README"  # ar pads odd-sized members

listing() { (cd "$1" && find . -printf '%m %y %p %l\n' | sort); }
for z in xz gzip; do
  dpkg-deb --root-owner-group -Z"$z" --build "$pkg" "$OUT/t_$z.deb" >/dev/null
  mkdir -p "$OUT/dpkg_$z" "$OUT/py_$z"
  dpkg-deb -x "$OUT/t_$z.deb" "$OUT/dpkg_$z"
  python3 "$ROOT/launch/deb_extract.py" "$OUT/py_$z" "$OUT/t_$z.deb"
  diff -r --no-dereference "$OUT/dpkg_$z" "$OUT/py_$z" || fail "$z: contents differ"
  diff <(listing "$OUT/dpkg_$z") <(listing "$OUT/py_$z") || fail "$z: modes or links differ"
  [ "$(listing "$OUT/py_$z" | wc -l)" -ge 9 ] || fail "$z: too few entries extracted"
done

echo "not a package" >"$OUT/bad.deb"
if msg=$(python3 "$ROOT/launch/deb_extract.py" "$OUT/bad_out" "$OUT/bad.deb" 2>&1); then
  fail "a file that is not a package was accepted"
fi
grep -qF "$OUT/bad.deb: not a Debian package" <<<"$msg" || fail "unclear message: $msg"
echo "deb_extract.py: same as dpkg-deb -x for xz and gzip packages"
