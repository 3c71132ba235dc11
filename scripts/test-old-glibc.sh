#!/usr/bin/env bash
# Runs the test suites that reach the addon with the bundled prebuild on an older system's C and C++ runtimes:
# Debian 11's glibc 2.31 and libstdc++ of GCC 10 (GLIBCXX_3.4.28), on which a prebuild made here used to fail to
# load (it asked for glibc 2.34 and GLIBCXX_3.4.30). The three runtime packages come from Debian's own archive
# through apt (a private package list under build-old-glibc/, the system's apt state untouched); a copy of this
# Node binary is pointed at them with patchelf (its interpreter and RPATH), so child processes use them too.
# test/package.test.ts checks every version the prebuild asks for against the README's floor; this runs it.
#   bash scripts/test-old-glibc.sh [uvu file pattern]
# When the packages cannot be fetched (no apt, no network), it says SKIPPED and exits 0, unless
# MOE_REQUIRE_OLD_GLIBC=1 (CI sets it), when that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
suite=bullseye
out=$PWD/build-old-glibc
skip='cli|cuda|package|readme|observability-(promtool|server)'
pattern=${1:-"^(?!($skip)\\.test\\.ts\$).*\\.test\\.ts\$"}
skipped() {
  echo "SKIPPED: $1"
  if [ "${MOE_REQUIRE_OLD_GLIBC:-0}" = 1 ]; then
    echo "MOE_REQUIRE_OLD_GLIBC=1: the old-glibc run is required (if Debian's mirror no longer serves $suite, point" \
      "sources.list in this script at a suite or archive that does)" >&2
    exit 1
  fi
  exit 0
}

prebuild=$(ls "$PWD"/prebuilds/linux-x64/*.node 2>/dev/null | head -n 1 || true)
if [ -z "$prebuild" ]; then
  echo "no prebuild in prebuilds/linux-x64: run npm run build:prebuild (npm test does) first" >&2
  exit 1
fi
for tool in apt-get dpkg-deb patchelf; do
  command -v "$tool" >/dev/null 2>&1 || skipped "the prebuild on Debian 11's glibc needs $tool"
done

echo "== Debian $suite's libc6, libstdc++6 and libgcc-s1 into $out/root"
rm -rf "$out"
mkdir -p "$out/lists/partial" "$out/cache/archives/partial" "$out/debs" "$out/root" "$out/bin"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
  >"$out/sources.list"
apt=(apt-get -q -o Dir::Etc::SourceList="$out/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::State::Lists="$out/lists" -o Dir::Cache="$out/cache" -o APT::Sandbox::User=root)
if ! "${apt[@]}" update >"$out/apt.log" 2>&1 ||
  ! (cd "$out/debs" && "${apt[@]}" download "libc6/$suite" "libstdc++6/$suite" "libgcc-s1/$suite" >>"$out/apt.log" 2>&1); then
  tail -n 5 "$out/apt.log"
  skipped "could not fetch Debian $suite's runtime packages (log: $out/apt.log)"
fi
for deb in "$out"/debs/*.deb; do dpkg-deb -x "$deb" "$out/root"; done
libs=$out/root/lib/x86_64-linux-gnu:$out/root/usr/lib/x86_64-linux-gnu
node=$out/bin/node
# (the real binary, not a version manager's shim)
cp "$(node -p process.execPath)" "$node"
patchelf --set-interpreter "$out/root/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$libs" "$node"

echo "== which runtimes that Node uses"
# (a Node linked against the system's own newer shared libraries, as some distributions build it, cannot start here)
if ! env -u LD_LIBRARY_PATH -u LD_PRELOAD "$node" -e '
  const maps = require("fs").readFileSync("/proc/self/maps", "utf8");
  const glibc = process.report.getReport().header.glibcVersionRuntime;
  const cxx = maps.split("\n").find((l) => l.includes("libstdc++"))?.split(/\s+/).pop() ?? "no shared libstdc++";
  console.log(`glibc ${glibc}, ${cxx}`);
  if (glibc !== "2.31" || !cxx.startsWith(process.argv[1])) process.exit(1);' "$out/root/"; then
  skipped "this Node binary does not run on (only) Debian $suite's glibc and libstdc++"
fi

echo "== tests against $prebuild on glibc 2.31 / GLIBCXX_3.4.28"
env -u LD_LIBRARY_PATH -u LD_PRELOAD MOE_NATIVE_ADDON="$prebuild" PATH="$out/bin:$PATH" \
  "$node" --import tsx node_modules/uvu/bin.js test "$pattern"
