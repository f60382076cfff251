"""KEY=VALUE files (# comments, optional double quotes around a value): the front-end's
/etc/one/tm_iscsi.conf and a node's /etc/tm_iscsi/node.conf."""


def read(path):
    """The file's keys and values; {} when it does not exist (other errors are raised)."""
    values = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip().strip('"')
    except FileNotFoundError:
        pass
    return values
