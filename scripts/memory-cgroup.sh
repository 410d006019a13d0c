# Sourced by the llama.cpp checks (scripts/llama-check.sh, scripts/moe-check.sh):
# a memory cgroup (v1) to run llama-paged in, with the model's page cache
# dropped first, as a container with a memory limit would run it.

# make_memory_cgroup NAME LIMIT_BYTES: creates the cgroup and prints its
# directory; fails (printing nothing) where none can be made (not root, no
# cgroup v1 memory controller).
make_memory_cgroup() {
  local rel dir
  rel=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
  [ -n "$rel" ] || return 1
  dir=/sys/fs/cgroup/memory${rel%/}/$1-$$
  mkdir "$dir" 2>/dev/null || return 1
  echo "$2" >"$dir/memory.limit_in_bytes" || { rmdir "$dir"; return 1; }
  echo "$dir"
}

# drop_page_cache FILE
drop_page_cache() {
  python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}

# run_limited CGROUP MODEL OUT_PREFIX COMMAND...: drops MODEL's page cache,
# runs COMMAND inside CGROUP with its output in OUT_PREFIX.out / .err and
# the token ids it printed in OUT_PREFIX.ids; on failure says so, removes
# the cgroup and returns 1.
run_limited() {
  local cg=$1 model=$2 out=$3
  shift 3
  drop_page_cache "$model"
  sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' sh "$cg" "$@" >"$out.out" 2>"$out.err" || {
    echo "$(basename "$1") ${*:2} in the memory cgroup failed:"; tail -3 "$out.err"; rmdir "$cg"; return 1
  }
  grep -E '^[0-9]+$' "$out.out" >"$out.ids" || true
}
