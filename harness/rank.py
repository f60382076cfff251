"""The rank scheduler's SCHED_RANK, as oned 7.4's `rank` scheduler evaluates it against a host
(src/parsers/expr_arith.y over the HostXML search paths of src/schedm_mad/remotes/rank): a
number, a name, or +, -, *, / and parentheses over them. A name is looked up in the host's
TEMPLATE, then HOST_SHARE, HOST_SHARE/DATASTORES, MONITORING/CAPACITY, MONITORING/SYSTEM, the
host itself and CLUSTER_TEMPLATE; a missing or non-numeric one counts 0. The result is truncated
to an integer. What oned's parser would refuse is refused here (ValueError), so a recipe that
only the stand-in accepts cannot pass a test."""
import re

SEARCH_PATHS = ("TEMPLATE/", "HOST_SHARE/", "HOST_SHARE/DATASTORES/", "MONITORING/CAPACITY/",
                "MONITORING/SYSTEM/", "", "CLUSTER_TEMPLATE/")
_TOKEN = re.compile(r'\s*(?:(?P<float>\d+\.\d+)|(?P<int>\d+)|(?P<name>[A-Za-z][0-9A-Za-z_]*)'
                    r'|"(?P<quoted>[^"]*)"|(?P<op>[-+*/()]))')


def tokens(expression):
    out, pos = [], 0
    text = expression.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"SCHED_RANK: syntax error at {text[pos:pos + 20]!r}")
        pos = match.end()
        kind = match.lastgroup
        out.append((kind, match.group(kind)))
    return out


def lookup(host, name):
    for prefix in SEARCH_PATHS:
        text = host.findtext(prefix + name)
        if text is not None:
            try:
                return float(text)
            except ValueError:
                return 0.0
    return 0.0


def evaluate(expression, host):
    """SCHED_RANK of `host` (an ElementTree HOST element); an empty expression ranks 0."""
    items = tokens(expression)
    pos = 0

    def peek():
        return items[pos] if pos < len(items) else (None, None)

    def take():
        nonlocal pos
        pos += 1
        return items[pos - 1]

    def primary():
        kind, value = take() if pos < len(items) else (None, None)
        if kind == "op" and value == "-":
            return -primary()
        if kind == "op" and value == "(":
            inner = expr()
            if peek() != ("op", ")"):
                raise ValueError("SCHED_RANK: missing ')'")
            take()
            return inner
        if kind in ("name", "quoted"):
            return lookup(host, value)
        if kind in ("int", "float"):
            return float(value)
        raise ValueError(f"SCHED_RANK: unexpected {value!r}")

    def term():
        value = primary()
        while peek() in (("op", "*"), ("op", "/")):
            op = take()[1]
            right = primary()
            value = value * right if op == "*" else (value / right if right else float("inf"))
        return value

    def expr():
        value = term()
        while peek() in (("op", "+"), ("op", "-")):
            op = take()[1]
            right = term()
            value = value + right if op == "+" else value - right
        return value

    if not items:
        return 0
    value = expr()
    if pos != len(items):
        raise ValueError(f"SCHED_RANK: unexpected {items[pos][1]!r}")
    return int(value) if value not in (float("inf"), float("-inf")) else 0
