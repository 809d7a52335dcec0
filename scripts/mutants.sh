#!/usr/bin/env bash
# Mutation testing of the modules where falco's promises live, with mutmut 3.
#
#   scripts/mutants.sh [MODULE...]      # default: every module below
#   scripts/mutants.sh --list           # the modules, their files and their tests
#
# Modules: losses, pixels, guard, paste, mixing, config.  Each run copies the working tree
# (no .git) to $MUTANTS_DIR/<module> (default /tmp/falco-mutants), writes a [mutmut] section
# into that copy's setup.cfg, runs `mutmut run` there with the module's FAST tests, then prints
# "killed / total" and every surviving mutant with its diff. The checkout itself is never
# mutated. Not part of CI: see scripts/README.md for how long each module takes.
#
# Environment: PYTHON (default: the interpreter on PATH; mutmut must be installed with it,
# `pip install mutmut==3.8.1`), MUTANTS_DIR, MUTANTS_JOBS (parallel mutants, default 2),
# FALCO_SHARED (defaults to ../shared next to the checkout, as tests/conftest.py does).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
MUTANTS_DIR="${MUTANTS_DIR:-/tmp/falco-mutants}"
JOBS="${MUTANTS_JOBS:-2}"
export FALCO_SHARED="${FALCO_SHARED:-$(dirname "$REPO")/shared}"
# torch in forked workers: one thread each, or a fork can deadlock in the OpenMP pool
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CI="${CI:-}"

# module -> files to mutate (globs, relative to the repo root)
declare -A FILES=(
  [losses]="falco/latent/losses.py"
  [pixels]="falco/latent/images.py falco/latent/invert.py falco/run/image_files.py"
  [guard]="falco/guard.py"
  [paste]="falco/faces/paste.py"
  [mixing]="falco/latent/optimise.py"
  [config]="falco/config.py falco/cli/anonymize.py"
)
# module -> fast tests (files that do not exist yet are dropped)
declare -A TESTS=(
  [losses]="tests/test_losses.py tests/test_promise_params.py tests/test_promise_mutants.py tests/test_region_focus.py"
  [pixels]="tests/test_imageio.py tests/test_promise_pixels.py tests/test_promise_metadata.py tests/test_promise_mutants.py"
  [guard]="tests/test_guard.py tests/test_promise_guard.py tests/test_promise_mutants.py tests/test_promise_guard2.py"
  [paste]="tests/test_promise_paste.py tests/test_promise_region.py tests/test_promise_mutants.py tests/test_align.py"
  [mixing]="tests/test_anonymize.py tests/test_promise_params.py tests/test_promise_mutants.py tests/test_region_focus.py tests/test_anonymize_cli.py tests/test_promise_mixing.py"
  [config]="tests/test_promise_params.py tests/test_promise_mutants.py tests/test_promise_config.py"
)
# module -> pytest -k expression leaving out the slow end-to-end tests (each surviving mutant
# re-runs every selected test that reaches the mutated function, so a 5 s CLI test that reaches
# everything costs minutes per module). Empty: every test of the files above.
declare -A KEXPR=(
  [pixels]="not (test_no_metadata_reaches_any_output and (anonygan or falco or deepprivacy or ciagan))"
  [guard]="not test_faces_the_guard_passed and not test_keep_identity and not test_falco_redo and not test_enforce_blurs"
  [mixing]="test_mix_codes or test_params_are_validated or test_amp_flag or test_zero_steps or test_only_the_middle or test_on_step or test_lr_decays or test_falco_params_and or test_identity_loss_at_step_1 or test_margin_pulls or test_promise_mutants or test_the_masks_weigh or test_region_focus_is_checked or test_a_failing_compile or test_promise_mixing"
)
# module -> "file:function ..." whose decorator is moved below the function in the copy: mutmut 3
# never mutates a decorated function. None today: the commands are registered in falco/cli/root.py
# (`app.command(...)(anonymize_command)`), so their functions are plain and mutmut mutates them.
declare -A UNDECORATE=()
ORDER=(losses pixels guard paste mixing config)

REPORT_ONLY=0
if [[ "${1:-}" == "--report" ]]; then REPORT_ONLY=1; shift; fi
if [[ "${1:-}" == "--list" ]]; then
  for m in "${ORDER[@]}"; do printf '%-7s %s\n        tests: %s\n' "$m" "${FILES[$m]}" "${TESTS[$m]}"
    [[ -n "${KEXPR[$m]:-}" ]] && printf '        -k: %s\n' "${KEXPR[$m]}"; done
  exit 0
