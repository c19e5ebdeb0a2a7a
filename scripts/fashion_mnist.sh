#!/usr/bin/env bash
# The quickstart's data: Fashion-MNIST's four IDX files into data/fashion-mnist (run by scripts/setup.sh).
#
#   scripts/fashion_mnist.sh          # from the repository root
#
# Copies them from the first of $FASHION_MNIST_SOURCES that holds them (default: ../shared/data/fashion-mnist,
# then Debian's /usr/share/datasets/fashion-mnist); as root, installs Debian's dataset-fashion-mnist when none
# does. When it still has no data, it says why and leaves what it tried in data/fashion-mnist-setup.txt, which
# the library's "Fashion-MNIST not found" error quotes. Never fails: the library can still download the files.
set -uo pipefail
here=$(dirname "$0")
target=data/fashion-mnist
note=data/fashion-mnist-setup.txt
sources=${FASHION_MNIST_SOURCES:-"../shared/data/fashion-mnist /usr/share/datasets/fashion-mnist"}

copy() {  # from the first source holding the files; fails when none does
  local source
  for source in $sources; do
    if [ -f "$source/train-images-idx3-ubyte.gz" ]; then
      mkdir -p "$target" && cp "$source"/*-ubyte.gz "$target"/ && echo "[setup] Fashion-MNIST copied from $source"
      return
    fi
  done
  return 1
}

[ -f "$target/train-images-idx3-ubyte.gz" ] || copy
if [ ! -f "$target/train-images-idx3-ubyte.gz" ]; then
  tried="found no copy in: $sources"
  if ! command -v apt-get >/dev/null; then
    tried="$tried; this machine has no apt-get to install Debian's dataset-fashion-mnist"
  elif [ "$(id -u)" != 0 ]; then
    tried="$tried; did not run apt-get (not root): sudo apt-get install dataset-fashion-mnist"
  else
    echo "[setup] installing Debian's dataset-fashion-mnist"
    mkdir -p data
    log=data/fashion-mnist-apt.log
    if APT_LOG=$log "$here/apt_install.sh" dataset-fashion-mnist; then
      copy || tried="$tried; dataset-fashion-mnist is installed but its files are not in: $sources"
    else
      errors=$(grep '^E:' "$log" | tail -n 3 | tr '\n' ' ')
      tried="$tried; \`apt-get install dataset-fashion-mnist\` failed: $errors(log: $log)"
    fi
  fi
fi
if [ -f "$target/train-images-idx3-ubyte.gz" ]; then
  rm -f "$note"
else
  mkdir -p data && echo "scripts/setup.sh $tried" >"$note"
  echo "[setup] no Fashion-MNIST: $tried. The quickstart will try to download it." >&2
fi
