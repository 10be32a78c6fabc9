#!/usr/bin/env python3
"""castellan's Helm chart through Helm itself, without a helm binary: PyPI
helm-python-sdk embeds Helm 4 as a library (scripts/test.sh installs it).

  scripts/helm.py render [-f values.yaml]... [--set-json K=JSON]...   the manifests (YAML stream) and NOTES
  scripts/helm.py lint [-f values.yaml]...                              helm lint --strict; exit 1 on any finding
  scripts/helm.py package OUTDIR                                        helm package
  scripts/helm.py readme [--check]                                      README.md's values table, from values.schema.json

The release is named castellan in namespace istio-system unless
--name/--namespace say otherwise. Errors go to stderr and exit 1.
"""
import argparse
import json
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "castellan"
KUBE_VERSION = "1.33.0"


def load_values(files, set_json):
    import yaml

    values = {}
    for f in files:
        merge(values, yaml.safe_load(Path(f).read_text()) or {})
    for item in set_json:
        key, _, raw = item.partition("=")
        node = values
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = json.loads(raw)
    return values


def merge(into, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


def render(args):
    from helm_python import Chart

    chart = Chart.load(str(args.chart))
    try:
        out = chart.render(load_values(args.values, args.set_json), name=args.name,
                           namespace=args.namespace, is_install=True)
    except Exception as e:  # Helm's own message: schema, fail, template errors
        print(f"helm template: {e}", file=sys.stderr)
        return 1
    notes = ""
    for path in sorted(out):
        text = out[path]
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        if not text.strip():
            continue
        sys.stdout.write(f"---\n# Source: {path}\n{text.strip()}\n")
    if args.notes:
        Path(args.notes).write_text(notes)
    return 0


def lint(args):
    from helm_python import lint as helm_lint

    report = helm_lint(str(args.chart), load_values(args.values, args.set_json), strict=True,
                       namespace=args.namespace, kube_version=KUBE_VERSION)
    # Severities as Helm's: 1 info, 2 warning, 3 error; --strict fails on warnings.
    names = {1: "INFO", 2: "WARNING", 3: "ERROR"}
    messages = report.get("messages") or []
    for m in messages:
        print(f"helm lint: [{names.get(m.get('severity'), '?')}] {m.get('path')}: {m.get('error')}", file=sys.stderr)
    findings = [m for m in messages if m.get("severity", 0) >= 2]
    errors = report.get("errors") or []
    for e in errors:
        print(f"helm lint: {e}", file=sys.stderr)
    return 1 if findings or errors else 0


def package(args):
    from helm_python import package as helm_package

    Path(args.outdir).mkdir(parents=True, exist_ok=True)
    print(helm_package(str(CHART), destination=args.outdir))
    return 0


def table():
    """The values table: one row per leaf of values.schema.json."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    rows = ["| Value | Type | Default | Description |", "|---|---|---|---|"]

    def walk(prefix, node):
        props = node.get("properties")
        if node.get("type") == "object" and props:
            for k, v in props.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
            return
        t = node.get("type")
        t = " or ".join(t) if isinstance(t, list) else t
        if "enum" in node:
            t = " \\| ".join(f"`{e}`" for e in node["enum"])
        default = json.dumps(node.get("default"), separators=(",", ":"))
        if len(default) > 60:
            default = "see values.yaml"
        else:
            default = f"`{default}`"
        desc = node.get("description", "").replace("|", "\\|")
        rows.append(f"| `{prefix}` | {t} | {default} | {desc} |")

    walk("", schema)
    return "\n".join(rows) + "\n"


def readme(args):
    path = CHART / "README.md"
    text = path.read_text()
    start, end = "<!-- values:start -->\n", "<!-- values:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    new = head + start + table() + end + tail
    if args.check:
        if new != text:
            print(f"{path}: the values table differs from values.schema.json; run scripts/helm.py readme",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("render", "lint"):
        s = sub.add_parser(name)
        s.add_argument("-f", "--values", action="append", default=[])
        s.add_argument("--set-json", action="append", default=[])
        s.add_argument("--name", default="castellan")
        s.add_argument("--namespace", default="istio-system")
        s.add_argument("--chart", default=str(CHART), help="another copy of the chart")
        if name == "render":
            s.add_argument("--notes", help="write NOTES.txt's text here")
    s = sub.add_parser("package")
    s.add_argument("outdir")
    s = sub.add_parser("readme")
    s.add_argument("--check", action="store_true")
    args = p.parse_args()
    return {"render": render, "lint": lint, "package": package, "readme": readme}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
