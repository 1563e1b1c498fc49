# Sourced by gpu_suite.sh (not run on its own): make `import fastlam.kernels` work for every
# later step, from a plain copy of the working tree (no .git, no network, any pip), and say how.
#
# Needs REPO (the tree), PY (the python), WORK (a scratch folder outside $OUT) and SETUP_LOG.
# Sets and exports PYTHONPATH and PYTHONSAFEPATH, and sets SETUP_MODE (how fastlam is imported)
# or SETUP_ERROR (one line: why it cannot be) and returns 1.
#
# fastlam.kernels lives in the top-level kernels/ folder (setup.py's package_dir), so the
# repository's own fastlam/ folder on sys.path is a fastlam WITHOUT kernels. Hence:
# - PYTHONSAFEPATH=1 (Python 3.11+; the suite also runs its steps from $WORK): neither the
#   current folder (python -c, python -m) nor a script's folder goes on sys.path in FRONT;
# - PYTHONPATH is "$SHIM:<the caller's>:$REPO": the repository comes last, for `benchmarks` and
#   so that scripts that put it on sys.path only when it is missing leave sys.path alone;
# - the import is checked after every install step, with the tree it must come from: an install
#   that "succeeds" without the mapping (the legacy `setup.py develop` of old pips) is caught;
# - the no-install fallback is a fastlam/ folder of links to the repository's fastlam/ files with
#   kernels/ linked in as fastlam/kernels, on PYTHONPATH, which precedes site-packages and any
#   path a develop install added there.

SHIM="$WORK/pythonpath"
mkdir -p "$SHIM"
export PYTHONSAFEPATH=1
export PYTHONPATH="$SHIM:${PYTHONPATH:+$PYTHONPATH:}$REPO"
SETUP_MODE=""
SETUP_ERROR=""
# The set-up aims to stay inside this many seconds (the quick plan counts it), but each command
# still gets SETUP_MIN_COMMAND_S: a cold first `import torch` on a fresh machine can take that
# long, and a suite that declares fastlam unimportable because the clock ran out wastes the
# whole lease (an overrun only shortens the later steps, which share one clock).
SETUP_DEADLINE=$(( $(date +%s) + ${SUITE_SETUP_S:-40} ))
SETUP_MIN_COMMAND_S=20

setup_seconds_left() {
  local left=$(( SETUP_DEADLINE - $(date +%s) ))
  [ "$left" -gt "$SETUP_MIN_COMMAND_S" ] && echo "$left" || echo "$SETUP_MIN_COMMAND_S"
}

# Exit 0 when fastlam, fastlam.kernels and fastlam.ops (the kernels' launchers: what every step
# needs) import from THIS tree (not another install), from a folder that is not the repository.
fastlam_imports_from_repo() {
  local limit rc
  limit=$(setup_seconds_left)
  (cd "$SHIM" && timeout "$limit" "$PY" - "$REPO" <<'PY'
import os, sys
repo = os.path.realpath(sys.argv[1])
import fastlam, fastlam.kernels.registry, fastlam.ops
where = {"fastlam": os.path.realpath(fastlam.__file__),
         "fastlam.kernels": os.path.realpath(fastlam.kernels.registry.__file__),
         "fastlam.ops": os.path.realpath(fastlam.ops.__file__)}
for name, path in where.items():
    print(f"{name} from {path}")
expected = {"fastlam": os.path.join(repo, "fastlam"), "fastlam.kernels": os.path.join(repo, "kernels"),
            "fastlam.ops": os.path.join(repo, "fastlam")}
wrong = [n for n, p in where.items() if not p.startswith(expected[n] + os.sep)]
if wrong:
    sys.exit(f"imported from another tree than {repo}: {', '.join(wrong)}")
PY
  ) >>"$SETUP_LOG" 2>&1
  rc=$?
  [ "$rc" = 124 ] && echo "the import check timed out after $limit s" >>"$SETUP_LOG"
  return "$rc"
}

link_fastlam_with_kernels() {
  rm -rf "$SHIM/fastlam"
  mkdir -p "$SHIM/fastlam"
  local entry
  for entry in "$REPO"/fastlam/*; do
    case "$(basename "$entry")" in kernels|__pycache__) continue ;; esac
    ln -s "$entry" "$SHIM/fastlam/$(basename "$entry")"
  done
  ln -s "$REPO/kernels" "$SHIM/fastlam/kernels"
}

echo "== check: is fastlam importable as it is?" >>"$SETUP_LOG"
if fastlam_imports_from_repo; then
  SETUP_MODE="already installed (from this tree)"
else
  if [ "${SUITE_INSTALL:-1}" = 1 ]; then
    echo "== pip install --no-deps --no-build-isolation -e $REPO ($("$PY" -m pip --version 2>&1))" >>"$SETUP_LOG"
    timeout "$(setup_seconds_left)" "$PY" -m pip install --no-deps --no-build-isolation -q -e "$REPO" >>"$SETUP_LOG" 2>&1
    echo "pip exit status: $?" >>"$SETUP_LOG"
    echo "== check after the install" >>"$SETUP_LOG"
    if fastlam_imports_from_repo; then
      SETUP_MODE="pip install -e (editable)"
    fi
  fi
  if [ -z "$SETUP_MODE" ]; then
    echo "== no-install fallback: $SHIM/fastlam links the tree's fastlam/ with kernels/ inside" >>"$SETUP_LOG"
    link_fastlam_with_kernels
    if fastlam_imports_from_repo; then
      SETUP_MODE="no install: PYTHONPATH shim $SHIM"
    fi
  fi
fi
if [ -z "$SETUP_MODE" ]; then
  SETUP_ERROR="fastlam.kernels cannot be imported from $REPO (installed, pip -e and the no-install shim all failed): $(grep -v '^ ' "$SETUP_LOG" | tail -n 1)"
  return 1
fi
echo "fastlam imported: $SETUP_MODE" >>"$SETUP_LOG"
return 0