fi
MODULES=("$@")
[[ ${#MODULES[@]} -eq 0 ]] && MODULES=("${ORDER[@]}")
for m in "${MODULES[@]}"; do
  [[ -n "${FILES[$m]:-}" ]] || { echo "unknown module: $m (one of: ${ORDER[*]})" >&2; exit 2; }
done
"$PYTHON" -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed for $PYTHON: pip install mutmut==3.8.1" >&2; exit 2; }
MUTMUT=("$PYTHON" -m mutmut)

SUMMARY=()
for m in "${MODULES[@]}"; do
  work="$MUTANTS_DIR/$m"
  if [[ $REPORT_ONLY == 0 ]]; then
  rm -rf "$work"; mkdir -p "$work"
  (cd "$REPO" && tar --exclude=.git --exclude=mutants --exclude=__pycache__ --exclude='*.egg-info' \
     --exclude=.pytest_cache -cf - .) | tar -C "$work" -xf -

  tests=()
  for t in ${TESTS[$m]}; do [[ -f "$work/$t" ]] && tests+=("$t"); done
  {
    echo "[mutmut]"
    echo "source_paths = falco"
    echo "only_mutate ="; for f in ${FILES[$m]}; do echo "    $f"; done
    echo "also_copy ="; echo "    scripts/"; echo "    stylegan2_ops/"
    echo "pytest_add_cli_args ="; echo "    -p"; echo "    no:cacheprovider"; echo "    -q"
    echo "pytest_add_cli_args_test_selection ="; for t in "${tests[@]}"; do echo "    $t"; done
    if [[ -n "${KEXPR[$m]:-}" ]]; then echo "    -k"; echo "    ${KEXPR[$m]}"; fi
    # error-message text is not a promise: leave raise statements and shape hints unmutated
    echo "do_not_mutate_patterns ="; echo "    ^\\s*raise \\w+\\("; echo "    shape_hint="
  } > "$work/setup.cfg"
  # mutmut prefers [tool.mutmut] in pyproject.toml over setup.cfg: drop it from the copy
  "$PYTHON" - "$work/pyproject.toml" <<'EOF'
import re, sys
p = sys.argv[1]
s = open(p).read()
s2 = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", s)
if s2 != s:
    open(p, "w").write(s2)
EOF

  for spec in ${UNDECORATE[$m]:-}; do
    "$PYTHON" - "$work/${spec%%:*}" "${spec#*:}" <<'EOF'
import re, sys
p, name = sys.argv[1], sys.argv[2]
s = open(p).read()
pat = re.compile(rf"^@(\w+\.command\([^\n]*\))\n(def {name}\()", re.M)
mt = pat.search(s)
if mt is None:
    sys.exit(f"mutants.sh: no decorated def {name} in {p}")
s = pat.sub(r"\2", s, count=1) + f"\n\n{mt.group(1)}({name})\n"
open(p, "w").write(s)
EOF
  done
  echo "=== $m: mutating ${FILES[$m]} with ${tests[*]}"
  start=$(date +%s)
  (cd "$work" && "${MUTMUT[@]}" run --max-children "$JOBS" > "$work/mutmut-run.log" 2>&1) || {
    echo "mutmut run failed for $m: see $work/mutmut-run.log" >&2; tail -20 "$work/mutmut-run.log" >&2
    SUMMARY+=("$(printf '%-7s  run failed (%s)' "$m" "$work/mutmut-run.log")"); continue; }
  echo $(( $(date +%s) - start )) > "$work/seconds.txt"
  fi
  secs=$(cat "$work/seconds.txt" 2>/dev/null || echo 0)
  (cd "$work" && "${MUTMUT[@]}" results --all true > "$work/results.txt" 2>&1) || true
  "$PYTHON" - "$work" "$m" "$secs" <<'EOF'
import collections, re, subprocess, sys
work, module, secs = sys.argv[1], sys.argv[2], int(sys.argv[3])
status = {}
for line in open(f"{work}/results.txt"):
    mt = re.match(r"\s*([\w.]+__mutmut_\d+): (.+)$", line)
    if mt:
        status[mt.group(1)] = mt.group(2).strip()
counts = collections.Counter(status.values())
total = len(status)
killed = counts.get("killed", 0)
caught_by_tc = counts.get("caught by type check", 0)
detected = killed + counts.get("timeout", 0) + counts.get("segfault", 0)
rate = 100 * detected / total if total else 0.0
print(f"--- {module}: killed {detected} / {total} ({rate:.0f} %) in {secs} s; " +
      ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
def locate(name, change):
    """file:line of a mutant: the function's def in the original source, then the removed line."""
    mod, _, rest = name.rpartition(".")
    mod_path = mod.replace(".", "/") + ".py"
    func = rest.rsplit("__mutmut_", 1)[0]
    cls, func = (func[1:].split("\u01c1")[1:3] if "\u01c1" in func else (None, func[2:]))
    try:
        lines = open(f"{work}/{mod_path}").read().splitlines()
    except OSError:
        return mod_path
    start = 0
    if cls:
        start = next((i for i, l in enumerate(lines) if re.match(rf"\s*class {cls}\b", l)), 0)
    start = next((i for i in range(start, len(lines)) if re.match(rf"\s*(async )?def {func}\(", lines[i])), start)
    removed = [c[1:].strip() for c in change if c.startswith("-")]
    for i in range(start, len(lines)):
        if removed and lines[i].strip() == removed[0]:
            return f"{mod_path}:{i + 1}"
    return f"{mod_path}:{start + 1}"


survivors = [k for k, v in status.items() if v in ("survived", "no tests")]
for name in survivors:
    diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work,
                          capture_output=True, text=True).stdout
    change = [l.strip() for l in diff.splitlines()
              if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    where = locate(name, change)
    print(f"  {status[name]:9s} {name}  ({where})")
    for c in change[:4]:
        print(f"      {c}")
with open(f"{work}/summary.txt", "w") as f:
    f.write(f"{module} {detected} {total} {secs}\n")
EOF
  read -r _ k t s < "$work/summary.txt"
  SUMMARY+=("$(printf '%-7s %4s / %-4s %3s %%  %5s s' "$m" "$k" "$t" "$(( t ? 100 * k / t : 0 ))" "$s")")
done

echo
echo "module   killed/total  rate   time"
printf '%s\n' "${SUMMARY[@]}"
