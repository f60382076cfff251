"""Tables for people, JSON for scripts."""
import json
import sys


def table(headers, rows, out=None):
    """Left-aligned columns, two spaces apart; None shows as '-'."""
    out = out or sys.stdout
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    for row in [list(headers)] + cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), file=out)


def heading(text, out=None):
    print(f"\n{text}", file=out or sys.stdout)


def emit_json(data, out=None):
    json.dump(data, out or sys.stdout, indent=1, sort_keys=True, default=str)
    (out or sys.stdout).write("\n")


def size(nbytes):
    if nbytes is None:
        return None
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return None


def percent(value):
    return None if value is None else f"{float(value):.1f}%"


def findings_report(findings, problems, cleaned=None, as_json=False, out=None, empty="nothing"):
    """Orphans / leftovers: a table (with a RESULT column after a clean) or JSON."""
    out = out or sys.stdout
    results = {id(f): error for f, error in (cleaned or [])}
    if as_json:
        rows = []
        for f in findings:
            row = f.as_dict()
            if cleaned is not None:
                row["removed"] = results.get(id(f)) is None
                row["error"] = results.get(id(f))
            rows.append(row)
        emit_json({"findings": rows, "problems": list(problems)}, out)
        return
    if findings:
        headers = ["KIND", "NODE", "NAME", "VM", "WHY"]
        rows = [[f.kind, f.node, f.name, f.vm, f.reason] for f in findings]
        if cleaned is not None:
            headers.append("RESULT")
            for row, f in zip(rows, findings):
                error = results.get(id(f))
                row.append("removed" if error is None else f"FAILED: {error}")
        table(headers, rows, out)
    else:
        print(empty, file=out)
    for problem in problems:
        print(f"warning: {problem}", file=out)
