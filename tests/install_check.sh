#!/bin/sh
# install_check.sh BUILD_DIR SOURCE_DIR LIBDIR MAJOR.MINOR
# Installs the build into a scratch prefix and builds the README's first
# program against it the two ways the README gives: pkg-config, and CMake's
# find_package (the shared and the static target). Checks the soname and
# that find_package refuses the next minor version (README: Versions).
set -eu
B=$1 S=$2 LIBDIR=$3 VER=$4
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
P=$T/prefix
cmake --install "$B" --prefix "$P" >/dev/null

readelf -d "$P/$LIBDIR/libweft.so" | grep -q "SONAME.*\[libweft\.so\.$VER\]" ||
    { echo "FAIL: soname is not libweft.so.$VER"; readelf -d "$P/$LIBDIR/libweft.so"; exit 1; }

mkdir "$T/app"
awk '/^## A first program/ { f = 1 } f && /^```c/ { p = 1; next } p && /^```/ { exit } p' \
    "$S/README.md" > "$T/app/hello.c"
grep -q weft_spawn "$T/app/hello.c" || { echo "FAIL: no program found in README.md"; exit 1; }

check_run() { # check_run PROGRAM: it prints the README's output
    out=$("$1")
    [ "$out" = "res 0, out 10" ] || { echo "FAIL: $1 printed '$out'"; exit 1; }
}

# pkg-config, as README's "A first program" says.
FLAGS=$(PKG_CONFIG_PATH="$P/$LIBDIR/pkgconfig" pkg-config --cflags --libs weft)
cc -std=gnu11 -Wall -Wextra -Werror "$T/app/hello.c" $FLAGS -Wl,-rpath,"$P/$LIBDIR" \
    -o "$T/hello_pc"
check_run "$T/hello_pc"

# CMake: find_package(weft MAJOR.MINOR), weft::weft and weft::weft_static.
cat > "$T/app/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.25)
project(hello C)
find_package(weft \${WANT} REQUIRED)
add_executable(hello hello.c)
target_link_libraries(hello weft::weft)
add_executable(hello_static hello.c)
target_link_libraries(hello_static weft::weft_static)
CM
cmake -S "$T/app" -B "$T/app/b" -DWANT="$VER" -DCMAKE_PREFIX_PATH="$P" >/dev/null
cmake --build "$T/app/b" >/dev/null
check_run "$T/app/b/hello"
check_run "$T/app/b/hello_static"
if cmake -S "$T/app" -B "$T/app/b1" -DWANT="${VER%.*}.$((${VER#*.} + 1))" \
    -DCMAKE_PREFIX_PATH="$P" >/dev/null 2>&1; then
    echo "FAIL: find_package accepted another minor version than $VER"
    exit 1
fi
echo "install_check: passed (soname libweft.so.$VER, pkg-config, find_package shared and static)"
