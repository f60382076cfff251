"""LV operations the TM and DS actions ask of the storage node, in OpenNebula terms."""
from .. import log, naming
from ..errors import DriverError


def lv_info(ctx, ds, lv):
    return ctx.node(ds.storage_host).call("lv-info", "--vg", ds.vg, "--lv", lv)


def snapshot(ctx, ds, origin, lv, size_mib=None, **owner):
    args = ["--vg", ds.vg, "--origin", origin, "--lv", lv, "--max-fill", ds.max_fill]
    if size_mib:
        args += ["--size-mib", size_mib]
    for tag in naming.lv_tags(ds=ds.ds_id, **owner):
        args += ["--tag", tag]
    return ctx.node(ds.storage_host).call("lv-snapshot", *args)


def create(ctx, ds, lv, size_mib, **owner):
    args = ["--vg", ds.vg, "--lv", lv, "--size-mib", size_mib, "--max-fill", ds.max_fill]
    for tag in naming.lv_tags(ds=ds.ds_id, **owner):
        args += ["--tag", tag]
    return ctx.node(ds.storage_host).call("lv-create", *args)


def _names(ctx, ds):
    return [entry["lv"] for entry in
            ctx.node(ds.storage_host).call("lv-list", "--vg", ds.vg).get("lvs", [])]


def snapshots_of(ctx, ds, lv):
    """The snapshots tm_iscsi named after `lv` (`<lv>-snap-N`) that exist on the node."""
    return naming.snapshots_among(lv, _names(ctx, ds))


def dependents_of(ctx, ds, lv):
    """The LVs that go with `lv`: its snapshots (`<lv>-snap-N`), its backup points
    (`<lv>-backup-N`) and its checkpoint (`<lv>-ckpt`)."""
    return naming.dependents_among(lv, _names(ctx, ds))


def remove(ctx, ds, lv, with_snapshots=True):
    """Remove an LV and what tm_iscsi named after it (snapshots, backup points, checkpoint)."""
    node = ctx.node(ds.storage_host)
    if with_snapshots:
        for name in dependents_of(ctx, ds, lv):
            node.call("unexport", "--vg", ds.vg, "--lv", name, "--iqn-base", ds.iqn_base)
            node.call("lv-remove", "--vg", ds.vg, "--lv", name)
    node.call("unexport", "--vg", ds.vg, "--lv", lv, "--iqn-base", ds.iqn_base)
    return node.call("lv-remove", "--vg", ds.vg, "--lv", lv)


def revert(ctx, ds, lv, snap, **owner):
    """`lv` takes the content of its snapshot `snap`: unexported first (its LUN would show the
    old blocks), then replaced by a new thin snapshot made before the old content goes."""
    node = ctx.node(ds.storage_host)
    node.call("unexport", "--vg", ds.vg, "--lv", lv, "--iqn-base", ds.iqn_base)
    args = ["--vg", ds.vg, "--lv", lv, "--to", snap, "--max-fill", ds.max_fill]
    for tag in naming.lv_tags(ds=ds.ds_id, **owner):
        args += ["--tag", tag]
    return node.call("lv-revert", *args)


def mkfs(ctx, ds, lv, fs):
    return ctx.node(ds.storage_host).call("lv-mkfs", "--vg", ds.vg, "--lv", lv, "--fs", fs)


def resize(ctx, ds, lv, size_mib):
    return ctx.node(ds.storage_host).call("lv-resize", "--vg", ds.vg, "--lv", lv,
                                          "--size-mib", size_mib)


def pool_status(ctx, ds):
    return ctx.node(ds.storage_host).call("pool-status", "--vg", ds.vg, "--pool", ds.pool)


def create_from(ctx, ds, lv, path, size_mib_of, **owner):
    """A new LV `lv` holding the image at `path` (a file, an http(s) URL or a backup's URL),
    read once: `size_mib_of(format, virtual size or None)` sizes it (or refuses, before anything
    is made). A failure anywhere, a download cut short included, leaves no LV: oned calls no rm
    after a failed cp (fixture 24), and a half-written restore must not be swapped in."""
    from ..ds import sources
    stream, fmt, virtual, length = sources.open_image(path)
    try:
        size_mib = size_mib_of(fmt, virtual)
    except BaseException:
        stream.close()
        raise
    try:
        create(ctx, ds, lv, size_mib, **owner)
        log.info(f"copying {path} ({fmt}, {length or '?'} bytes) into {ds.vg}/{lv}")
        # A known length lets the node refuse an image that does not fit before writing a byte.
        length_args = ["--size-bytes", length] if length else []
        ctx.node(ds.storage_host).call("lv-write", "--vg", ds.vg, "--lv", lv, "--format", fmt,
                                       *length_args, stdin=stream,
                                       timeout=ctx.settings.copy_timeout)
        # A download that failed half-way says so here, before the LV counts as made.
        stream.close()
    except DriverError as err:
        # A node call that failed first is the cause; the downloader then only dies of a broken
        # pipe. A download that failed first is the cause of the write's failure.
        cause = sources.abandon(stream)
        remove_quietly(ctx, ds, lv)
        if cause is not None:
            raise cause from err
        raise
    finally:
        stream.close()


def remove_quietly(ctx, ds, lv):
    """Undo what a failed action made; its own error is the one the administrator reads."""
    try:
        remove(ctx, ds, lv, with_snapshots=False)
    except DriverError as err:
        log.info(f"could not remove {ds.vg}/{lv} after the failure: {err}")
