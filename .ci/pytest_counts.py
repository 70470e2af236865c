"""Print the pass/skip/fail counts of a pytest JUnit XML report; with --only-skip-matching
WORD, fail when a test was skipped for a reason that does not contain WORD.

Usage: python .ci/pytest_counts.py REPORT.xml LABEL [--only-skip-matching WORD]
"""
import argparse
import sys
import xml.etree.ElementTree as ET


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("label")
    parser.add_argument("--only-skip-matching", default=None)
    args = parser.parse_args(argv)

    passed, failed, skips = 0, 0, []
    for case in ET.parse(args.report).getroot().iter("testcase"):
        outcome = {child.tag for child in case}
        if outcome & {"failure", "error"}:
            failed += 1
        elif "skipped" in outcome:
            reason = case.find("skipped").get("message", "")
            skips.append(f"{case.get('classname')}::{case.get('name')}: {reason}")
        else:
            passed += 1
    print(f"{args.label}: {passed} passed, {failed} failed, {len(skips)} skipped")
    for skip in skips:
        print(f"  skipped {skip}")
    if args.only_skip_matching is not None:
        unexpected = [s for s in skips if args.only_skip_matching not in s]
        if unexpected:
            print(f"{args.label}: {len(unexpected)} tests skipped for a reason other than {args.only_skip_matching}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
