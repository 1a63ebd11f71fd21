#!/usr/bin/env bash
# Pretraining on a Cloud TPU VM pod slice: one process per TPU VM host.
#
# Steps (each reuses what exists):
#   create  create the slice unless it already exists
#   setup   copy this checkout (git HEAD) to every worker and install it
#   run     run simclr_jax.main with the same arguments on --worker=all
#   delete  delete the slice
#   all     create, setup, run
# JAX finds the other hosts by itself on a pod slice (no coordinator flags).
# The workdir must be one path shared by all hosts (a Filestore/NFS or
# gcsfuse mount at the same path on every worker): checkpoints are written by
# all hosts together and the data is read by each host from data_dir.
#
# Usage:
#   TPU_NAME=simclr-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#     launch/tpu_pod.sh all --config=configs/imagenet.py \
#       --workdir=/mnt/shared/runs/r50_v4_32
# Environment: TPU_NAME, ZONE (required); ACCELERATOR_TYPE (default v4-32),
#   RUNTIME_VERSION (default tpu-ubuntu2204-base), PROJECT (default: gcloud's),
#   SPOT=1 for a spot slice, REMOTE_DIR (default simclr_jax on each worker).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-simclr_jax}"
gc=(gcloud compute tpus tpu-vm)
common=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && common+=(--project="$PROJECT")

step="${1:-}"
shift || true

create() {
  if "${gc[@]}" describe "$TPU_NAME" "${common[@]}" > /dev/null 2>&1; then
    echo "tpu_pod.sh: reusing slice $TPU_NAME"
    return
  fi
  local extra=()
  [[ "${SPOT:-0}" == "1" ]] && extra+=(--spot)
  "${gc[@]}" create "$TPU_NAME" "${common[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    "${extra[@]}"
}

setup() {
  local repo archive
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  archive="$(mktemp -t simclr_jax.XXXXXX.tar.gz)"
  git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
  "${gc[@]}" scp "$archive" "$TPU_NAME:simclr_jax.tar.gz" "${common[@]}" \
    --worker=all
  rm -f "$archive"
  "${gc[@]}" ssh "$TPU_NAME" "${common[@]}" --worker=all --command "
    set -e
    rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR
    tar xzf simclr_jax.tar.gz -C $REMOTE_DIR
    python3 -m pip install --upgrade pip
    python3 -m pip install 'jax[tpu]' -e ./$REMOTE_DIR"
}

run() {
  local args=() a
  for a in "$@"; do args+=("$(printf '%q' "$a")"); done
  # The same command on every host; each host reads its own data shard.
  "${gc[@]}" ssh "$TPU_NAME" "${common[@]}" --worker=all --command "
    cd $REMOTE_DIR && python3 -m simclr_jax.main ${args[*]}"
}

case "$step" in
  create) create ;;
  setup) setup ;;
  run) run "$@" ;;
  delete) "${gc[@]}" delete "$TPU_NAME" "${common[@]}" --quiet ;;
  all) create; setup; run "$@" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
