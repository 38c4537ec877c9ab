#!/bin/sh
# Rebuilds the ELF seeds of fuzz/seeds/elf_symbols and fuzz/seeds/usdt_notes
# from these sources (gcc, g++, binutils, systemtap-sdt-dev: all installed
# by `cargo xtask setup`). Small on purpose (a few KiB): libFuzzer mutates
# every byte. Run from anywhere: sh fuzz/seeds/src/build.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
small="-O2 -nostdlib -fno-asynchronous-unwind-tables -fno-stack-protector -Wl,--build-id=none -Wl,-z,noseparate-code -Wl,-z,norelro"
gcc $small -static -no-pie -o "$out/static" "$here/funcs.c"
gcc $small -static-pie -fPIE -o "$out/pie" "$here/funcs.c"
gcc $small -shared -fPIC -o "$out/lib.so" "$here/funcs.c"
cp "$out/lib.so" "$out/lib-stripped.so" && strip "$out/lib-stripped.so"
g++ $small -fno-exceptions -fno-rtti -static -no-pie -o "$out/cpp" "$here/names.cpp"
for d in elf_symbols usdt_notes; do
    mkdir -p "$here/../$d"
    cp "$out/static" "$out/pie" "$out/lib.so" "$out/lib-stripped.so" "$here/../$d/"
done
cp "$out/cpp" "$here/../elf_symbols/"
cp "$out/cpp" "$here/../usdt_notes/"
ls -l "$here/../elf_symbols" "$here/../usdt_notes"
