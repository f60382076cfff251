"""A progress bar on stderr: redrawn in place on a terminal, a line every 10% otherwise (a log
or a pipe must not fill with carriage returns)."""
import sys
import time

MIB = 1 << 20


class Progress:
    def __init__(self, label, total, out=None, clock=time.monotonic):
        self.label = label
        self.total = max(int(total or 0), 0)
        self.out = out or sys.stderr
        self.clock = clock
        self.start = clock()
        self.tty = getattr(self.out, "isatty", lambda: False)()
        self._last_draw = 0.0
        self._next_step = 10

    def _line(self, done):
        elapsed = max(self.clock() - self.start, 1e-6)
        rate = done / elapsed / MIB
        if not self.total:
            return f"{self.label}: {done // MIB} MiB, {rate:.1f} MiB/s"
        pct = min(100, int(done * 100 / self.total))
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        return (f"{self.label} [{bar}] {pct:3d}% {done // MIB}/{self.total // MIB} MiB "
                f"{rate:.1f} MiB/s")

    def update(self, done):
        if self.tty:
            now = self.clock()
            if now - self._last_draw >= 0.2:
                self._last_draw = now
                self.out.write("\r" + self._line(done))
                self.out.flush()
        elif self.total and done * 100 >= self._next_step * self.total:
            print(self._line(done), file=self.out, flush=True)
            self._next_step = (done * 100 // self.total) // 10 * 10 + 10

    def finish(self, done):
        if self.tty:
            self.out.write("\r" + self._line(done) + "\n")
            self.out.flush()
        elif done * 100 < 100 * max(self.total, 1) or self._next_step <= 100:
            print(self._line(done), file=self.out, flush=True)
