#!/usr/bin/env bash
# Build the graylane image from deploy/Containerfile with podman (or buildah), then run
# it once, read-only and as its non-root user, to show it starts.
#
#   deploy/build-image.sh [IMAGE]        default IMAGE: graylane:<Cargo.toml version>
#
# Env: BUILD_IMAGE / RUN_IMAGE override the base images (e.g. a registry mirror);
# BUILD_FLAGS adds flags to the build command. Exit 2: no usable container tool;
# exit 3: a base image cannot be pulled; anything else: the build or smoke run failed.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
image=${1:-graylane:${version}}
build_image=${BUILD_IMAGE:-docker.io/library/rust:1-bookworm}
run_image=${RUN_IMAGE:-gcr.io/distroless/cc-debian12:nonroot}

if command -v podman >/dev/null; then tool=podman
elif command -v buildah >/dev/null; then tool=buildah
else
    echo "build-image: neither podman nor buildah is installed (Debian: apt-get install -y podman)" >&2
    exit 2
fi
if ! info=$("$tool" info 2>&1); then
    echo "build-image: $tool is installed but cannot run here:" >&2
    echo "$info" | tail -n 5 >&2
    exit 2
fi

flags=()
# crun refuses cgroup v1/hybrid hosts ("cgroups in hybrid mode not supported"); runc
# does not.
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] && command -v runc >/dev/null; then
    flags+=(--runtime runc)
fi
# The build container's default open-files limit (1048576) may exceed this host's hard
# limit, which makes the runtime's setrlimit fail: cap it.
hard_nofile=$(ulimit -Hn)
if [ "$hard_nofile" != unlimited ] && [ "$hard_nofile" -lt 1048576 ]; then
    flags+=(--ulimit "nofile=${hard_nofile}:${hard_nofile}")
fi
# shellcheck disable=SC2206 # BUILD_FLAGS is split on purpose
flags+=(${BUILD_FLAGS:-})

has_image() {
    if [ "$tool" = podman ]; then podman image exists "$1"
    else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}
# Pull fresh bases (distroless gets glibc fixes); a local copy does when offline.
for base in "$build_image" "$run_image"; do
    if ! out=$("$tool" pull "$base" 2>&1); then
        if has_image "$base"; then
            echo "build-image: cannot pull $base; using the local copy" >&2
            continue
        fi
        echo "build-image: cannot pull base image $base:" >&2
        echo "$out" | tail -n 3 >&2
        echo "build-image: set BUILD_IMAGE / RUN_IMAGE to a reachable mirror" >&2
        exit 3
    fi
done

echo "build-image: $tool building $image ($build_image -> $run_image)"
"$tool" build "${flags[@]}" \
    --build-arg "BUILD_IMAGE=$build_image" --build-arg "RUN_IMAGE=$run_image" \
    --ignorefile deploy/Containerfile.dockerignore \
    -f deploy/Containerfile -t "$image" .

if [ "$tool" = podman ]; then
    user=$(podman image inspect --format '{{.Config.User}}' "$image")
    [ "$user" = "65532:65532" ] || { echo "build-image: image user is '$user', want 65532:65532" >&2; exit 1; }
    run_flags=()
    [[ " ${flags[*]} " == *" --runtime runc "* ]] && run_flags=(--runtime runc)
    podman "${run_flags[@]}" run --rm --read-only --network none --cap-drop ALL \
        --ulimit "nofile=1024:1024" --ulimit "nproc=1024:1024" "$image" --version
    echo
    echo "build-image: $image runs as $user with a read-only root"
fi
