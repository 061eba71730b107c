#!/usr/bin/env bash
# Stage reelsift's dependencies on a GPU machine that reaches no package index and takes at most
# ~64 MiB per transfer (the device tool). Ray's wheel alone is ~80 MB, so it travels in two
# pieces and is put back together there.
#
#   here (with PyPI):  bash bench/device_stage.sh pack
#                      -> .whl/p1 .. .whl/p4, each under 62 MB (.whl/ is gitignored)
#   there, in back-to-back calls on one warm machine (ignored paths stay between calls):
#       call 1: carry [".whl/p1"]   bash bench/device_stage.sh install p1   (PyAV + PyNvVideoCodec)
#       call 2: carry [".whl/p2"]   bash bench/device_stage.sh install p2   (Ray, first half)
#       call 3: carry [".whl/p3"]   bash bench/device_stage.sh install p3   (Ray, second half + OCR/NSFW)
#       call 4: carry [".whl/p4"]   bash bench/device_stage.sh install p4   (DuckDB, open_clip, ...)
#   then every command there runs with:  export PYTHONPATH=$PWD/.site:$PWD
#
# The GPU image already has torch, torchvision, transformers, timm, pyarrow, pandas, OpenCV
# (headless), onnxruntime and Ray's small dependencies (click, msgpack, protobuf, aiohttp, ...);
# the lists below are what it lacks. Versions match the CI venv (constraints-ci.txt / pip list).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: device_stage.sh pack | install pN}

P1="av==18.1.1 pynvvideocodec==2.2.4"
RAY="ray==2.60.0"
P3="rapidocr-onnxruntime==1.4.4 nudenet==3.4.2"
P4="duckdb==2.0.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 scenedetect==0.7.2 webdataset==1.0.2
    braceexpand==0.1.7 pyclipper==1.4.0 shapely==2.2.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
    referencing==0.37.0 rpds-py==2026.9.1 platformdirs==4.14.9"

download() {  # download DIR SPEC...: cp312 manylinux wheels, no dependencies
  local dir=$1; shift
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64 \
    --platform manylinux_2_34_x86_64 -d "$dir" "$@"
}

case $what in
pack)
  rm -rf .whl/p1 .whl/p2 .whl/p3 .whl/p4 .whl/ray
  download .whl/p1 $P1
  download .whl/ray $RAY
  download .whl/p3 $P3
  download .whl/p4 $P4
  mkdir -p .whl/p2
  # two pieces of Ray's wheel: p2 holds the first 46 MB, p3 the rest
  split -b 46000000 .whl/ray/ray-*.whl .whl/ray/piece.
  mv .whl/ray/piece.aa .whl/p2/ && mv .whl/ray/piece.ab .whl/p3/
  basename .whl/ray/ray-*.whl > .whl/p2/ray-wheel-name
  du -sh .whl/p1 .whl/p2 .whl/p3 .whl/p4
  ;;
install)
  part=${2:?usage: device_stage.sh install pN}
  mkdir -p .site
  pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site "$@"; }
  shopt -s nullglob
  wheels=(.whl/"$part"/*.whl)
  if ((${#wheels[@]})); then pipi "${wheels[@]}"; fi
  if [[ -f .whl/p2/piece.aa && -f .whl/p3/piece.ab ]]; then
    name=$(cat .whl/p2/ray-wheel-name)
    cat .whl/p2/piece.aa .whl/p3/piece.ab > "/tmp/$name"
    pipi "/tmp/$name" && rm -f "/tmp/$name"
  fi
  # nudenet is installed without its opencv-python-headless pin; the image's cv2 serves it
  ls .site | sed -n 's/\.dist-info$//p' | tr '\n' ' '; echo
  ;;
*)
  echo "usage: device_stage.sh pack | install pN" >&2; exit 2 ;;
esac
