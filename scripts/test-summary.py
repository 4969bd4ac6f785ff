#!/usr/bin/env python3
"""Summarizes meson JSON test logs (scripts/test-all.sh): prints a line per failure and
per skip, then "N passed, N failed, N skipped"; exits 1 when anything failed.

Counted: each meson test by its result (SKIP is exit code 77), and each cmocka case that
called skip() ("[  SKIPPED ] name" in the test's output) as one skip more. Environment:
STRICT_SKIPS=1 makes every skip a failure (a machine with root and QEMU, where no test
has a reason to skip); FORMAT_FAILED=1 and GUEST_FAILED=1 add the failures test-all.sh
found before running meson (the clang-format check, the test guest's build)."""
import json, os, re, sys
passed = failed = skipped = 0
strict = os.environ.get("STRICT_SKIPS") == "1"
skipped_names = []
if os.environ.get("FORMAT_FAILED") == "1":
    failed += 1
    print("failed: clang-format check")
else:
    passed += 1
if os.environ.get("GUEST_FAILED") == "1":
    failed += 1
    print("failed: building the test guest image for the real-QEMU unit tests")
case_skip = re.compile(r"^\[  SKIPPED \] (\S+)\s*$", re.M)
for path in sys.argv[1:]:
    build = os.path.basename(os.path.dirname(os.path.dirname(path)))
    try:
        lines = open(path).read().splitlines()
    except OSError:
        failed += 1
        print("failed: no test log %s" % path)
        continue
    for line in lines:
        try:
            t = json.loads(line)
            r = t["result"]
        except (ValueError, KeyError):
            # Two meson runs writing one log interleave their lines: that run counts
            # for nothing.
            failed += 1
            print("failed: an unreadable line in %s (was it written by two runs?)" % path)
            continue
        name = "%s: %s" % (build, t["name"])
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
            skipped_names.append(name)
        else:
            failed += 1
            print("failed: %s (%s)" % (name, r))
        # cmocka lists each skipped case twice (as it runs, and in its summary).
        out = (t.get("stdout") or "") + "\n" + (t.get("stderr") or "")
        for case in sorted(set(case_skip.findall(out))):
            skipped += 1
            skipped_names.append("%s/%s" % (name, case))
for name in skipped_names:
    if strict:
        skipped -= 1
        failed += 1
        print("failed: skipped %s (this machine has root and QEMU: nothing may skip)" % name)
    else:
        print("skipped: %s" % name)
print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
sys.exit(1 if failed else 0)
