"""Progress of a long transfer as INFO lines (what oned's log and an administrator see while an
image is copied or a backup written)."""
import re

from . import run as _run

MIB = 1024 * 1024
_QEMU_PERCENT = re.compile(r"\(([\d.]+)/100%\)")


class Progress:
    """INFO lines about every 5% of `total` bytes."""

    def __init__(self, what, total, in_bytes=True):
        self.what = what
        self.total = max(int(total), 1)
        self.in_bytes = in_bytes
        self.next_mark = 5

    def update(self, done):
        percent = int(done * 100 / self.total)
        if percent >= self.next_mark:
            amount = f" ({done // MIB} MiB)" if self.in_bytes else ""
            _run.info(f"{self.what}: {min(percent, 100)}%{amount}")
            self.next_mark = (percent // 5 + 1) * 5


def convert_with_progress(argv, what, timeout):
    """`qemu-img convert -p ...` with its percentages as Progress lines."""
    progress = Progress(what, 100, in_bytes=False)

    def on_output(text):
        m = _QEMU_PERCENT.search(text)
        if m:
            progress.update(int(float(m.group(1))))

    _run.run_progress(argv, on_output, timeout=timeout, what=f"{what}: qemu-img convert")
