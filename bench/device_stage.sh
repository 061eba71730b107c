#!/usr/bin/env bash
# Stage reelsift's dependencies on a GPU machine that reaches no package index and takes at most
# ~64 MiB per transfer (the device tool). The wheels the image lacks are 200 MB (Ray's alone is
# ~80 MB); installed here for cp312 and packed as xz tars they are 161 MB, which travel in three
# transfers: p1 (PyAV + PyNvVideoCodec, enough for the NVDEC lane and its bench), then the rest in
# two pieces that are put back together and unpacked on the other side.
#
#   here (with PyPI):  bash bench/device_stage.sh pack      (~4 min: xz on 2 cores)
#                      -> .whl/p1 .whl/p2 .whl/p3, each under 62 MB (.whl/ is gitignored);
#                         .whl/p2/p27/ also holds issue 27's torchao + diffusers wheels
#   there, in back-to-back calls on one warm machine (ignored paths stay between calls):
#       call 1: carry [".whl/p1"]   bash bench/device_stage.sh install p1   (PyAV + PyNvVideoCodec)
#       call 2: carry [".whl/p2"]   bash bench/device_stage.sh install p2   (first piece: kept)
#       call 3: carry [".whl/p3"]   bash bench/device_stage.sh install p3   (Ray, OCR, NSFW, DuckDB, open_clip, ...)
#   then every command there runs with:  export PYTHONPATH=$PWD/.site:$PWD
#
# The GPU image already has torch, torchvision, transformers, timm, pyarrow, pandas, OpenCV
# (headless), onnxruntime and Ray's small dependencies (click, msgpack, protobuf, aiohttp, ...);
# the lists below are what it lacks. Versions match the CI venv (constraints-ci.txt / pip list).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: device_stage.sh pack | install pN}

P1="av==18.1.1 pynvvideocodec==2.2.4"
REST="ray==2.60.0 rapidocr-onnxruntime==1.4.4 nudenet==3.4.2
    duckdb==2.0.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 scenedetect==0.7.2 webdataset==1.0.2
    braceexpand==0.1.7 pyclipper==1.4.0 shapely==2.2.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
    referencing==0.37.0 rpds-py==2026.9.1 platformdirs==4.14.9"
P27="torchao==0.17.0 diffusers==0.42.1"
PLATFORMS="--python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    --platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64
    --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform any"

download() {  # download DIR SPEC...: cp312 manylinux wheels, no dependencies
  local dir=$1; shift
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: $PLATFORMS -d "$dir" "$@"
}

packed() {  # packed WHEEL_DIR OUT.tar.xz: the wheels installed for cp312 into a tree, as one xz tar
  local tree=.whl/tree
  rm -rf "$tree"
  # shellcheck disable=SC2086
  python3 -m pip install -q --no-deps --no-compile --only-binary=:all: $PLATFORMS --target "$tree" "$1"/*.whl
  tar -C "$tree" -cf - . | xz -6 -T0 >"$2"
  rm -rf "$tree"
}

# unpack FILE...: the concatenation of FILE... (an xz tar) into .site (Python's lzma: no xz binary needed)
unpack() {
  mkdir -p .site
  cat "$@" | python3 -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('.site')"
}

case $what in
pack)
  rm -rf .whl
  download .whl/wheels/p1 $P1
  download .whl/wheels/rest $REST
  download .whl/wheels/p27 $P27
  mkdir -p .whl/p1 .whl/p2 .whl/p3
  packed .whl/wheels/p1 .whl/p1/site-p1.tar.xz
  packed .whl/wheels/rest .whl/rest.tar.xz
  # two pieces: p2 holds the first 52 MB (and issue 27's wheels), p3 the rest
  head -c 52000000 .whl/rest.tar.xz >.whl/p2/rest.part1
  tail -c +52000001 .whl/rest.tar.xz >.whl/p3/rest.part2
  cp -r .whl/wheels/p27 .whl/p2/p27
  rm .whl/rest.tar.xz
  du -sh .whl/p1 .whl/p2 .whl/p3
  ;;
install)
  part=${2:?usage: device_stage.sh install pN}
  case $part in
  p1) unpack .whl/p1/site-p1.tar.xz ;;
  p2) echo "p2 kept for p3" ;;
  p3) unpack .whl/p2/rest.part1 .whl/p3/rest.part2 ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
  esac
  ls .site | sed -n 's/\.dist-info$//p' | tr '\n' ' '; echo
  ;;
*)
  echo "usage: device_stage.sh pack | install pN" >&2; exit 2 ;;
esac
