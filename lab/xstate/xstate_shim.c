/* Loaded into linux.uml (LD_PRELOAD) on hosts whose CPU has more XSAVE state than Debian 12's
 * user-mode-linux kernel (6.1) has room for: AMX's tile data makes the host's XSAVE area about
 * 11 KiB, UML's buffer is smaller, and the host kernel refuses a PTRACE_SETREGSET of NT_X86_XSTATE
 * that is not the full size (EFAULT), so every node dies at its first process ("ptrace set fp
 * regs failed, errno = 14"). This completes UML's buffer with the rest of the tracee's current
 * state (state UML never gave its processes, AMX needs a permission they do not ask for) and
 * sets the whole area. Every other ptrace call passes through unchanged. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#define NT_X86_XSTATE 0x202
#define FULL_MAX (64 * 1024)

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

long ptrace(enum __ptrace_request request, ...)
{
    static ptrace_fn real;
    static char full[FULL_MAX];
    va_list ap;
    pid_t pid;
    void *addr, *data;

    va_start(ap, request);
    pid = va_arg(ap, pid_t);
    addr = va_arg(ap, void *);
    data = va_arg(ap, void *);
    va_end(ap);
    if (!real)
        real = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
    if (request == PTRACE_SETREGSET && (long)addr == NT_X86_XSTATE && data) {
        struct iovec *given = data;
        struct iovec whole = { full, sizeof(full) };
        if (real(PTRACE_GETREGSET, pid, addr, &whole) == 0 && whole.iov_len > given->iov_len) {
            memcpy(full, given->iov_base, given->iov_len);
            return real(PTRACE_SETREGSET, pid, addr, &whole);
        }
    }
    return real(request, pid, addr, data);
}
